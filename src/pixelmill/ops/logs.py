"""Logs: one JSON object per line (for collectors), or plain text when writing to a terminal.

Every line carries the request id of the HTTP request being served
(:data:`request_id`, set by the request-id middleware and carried into worker
threads), and the account, execution and node ids a record names in ``extra``.
:class:`StateChangeLog` is a lifecycle hook that writes one line per state change.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

from pixelmill.engine.hooks import Hooks, LifecycleEvent

request_id: ContextVar[str | None] = ContextVar("pixelmill_request_id", default=None)
_FIELDS = ("account_id", "execution_id", "node_id", "event")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            out["request_id"] = rid
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: int = logging.INFO, json_lines: bool | None = None, stream=None) -> None:
    """Root logging for a server process: JSON lines unless ``stream`` (stderr) is a terminal."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not (hasattr(stream, "isatty") and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class StateChangeLog(Hooks):
    """One log line per execution and node state change (progress events excepted), after it committed."""

    log = logging.getLogger("pixelmill.events")

    def after_commit(self, event: LifecycleEvent) -> None:
        if event.type in ("execution.progress", "node.preview"):
            return
        extra = {"execution_id": event.execution_id, "event": event.type}
        if "node" in event.data:
            extra["node_id"] = event.data["node"]
        if event.data.get("error"):
            self.log.info("%s %s: %s", event.type, event.execution_id, event.data["error"], extra=extra)
        else:
            self.log.info("%s %s", event.type, event.execution_id, extra=extra)
