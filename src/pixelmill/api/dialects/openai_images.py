"""The OpenAI Images dialect: generations, edits and variations, answered synchronously.

* ``POST /v1/images/generations`` (JSON).
* ``POST /v1/images/edits``: multipart with ``image`` (or ``image[]``), an
  optional ``mask`` and ``prompt``, or JSON with ``images: [{"image_url": ...}]``
  (an http(s) or data URL) and ``mask: {"image_url": ...}``.  Without a mask it
  is image-to-image; with one it is inpainting: the mask's fully transparent
  pixels are repainted and everything else is kept pixel for pixel.  One input
  image per request.  ``size="auto"`` (the default) keeps the input's aspect
  ratio (sides rounded to multiples of 16, within 256-2048).
* ``POST /v1/images/variations``: multipart with ``image``; image-to-image
  without a prompt.
* ``GET /v1/models``: the catalog, for clients that list models first.

Edits and variations run on the named catalog model when it takes input
images, otherwise (OpenAI names, or no ``model``) on the first catalog model
that does; ``strength`` (0-1, extension) says how far the result may move from
the input (default 0.6, or 0.95 inside a mask).

The request becomes one ``text_to_image`` execution with ``num_images = n``; the
route waits (polling the execution service from a worker thread, never blocking
the event loop) until it is finished, then answers in OpenAI's shape.  Every
error of these routes is rendered in OpenAI's ``{"error": {...}}`` shape.

Models: ``model`` is a catalog model name or alias.  OpenAI's own names (``dall-e-2``,
``dall-e-3``, ``gpt-image-1`` ...) are accepted too: they run the catalog model
of that name or alias if there is one, otherwise the first model of the catalog; the
same happens when ``model`` is left out.  The name only picks OpenAI's defaults:
``response_format`` is ``b64_json`` for ``gpt-image-*`` names and ``url``
otherwise (as OpenAI's default model, ``dall-e-2``); dall-e names take the
fixed OpenAI sizes only, other models any ``WxH`` that is a multiple of 16
within 256-2048.  ``n`` is 1-10 for every model (OpenAI allows only 1 for
dall-e-3).

Accepted and validated but without effect on the pixels: ``quality``, ``style``,
``user``, ``safety_identifier``, ``moderation``, ``output_compression``.
``background="transparent"`` is refused (400): the models here make opaque
images.  ``stream=true`` answers Server-Sent Events: keep-alive comments while
the image is made, ``partial_images`` (0-3) ``image_generation.partial_image``
(``image_edit.partial_image``) events with the sampler's state decoded after
evenly spread steps (of the first image when ``n`` > 1; fewer when the model
runs too few steps, as OpenAI allows), then one
``image_generation.completed`` (``image_edit.completed``) event per image.
Extensions beyond OpenAI's API:
``seed``, ``negative_prompt``, ``steps`` and ``guidance``.

The wait is bounded by the ``sync_timeout_s`` setting (``PIXELMILL_SYNC_TIMEOUT_S``,
default 300 s); past it the answer is 504 naming
the execution, which keeps running and can be read at
``GET /api/v1/executions/{id}``.  When the client disconnects while waiting the
execution is cancelled and its credits released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio
import re
import time
from typing import Callable, Literal

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pixelmill import recipes
from pixelmill.accounts.keys import Principal
from pixelmill.api import contract, wire
from pixelmill.api.deps import json_body, principal, read_body
from pixelmill.api.files import signed_url
from pixelmill.api.sse import sse_message
from pixelmill.domain.status import ExecutionStatus
from pixelmill.engine.graph import GraphProblems
from pixelmill.engine.notify import TERMINAL_EVENTS
from pixelmill.engine.service import Submission
from pixelmill.engine.views import ExecutionView, FileView
from pixelmill.errors import BadRequest, NotFound, PixelmillError
from pixelmill.models.imageops import BadImageInput, ImageDecodeError, decode_base64_image, fit_size, is_url, probe_image
from pixelmill.nodes.load_image import INPUT_FAULT_CODES
from pixelmill.presenters.openai_images import completed_events, error_body, partial_event, render_error, render_images
from pixelmill.store.db import database_busy

log = logging.getLogger("pixelmill.api.openai")

OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2", "chatgpt-image-latest")
FIXED_SIZES = ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792")
_SIZE_RE = re.compile(r"^([0-9]{2,5})x([0-9]{2,5})$")


class OpenAIRoute(APIRoute):
    """A route whose every error (auth and body parsing included) is rendered in OpenAI's shape."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request):
            try:
                return await handler(request)
            except PixelmillError as err:
                status, body, headers = render_error(err)
                return JSONResponse(body, status_code=status, headers=headers or None)
            except Exception as exc:
                busy = database_busy(exc)
                if busy is not None:
                    status, body, headers = render_error(busy)
                    return JSONResponse(body, status_code=status, headers=headers or None)
                log.exception("unexpected error in %s", request.url.path)
                return JSONResponse(error_body("The server had an error while processing your request.", "server_error"), status_code=500)

        return route


