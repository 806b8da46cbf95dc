"""Scheduling headers, read for every dialect: ``Pixelmill-Priority`` (an integer in the
plan's range), ``Pixelmill-Start-Within`` (seconds: not started by then, the task fails
as ``expired`` and is refunded) and ``Pixelmill-Cancel-After`` (seconds: not finished by
then, it stops at the next step and fails as ``deadline_exceeded``, refunded).

The headers travel to the submit path in a context variable; the engine parses them,
so a malformed value is a 422 in the dialect's own error shape.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from pixelmill.api.asgi import HttpMiddleware
from pixelmill.engine.scheduler import SCHEDULING_HEADERS, request_scheduling


class SchedulingHeadersMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        raw = {name: headers[name] for name in SCHEDULING_HEADERS if name in headers}
        if not raw:
            await self.app(scope, receive, send)
            return
        token = request_scheduling.set(raw)
        try:
            await self.app(scope, receive, send)
        finally:
            request_scheduling.reset(token)
