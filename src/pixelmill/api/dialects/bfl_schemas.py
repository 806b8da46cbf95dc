"""Request and response schemas of the Black Forest Labs (BFL) FLUX API.

The models mirror BFL's published OpenAPI document field for field: names,
types, defaults, bounds, nullability, titles and descriptions, so a client
written for ``api.bfl.ai`` gets the same defaults and the same ``422`` bodies
from pixelmill.  ``tests/api/test_bfl_schemas.py`` walks the vendored spec and
checks every property of every modelled schema against these classes.

Decisions that the spec leaves open:

* **Unknown fields are ignored** (pydantic's default ``extra="ignore"``), which
  is what BFL's FastAPI server does: a request carrying a field this version
  does not know is accepted and the field dropped.
* Validation is pydantic's lax mode, as in FastAPI: ``"42"`` is a valid seed,
  ``"abc"`` is not (``int_parsing``).
* ``aspect_ratio`` is a plain string in the spec; it is checked here to be
  ``"W:H"`` with a ratio between 9:21 and 21:9 (a ``value_error`` otherwise).
* FLUX.2 ``width``/``height`` keep the spec's odd default of ``0``, which is
  below the spec's own minimum of 64: only an *omitted* or ``null`` size means
  "default" (1024x1024, BFL's documented default, also when input images are
  given); an explicit ``0`` fails ``minimum`` as the spec says.  Sizes are
  rounded down to multiples of 16; more than 4 megapixels after rounding is
  rejected with a 422 (loc ``["body"]``).
* One megapixel here is 2**20 pixels, so "4 MP" is 2048x2048.
* ``webhook_url`` is pydantic's ``HttpUrl`` (which is what produces the spec's
  ``format: uri``, 1-2083 characters): http(s) only, and normalised, so a bare
  host gains a trailing slash (``https://h.example`` -> ``https://h.example/``).
* ``flux-pro`` (FLUX.1 [pro], no longer in the spec) follows BFL's own Python
  SDK (``steps`` 1-50/40, ``guidance`` 1.5-5/2.5, ``interval`` 1-4/2, and a
  prompt or an image prompt is required).

Routes use :func:`parse_request_body` (raw bytes -> model) or
:func:`validate_request` (decoded JSON -> model) and render any failure with
:func:`validation_error_body`; the result is byte-for-byte the body FastAPI's
``RequestValidationError`` handler sends.  :func:`to_generation_params` then
reduces any endpoint's request to one :class:`BflGenerationParams`.  Nothing
here needs a web framework except that last renderer, which uses FastAPI's
JSON encoder so ``ctx``/``input`` are encoded identically.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel, Field, HttpUrl, ValidationError, field_validator, model_validator

from pixelmill.models.catalog import SizeLimits
from pixelmill.models.imageops import BadImageInput, decode_base64_image, is_url

__all__ = [
    "AsyncResponse",
    "AsyncWebhookResponse",
    "BFL_ENDPOINTS",
    "BadImageInput",
    "BflGenerationParams",
    "BflParamError",
    "BflRequestError",
    "CreditsResponse",
    "Flux2FlexInputs",
    "Flux2Inputs",
    "Flux2KleinInputs",
    "FluxDevInputs",
    "FluxKontextProInputs",
    "FluxPro11Inputs",
    "FluxProExpandInputs",
    "FluxProFillInputs",
    "FluxProInputs",
    "FluxUltraInput",
    "FinetuneDetailResponse",
    "FinetuneFluxProFillInputs",
    "FinetuneFluxProInputs",
    "FinetuneFluxUltraInput",
    "MyFinetunesResponse",
    "OutputFormat",
    "ResultResponse",
    "StatusResponse",
    "FLUX2_MAX_PIXELS",
    "MEGAPIXEL",
    "aspect_ratio_dimensions",
    "decode_base64_image",
    "flux2_dimensions",
    "is_url",
    "kontext_dimensions",
    "parse_aspect_ratio",
    "parse_request_body",
    "round_down_16",
    "to_generation_params",
    "ultra_dimensions",
    "validate_request",
    "validation_error_body",
]

MEGAPIXEL = 1 << 20
"""Pixels in one megapixel as used for size limits (4 MP = 2048x2048)."""

FLUX2_MAX_PIXELS = 4 * MEGAPIXEL
FLUX2_DEFAULT_SIZE = 1024


# --------------------------------------------------------------------------
# enums


class OutputFormat(str, Enum):
    """Encoding of the generated image."""

    jpeg = "jpeg"
    png = "png"
    webp = "webp"


class StatusResponse(str, Enum):
    """Task status strings of ``GET /v1/get_result``, spelled exactly as BFL does."""

    TaskNotFound = "Task not found"
    Pending = "Pending"
    RequestModerated = "Request Moderated"
    ContentModerated = "Content Moderated"
    Ready = "Ready"
    Error = "Error"

    def is_terminal(self) -> bool:
        """Whether a client should stop polling on this status."""
        return self is not StatusResponse.Pending


# --------------------------------------------------------------------------
# field builders (descriptions copied from the spec; they differ slightly
# between endpoints, so each builder takes the variant it needs)

_UPSAMPLING = (
    "Whether to perform upsampling on the prompt. If active, automatically modifies "
    "the prompt for more creative generation"
)
_SAFETY_6 = (
    "Tolerance level for input and output moderation. Between 0 and 6, 0 being most "
    "strict, 6 being least strict."
)
_SAFETY_5 = (
    "Tolerance level for input and output moderation. Between 0 and 5, 0 being most "
    "strict, 5 being least strict. If you wish to increase the safety_tolerance beyond "
    "these levels please reach out to the team."
)
_OUTPUT_FORMAT = "Output format for the generated image. Can be 'jpeg', 'png', or 'webp'."
_ASPECT = "Aspect ratio of the image between 21:9 and 9:21"
_DIM_32 = "{} of the generated image in pixels. Must be a multiple of 32."
_PROMPT_EXAMPLE = "ein fantastisches bild"


def _example(value: Any) -> dict[str, Any]:
    return {"example": value}


def _no_title(schema: dict[str, Any]) -> None:
    schema.pop("title", None)


def _prompt_upsampling(description: str = _UPSAMPLING + ".", default: bool = False) -> Any:
    return Field(default=default, description=description)


def _seed(description: str = "Optional seed for reproducibility.", example: bool = True) -> Any:
    return Field(
        default=None, description=description, json_schema_extra=_example(42) if example else None
    )


def _safety(description: str = _SAFETY_6, maximum: int = 6, example: bool = True) -> Any:
    return Field(
        default=2,
        ge=0,
        le=maximum,
        description=description,
        json_schema_extra=_example(2) if example else None,
    )


def _output_format(default: OutputFormat, description: Optional[str] = _OUTPUT_FORMAT) -> Any:
    return Field(default=default, description=description, json_schema_extra=_no_title)


def _webhook_url() -> Any:
    return Field(default=None, description="URL to receive webhook notifications")


def _webhook_secret() -> Any:
    return Field(default=None, description="Optional secret for webhook signature verification")


def _dim_32(name: str, default: int) -> Any:
    return Field(default=default, ge=256, le=1440, multiple_of=32, description=_DIM_32.format(name))


def _input_image(n: int, description: str) -> Any:
    title = "Input Image" if n == 1 else f"Input Image {n}"
    return Field(default=None, title=title, description=description)


_ASPECT_RE = re.compile(r"^\s*(\d{1,5})\s*:\s*(\d{1,5})\s*$")


def parse_aspect_ratio(value: str) -> tuple[int, int]:
    """Parse ``"W:H"`` and check 9:21 <= W/H <= 21:9; raises ``ValueError``."""
    match = _ASPECT_RE.match(value)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise ValueError(f"Aspect ratio must be of the form 'W:H' (e.g. '16:9'), got {value!r}")
    w, h = int(match.group(1)), int(match.group(2))
    # compare cross-multiplied so no rounding decides the edge cases
    if w * 9 > h * 21 or w * 21 < h * 9:
        raise ValueError(f"Aspect ratio must be between 21:9 and 9:21, got {value!r}")
    return w, h


class _BflInput(BaseModel):
    """Base of every request body (pydantic defaults: extra fields ignored)."""


class _AspectRatioInput(_BflInput):
    """Base of the bodies with an ``aspect_ratio`` field, which is checked."""

    @field_validator("aspect_ratio", check_fields=False)
    @classmethod
    def _check_aspect_ratio(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            parse_aspect_ratio(value)
        return value


# --------------------------------------------------------------------------
# FLUX.1 text-to-image


class FluxPro11Inputs(_BflInput):
    """Body of ``POST /v1/flux-pro-1.1``."""

    prompt: Optional[str] = Field(
        default="",
        description="Text prompt for image generation.",
        json_schema_extra=_example(_PROMPT_EXAMPLE),
    )
    image_prompt: Optional[str] = Field(
        default=None, description="Optional base64 encoded image to use with Flux Redux."
    )
    width: int = _dim_32("Width", 1024)
    height: int = _dim_32("Height", 768)
    prompt_upsampling: bool = _prompt_upsampling()
    seed: Optional[int] = _seed()
    safety_tolerance: int = _safety()
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg)
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


class FluxDevInputs(_BflInput):
    """Body of ``POST /v1/flux-dev``."""

    prompt: str = Field(
        default="",
        description="Text prompt for image generation.",
        json_schema_extra=_example(_PROMPT_EXAMPLE),
    )
    image_prompt: Optional[str] = Field(
        default=None,
        description="Optional base64 encoded image to use as a prompt for generation.",
    )
    width: int = _dim_32("Width", 1024)
    height: int = _dim_32("Height", 768)
    steps: Optional[int] = Field(
        default=28,
        ge=1,
        le=50,
        description="Number of steps for the image generation process.",
        json_schema_extra=_example(28),
    )
    prompt_upsampling: bool = _prompt_upsampling()
    seed: Optional[int] = _seed()
    guidance: Optional[float] = Field(
        default=3.0,
        ge=1.5,
        le=5.0,
        description=(
            "Guidance scale for image generation. High guidance scales improve prompt "
            "adherence at the cost of reduced realism."
        ),
        json_schema_extra=_example(3.0),
    )
    safety_tolerance: int = _safety()
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg)
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


class FluxProInputs(_BflInput):
    """Body of ``POST /v1/flux-pro`` (FLUX.1 [pro]; legacy, not in the current spec).

    Fields follow BFL's Python SDK, including its check that a prompt or an
    image prompt is given.
    """

    prompt: Optional[str] = Field(
        default="",
        description="Text prompt for image generation.",
        json_schema_extra=_example(_PROMPT_EXAMPLE),
    )
    image_prompt: Optional[str] = Field(
        default=None, description="Optional base64 encoded image to use with image models."
    )
    width: int = _dim_32("Width", 1024)
    height: int = _dim_32("Height", 768)
    steps: Optional[int] = Field(
        default=40,
        ge=1,
        le=50,
        description="Number of steps for the image generation process.",
        json_schema_extra=_example(40),
    )
    prompt_upsampling: bool = _prompt_upsampling()
    seed: Optional[int] = _seed()
    guidance: Optional[float] = Field(
        default=2.5,
        ge=1.5,
        le=5.0,
        description=(
            "Guidance scale for image generation. High guidance scales improve prompt "
            "adherence at the cost of reduced realism."
        ),
        json_schema_extra=_example(2.5),
    )
    interval: Optional[float] = Field(
        default=2.0,
        ge=1.0,
        le=4.0,
        description="Interval parameter for guidance control.",
        json_schema_extra=_example(2.0),
    )
    safety_tolerance: int = _safety()
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg)
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()

    @model_validator(mode="after")
    def _prompt_or_image(self) -> "FluxProInputs":
        if not self.prompt and not self.image_prompt:
            raise ValueError("Either prompt or image_prompt must be provided")
        return self


class FluxUltraInput(_AspectRatioInput):
    """Body of ``POST /v1/flux-pro-1.1-ultra`` (about 4 MP, sized by aspect ratio)."""

    prompt: Optional[str] = Field(
        default="",
        description="The prompt to use for image generation.",
        json_schema_extra=_example("A beautiful landscape with mountains and a lake"),
    )
    prompt_upsampling: bool = _prompt_upsampling()
    seed: Optional[int] = _seed(
        "Optional seed for reproducibility. If not provided, a random seed will be used."
    )
    aspect_ratio: str = Field(default="16:9", description=_ASPECT)
    safety_tolerance: int = _safety()
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg)
    raw: bool = Field(
        default=False,
        description="Generate less processed, more natural-looking images",
        json_schema_extra=_example(False),
    )
    image_prompt: Optional[str] = Field(
        default=None, description="Optional image to remix in base64 format"
    )
    image_prompt_strength: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Blend between the prompt and the image prompt"
    )
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


# --------------------------------------------------------------------------
# FLUX.1 Kontext


class FluxKontextProInputs(_AspectRatioInput):
    """Body of ``POST /v1/flux-kontext-pro`` and ``/v1/flux-kontext-max``."""

    prompt: str = Field(
        description="Text prompt for image generation.",
        json_schema_extra=_example(_PROMPT_EXAMPLE),
    )
    input_image: Optional[str] = _input_image(1, "Base64 encoded image or URL to use with Kontext.")
    input_image_2: Optional[str] = _input_image(
        2, "Base64 encoded image or URL to use with Kontext. *Experimental Multiref*"
    )
    input_image_3: Optional[str] = _input_image(
        3, "Base64 encoded image or URL to use with Kontext. *Experimental Multiref*"
    )
    input_image_4: Optional[str] = _input_image(
        4, "Base64 encoded image or URL to use with Kontext. *Experimental Multiref*"
    )
    seed: Optional[int] = _seed()
    aspect_ratio: Optional[str] = Field(default=None, description=_ASPECT)
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.png)
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()
    prompt_upsampling: bool = _prompt_upsampling()
    safety_tolerance: int = _safety()


# --------------------------------------------------------------------------
# FLUX.1 Fill and Expand

_FILL_IMAGE = (
    "A Base64-encoded string representing the image you wish to modify. Can contain "
    "alpha mask if desired."
)
_FILL_MASK = (
    "A Base64-encoded string representing a mask for the areas you want to modify in the "
    "image. The mask should be the same dimensions as the image and in black and white. "
    "Black areas (0%) indicate no modification, while white areas (100%) specify areas "
    "for inpainting. Optional if you provide an alpha mask in the original image. "
    "Validation: The endpoint verifies that the dimensions of the mask match the original "
    "image."
)
_FILL_PROMPT = (
    "The description of the changes you want to make. This text guides the inpainting "
    "process, allowing you to specify features, styles, or modifications for the masked "
    "area."
)
_STEPS_15_50 = "Number of steps for the image generation process"
_GUIDANCE_60 = "Guidance strength for the image generation process"


class FluxProFillInputs(_BflInput):
    """Body of ``POST /v1/flux-pro-1.0-fill`` (inpainting; white mask = repaint)."""

    image: str = Field(description=_FILL_IMAGE)
    mask: Optional[str] = Field(default=None, description=_FILL_MASK)
    prompt: Optional[str] = Field(
        default="", description=_FILL_PROMPT, json_schema_extra=_example(_PROMPT_EXAMPLE)
    )
    steps: Optional[int] = Field(
        default=50, ge=15, le=50, description=_STEPS_15_50, json_schema_extra=_example(50)
    )
    prompt_upsampling: Optional[bool] = _prompt_upsampling(_UPSAMPLING)
    seed: Optional[int] = _seed("Optional seed for reproducibility", example=False)
    guidance: Optional[float] = Field(default=60, ge=1.5, le=100, description=_GUIDANCE_60)
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg)
    safety_tolerance: int = _safety()
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


def _margin(side: str) -> Any:
    where = "on the {} side of".format(side) if side in ("left", "right") else f"at the {side} of"
    return Field(
        default=0, ge=0, le=2048, description=f"Number of pixels to expand {where} the image"
    )


class FluxProExpandInputs(_BflInput):
    """Body of ``POST /v1/flux-pro-1.0-expand`` (outpainting by pixel margins)."""

    image: str = Field(
        description="A Base64-encoded string representing the image you wish to expand."
    )
    top: Optional[int] = _margin("top")
    bottom: Optional[int] = _margin("bottom")
    left: Optional[int] = _margin("left")
    right: Optional[int] = _margin("right")
    prompt: Optional[str] = Field(
        default="",
        description=(
            "The description of the changes you want to make. This text guides the expansion "
            "process, allowing you to specify features, styles, or modifications for the "
            "expanded areas."
        ),
        json_schema_extra=_example(_PROMPT_EXAMPLE),
    )
    steps: Optional[int] = Field(
        default=50, ge=15, le=50, description=_STEPS_15_50, json_schema_extra=_example(50)
    )
    prompt_upsampling: Optional[bool] = _prompt_upsampling(_UPSAMPLING)
    seed: Optional[int] = _seed("Optional seed for reproducibility", example=False)
    guidance: Optional[float] = Field(default=60, ge=1.5, le=100, description=_GUIDANCE_60)
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg)
    safety_tolerance: int = _safety()
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


# --------------------------------------------------------------------------
# FLUX.1 finetuned variants

_FINETUNE_ID = (
    "Name of the LoRA to use. For LoRAs from other organizations (public or shared), use "
    "the format 'org-id/lora-name'."
)
_FINETUNE_STRENGTH = (
    "Strength of the fine-tuned model. 0.0 means no influence, 1.0 means full influence. "
    "Allowed values up to 2.0"
)


def _finetune_id() -> Any:
    return Field(description=_FINETUNE_ID, json_schema_extra=_example("my-finetune"))


def _finetune_strength(default: float) -> Any:
    return Field(default=default, ge=0.0, le=2.0, description=_FINETUNE_STRENGTH)


class FinetuneFluxProFillInputs(_BflInput):
    """Body of ``POST /v1/flux-pro-1.0-fill-finetuned``.

    Unlike plain fill, ``prompt``, ``steps``, ``guidance`` and
    ``prompt_upsampling`` are not nullable here (as in the spec).
    """

    finetune_id: str = _finetune_id()
    finetune_strength: float = _finetune_strength(1.1)
    image: str = Field(description=_FILL_IMAGE)
    mask: Optional[str] = Field(default=None, description=_FILL_MASK)
    prompt: str = Field(
        default="", description=_FILL_PROMPT, json_schema_extra=_example(_PROMPT_EXAMPLE)
    )
    steps: int = Field(
        default=50, ge=15, le=50, description=_STEPS_15_50, json_schema_extra=_example(50)
    )
    prompt_upsampling: bool = _prompt_upsampling(_UPSAMPLING)
    seed: Optional[int] = _seed("Optional seed for reproducibility", example=False)
    guidance: float = Field(default=60, ge=1.5, le=100, description=_GUIDANCE_60)
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg)
    safety_tolerance: int = _safety()
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


class FinetuneFluxUltraInput(_AspectRatioInput):
    """Body of ``POST /v1/flux-pro-1.1-ultra-finetuned`` (no ``raw`` here)."""

    finetune_id: str = _finetune_id()
    finetune_strength: float = _finetune_strength(1.2)
    prompt: Optional[str] = Field(
        default="",
        description="The prompt to use for image generation.",
        json_schema_extra=_example("A beautiful landscape with mountains and a lake"),
    )
    seed: Optional[int] = _seed(
        "Optional seed for reproducibility. If not provided, a random seed will be used."
    )
    aspect_ratio: str = Field(default="16:9", description=_ASPECT)
    safety_tolerance: int = _safety()
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg)
    image_prompt: Optional[str] = Field(
        default=None, description="Optional image to remix in base64 format"
    )
    image_prompt_strength: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Blend between the prompt and the image prompt"
    )
    prompt_upsampling: bool = _prompt_upsampling(_UPSAMPLING)
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


class FinetuneFluxProInputs(FluxProInputs):
    """Body of ``POST /v1/flux-pro-finetuned`` (legacy, not in the current spec): FLUX.1 [pro]'s
    fields plus the finetune and its strength."""

    finetune_id: str = _finetune_id()
    finetune_strength: float = _finetune_strength(1.1)


class MyFinetunesResponse(BaseModel):
    """Body of ``GET /v1/my_finetunes``."""

    finetunes: list[Any] = Field(description="List of finetunes created by the user")


class FinetuneDetailResponse(BaseModel):
    """Body of ``GET /v1/finetune_details``."""

    finetune_details: dict[str, Any] = Field(description="Details about the parameters used for finetuning")



# --------------------------------------------------------------------------
# FLUX.2

_ORDINALS = ["", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]


def _flux2_image(n: int) -> Any:
    if n == 1:
        return _input_image(1, "Path to the input image.")
    return _input_image(n, f"Path to the {_ORDINALS[n - 1]} input image.")


def _flux2_dim(name: str) -> Any:
    return Field(default=0, ge=64, description=f"{name} of the image")


def round_down_16(value: int) -> int:
    """Largest multiple of 16 not above ``value`` (at least 16)."""
    return max(16, value - value % 16)


def flux2_dimensions(width: Optional[int], height: Optional[int]) -> tuple[int, int]:
    """Output size of a FLUX.2 request: missing (0/None) sides are 1024, others
    are rounded down to multiples of 16."""
    w = round_down_16(width) if width else FLUX2_DEFAULT_SIZE
    h = round_down_16(height) if height else FLUX2_DEFAULT_SIZE
    return w, h


class _Flux2Base(_BflInput):
    """Fields shared by every FLUX.2 body, plus the 4-megapixel check."""

    @model_validator(mode="after")
    def _check_area(self) -> "_Flux2Base":
        w, h = flux2_dimensions(getattr(self, "width"), getattr(self, "height"))
        if w * h > FLUX2_MAX_PIXELS:
            raise ValueError(
                f"width x height must be at most 4 megapixels ({FLUX2_MAX_PIXELS} pixels, "
                f"e.g. 2048x2048); got {w}x{h} after rounding down to multiples of 16"
            )
        return self


class Flux2Inputs(_Flux2Base):
    """Body of ``POST /v1/flux-2-pro``, ``/v1/flux-2-max`` and ``/v1/flux-2-pro-preview``."""

    prompt: str = Field(
        description="Text prompt for image generation.",
        json_schema_extra=_example(_PROMPT_EXAMPLE),
    )
    input_image: Optional[str] = _flux2_image(1)
    input_image_2: Optional[str] = _flux2_image(2)
    input_image_3: Optional[str] = _flux2_image(3)
    input_image_4: Optional[str] = _flux2_image(4)
    input_image_5: Optional[str] = _flux2_image(5)
    input_image_6: Optional[str] = _flux2_image(6)
    input_image_7: Optional[str] = _flux2_image(7)
    input_image_8: Optional[str] = _flux2_image(8)
    seed: Optional[int] = _seed()
    width: Optional[int] = _flux2_dim("Width")
    height: Optional[int] = _flux2_dim("Height")
    safety_tolerance: int = _safety(_SAFETY_5, maximum=5, example=False)
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg, description=None)
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


class Flux2KleinInputs(_Flux2Base):
    """Body of ``POST /v1/flux-2-klein-4b``, ``-klein-9b`` and ``-klein-9b-preview``."""

    prompt: str = Field(
        description="Text prompt for image generation.",
        json_schema_extra=_example(_PROMPT_EXAMPLE),
    )
    input_image: Optional[str] = _flux2_image(1)
    input_image_2: Optional[str] = _flux2_image(2)
    input_image_3: Optional[str] = _flux2_image(3)
    input_image_4: Optional[str] = _flux2_image(4)
    seed: Optional[int] = _seed()
    width: Optional[int] = _flux2_dim("Width")
    height: Optional[int] = _flux2_dim("Height")
    safety_tolerance: int = _safety(_SAFETY_5, maximum=5, example=False)
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg, description=None)
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


class Flux2FlexInputs(_Flux2Base):
    """Body of ``POST /v1/flux-2-flex`` (adds steps, guidance and prompt upsampling)."""

    prompt: str = Field(
        description="Text prompt for image generation.",
        json_schema_extra=_example(_PROMPT_EXAMPLE),
    )
    prompt_upsampling: Optional[bool] = Field(
        default=True, description="Whether to use prompt upsampling."
    )
    input_image: Optional[str] = _flux2_image(1)
    input_image_2: Optional[str] = _flux2_image(2)
    input_image_3: Optional[str] = _flux2_image(3)
    input_image_4: Optional[str] = _flux2_image(4)
    input_image_5: Optional[str] = _flux2_image(5)
    input_image_6: Optional[str] = _flux2_image(6)
    input_image_7: Optional[str] = _flux2_image(7)
    input_image_8: Optional[str] = _flux2_image(8)
    input_image_blob_path: Optional[str] = Field(
        default=None, description="Blob path to the input image."
    )
    seed: Optional[int] = _seed()
    width: Optional[int] = _flux2_dim("Width")
    height: Optional[int] = _flux2_dim("Height")
    guidance: Optional[float] = Field(
        default=5.0,
        ge=1.5,
        le=10.0,
        description=(
            "Guidance scale for image generation. High guidance scales improve prompt "
            "adherence at the cost of reduced realism."
        ),
        json_schema_extra=_example(5.0),
    )
    steps: Optional[int] = Field(
        default=50,
        ge=1,
        le=50,
        description=(
            "Number of steps for image generation. Higher steps lead to more detailed and "
            "realistic images."
        ),
        json_schema_extra=_example(50),
    )
    safety_tolerance: int = _safety(_SAFETY_5, maximum=5, example=False)
    output_format: Optional[OutputFormat] = _output_format(OutputFormat.jpeg, description=None)
    webhook_url: Optional[HttpUrl] = _webhook_url()
    webhook_secret: Optional[str] = _webhook_secret()


# --------------------------------------------------------------------------
# responses

_CREDITS_COST = "Cost in credits for this request"


class AsyncResponse(BaseModel):
    """Answer to a submit: where to poll for the result."""

    id: str
    polling_url: str
    cost: Optional[float] = Field(default=None, description=_CREDITS_COST)
    input_mp: Optional[float] = Field(default=None, description="Input megapixels (2 decimal places)")
    output_mp: Optional[float] = Field(
        default=None, description="Output megapixels (2 decimal places)"
    )


class AsyncWebhookResponse(BaseModel):
    """Answer to a submit that carried a ``webhook_url``."""

    id: str
    status: str
    webhook_url: str
    cost: Optional[float] = Field(default=None, description=_CREDITS_COST)
    input_mp: Optional[float] = Field(default=None, description="Input megapixels (2 decimal places)")
    output_mp: Optional[float] = Field(
        default=None, description="Output megapixels (2 decimal places)"
    )


class ResultResponse(BaseModel):
    """Body of ``GET /v1/get_result``; ``result`` holds ``{"sample": url, ...}`` when Ready."""

    id: str = Field(description="Task id for retrieving result")
    status: StatusResponse
    result: Optional[Any] = None
    progress: Optional[float] = None
    details: Optional[dict[str, Any]] = None
    preview: Optional[dict[str, Any]] = None


class CreditsResponse(BaseModel):
    """Body of ``GET /v1/credits``."""

    credits: float = Field(description="User's current credit balance")


# --------------------------------------------------------------------------
# registry

BFL_ENDPOINTS: dict[str, type[BaseModel]] = {
    "flux-pro": FluxProInputs,
    "flux-pro-finetuned": FinetuneFluxProInputs,
    "flux-pro-1.1": FluxPro11Inputs,
    "flux-dev": FluxDevInputs,
    "flux-pro-1.1-ultra": FluxUltraInput,
    "flux-pro-1.1-ultra-finetuned": FinetuneFluxUltraInput,
    "flux-pro-1.0-fill": FluxProFillInputs,
    "flux-pro-1.0-fill-finetuned": FinetuneFluxProFillInputs,
    "flux-pro-1.0-expand": FluxProExpandInputs,
    "flux-kontext-pro": FluxKontextProInputs,
    "flux-kontext-max": FluxKontextProInputs,
    "flux-2-pro": Flux2Inputs,
    "flux-2-pro-preview": Flux2Inputs,
    "flux-2-max": Flux2Inputs,
    "flux-2-flex": Flux2FlexInputs,
    "flux-2-klein-4b": Flux2KleinInputs,
    "flux-2-klein-9b": Flux2KleinInputs,
    "flux-2-klein-9b-preview": Flux2KleinInputs,
}
"""Endpoint name (the path after ``/v1/``) to its request model."""


def validate_request(endpoint: str, body: Any) -> BaseModel:
    """Validate a decoded JSON body for ``endpoint`` the way FastAPI does.

    Raises ``KeyError`` for an unknown endpoint and ``pydantic.ValidationError``
    for a bad body.  Validation uses ``from_attributes=True`` as FastAPI does,
    so a non-object body fails with FastAPI's ``model_attributes_type`` error.
    """
    return BFL_ENDPOINTS[endpoint].model_validate(body, from_attributes=True)


def parse_request_body(endpoint: str, raw: bytes) -> BaseModel:
    """Decode and validate a raw JSON request body for ``endpoint``.

    Mirrors FastAPI for a ``Content-Type: application/json`` body: an empty
    body is a ``missing`` error at ``["body"]``, undecodable JSON a
    ``json_invalid`` error at ``["body", <position>]`` (both raised as
    :class:`BflRequestError`), anything else goes to :func:`validate_request`.
    """
    model_cls = BFL_ENDPOINTS[endpoint]
    if not raw:
        raise BflRequestError([{"type": "missing", "loc": (), "msg": "Field required", "input": None}])
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BflRequestError(
            [
                {
                    "type": "json_invalid",
                    "loc": (exc.pos,),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    return model_cls.model_validate(body, from_attributes=True)


# --------------------------------------------------------------------------
# errors


class BflRequestError(ValueError):
    """A request body rejected outside pydantic validation (bad JSON, a size
    beyond this server's limit ...), rendered as a ``422`` like any other.

    ``errors`` are pydantic-style dicts with ``loc`` relative to the body, ready
    for :func:`validation_error_body`.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(err.get("msg", "")) for err in errors))
        self.errors = errors

    @classmethod
    def value_error(cls, loc: tuple[str | int, ...], msg: str, input: Any = None) -> "BflRequestError":
        """One ``value_error`` at ``loc`` (relative to the body)."""
        return cls([{"type": "value_error", "loc": loc, "msg": msg, "input": input}])