router = APIRouter(tags=["OpenAI Images"], route_class=OpenAIRoute)


class _ImageRequest(BaseModel):
    """Fields that generations and edits share (the edit's image and mask come apart)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=4000)
    model: str | None = None
    n: int | None = Field(default=1, ge=1, le=10)
    size: str | None = "auto"
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    quality: Literal["standard", "hd", "low", "medium", "high", "xhigh", "max", "auto"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    user: str | None = Field(default=None, max_length=512)
    safety_identifier: str | None = Field(default=None, max_length=512)
    stream: bool | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)
    # extensions
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    steps: int | None = Field(default=None, ge=1, le=100)
    guidance: float | None = Field(default=None, ge=0.0, le=100.0)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be empty")
        return v


class ImageGenerationRequest(_ImageRequest):
    """The body of ``POST /v1/images/generations``."""

    style: Literal["vivid", "natural"] | None = None


def _invalid(message: str, param: str | None, code: str = "invalid_value") -> BadRequest:
    return BadRequest(message, code=code, param=param)


def _from_validation_error(e: ValidationError) -> BadRequest:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    kind = err["type"]
    if kind == "missing":
        return _invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return _invalid(f"Unknown parameter: '{param}'.", param, "unknown_parameter")
    msg = err["msg"].removeprefix("Value error, ")
    return _invalid(f"Invalid value for '{param}': {msg}.", param)


def resolve_model(name: str | None, catalog) -> tuple[str, str]:
    """(catalog model name, family) for a requested model; family is dall-e, gpt-image or catalog."""
    family = "dall-e" if name is None or name.startswith("dall-e") else "gpt-image" if name.startswith(("gpt-image", "chatgpt-image")) else "catalog"
    spec = catalog.resolve(name) if name is not None else None
    if spec is not None:  # a model name, or an alias the operator gave a model ("dall-e-3" ...)
        return spec.name, family
    if name is None or name in OPENAI_MODELS:
        return catalog.names()[0], family
    raise NotFound(
        f"The model '{name}' does not exist. Models on this server: {', '.join(catalog.names())} "
        f"(OpenAI names {', '.join(OPENAI_MODELS)} run the default model).",
        code="model_not_found",
        param="model",
    )


def parse_size(size: str | None, family: str) -> tuple[int, int]:
    """Width and height for ``size``; ``auto`` is 1024x1024."""
    if size in (None, "auto"):
        return 1024, 1024
    m = _SIZE_RE.match(size)
    if size in FIXED_SIZES and m:
        return int(m.group(1)), int(m.group(2))
    supported = "'auto', " + ", ".join(f"'{s}'" for s in FIXED_SIZES)
    if family == "dall-e" or not m:
        extra = "" if family == "dall-e" else ", or 'WxH' with both sides multiples of 16 between 256 and 2048"
        raise _invalid(f"Invalid value: '{size}'. Supported values are: {supported}{extra}.", "size")
    w, h = int(m.group(1)), int(m.group(2))
    if not all(256 <= v <= 2048 and v % 16 == 0 for v in (w, h)):
        raise _invalid(f"Invalid value: '{size}'. Width and height must be multiples of 16 between 256 and 2048.", "size")
    return w, h


def _sync_timeout(request: Request) -> float:
    return float(request.app.state.runtime.settings.sync_timeout_s)


@router.post("/v1/images/generations", openapi_extra=contract.json_request(ImageGenerationRequest), responses=contract.with_event_stream(contract.responses(400, 401, 403, 404, 405, 413, 429, 500, 503, 504, shape="openai", ok={200: wire.ImagesResponse}), description="stream=true: image_generation / image_edit events"))
async def create_image(request: Request, who: Principal = Depends(principal)):
    rt = request.app.state.runtime
    body = await json_body(request)
    if not isinstance(body, dict):
        raise _invalid("The body must be a JSON object.", None, "invalid_type")
    try:
        req = ImageGenerationRequest.model_validate(body)
    except ValidationError as e:
        raise _from_validation_error(e) from None
    if req.background == "transparent":
        raise _invalid(
            "background='transparent' is not supported by this server: its models make opaque images. Use 'opaque' or 'auto'.",
            "background",
            "unsupported_value",
        )
    model, family = resolve_model(req.model, rt.catalog)
    width, height = parse_size(req.size, family)
    output_format = req.output_format or "png"
    recipe = recipes.Generate(
        model=model, prompt=req.prompt, negative_prompt=req.negative_prompt, width=width, height=height, steps=req.steps,
        guidance=req.guidance, seed=req.seed, num_images=req.n or 1, output_format=output_format, previews=_previews(req),
        safety_tolerance=moderation_tolerance(req.moderation),
    )
    return await _run(
        request, who, recipe, model, req.model_dump(mode="json", exclude_none=True),
        response_format=req.response_format or ("b64_json" if family == "gpt-image" else "url"),
        size=(width, height), quality=req.quality, output_format=output_format,
        stream="image_generation" if req.stream else None,
    )


MODERATED_CODES = ("request_moderated", "content_moderated")


def moderation_tolerance(moderation: str | None) -> int:
    """OpenAI's ``moderation``: ``auto`` (the default) is BFL's default tolerance 2; ``low`` is 4."""
    return 4 if moderation == "low" else 2


async def _run(
    request: Request, who: Principal, recipe: recipes.Recipe, model: str, logged: dict, *,
    response_format: str, size: tuple[int, int], quality: str | None, output_format: str, stream: str | None = None,
) -> Response:
    """Submit ``recipe``, wait for it and answer in OpenAI's shape.

    With ``stream`` (``image_generation`` or ``image_edit``) the answer is an SSE
    stream instead: keep-alive comments while the execution runs, then one
    ``<stream>.partial_image`` event per preview the generation publishes, then one
    ``<stream>.completed`` event per image, or an ``error`` event.
    """
    rt = request.app.state.runtime
    submission = Submission(principal=who, graph=recipe.graph(), dialect="openai", label=model, request=logged)
    try:
        view = await run_in_threadpool(rt.executions.submit, submission, queue_state=False)  # answered once finished
    except GraphProblems as e:
        problem = recipes.first_problem(e, set(ImageGenerationRequest.model_fields) | set(ImageEditRequest.model_fields))
        param = problem.path[-1] if problem.path else None
        if param in ("width", "height"):  # the model's size limits: the request's field is `size`
            param = "size"
        raise _invalid(f"Invalid value for '{param}': {problem.message}." if param else problem.message, param) from None
    width, height = size
    render = dict(
        url_for=lambda f: signed_url(request, f),
        bytes_for=lambda f: _file_bytes(rt, f),
        size=f"{width}x{height}",
        quality=quality or "auto",
        background="opaque",
        output_format=output_format,
    )
    if stream is not None:
        events = _stream_events(request, who.account_id, view.id, _sync_timeout(request), stream, render)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"X-Execution-Id": view.id, "Cache-Control": "no-cache"}
        )
    view = await _wait(request, who.account_id, view.id, _sync_timeout(request))
    if view.status == ExecutionStatus.CANCELLED:
        raise PixelmillError(f"The generation (execution {view.id}) was cancelled before it finished.", code="cancelled", status=500)
    if view.error_code in MODERATED_CODES:  # OpenAI's answer to a refused prompt or a withheld image
        raise PixelmillError(f"Your request was rejected by the safety system: {view.error_message}", code="moderation_blocked", status=400)
    if view.status != ExecutionStatus.SUCCEEDED:
        if view.error_code in INPUT_FAULT_CODES:  # the input image's URL or data: the client's to fix
            raise _invalid(f"The input image could not be used: {view.error_message}", "image", view.error_code)
        raise PixelmillError(view.error_message or "The image generation failed.", code=view.error_code or "generation_failed", status=500)
    rendered = await run_in_threadpool(render_images, view, response_format=response_format, **render)
    return JSONResponse(rendered, headers={"X-Execution-Id": view.id})


KEEPALIVE_S = 15.0


async def _stream_events(request: Request, account_id: str, execution_id: str, timeout: float, kind: str, render: dict):
    """The SSE body of a streamed request.  A client that leaves mid-stream cancels the execution."""
    rt = request.app.state.runtime
    settled = False  # True once leaving no longer cancels (finished, or timed out and left running)
    stack = contextlib.ExitStack()
    try:
        deadline = time.monotonic() + timeout
        last_sent = time.monotonic()
        partials = _Partials(rt, account_id, execution_id, f"{kind}.partial_image", render)
        sub = stack.enter_context(rt.notifier.subscribe([execution_id]))
        while True:
            view = await run_in_threadpool(rt.executions.get, account_id, execution_id)
            for event in await run_in_threadpool(partials.new):
                yield sse_message(event, event["type"]).encode()
                last_sent = time.monotonic()
            if view.status.is_terminal():
                break
            now = time.monotonic()
            if now >= deadline:
                settled = True
                message = (
                    f"The image generation did not finish within {timeout:g} s. It continues as execution {execution_id}; "
                    f"read it at GET /api/v1/executions/{execution_id}."
                )
                yield sse_message({"type": "error", "error": {**error_body(message, "timeout")["error"], "execution_id": execution_id}}, "error").encode()
                return
            if now - last_sent >= KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_sent = now
            # woken by the next logged event (a preview, the end); re-read at least every wait_poll_s
            await sub.wait(min(rt.settings.wait_poll_s, KEEPALIVE_S - (now - last_sent), deadline - now))
            sub.drain()
        settled = True
        if view.status != ExecutionStatus.SUCCEEDED:
            message = view.error_message or ("The generation was cancelled." if view.status == ExecutionStatus.CANCELLED else "The image generation failed.")
            code = view.error_code or "generation_failed"
            if code in MODERATED_CODES:
                body = error_body(message, "invalid_request_error", code="moderation_blocked")
            elif code in INPUT_FAULT_CODES:
                body = error_body(f"The input image could not be used: {message}", "invalid_request_error", "image", code)
            else:
                body = error_body(message, "server_error", code=code)
            yield sse_message({"type": "error", "error": body["error"]}, "error").encode()
            return
        rendered = await run_in_threadpool(render_images, view, response_format="b64_json", **render)
        for event in completed_events(rendered, f"{kind}.completed"):
            yield sse_message(event, event["type"]).encode()
    finally:
        stack.close()
        if not settled:  # the client went away (or the server stops) while it ran
            with anyio.CancelScope(shield=True):
                log.info("stream closed early; cancelling execution %s", execution_id)
                await run_in_threadpool(rt.executions.cancel, account_id, execution_id)


def _previews(req: "_ImageRequest") -> int:
    """How many intermediate images the generation node publishes: the partials a stream asked for."""
    return (req.partial_images or 0) if req.stream else 0


class _Partials:
    """The ``partial_image`` events of a streamed request, read from the execution's previews."""

    def __init__(self, rt, account_id: str, execution_id: str, event_type: str, render: dict):
        self.rt, self.account_id, self.execution_id = rt, account_id, execution_id
        self.event_type, self.render = event_type, render
        self.after = 0
        self.sent = 0

    def new(self) -> list[dict]:
        out = []
        for preview in self.rt.executions.previews(self.account_id, self.execution_id, self.after):
            self.after = preview.seq
            if preview.files:
                data = _file_bytes(self.rt, preview.files[0])
                out.append(partial_event(data, self.sent, self.event_type, **self.render))
                self.sent += 1
        return out


