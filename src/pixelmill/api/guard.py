"""Requests refused before any route sees them: characters no id, name or query can hold.

A NUL character (``%00``) in the path or the query string can never name anything
here, and PostgreSQL cannot even compare it with a text column, so such a
request gets 400 ``invalid_characters`` (in OpenAI's error shape on the OpenAI
routes) before authentication, rate limits or any database work.  NUL characters
inside JSON bodies are refused by the body parser (:mod:`pixelmill.wirejson`).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pixelmill.api.asgi import HttpMiddleware
from pixelmill.api.errors import error_response
from pixelmill.errors import BadRequest, PixelmillError

OPENAI_PREFIXES = ("/v1/images/", "/v1/models")


def render_for(path: str, err: PixelmillError):
    """The error response for ``path`` in its dialect's shape (OpenAI's on its routes)."""
    if path.startswith(OPENAI_PREFIXES):
        from pixelmill.presenters.openai_images import render_error

        status, body, headers = render_error(err)
        return JSONResponse(body, status_code=status, headers=headers or None)
    return error_response(err)


class RequestGuard(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = _problem(scope)
        if problem is not None:
            await render_for(scope["path"], BadRequest(problem, code="invalid_characters"))(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _problem(scope: Scope) -> str | None:
    path = scope.get("path", "")
    raw_path = scope.get("raw_path") or b""
    if "\x00" in path or b"%00" in raw_path:
        return "The URL path must not contain NUL characters (%00)"
    query = scope.get("query_string") or b""
    if b"%00" in query or b"\x00" in query:
        return "The query string must not contain NUL characters (%00)"
    return None


TRIGGER_PREFIX = "/api/v1/hooks/"
EXPOSED_HEADERS = [
    "X-Request-Id", "Location", "Retry-After", "RateLimit", "RateLimit-Policy", "X-RateLimit-Limit",
    "X-RateLimit-Remaining", "X-RateLimit-Reset", "Idempotent-Replayed", "Preference-Applied", "X-Execution-Id",
]


class ScopedCors:
    """CORS for the ``cors_origins`` setting on every route except trigger URLs,
    which answer any origin with their own headers.  Keys travel in headers, never
    cookies, so credentials are not allowed."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        from starlette.middleware.cors import CORSMiddleware

        self.app = app
        self.cors = CORSMiddleware(
            app, allow_origins=list(origins), allow_methods=["*"], allow_headers=["*"], expose_headers=EXPOSED_HEADERS, max_age=600
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(TRIGGER_PREFIX):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
