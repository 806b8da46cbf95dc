"""Image-processing nodes: upscale (Real-ESRGAN), remove_background, resize, crop, pad, convert.

Each takes a list of images on its ``image`` input and applies itself to every one.
Prices are per output megapixel (``PRICES``), so a client sees the cost before it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from pixelmill.models import imageops
from pixelmill.nodes.base import IMAGE, NodeContext, NodeParams, NodeResult, NodeType, megapixels

if TYPE_CHECKING:
    from pixelmill.nodes.services import NodeServices

Format = Literal["png", "jpeg", "webp"]

PRICES = {  # credits per output megapixel
    "upscale": 0.5,
    "remove_background": 0.5,
    "resize": 0.0,
    "crop": 0.0,
    "pad": 0.0,
    "convert": 0.0,
}
MAX_OUTPUT_SIDE = 8192


class _ImageNode(NodeType):
    inputs = {"image": (IMAGE, True)}
    deterministic = True

    def cost(self, params, services, input_sizes) -> float:
        return round(PRICES[self.name] * megapixels(self.output_sizes(params, input_sizes)), 4)

    def _each(self, ctx: NodeContext, images, fn) -> list:
        out = []
        for i, image in enumerate(images):
            ctx.control.check()
            out.append(fn(image))
            ctx.control.report((i + 1) / len(images))
        return out


class UpscaleParams(NodeParams):
    factor: int = Field(default=2, ge=2, le=4)
    model_family: Literal["realesr-animevideov3", "realesrgan-x4plus", "realesrgan-x4plus-anime"] = "realesr-animevideov3"
    output_format: Format = "png"


class Upscale(_ImageNode):
    name = "upscale"
    description = "Enlarge images 2-4x with Real-ESRGAN (ncnn; tiled, bounded memory)."
    Params = UpscaleParams

    def output_sizes(self, params: UpscaleParams, input_sizes):
        return [(w * params.factor, h * params.factor) for w, h in input_sizes.get("image", [(1024, 1024)])]

    def run(self, ctx: NodeContext, params: UpscaleParams, inputs) -> NodeResult:
        from pixelmill.models.upscale import upscale_to_factor

        images = inputs["image"]
        for im in images:
            if max(im.width, im.height) * params.factor > MAX_OUTPUT_SIDE:
                raise ValueError(f"upscaled image would exceed {MAX_OUTPUT_SIDE} px per side")
        out = []
        for i, image in enumerate(images):
            sub = _SubControl(ctx.control, i, len(images))
            out.append(upscale_to_factor(image, params.factor, sub, params.model_family))
        return NodeResult(images=out, output_format=params.output_format)


class _SubControl:
    """Maps one image's 0..1 progress into its share of the node's progress."""

    def __init__(self, control, index: int, count: int):
        self._c, self._i, self._n = control, index, count

    def report(self, fraction: float) -> None:
        self._c.report((self._i + fraction) / self._n)

    def check(self) -> None:
        self._c.check()

    @property
    def cancelled(self) -> bool:
        return self._c.cancelled


class RemoveBackgroundParams(NodeParams):
    #: auto: the main subject on a plain backdrop, people elsewhere; subject: anything off the backdrop;
    #: selfie: people only; onnx: the operator's saliency model (background_onnx_path)
    model: Literal["auto", "subject", "selfie", "onnx"] = "auto"
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0)


class RemoveBackground(_ImageNode):
    name = "remove_background"
    description = (
        "Cut out the main subject: PNG with a transparent background (objects and products on plain backdrops, "
        "people anywhere; or a local ONNX saliency model)."
    )
    Params = RemoveBackgroundParams

    def check(self, params: RemoveBackgroundParams, services: NodeServices) -> list[str]:
        if params.model == "onnx" and not services.settings.background_onnx_path:
            return ["the 'onnx' background model needs background_onnx_path in the server settings"]
        return []

    def output_sizes(self, params, input_sizes):
        return list(input_sizes.get("image", [(1024, 1024)]))

    def run(self, ctx: NodeContext, params: RemoveBackgroundParams, inputs) -> NodeResult:
        from pixelmill.models.background import BackgroundRemover

        remover = BackgroundRemover(params.model, onnx_path=ctx.services.settings.background_onnx_path, threshold=params.threshold)
        return NodeResult(images=self._each(ctx, inputs["image"], remover.remove), output_format="png")


class ResizeParams(NodeParams):
    width: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_SIDE)
    height: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_SIDE)
    mode: Literal["fit", "fill", "stretch"] = "fit"
    output_format: Format = "png"

    @model_validator(mode="after")
    def _one_side(self):
        if self.width is None and self.height is None:
            raise ValueError("give width, height or both")
        return self


class Resize(_ImageNode):
    name = "resize"
    description = "Resize images (fit inside, fill and centre-crop, or stretch)."
    Params = ResizeParams

    def output_sizes(self, params: ResizeParams, input_sizes):
        out = []
        for w, h in input_sizes.get("image", [(1024, 1024)]):
            if params.width and params.height and params.mode != "fit":
                out.append((params.width, params.height))
            else:
                r = min((params.width or 10**9) / w, (params.height or 10**9) / h)
                out.append((max(1, round(w * r)), max(1, round(h * r))))
        return out

    def run(self, ctx, params: ResizeParams, inputs) -> NodeResult:
        fn = lambda im: imageops.resize(im, params.width, params.height, params.mode)  # noqa: E731
        return NodeResult(images=self._each(ctx, inputs["image"], fn), output_format=params.output_format)


class CropParams(NodeParams):
    left: int = Field(ge=0, le=MAX_OUTPUT_SIDE)
    top: int = Field(ge=0, le=MAX_OUTPUT_SIDE)
    width: int = Field(ge=1, le=MAX_OUTPUT_SIDE)
    height: int = Field(ge=1, le=MAX_OUTPUT_SIDE)
    output_format: Format = "png"


class Crop(_ImageNode):
    name = "crop"
    description = "Crop a rectangle out of each image (must lie inside the image)."
    Params = CropParams

    def output_sizes(self, params: CropParams, input_sizes):
        return [(params.width, params.height)] * max(1, len(input_sizes.get("image", [])))

    def run(self, ctx, params: CropParams, inputs) -> NodeResult:
        fn = lambda im: imageops.crop(im, params.left, params.top, params.width, params.height)  # noqa: E731
        return NodeResult(images=self._each(ctx, inputs["image"], fn), output_format=params.output_format)


class PadParams(NodeParams):
    top: int = Field(default=0, ge=0, le=MAX_OUTPUT_SIDE)
    bottom: int = Field(default=0, ge=0, le=MAX_OUTPUT_SIDE)
    left: int = Field(default=0, ge=0, le=MAX_OUTPUT_SIDE)
    right: int = Field(default=0, ge=0, le=MAX_OUTPUT_SIDE)
    #: output the mask of the added margins (white) instead of the padded image
    mask: bool = False
    output_format: Format = "png"


class Pad(_ImageNode):
    name = "pad"
    description = (
        "Add margins around each image, filled by stretching its edge pixels; with mask=true output the "
        "inpainting mask of those margins instead (white = margin, black = the original). Outpainting: "
        "link both into text_to_image's image and mask."
    )
    Params = PadParams

    def output_sizes(self, params: PadParams, input_sizes):
        return [
            (w + params.left + params.right, h + params.top + params.bottom)
            for w, h in input_sizes.get("image", [(1024, 1024)])
        ]

    def run(self, ctx, params: PadParams, inputs) -> NodeResult:
        margins = (params.left, params.top, params.right, params.bottom)
        fn = (lambda im: imageops.margin_mask(im.size, *margins)) if params.mask else (lambda im: imageops.pad_edges(im, *margins))
        return NodeResult(images=self._each(ctx, inputs["image"], fn), output_format=params.output_format)


class ConvertParams(NodeParams):
    output_format: Format = "png"
    background: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")  # flatten alpha onto this colour


class Convert(_ImageNode):
    name = "convert"
    description = "Change the output format (png, jpeg, webp); optionally flatten transparency onto a colour."
    Params = ConvertParams

    def output_sizes(self, params, input_sizes):
        return list(input_sizes.get("image", [(1024, 1024)]))

    def run(self, ctx, params: ConvertParams, inputs) -> NodeResult:
        from PIL import Image

        def flatten(im):
            if params.background and im.mode in ("RGBA", "LA"):
                bg = Image.new("RGB", im.size, params.background)
                bg.paste(im, mask=im.getchannel("A"))
                return bg
            return im

        return NodeResult(images=self._each(ctx, inputs["image"], flatten), output_format=params.output_format)
