"""The node types a pixelmill process offers."""

from __future__ import annotations

import importlib
import logging

from pixelmill.nodes.base import NodeRegistry

log = logging.getLogger("pixelmill.nodes")

# module:attribute of every built-in node type
BUILTIN_NODES = [
    "pixelmill.nodes.text_to_image:TextToImage",
    "pixelmill.nodes.load_image:LoadImage",
    "pixelmill.nodes.processing:Upscale",
    "pixelmill.nodes.processing:RemoveBackground",
    "pixelmill.nodes.processing:Resize",
    "pixelmill.nodes.processing:Crop",
    "pixelmill.nodes.processing:Pad",
    "pixelmill.nodes.processing:Convert",
]


def default_registry(extra: list[str] | None = None) -> NodeRegistry:
    registry = NodeRegistry()
    for ref in BUILTIN_NODES + (extra or []):
        module, attr = ref.split(":")
        registry.register(getattr(importlib.import_module(module), attr)())
    return registry
