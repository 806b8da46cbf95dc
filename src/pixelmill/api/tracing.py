"""A span per HTTP request (installed only when tracing is on; see :mod:`pixelmill.ops.tracing`).

Named ``METHOD /route/{template}`` with the route template, the response status
and the request id as attributes.  A ``traceparent`` header from the client makes
it a child of the client's span.  It is the current span while the route runs
(worker threads included), so executions the request creates carry its context.
"""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelmill.api.asgi import HttpMiddleware
from pixelmill.ops.tracing import Tracing


class TracingMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        super().__init__(app)
        self.tracer = tracing.tracer

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        parent = propagate.extract(Headers(scope=scope))
        attributes = {"http.request.method": method, "url.path": scope["path"], "url.scheme": scope.get("scheme", "http")}
        request_id = scope.get("state", {}).get("request_id")
        if request_id:
            attributes["pixelmill.request_id"] = request_id
        span = self.tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with trace.use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
            try:
                await self.app(scope, receive, send_with_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
