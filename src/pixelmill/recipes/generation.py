"""The recipes and the graphs they make.

Node ids are the same in every graph a recipe makes: ``image`` (the input),
``mask``, ``padded``/``margins`` (outpainting) and ``generate`` (the generation,
listed last before any :class:`Chain` steps), so results, previews and logs read
alike whichever dialect submitted the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Union

from pixelmill.nodes.load_image import image_source

IMAGE_TO_IMAGE_STRENGTH = 0.6
"""Image-to-image and variations: how far the result may move from the input when the client does not say."""

INPAINT_STRENGTH = 0.95
"""Inpainting with a mask: the masked area keeps a trace of what was there."""

FULL_REPAINT = 1.0
"""Fill and outpainting: the masked area is generated anew."""

REFERENCE_FOLLOW = 0.5
"""How closely a result follows a reference image (``image_prompt_strength``) when the client does not say."""

Graph = dict[str, Any]


def strength_from_follow(follow: float | None) -> float:
    """Noise strength for "follow the reference this closely" (1: copy it, 0: ignore it)."""
    return round(1.0 - (REFERENCE_FOLLOW if follow is None else follow), 4)


@dataclass(frozen=True)
class ImageRef:
    """A client's input image: an http(s) URL (fetched when the node runs) or base64 / a data URL."""

    source: str

    def node(self, **params: Any) -> dict[str, Any]:
        return {"type": "load_image", "params": {**image_source(self.source), **params}}


@dataclass(frozen=True, kw_only=True)
class Generate:
    """Text to image with a catalog model.  ``None`` fields take the model's or the node's default."""

    model: str
    prompt: str
    width: int
    height: int
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    num_images: int | None = None
    output_format: str | None = None
    previews: int | None = None
    safety_tolerance: int | None = None
    """Moderation of the prompt and the output, 0 strict .. 6 permissive (the node's default: 2)."""
    loras: tuple[tuple[str, float], ...] = ()
    """LoRAs of the model's catalog entry to apply, as (name, scale) pairs (a BFL finetune is one)."""

    def generation_params(self, **extra: Any) -> dict[str, Any]:
        base = {f.name: getattr(self, f.name) for f in fields(Generate)}
        base["loras"] = [{"name": name, "scale": scale} for name, scale in self.loras] or None
        return {k: v for k, v in {**base, **extra}.items() if v is not None}

    def generation(self, inputs: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        node: dict[str, Any] = {"type": "text_to_image", "params": self.generation_params(**extra)}
        if inputs:
            node["inputs"] = {name: [src, "images"] for name, src in inputs.items()}
        return node

    def graph(self) -> Graph:
        return {"nodes": {"generate": self.generation()}}


@dataclass(frozen=True, kw_only=True)
class ImageToImage(Generate):
    """A new image from ``image`` and the prompt; ``strength`` 0 keeps the input, 1 ignores it."""

    image: ImageRef
    strength: float | None = None
    #: more reference images after ``image`` (at most 7: FLUX.2's ``input_image_2`` .. ``input_image_8``)
    references: tuple[ImageRef, ...] = ()

    def graph(self) -> Graph:
        strength = IMAGE_TO_IMAGE_STRENGTH if self.strength is None else self.strength
        nodes: dict[str, Any] = {"image": self.image.node()}
        links = {"image": "image"}
        for n, ref in enumerate(self.references[:7], start=2):
            nodes[f"reference_{n}"] = ref.node()
            links[f"reference_{n}"] = f"reference_{n}"
        nodes["generate"] = self.generation(links, strength=strength)
        return {"nodes": nodes}


@dataclass(frozen=True, kw_only=True)
class Inpaint(Generate):
    """Repaint part of ``image``.

    ``mask`` white = repaint; with ``mask_from_alpha`` the mask's transparent
    pixels mark the area instead; without a ``mask`` the image's own transparent
    pixels do.
    """

    image: ImageRef
    mask: ImageRef | None = None
    mask_from_alpha: bool = False
    strength: float | None = None

    def graph(self) -> Graph:
        if self.mask is None:
            mask = self.image.node(mask_from_alpha=True)
        else:
            mask = self.mask.node(mask_from_alpha=True) if self.mask_from_alpha else self.mask.node()
        strength = INPAINT_STRENGTH if self.strength is None else self.strength
        return {
            "nodes": {
                "image": self.image.node(),
                "mask": mask,
                "generate": self.generation({"image": "image", "mask": "mask"}, strength=strength),
            }
        }


@dataclass(frozen=True, kw_only=True)
class Outpaint(Generate):
    """``image`` with margins added (edge pixels stretched); only the margins are generated."""

    image: ImageRef
    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def graph(self) -> Graph:
        margins = {"top": self.top, "bottom": self.bottom, "left": self.left, "right": self.right}
        return {
            "nodes": {
                "image": self.image.node(),
                "padded": {"type": "pad", "params": margins, "inputs": {"image": ["image", "images"]}},
                "margins": {"type": "pad", "params": {**margins, "mask": True}, "inputs": {"image": ["image", "images"]}},
                "generate": self.generation({"image": "padded", "mask": "margins"}, strength=FULL_REPAINT),
            }
        }


@dataclass(frozen=True, kw_only=True)
class Variation(Generate):
    """An image like ``image``, without a prompt."""

    prompt: str = ""
    image: ImageRef
    strength: float | None = None

    def graph(self) -> Graph:
        same = {f.name: getattr(self, f.name) for f in fields(Generate)}
        return ImageToImage(**same, image=self.image, strength=self.strength).graph()


@dataclass(frozen=True)
class Step:
    """One processing node after a generation: ``type`` is a node type (``upscale``, ``resize``, ...)."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


Recipe = Union[Generate, ImageToImage, Inpaint, Outpaint, Variation, "Chain"]


@dataclass(frozen=True)
class Chain:
    """``first``'s graph, then each step fed the previous node's images; the last step is the result."""

    first: Generate
    steps: tuple[Step, ...] = ()

    def graph(self) -> Graph:
        nodes = dict(self.first.graph()["nodes"])
        previous = "generate"
        for i, step in enumerate(self.steps):
            name = step.name or f"{step.type}_{i + 1}"
            if name in nodes:
                raise ValueError(f"step name {name!r} is used twice")
            nodes[name] = {"type": step.type, "params": dict(step.params), "inputs": {"image": [previous, "images"]}}
            previous = name
        return {"nodes": nodes}