@router.get("/v1/models", responses=contract.responses(401, 403, 405, 429, shape="openai", ok={200: wire.ModelList}))
def list_models(request: Request, who: Principal = Depends(principal)):
    """The catalog in OpenAI's model-list shape."""
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": "pixelmill"} for name in request.app.state.runtime.catalog.names()],
    }


class ImageEditRequest(_ImageRequest):
    """The non-file fields of ``POST /v1/images/edits``."""

    prompt: str = Field(max_length=32000)
    quality: Literal["standard", "low", "medium", "high", "auto"] | None = None
    input_fidelity: Literal["high", "low"] | None = None
    strength: float | None = Field(default=None, ge=0.0, le=1.0)  # extension


class ImageVariationRequest(BaseModel):
    """The non-file fields of ``POST /v1/images/variations``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    n: int | None = Field(default=1, ge=1, le=10)
    size: str | None = "auto"
    response_format: Literal["url", "b64_json"] | None = None
    user: str | None = Field(default=None, max_length=512)
    # extensions
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    steps: int | None = Field(default=None, ge=1, le=100)
    guidance: float | None = Field(default=None, ge=0.0, le=100.0)
    strength: float | None = Field(default=None, ge=0.0, le=1.0)


class InputImage(BaseModel):
    """An input image of an edit: base64 ``data`` or a ``url`` (fetched when the node runs)."""

    data: str | None = None
    url: str | None = None
    size: tuple[int, int] | None = None  # unknown for URLs until fetched
    alpha: bool | None = None

    def ref(self) -> recipes.ImageRef:
        return recipes.ImageRef(self.url or self.data or "")


@router.post("/v1/images/edits", openapi_extra=contract.form_request(wire.ImageEditForm, json_model=wire.ImageEditJson), responses=contract.with_event_stream(contract.responses(400, 401, 403, 404, 405, 413, 429, 500, 503, 504, shape="openai", ok={200: wire.ImagesResponse}), description="stream=true: image_generation / image_edit events"))
async def edit_image(request: Request, who: Principal = Depends(principal)):
    rt = request.app.state.runtime
    fields, images, mask = await _image_request(request, json_images=True)
    try:
        req = ImageEditRequest.model_validate(fields)
    except ValidationError as e:
        raise _from_validation_error(e) from None
    if req.background == "transparent":
        raise _invalid("background='transparent' is not supported by this server: its models make opaque images.", "background", "unsupported_value")
    image = _one_image(images)
    if mask is not None:
        if mask.alpha is False:
            raise _invalid("Invalid mask: it has no alpha channel. Its fully transparent pixels mark the area to edit.", "mask", "invalid_image")
        if mask.size and image.size and mask.size != image.size:
            raise _invalid(
                f"Invalid mask: it is {mask.size[0]}x{mask.size[1]} but the image is {image.size[0]}x{image.size[1]}; they must match.",
                "mask",
                "invalid_image",
            )
    model, family = resolve_edit_model(req.model, rt.catalog)
    width, height = _edit_size(req.size, family, image)
    output_format = req.output_format or "png"
    generation = dict(
        model=model, prompt=req.prompt, negative_prompt=req.negative_prompt, width=width, height=height, steps=req.steps,
        guidance=req.guidance, seed=req.seed, num_images=req.n or 1, output_format=output_format, previews=_previews(req),
        safety_tolerance=moderation_tolerance(req.moderation),
    )
    recipe: recipes.Generate
    if mask is not None:  # OpenAI masks: fully transparent pixels mark the area to edit
        recipe = recipes.Inpaint(**generation, image=image.ref(), mask=mask.ref(), mask_from_alpha=True, strength=req.strength)
    else:
        recipe = recipes.ImageToImage(**generation, image=image.ref(), strength=req.strength)
    return await _run(
        request, who, recipe, model, {**req.model_dump(mode="json", exclude_none=True), "masked": mask is not None},
        response_format=req.response_format or ("b64_json" if family == "gpt-image" else "url"),
        size=(width, height), quality=req.quality, output_format=output_format,
        stream="image_edit" if req.stream else None,
    )


@router.post("/v1/images/variations", openapi_extra=contract.form_request(wire.ImageEditForm), responses=contract.responses(400, 401, 403, 404, 405, 413, 429, 500, 503, 504, shape="openai", ok={200: wire.ImagesResponse}))
async def image_variation(request: Request, who: Principal = Depends(principal)):
    rt = request.app.state.runtime
    fields, images, mask = await _image_request(request, json_images=False)
    if mask is not None:
        raise _invalid("Unknown parameter: 'mask'.", "mask", "unknown_parameter")
    try:
        req = ImageVariationRequest.model_validate(fields)
    except ValidationError as e:
        raise _from_validation_error(e) from None
    image = _one_image(images)
    model, family = resolve_edit_model(req.model, rt.catalog)
    width, height = _edit_size(req.size, family, image)
    recipe = recipes.Variation(
        model=model, width=width, height=height, steps=req.steps, guidance=req.guidance, seed=req.seed,
        num_images=req.n or 1, output_format="png", image=image.ref(), strength=req.strength,
    )
    return await _run(
        request, who, recipe, model, req.model_dump(mode="json", exclude_none=True),
        response_format=req.response_format or "url", size=(width, height), quality=None, output_format="png",
    )


def resolve_edit_model(name: str | None, catalog) -> tuple[str, str]:
    """Like :func:`resolve_model`, for a model that must take an input image."""
    editing = [n for n in catalog.names() if catalog.get(n).supports_image_input]
    spec = catalog.resolve(name) if name is not None else None
    if spec is not None and (name in catalog or spec.name in editing):
        if spec.name not in editing:
            raise _invalid(
                f"The model '{name}' does not take input images. Models that do: {', '.join(editing) or 'none on this server'}.",
                "model",
                "unsupported_value",
            )
        return resolve_model(name, catalog)
    model, family = resolve_model(name, catalog)  # 404 for unknown names
    if not editing:
        raise _invalid(
            "No model on this server takes input images, so it cannot edit or vary images "
            "(a catalog model needs supports_image_input = true).",
            "model",
            "unsupported_value",
        )
    return editing[0], family


def _edit_size(size: str | None, family: str, image: InputImage) -> tuple[int, int]:
    """``auto``: the input's aspect ratio, sides multiples of 16 within 256-2048 (1024x1024 for a URL)."""
    if size not in (None, "auto"):
        return parse_size(size, "catalog" if family == "dall-e" else family)
    if image.size is None:
        return 1024, 1024
    return fit_size(*image.size)


