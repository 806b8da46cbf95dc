"""The OpenAI Images dialect: ``POST /v1/images/generations``, answered synchronously.

Also ``GET /v1/models`` (the catalog, for clients that list models first); the
edits and variations endpoints answer 404 in OpenAI's shape, saying so.

The request becomes one ``text_to_image`` execution with ``num_images = n``; the
route waits (polling the execution service from a worker thread, never blocking
the event loop) until it is finished, then answers in OpenAI's shape.  Every
error of these routes is rendered in OpenAI's ``{"error": {...}}`` shape.

Models: ``model`` is a catalog model name.  OpenAI's own names (``dall-e-2``,
``dall-e-3``, ``gpt-image-1`` ...) are accepted too: they run the catalog model
of that name if there is one, otherwise the first model of the catalog; the
same happens when ``model`` is left out.  The name only picks OpenAI's defaults:
``response_format`` is ``b64_json`` for ``gpt-image-*`` names and ``url``
otherwise (as OpenAI's default model, ``dall-e-2``); dall-e names take the
fixed OpenAI sizes only, other models any ``WxH`` that is a multiple of 16
within 256-2048.  ``n`` is 1-10 for every model (OpenAI allows only 1 for
dall-e-3).

Accepted and validated but without effect on the pixels: ``quality``, ``style``,
``user``, ``safety_identifier``, ``moderation``, ``output_compression``, ``partial_images``.
``background="transparent"`` and ``stream=true`` are refused (400): the models
here make opaque images and the answer is not streamed.  Extensions beyond
OpenAI's API: ``seed``, ``negative_prompt``, ``steps`` and ``guidance``.

The wait is bounded by the ``sync_timeout_s`` setting (``PIXELMILL_SYNC_TIMEOUT_S``,
default 300 s); past it the answer is 504 naming
the execution, which keeps running and can be read at
``GET /api/v1/executions/{id}``.  When the client disconnects while waiting the
execution is cancelled and its credits released.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Callable, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pixelmill.accounts.keys import Principal
from pixelmill.api.deps import json_body, principal
from pixelmill.api.files import signed_url
from pixelmill.domain.status import ExecutionStatus
from pixelmill.engine.graph import GraphProblems
from pixelmill.engine.service import Submission
from pixelmill.engine.views import ExecutionView, FileView
from pixelmill.errors import BadRequest, NotFound, PixelmillError
from pixelmill.presenters.openai_images import error_body, render_error, render_images
from pixelmill.store.tables import files

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
            except Exception:
                log.exception("unexpected error in %s", request.url.path)
                return JSONResponse(error_body("The server had an error while processing your request.", "server_error"), status_code=500)

        return route


router = APIRouter(tags=["OpenAI Images"], route_class=OpenAIRoute)


class ImageGenerationRequest(BaseModel):
    """The body of ``POST /v1/images/generations``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=4000)
    model: str | None = None
    n: int | None = Field(default=1, ge=1, le=10)
    size: str | None = "auto"
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    quality: Literal["standard", "hd", "low", "medium", "high", "xhigh", "max", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
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
    if name is not None and name in catalog:
        return name, family
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


@router.post("/v1/images/generations")
async def create_image(request: Request, who: Principal = Depends(principal)):
    rt = request.app.state.runtime
    body = await json_body(request)
    if not isinstance(body, dict):
        raise _invalid("The body must be a JSON object.", None, "invalid_type")
    try:
        req = ImageGenerationRequest.model_validate(body)
    except ValidationError as e:
        raise _from_validation_error(e) from None
    if req.stream:
        raise _invalid("Streaming is not supported by this server: send the request without 'stream' (or with stream=false).", "stream", "unsupported_value")
    if req.background == "transparent":
        raise _invalid(
            "background='transparent' is not supported by this server: its models make opaque images. Use 'opaque' or 'auto'.",
            "background",
            "unsupported_value",
        )
    model, family = resolve_model(req.model, rt.catalog)
    width, height = parse_size(req.size, family)
    output_format = req.output_format or "png"
    response_format = req.response_format or ("b64_json" if family == "gpt-image" else "url")
    node = {
        "type": "text_to_image",
        "params": {
            "model": model,
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "width": width,
            "height": height,
            "steps": req.steps,
            "guidance": req.guidance,
            "seed": req.seed,
            "num_images": req.n or 1,
            "output_format": output_format,
        },
    }
    submission = Submission(
        principal=who,
        graph={"nodes": {"generate": node}},
        dialect="openai",
        label=model,
        request=req.model_dump(mode="json", exclude_none=True),
    )
    try:
        view = await run_in_threadpool(rt.executions.submit, submission)
    except GraphProblems as e:
        problem = (e.details.get("problems") or [{}])[0]
        loc = [p for p in problem.get("loc", []) if p != "params"]
        first_word = str(problem.get("msg", "")).split(" ", 1)[0]
        param = str(loc[-1]) if loc else first_word if first_word in ImageGenerationRequest.model_fields else None
        raise _invalid(f"Invalid value for '{param}': {problem.get('msg')}." if param else str(problem.get("msg")), param) from None
    view = await _wait(request, who.account_id, view.id, _sync_timeout(request))
    if view.status == ExecutionStatus.CANCELLED:
        raise PixelmillError(f"The generation (execution {view.id}) was cancelled before it finished.", code="cancelled", status=500)
    if view.status != ExecutionStatus.SUCCEEDED:
        raise PixelmillError(view.error_message or "The image generation failed.", code=view.error_code or "generation_failed", status=500)
    rendered = await run_in_threadpool(
        render_images,
        view,
        response_format=response_format,
        url_for=lambda f: signed_url(request, f),
        bytes_for=lambda f: _file_bytes(rt, f),
        size=f"{width}x{height}",
        quality=req.quality or "auto",
        background="opaque",
        output_format=output_format,
    )
    return JSONResponse(rendered, headers={"X-Execution-Id": view.id})


@router.get("/v1/models")
def list_models(request: Request, who: Principal = Depends(principal)):
    """The catalog in OpenAI's model-list shape."""
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": "pixelmill"} for name in request.app.state.runtime.catalog.names()],
    }


@router.post("/v1/images/edits")
@router.post("/v1/images/variations")
def unsupported(request: Request, who: Principal = Depends(principal)):
    raise PixelmillError(
        f"{request.url.path} is not supported by this server; use POST /v1/images/generations.",
        code="unsupported_endpoint",
        status=404,
    )


async def _wait(request: Request, account_id: str, execution_id: str, timeout: float) -> ExecutionView:
    """Poll until the execution is finished; cancel it when the client goes away; 504 past ``timeout``."""
    rt = request.app.state.runtime
    deadline = time.monotonic() + timeout
    delay = 0.05
    gone = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, gone))
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
            try:
                await asyncio.wait_for(gone.wait(), min(delay, left))
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 1.5, 0.5)
    finally:
        watcher.cancel()


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
    with rt.db.engine.connect() as conn:
        key = conn.execute(sa.select(files.c.storage_key).where(files.c.id == f.id)).scalar_one()
    return rt.storage.get(key)