BflParamError = BflRequestError
"""Former name of :class:`BflRequestError`, kept for existing callers."""


def validation_error_body(
    errors: ValidationError | BflRequestError | BadImageInput | list[dict[str, Any]],
) -> dict[str, Any]:
    """The ``422`` body FastAPI would send for these body validation errors.

    Accepts a ``pydantic.ValidationError`` raised by ``Model.model_validate``, our
    own ``BflRequestError``/``BadImageInput``, or a list of pydantic-style error
    dicts.  Locations are relative to the body; ``"body"`` is prefixed here.
    The result matches FastAPI's ``request_validation_exception_handler``:
    ``{"detail": [{"type", "loc", "msg", "input", "ctx"?}]}``, JSON-ready.
    """
    from fastapi.encoders import jsonable_encoder

    if isinstance(errors, ValidationError):
        items = errors.errors(include_url=False)
    elif isinstance(errors, BflRequestError):
        items = errors.errors
    elif isinstance(errors, BadImageInput):
        items = [errors.error_dict()]
    else:
        items = list(errors)
    detail = [{**err, "loc": ("body", *tuple(err.get("loc", ())))} for err in items]
    return {"detail": jsonable_encoder(detail)}


# --------------------------------------------------------------------------
# sizes


def aspect_ratio_dimensions(
    aspect_ratio: str, megapixels: float, multiple: int, *, round_down: bool
) -> tuple[int, int]:
    """Width and height of about ``megapixels`` (x 2**20 px) with this aspect ratio.

    Sides are multiples of ``multiple``: nearest when ``round_down`` is false
    (the area may then overshoot slightly, as BFL's sizes do), else rounded
    down so the area never exceeds the target.
    """
    w_ratio, h_ratio = parse_aspect_ratio(aspect_ratio)
    area = megapixels * MEGAPIXEL
    height = math.sqrt(area * h_ratio / w_ratio)
    width = height * w_ratio / h_ratio
    snap = math.floor if round_down else round
    return (
        max(multiple, int(snap(width / multiple)) * multiple),
        max(multiple, int(snap(height / multiple)) * multiple),
    )


