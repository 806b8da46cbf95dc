"""``X-Request-Id`` on every response and one access-log line per request, as a plain ASGI middleware.

The client's id is kept when it is sane (``[A-Za-z0-9._:-]``, at most 128
characters), else a UUID is made; routes read it from ``request.state.request_id``.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from pixelmill.api.asgi import HttpMiddleware
from pixelmill.ids import new_uuid4

from pixelmill.ops.logs import request_id as request_id_var
from pixelmill.ops.metrics import observe_request

access_log = logging.getLogger("pixelmill.access")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = Headers(scope=scope).get("x-request-id") or ""
        if not _REQUEST_ID_RE.match(rid):
            rid = new_uuid4()
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)  # every log line of this request (worker threads too) names it
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            access_log.exception("%s %s failed request_id=%s", scope["method"], scope["path"], rid)
            request_id_var.reset(token)
            raise
        route = scope.get("route")  # the matched route's template: bounded label values
        observe_request(getattr(route, "path", None) or "unmatched", scope["method"], status, time.perf_counter() - started)
        if access_log.isEnabledFor(logging.INFO) or status >= 500:
            level = logging.WARNING if status >= 500 else logging.INFO
            access_log.log(level, "%s %s %d %.1fms request_id=%s", scope["method"], scope["path"], status,
                           (time.perf_counter() - started) * 1000, rid)
        request_id_var.reset(token)
