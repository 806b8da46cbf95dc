"""The text-to-image node: any model of the catalog (image-to-image and inpainting when the model allows).

Inputs: ``image`` (optional) makes it image-to-image; ``mask`` (optional, with
``image``) makes it inpainting: white repaints, black keeps the input's pixels.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from pixelmill.models.base import TextToImageRequest
from pixelmill.moderation import ContentModerated
from pixelmill.nodes.base import IMAGE, NodeContext, NodeParams, NodeResult, NodeType

if TYPE_CHECKING:
    from pixelmill.nodes.services import NodeServices


MAX_LORAS = 4


class LoraRef(NodeParams):
    """A LoRA of the model's catalog entry and how strongly to apply it."""

    name: str = Field(min_length=1, max_length=64)
    scale: float = Field(default=1.0, ge=-4.0, le=4.0)


class TextToImageParams(NodeParams):
    model: str
    prompt: str = Field(default="", max_length=4000)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    #: the model decides the sizes it makes (its catalog entry / weights folder); these are outer bounds
    width: int = Field(default=1024, ge=16, le=8192)
    height: int = Field(default=768, ge=16, le=8192)
    steps: int | None = Field(default=None, ge=1, le=100)
    guidance: float | None = Field(default=None, ge=0.0, le=100.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    num_images: int = Field(default=1, ge=1, le=10)
    strength: float = Field(default=0.6, ge=0.0, le=1.0)
    output_format: Literal["jpeg", "png", "webp"] = "png"
    #: LoRAs of the model (names from its catalog entry) with their scales
    loras: list[LoraRef] = Field(default_factory=list, max_length=MAX_LORAS)
    #: intermediate images to publish while it runs (``node.preview`` events); 0: none
    previews: int = Field(default=0, ge=0, le=3)
    #: moderation of the prompt and the output: 0 strict .. 6 permissive (BFL's scale)
    safety_tolerance: int = Field(default=2, ge=0, le=6)

    @model_validator(mode="after")
    def _multiple_of_16(self):
        for name in ("width", "height"):
            if getattr(self, name) % 16:
                raise ValueError(f"{name} must be a multiple of 16")
        return self


class TextToImage(NodeType):
    name = "text_to_image"
    description = (
        "Generate images from a prompt with a catalog model; an optional input image makes it image-to-image, "
        "and a mask with it (white = repaint) inpainting."
    )
    Params = TextToImageParams
    #: ``reference_2`` .. ``reference_8``: more reference images after ``image`` (FLUX.2 multi-reference)
    inputs = {"image": (IMAGE, False), "mask": (IMAGE, False), **{f"reference_{n}": (IMAGE, False) for n in range(2, 9)}}
    deterministic = True  # same seed + params -> same pixels
    uses_seed = True

    def check(self, params: TextToImageParams, services: NodeServices) -> list[str]:
        try:
            spec = services.catalog.get(params.model)
        except KeyError:
            return [f"unknown model {params.model!r}; configured: {', '.join(services.catalog.names())}"]
        problems: list = []
        if params.steps is not None and params.steps > spec.max_steps:
            problems.append(("steps", f"steps must be at most {spec.max_steps} for {spec.name}"))
        problems += [(field or "width", msg) for field, msg in spec.size_limits().problems(params.width, params.height)]
        for lora in params.loras:
            if lora.name not in spec.loras:
                known = ", ".join(sorted(spec.loras)) or "none"
                problems.append(("loras", f"model {spec.name} has no LoRA {lora.name!r} (it has: {known})"))
        if len({lora.name for lora in params.loras}) != len(params.loras):
            problems.append(("loras", "a LoRA is named twice"))
        return problems

    def check_inputs(self, params: TextToImageParams, services: NodeServices, connected: set[str]) -> dict[str, str]:
        if "mask" in connected and "image" not in connected:
            return {"mask": "a mask needs an input image to edit: link one to 'image'"}
        extra = sorted(name for name in connected if name.startswith("reference_"))
        if extra and "image" not in connected:
            return {extra[0]: "more reference images follow the first: link it to 'image'"}
        if "image" not in connected or params.model not in services.catalog.names():
            return {}
        if not services.catalog.get(params.model).supports_image_input:
            return {"image": f"model {params.model!r} does not accept an input image (it is text-to-image only)"}
        return {}

    def output_sizes(self, params, input_sizes):
        return [(params.width, params.height)] * params.num_images

    def cost(self, params: TextToImageParams, services: NodeServices, input_sizes) -> float:
        spec = services.catalog.get(params.model)
        return spec.price(params.width, params.height, params.num_images)

    def batch_key(self, params: TextToImageParams, services: NodeServices) -> tuple[str, int] | None:
        """Plain text-to-image runs of one model with the same size, steps, guidance and negative prompt batch."""
        try:
            spec = services.catalog.get(params.model)
        except KeyError:
            return None
        if spec.max_batch <= 1 or params.previews or params.num_images != 1:
            return None
        key = json.dumps(
            [params.model, params.width, params.height, params.steps, params.guidance, params.negative_prompt,
             [[lora.name, lora.scale] for lora in params.loras]]
        )
        return key, spec.max_batch

    def run_batch(self, contexts: list[NodeContext], params: list[TextToImageParams]) -> list[NodeResult | Exception]:
        """One pipeline call for all: each image keeps its own prompt, seed, progress and cancel."""
        requests = [self._request(ctx, p, {}) for ctx, p in zip(contexts, params)]
        with contexts[0].services.models.use(params[0].model) as backend:
            generate_batch = getattr(backend, "generate_batch", None)
            if generate_batch is None:
                return super().run_batch(contexts, params)
            outcomes = generate_batch(requests, [ctx.control for ctx in contexts])
        results: list[NodeResult | Exception] = []
        for ctx, p, outcome in zip(contexts, params, outcomes):
            try:
                results.append(outcome if isinstance(outcome, Exception) else self._result(ctx, p, outcome))
            except Exception as e:  # e.g. this image was withheld by moderation: the others are kept
                results.append(e)
        return results

    def queue_name(self, params: TextToImageParams) -> str:
        return f"model.{params.model}"

    def run(self, ctx: NodeContext, params: TextToImageParams, inputs) -> NodeResult:
        request = self._request(ctx, params, inputs)
        ctx.control.previews = params.previews
        with ctx.services.models.use(params.model) as backend:  # never unloaded while it generates
            images = backend.generate(request, ctx.control)
        return self._result(ctx, params, images)

    @staticmethod
    def _request(ctx: NodeContext, params: TextToImageParams, inputs) -> TextToImageRequest:
        init = (inputs.get("image") or [None])[0]
        mask = (inputs.get("mask") or [None])[0]
        return TextToImageRequest(
            prompt=params.prompt,
            width=params.width,
            height=params.height,
            steps=params.steps,
            guidance=params.guidance,
            seed=ctx.seed,
            num_images=params.num_images,
            negative_prompt=params.negative_prompt,
            init_image=init,
            strength=params.strength,
            mask_image=mask,
            reference_images=tuple(img for n in range(2, 9) for img in (inputs.get(f"reference_{n}") or [])[:1]),
            loras=tuple((lora.name, lora.scale) for lora in params.loras),
        )

    @staticmethod
    def _result(ctx: NodeContext, params: TextToImageParams, images) -> NodeResult:
        def moderate() -> None:  # when the run is finished (possibly beside the next generation)
            verdict = ctx.services.moderator.check_images(images, params.safety_tolerance)
            if verdict is not None:
                raise ContentModerated(verdict.reason)

        return NodeResult(
            images=images,
            output_format=params.output_format,
            metadata={"seed": str(ctx.seed), "prompt": params.prompt, "model": params.model},
            release_check=moderate,
        )