def ultra_dimensions(aspect_ratio: str, max_megapixels: float = 4.0) -> tuple[int, int]:
    """Output size of FLUX1.1 [pro] ultra.

    At the full 4 MP this reproduces BFL's sizes (sides to the nearest multiple
    of 64: 16:9 -> 2752x1536, 1:1 -> 2048x2048).  A server capped lower scales
    the area to ``max_megapixels`` with sides rounded down to multiples of 32.
    """
    if max_megapixels >= 4.0:
        return aspect_ratio_dimensions(aspect_ratio, 4.0, 64, round_down=False)
    return aspect_ratio_dimensions(aspect_ratio, max_megapixels, 32, round_down=True)


def kontext_dimensions(aspect_ratio: str, max_megapixels: float = 4.0) -> tuple[int, int]:
    """Output size of FLUX.1 Kontext: about 1 MP, sides to the nearest multiple
    of 32 (1:1 -> 1024x1024, 16:9 -> 1376x768); scaled down, rounding down, if
    ``max_megapixels`` is below 1."""
    if max_megapixels >= 1.0:
        return aspect_ratio_dimensions(aspect_ratio, 1.0, 32, round_down=False)
    return aspect_ratio_dimensions(aspect_ratio, max_megapixels, 32, round_down=True)


# --------------------------------------------------------------------------
# normalised parameters


