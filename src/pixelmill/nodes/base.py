"""The node-type contract and the registry the engine validates graphs against."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict

from pixelmill.models.base import StepControl

if TYPE_CHECKING:
    from pixelmill.nodes.services import NodeServices

IMAGE = "image"  # the one value type that flows along links: a list of images


class NodeParams(BaseModel):
    """Base of every node's literal parameters (bounded, typed, no unknown fields)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class NodeContext:
    """What a node run gets besides its parameters and inputs."""

    control: StepControl
    seed: int
    services: NodeServices


@dataclass
class NodeResult:
    images: list[Image.Image]
    output_format: str = "png"
    metadata: dict[str, str] = field(default_factory=dict)
    #: a check the outputs must pass before they are stored and released (output moderation);
    #: it raises to withhold them.  The runner calls it when it finishes the run, which may be
    #: on another thread while the worker already runs the next node
    release_check: Callable[[], None] | None = None


class NodeType(ABC):
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type[NodeParams]]
    inputs: ClassVar[dict[str, tuple[str, bool]]] = {}  # input name -> (type, required)
    outputs: ClassVar[dict[str, str]] = {"images": IMAGE}
    deterministic: ClassVar[bool] = True
    uses_seed: ClassVar[bool] = False

    @abstractmethod
    def cost(self, params: NodeParams, services: NodeServices, input_sizes: dict[str, list[tuple[int, int]]]) -> float:
        """Credits this node will cost.  ``input_sizes`` holds estimated sizes of linked images."""

    @abstractmethod
    def output_sizes(self, params: NodeParams, input_sizes: dict[str, list[tuple[int, int]]]) -> list[tuple[int, int]]:
        """Estimated (width, height) of each output image, used for pricing downstream."""

    def check(self, params: NodeParams, services: NodeServices) -> list[str | tuple[str, str]]:
        """Problems that depend on configuration (e.g. an unknown model): messages, or
        ``(param name, message)`` pairs for a problem with one parameter.  Empty when fine."""
        return []

    def check_inputs(self, params: NodeParams, services: NodeServices, connected: set[str]) -> dict[str, str]:
        """Problems with the inputs that are linked (input name -> message).  Empty when fine."""
        return {}

    @abstractmethod
    def run(self, ctx: NodeContext, params: NodeParams, inputs: dict[str, list[Image.Image]]) -> NodeResult: ...

    def batch_key(self, params: NodeParams, services: "NodeServices") -> tuple[str, int] | None:
        """``(key, largest batch)`` when runs with equal keys may run as one call (``run_batch``); None: alone."""
        return None

    def run_batch(self, contexts: list[NodeContext], params: list[NodeParams]) -> list["NodeResult | Exception"]:
        """Run several compatible runs (no linked inputs) at once; one result or exception per run."""
        out: list[NodeResult | Exception] = []
        for ctx, p in zip(contexts, params):
            try:
                out.append(self.run(ctx, p, {}))
            except Exception as e:
                out.append(e)
        return out

    def queue_name(self, params: NodeParams) -> str:
        """The worker queue that serves this node (models held warm)."""
        return "default"


class NodeRegistry:
    def __init__(self) -> None:
        self._types: dict[str, NodeType] = {}

    def register(self, node_type: NodeType) -> None:
        if node_type.name in self._types:
            raise ValueError(f"node type {node_type.name} registered twice")
        self._types[node_type.name] = node_type

    def get(self, name: str) -> NodeType | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def describe(self) -> list[dict]:
        return [
            {
                "type": t.name,
                "description": t.description,
                "params": t.Params.model_json_schema(),
                "inputs": {k: {"type": v[0], "required": v[1]} for k, v in t.inputs.items()},
                "outputs": t.outputs,
                "deterministic": t.deterministic,
            }
            for t in (self._types[n] for n in self.names())
        ]


def megapixels(sizes: list[tuple[int, int]]) -> float:
    return sum(w * h for w, h in sizes) / 1_000_000