def _one_image(images: list[InputImage]) -> InputImage:
    if not images:
        raise _invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    if len(images) > 1:
        raise _invalid(f"This server edits one image per request; {len(images)} were sent.", "image", "unsupported_value")
    return images[0]


async def _image_request(request: Request, json_images: bool) -> tuple[dict, list[InputImage], InputImage | None]:
    """(text fields, input images, mask) of a multipart or (edits only) JSON request."""
    rt = request.app.state.runtime
    max_bytes, max_pixels = rt.settings.max_body_bytes, rt.settings.max_image_pixels
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        await read_body(request)
        try:
            form = await request.form(max_files=32, max_fields=64)
        except Exception as e:  # malformed multipart
            raise _invalid(f"The multipart body could not be parsed: {e}", None, "invalid_multipart") from None
        fields: dict = {}
        images: list[InputImage] = []
        mask = None
        for key, value in form.multi_items():
            if key in ("image", "image[]", "mask"):
                if not isinstance(value, UploadFile):
                    raise _invalid(f"'{key}' must be a file upload.", key.rstrip("[]"), "invalid_type")
                raw = await value.read()
                item = await run_in_threadpool(_inspect, raw, key.rstrip("[]"), max_pixels)
                if key == "mask":
                    mask = item
                else:
                    images.append(item)
            elif isinstance(value, UploadFile):
                raise _invalid(f"Unknown file parameter: '{key}'.", key, "unknown_parameter")
            elif key in fields:
                raise _invalid(f"Parameter '{key}' was given more than once.", key, "invalid_value")
            else:
                fields[key] = value
        return fields, images, mask
    if not json_images:
        raise _invalid("Send this request as multipart/form-data with the image as a file.", None, "invalid_content_type")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise _invalid("The body must be a JSON object.", None, "invalid_type")
    body = dict(body)
    refs = body.pop("images", None)
    mask_ref = body.pop("mask", None)
    if refs is not None and not isinstance(refs, list):
        raise _invalid("Invalid type for 'images': expected an array of objects with 'image_url'.", "images", "invalid_type")
    images = [await _json_image(request, ref, f"images.{i}", max_bytes, max_pixels) for i, ref in enumerate(refs or [])]
    mask = None if mask_ref is None else await _json_image(request, mask_ref, "mask", max_bytes, max_pixels)
    return body, images, mask


