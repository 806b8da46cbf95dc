"""Request dependencies: the runtime, the calling principal, the JSON body (size-capped)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool

from pixelmill import wirejson
from pixelmill.accounts.keys import Principal
from pixelmill.errors import BadRequest, InvalidInput, PayloadTooLarge


MAX_OFFSET = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip")]


def page_limit(maximum: int, what: str = "Items per page", minimum: int = 1) -> Any:
    """A bounded page-size query parameter (``limit: page_limit(100) = 20``); out of bounds is a 422."""
    return Annotated[int, Query(ge=minimum, le=maximum, description=f"{what} ({minimum}-{maximum})")]


def runtime(request: Request):
    return request.app.state.runtime


def presented_key(request: Request) -> str | None:
    h = request.headers
    key = h.get("x-key") or h.get("x-api-key")
    if not key:
        auth = h.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
    return key or None


# Declared for the OpenAPI document (each is one way to present the key); the key
# itself is read by presented_key, so a missing or malformed header is the route's 401.
X_KEY = APIKeyHeader(name="x-key", scheme_name="x-key", auto_error=False, description="The API key (BFL's header)")
X_API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="X-API-Key", auto_error=False, description="The API key")
BEARER = HTTPBearer(scheme_name="Bearer", auto_error=False, description="Authorization: Bearer <API key> (OpenAI's clients)")


async def principal(
    request: Request,
    _x_key: Any = Security(X_KEY),
    _x_api_key: Any = Security(X_API_KEY),
    _bearer: Any = Security(BEARER),
) -> Principal:
    """The calling principal, for sync and async routes: the one the middleware authenticated,
    else the presented key checked now, off the event loop (401 without a valid key)."""
    cached = getattr(request.state, "principal", None)
    if cached is None:
        cached = await run_in_threadpool(request.app.state.runtime.keys.authenticate, presented_key(request))
        request.state.principal = cached
    return cached


async def read_body(request: Request) -> bytes:
    """The raw request body, refused with 413 past the ``max_body_bytes`` cap.

    The body is kept on the request, so ``request.form()`` can parse it afterwards.
    """
    limit = request.app.state.runtime.settings.max_body_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes", limit=limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes", limit=limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    request._body = raw  # Starlette replays a cached body to stream()/form()
    return raw


async def json_body(request: Request) -> Any:
    """The request's JSON.  413 past the size cap; 400 when it is not JSON, nests too
    deep or holds a NUL character (see :mod:`pixelmill.wirejson`)."""
    raw = await read_body(request)
    if not raw.strip():
        raise BadRequest("Request body is empty; send a JSON object", code="empty_body")
    try:
        return wirejson.loads(raw)
    except wirejson.UnsafeJson as e:
        raise BadRequest(e.message, code=e.code) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"Request body is not valid JSON: {e}", code="malformed_json") from None


async def webhook_url_refusal(request: Request, url: str | None):
    """Why a webhook URL given with a request cannot be used, or None.

    The same guard as ``PUT /api/v1/webhooks/config`` and the deliveries: only
    http(s), never a loopback, private, link-local or metadata address (unless the
    operator allow-lists its network).  A host name that does not resolve right now
    is let through: DNS can be briefly down, and deliveries are retried.
    """
    if url is None:
        return None
    from pixelmill.net.safe_http import BlockedUrl

    try:
        await run_in_threadpool(request.app.state.runtime.http.resolve, url)
    except BlockedUrl as e:
        return e
    except Exception:  # unresolvable or unreachable now: the delivery's retries decide
        return None
    return None


def webhook_url_error(refusal, param: str = "webhook_url") -> InvalidInput:
    return InvalidInput(f"This webhook URL cannot be used: {refusal.message}", code="invalid_webhook_url", param=param, reason=refusal.code)