@dataclass
class BflGenerationParams:
    """One BFL request reduced to what a generation needs, whatever the endpoint.

    ``width``/``height`` are ``None`` where the size follows an input image
    (expand: input plus margins; Kontext with an input image and no aspect
    ratio).  ``steps``/``guidance`` are ``None`` where the endpoint has none
    and the model's own defaults apply.  ``input_images`` are the image fields
    in order, exactly as sent (base64, data URL or http(s) URL).  ``extras``
    holds endpoint-specific parameters (``aspect_ratio``, ``interval``,
    ``image_prompt_strength``, expand margins, ``finetune_id`` ...).
    """

    endpoint: str
    prompt: str
    width: Optional[int] = None
    height: Optional[int] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: Optional[int] = None
    output_format: str = "jpeg"
    num_images: int = 1
    safety_tolerance: int = 2
    prompt_upsampling: bool = False
    raw: bool = False
    webhook_url: Optional[str] = None
    webhook_secret: Optional[str] = None
    input_images: list[str] = field(default_factory=list)
    mask: Optional[str] = None
    extras: dict[str, Any] = field(default_factory=dict)


_IMAGE_FIELDS = (
    "image_prompt",
    "image",
    "input_image",
    *(f"input_image_{n}" for n in range(2, 9)),
)
_EXTRA_FIELDS = (
    "interval",
    "image_prompt_strength",
    "aspect_ratio",
    "top",
    "bottom",
    "left",
    "right",
    "finetune_id",
    "finetune_strength",
    "input_image_blob_path",
)