async def _url_refusal(request: Request, url: str):
    """The URL policy's refusal of an input image URL (checked again when it is fetched), or None."""
    from pixelmill.net.safe_http import BlockedUrl

    try:
        await run_in_threadpool(request.app.state.runtime.http.resolve, url)
    except BlockedUrl as e:
        return e
    except Exception:  # not resolvable now: the fetch reports it
        return None
    return None


async def _json_image(request: Request, ref, param: str, max_bytes: int, max_pixels: int) -> InputImage:
    if not isinstance(ref, dict) or set(ref) - {"image_url", "file_id"}:
        raise _invalid(f"Invalid value for '{param}': expected an object with 'image_url'.", param, "invalid_type")
    if "file_id" in ref:
        raise _invalid(f"'{param}.file_id' is not supported by this server; send 'image_url' (an http(s) or data URL).", param, "unsupported_value")
    url = ref.get("image_url")
    if is_url(url):
        refusal = await _url_refusal(request, url.strip())
        if refusal is not None:
            raise _invalid(f"Invalid value for '{param}.image_url': this URL cannot be fetched: {refusal.message}.", param, refusal.code)
        return InputImage(url=url.strip())
    try:
        raw = decode_base64_image(url, param, max_bytes)
    except BadImageInput as e:
        raise _invalid(f"Invalid value for '{param}.image_url': {e.reason}.", param, "invalid_image") from None
    item = await run_in_threadpool(_inspect, raw, param, max_pixels)
    return InputImage(data=url, size=item.size, alpha=item.alpha)


