"""OpenAI Images shapes: the ``images.generate`` response and OpenAI's error body.

``render_images`` turns a finished execution into
``{created, data: [{url | b64_json, revised_prompt}], background, output_format, size, quality, usage}``.
``render_error`` maps any :class:`~pixelmill.errors.PixelmillError` to OpenAI's
``{"error": {"message", "type", "param", "code"}}`` with the status OpenAI would use.

Status and type choices (documented for clients):

* validation problems: 400 ``invalid_request_error`` (``param`` names the field);
* unknown model: 404 ``invalid_request_error``, code ``model_not_found``;
* missing / invalid / revoked key: 401 ``invalid_request_error``, code ``invalid_api_key``
  (``missing_api_key`` when none was sent); a disabled account: 403;
* too many requests or active tasks: 429 type ``requests``, code ``rate_limit_exceeded``;
* not enough credits: 429 type and code ``insufficient_quota`` (what OpenAI sends when
  an account is out of quota) with the credit figures in the message;
* a generation that failed: 500 ``server_error`` with the engine's code and message;
* the wait ran out: 504 ``server_error``, code ``timeout``, naming the execution id.

Errors a retry cannot fix (quota, failed generation, timeout, cancelled) carry
``x-should-retry: false``, which the official OpenAI clients honour instead of
re-sending the request (a re-sent request would start and bill a new generation).
"""

from __future__ import annotations

import base64
import time
from typing import Any, Callable

from pixelmill.engine.views import ExecutionView, FileView
from pixelmill.presenters.limit_headers import error_headers
from pixelmill.errors import PixelmillError

NO_RETRY = {"x-should-retry": "false"}
_AUTH_CODES = {"missing_api_key", "invalid_api_key", "revoked_api_key"}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def render_error(err: PixelmillError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(HTTP status, OpenAI error body, extra headers) for a pixelmill error."""
    headers = error_headers(err)
    param = err.details.get("param")
    status, code = err.status, err.code
    if code in _AUTH_CODES:
        return 401, error_body(err.message, "invalid_request_error", None, "invalid_api_key" if code != "missing_api_key" else code), headers
    if status == 402:
        needed, available = err.details.get("requiredCredits"), err.details.get("availableCredits")
        message = "You exceeded your current quota: " + err.message
        if needed is not None and available is not None:
            message = f"You exceeded your current quota: this request needs {needed} credits and {available} are available."
        return 429, error_body(message, "insufficient_quota", None, "insufficient_quota"), {**headers, **NO_RETRY}
    if status == 429:
        return 429, error_body(err.message, "requests", None, "rate_limit_exceeded"), headers
    if status in (400, 409, 422):
        return 400, error_body(err.message, "invalid_request_error", param, code), headers
    if status in (403, 404, 413):
        return status, error_body(err.message, "invalid_request_error", param, code), headers
    if status >= 500:
        retry = headers if code in ("internal_error", "service_unavailable") else {**headers, **NO_RETRY}
        return status, error_body(err.message, "server_error", None, code), retry
    return status, error_body(err.message, "invalid_request_error", param, code), headers


def render_images(
    view: ExecutionView,
    *,
    response_format: str,
    url_for: Callable[[FileView], str],
    bytes_for: Callable[[FileView], bytes],
    size: str,
    quality: str,
    background: str,
    output_format: str,
) -> dict[str, Any]:
    """The ``images.generate`` response for a succeeded execution."""
    prompt = view.request.get("prompt", "")
    data = []
    for f in view.result_files():
        item: dict[str, Any] = {}
        if response_format == "b64_json":
            item["b64_json"] = base64.b64encode(bytes_for(f)).decode("ascii")
        else:
            item["url"] = url_for(f)
        item["revised_prompt"] = prompt  # prompts are used as given
        data.append(item)
    return {
        "created": int(view.created_at),
        "data": data,
        "background": background,
        "output_format": output_format,
        "size": size,
        "quality": quality,
        "usage": usage(view),
    }


def usage(view: ExecutionView) -> dict[str, Any]:
    """OpenAI's usage block.  This server bills credits, not tokens: token counts are 0 and
    ``credits`` is what the request cost."""
    return {
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
        "credits": view.cost,
    }


def completed_events(rendered: dict[str, Any], event_type: str) -> list[dict[str, Any]]:
    """One ``<event_type>`` stream event per image of a ``b64_json`` response (``image_generation.completed``...)."""
    shared = {k: rendered[k] for k in ("background", "output_format", "size", "quality", "usage")}
    return [
        {"type": event_type, "b64_json": item["b64_json"], "created_at": rendered["created"], **shared}
        for item in rendered["data"]
    ]


def partial_event(
    data: bytes, index: int, event_type: str, *, size: str, quality: str, background: str, output_format: str, **_: Any
) -> dict[str, Any]:
    """One ``<stream>.partial_image`` event (``image_generation.partial_image``...) for a preview's bytes."""
    return {
        "type": event_type,
        "b64_json": base64.b64encode(data).decode("ascii"),
        "created_at": int(time.time()),
        "size": size,
        "quality": quality,
        "background": background,
        "output_format": output_format,
        "partial_image_index": index,
    }
