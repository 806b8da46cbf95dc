"""The load_image node: an image given by the client, as base64 / data URL or as an http(s) URL.

With ``mask_from_alpha`` the node outputs the image's alpha channel as an
inpainting mask (OpenAI's convention: fully transparent = edit): transparent
pixels become white (repaint), opaque ones black (keep).

URLs are fetched through the guarded client (no internal addresses unless the
operator allow-lists them; size and decompression-bomb limits).
"""

from __future__ import annotations

from PIL import Image, ImageOps
from pydantic import Field, model_validator

from pixelmill.models.imageops import BadImageInput, decode_base64_image, decode_image, has_alpha, is_url
from pixelmill.nodes.base import NodeContext, NodeParams, NodeResult, NodeType

INPUT_FAULT_CODES = frozenset(
    {
        # the URL policy refused the client's URL (pixelmill.net.safe_http.BlockedUrl)
        "url_invalid", "url_scheme_not_allowed", "url_host_not_allowed", "url_resolves_to_blocked_address",
        "too_many_redirects", "response_too_large", "image_too_large",
        # the client's URL could not be fetched (FetchFailed) or is not an image (BadImage)
        "url_unresolvable", "connect_failed", "tls_error", "timeout", "network_error", "http_status", "image_invalid",
        # base64 data or a mask that is not usable (BadImageInput)
        "invalid_image",
    }
)
"""Failure codes of a ``load_image`` run that are the client's fault, not the server's:
dialects that answer synchronously report them as a bad request."""


def image_source(value: str) -> dict[str, str]:
    """``load_image`` params for a client's image: ``{"url": ...}`` for an http(s) URL, else ``{"data": ...}``."""
    return {"url": value} if is_url(value) else {"data": value}


class LoadImageParams(NodeParams):
    url: str | None = Field(default=None, max_length=2083)
    data: str | None = Field(default=None, max_length=30_000_000)
    mask_from_alpha: bool = False

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of 'url' or 'data' (base64)")
        if self.url is not None and not self.url.lower().startswith(("http://", "https://")):
            raise ValueError("url must be http(s)")
        if self.data is not None:
            try:
                decode_base64_image(self.data, "data", 30_000_000)
            except BadImageInput as e:
                raise ValueError(f"data is not valid base64 image data: {e.reason}") from None
        return self


class LoadImage(NodeType):
    name = "load_image"
    description = "An input image: base64 / data URL, or an http(s) URL fetched through the guarded client."
    Params = LoadImageParams
    inputs = {}
    deterministic = True

    def cost(self, params, services, input_sizes) -> float:
        return 0.0

    def output_sizes(self, params, input_sizes):
        return [(1024, 1024)]  # unknown until loaded; used only for downstream estimates

    def run(self, ctx: NodeContext, params: LoadImageParams, inputs) -> NodeResult:
        max_pixels = ctx.services.settings.max_image_pixels
        if params.data is not None:
            image = decode_image(decode_base64_image(params.data, "data", 30_000_000), max_pixels=max_pixels)
        else:
            image = ctx.services.http.fetch_image(params.url, max_pixels=max_pixels)
        if params.mask_from_alpha:
            image = alpha_mask(image)
        ctx.control.report(1.0)
        return NodeResult(images=[image], output_format="png")


def alpha_mask(image: Image.Image) -> Image.Image:
    """An L-mode inpainting mask from an image's transparency: alpha 0 -> 255 (edit), alpha 255 -> 0 (keep)."""
    if not has_alpha(image):
        raise BadImageInput("mask", "the mask has no alpha channel; transparent pixels mark the area to edit")
    return ImageOps.invert(image.convert("RGBA").getchannel("A"))

