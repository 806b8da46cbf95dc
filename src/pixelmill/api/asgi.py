"""The base of the plain ASGI middlewares: they act on HTTP requests only.

A plain ASGI class rather than ``@app.middleware("http")``: it adds no task group
and no body streams to each request.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    """Runs :meth:`handle` for each HTTP request; lifespan and websocket scopes pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