def _value(req: BaseModel, name: str) -> Any:
    """The request's value, or the field's default where the client sent null."""
    value = getattr(req, name, None)
    if value is None and name in type(req).model_fields:
        value = type(req).model_fields[name].default
    return value


def to_generation_params(
    endpoint: str, req: BaseModel | dict[str, Any], max_megapixels: float = 4.0, *, limits: SizeLimits | None = None
) -> BflGenerationParams:
    """Normalise a validated request of ``endpoint`` (a model, or a raw dict that
    is validated here) into :class:`BflGenerationParams`.

    ``limits`` are the sizes the serving model makes: aspect-ratio endpoints get
    BFL's size when the model makes it, else the largest size of that shape it
    does; an explicit size it cannot make raises :class:`BflRequestError` naming
    ``width``/``height``.  Without ``limits``, ``max_megapixels`` is the only cap
    (aspect-ratio endpoints scaled down to it, larger explicit sizes refused).
    """
    model_cls = BFL_ENDPOINTS[endpoint]
    if not isinstance(req, model_cls):
        req = model_cls.model_validate(req, from_attributes=True)
    fields = model_cls.model_fields

    output_format = _value(req, "output_format")
    webhook_url = getattr(req, "webhook_url", None)
    params = BflGenerationParams(
        endpoint=endpoint,
        prompt=getattr(req, "prompt", None) or "",
        steps=_value(req, "steps") if "steps" in fields else None,
        guidance=float(_value(req, "guidance")) if "guidance" in fields else None,
        seed=getattr(req, "seed", None),
        output_format=OutputFormat(output_format).value,
        safety_tolerance=req.safety_tolerance,
        prompt_upsampling=bool(_value(req, "prompt_upsampling")),
        raw=bool(getattr(req, "raw", False)),
        webhook_url=str(webhook_url) if webhook_url is not None else None,
        webhook_secret=getattr(req, "webhook_secret", None),
        input_images=[v for name in _IMAGE_FIELDS if (v := getattr(req, name, None))],
        mask=getattr(req, "mask", None),
    )
    for name in _EXTRA_FIELDS:
        if name in fields:
            value = _value(req, name)
            if value is not None:
                params.extras[name] = value

    if limits is not None:
        return _sized_by_model(req, params, limits)
    explicit_size = False
    if isinstance(req, (FluxUltraInput, FinetuneFluxUltraInput)):
        params.width, params.height = ultra_dimensions(req.aspect_ratio, max_megapixels)
    elif isinstance(req, FluxKontextProInputs):
        if req.aspect_ratio is not None:
            params.width, params.height = kontext_dimensions(req.aspect_ratio, max_megapixels)
        elif not params.input_images:
            params.width, params.height = kontext_dimensions("1:1", max_megapixels)
    elif isinstance(req, (Flux2Inputs, Flux2KleinInputs, Flux2FlexInputs)):
        params.width, params.height = flux2_dimensions(req.width, req.height)
        explicit_size = True
    elif "width" in fields:
        params.width, params.height = req.width, req.height
        explicit_size = True
    # fill: the size of `image`; expand: image plus margins -> both left None

    if explicit_size and params.width * params.height > max_megapixels * MEGAPIXEL:
        raise BflRequestError.value_error(
            (),
            f"{params.width}x{params.height} is more than this server's limit of "
            f"{max_megapixels:g} megapixels",
            {"width": params.width, "height": params.height},
        )
    return params