def _inspect(raw: bytes, param: str, max_pixels: int) -> InputImage:
    """Check that ``raw`` is a PNG, JPEG or WebP image within the pixel cap; its size and transparency."""
    import base64

    try:
        info = probe_image(raw, max_pixels=max_pixels, formats=("PNG", "JPEG", "WEBP"))  # the header only: no pixel decoded here
    except ImageDecodeError as e:
        raise _invalid(f"Invalid image file for '{param}': {e}.", param, "invalid_image") from None
    return InputImage(data=base64.b64encode(raw).decode("ascii"), size=info.size, alpha=info.alpha)


async def _wait(request: Request, account_id: str, execution_id: str, timeout: float) -> ExecutionView:
    """Wait until the execution is finished (woken by the notifier); cancel it when the client goes away; 504 past ``timeout``."""
    rt = request.app.state.runtime
    deadline = time.monotonic() + timeout
    gone = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, gone))
    try:
        with rt.notifier.subscribe([execution_id]) as sub:
            gone_wait = asyncio.ensure_future(gone.wait())
            try:
                while True:
                    view = await run_in_threadpool(rt.executions.get, account_id, execution_id)
                    if view.status.is_terminal():
                        return view
                    if gone.is_set():
                        log.info("client went away; cancelling execution %s", execution_id)
                        return await run_in_threadpool(rt.executions.cancel, account_id, execution_id)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise PixelmillError(
                            f"The image generation did not finish within {timeout:g} s. It continues as execution {execution_id}; "
                            f"read it at GET /api/v1/executions/{execution_id}.",
                            code="timeout",
                            status=504,
                            execution_id=execution_id,
                        )
                    await _until_notice(sub, gone_wait, min(rt.settings.wait_poll_s, left))
            finally:
                gone_wait.cancel()
    finally:
        watcher.cancel()


async def _until_notice(sub, gone_wait: "asyncio.Future", timeout: float) -> None:
    """Until the execution ends (a notice), the client leaves, or ``timeout`` (the safety-net re-read)."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0 or gone_wait.done():
            return
        waiter = asyncio.ensure_future(sub.wait(left))
        done, _ = await asyncio.wait({waiter, gone_wait}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            return
        if any(n.event in TERMINAL_EVENTS for n in sub.drain()):
            return


async def _watch_disconnect(request: Request, gone: asyncio.Event) -> None:
    """Set ``gone`` when the client disconnects.  The body is already read, so the
    only message left to receive is the disconnect (a blocking receive, which
    works through every middleware, unlike ``Request.is_disconnected``)."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server that cannot tell: never cancel
        return
    gone.set()


def _file_bytes(rt, f: FileView) -> bytes:
    return rt.files.read(f.id).data