def _sized_by_model(req: BaseModel, params: BflGenerationParams, limits: SizeLimits) -> BflGenerationParams:
    """Set ``params``' size from the request, within what the serving model makes."""
    fields = type(req).model_fields
    if isinstance(req, (FluxUltraInput, FinetuneFluxUltraInput)):
        # BFL's own size (16:9 -> 2752x1536, a little over 4 MP as BFL rounds), else the largest the model makes
        params.width, params.height = limits.fit(*aspect_ratio_dimensions(req.aspect_ratio, 4.0, 64, round_down=False))
        return params
    if isinstance(req, FluxKontextProInputs):
        if req.aspect_ratio is not None or not params.input_images:
            params.width, params.height = limits.fit(*aspect_ratio_dimensions(req.aspect_ratio or "1:1", 1.0, 32, round_down=False))
        return params
    if isinstance(req, (Flux2Inputs, Flux2KleinInputs, Flux2FlexInputs)):
        width, height = flux2_dimensions(req.width, req.height)
        m = limits.multiple
        if m > 16:  # BFL rounds FLUX.2 sizes down to multiples of 16; a coarser model, to its own
            width, height = max(m, width // m * m), max(m, height // m * m)
    elif "width" in fields:
        width, height = req.width, req.height
    else:  # fill: the size of `image`; expand: image plus margins -> sized by the route
        return params
    problems = limits.problems(width, height)
    if problems:
        raise BflRequestError(
            [
                {"type": "value_error", "loc": (field,) if field else (), "msg": msg, "input": width if field == "width" else height if field == "height" else {"width": width, "height": height}}
                for field, msg in problems
            ]
        )
    params.width, params.height = width, height
    return params
