"""Readiness: whether this process should get traffic, and if not, what is missing.

``/healthz`` says the process is alive (it answers without touching anything);
``/readyz`` says it is ready: the database is reachable and at this version's
schema, the broker is reachable (scale-out), and the default models are loaded
(processes that run nodes).  The body names every check, so an operator sees
what is not ready.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa


class Readiness:
    def __init__(self, runtime, runs_nodes: bool, cache_s: float = 1.0):
        self.runtime = runtime
        self.runs_nodes = runs_nodes
        self.cache_s = cache_s
        self._schema_ok = False
        self._last: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _database(self) -> dict[str, Any]:
        try:
            with self.runtime.db.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as e:
            return {"ok": False, "detail": f"unreachable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        if not self._schema_ok:
            from pixelmill.store import migrate

            problem = migrate.schema_problem(self.runtime.db.url)
            if problem is not None:
                return {"ok": False, "detail": problem}
            self._schema_ok = True  # the schema only moves forward under a running process by `pixelmill migrate`
        return {"ok": True}

    def _broker(self) -> dict[str, Any] | None:
        if self.runtime.settings.queue != "celery":
            return None
        try:
            app = self.runtime.queue.app
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as e:
            return {"ok": False, "detail": f"unreachable: {type(e).__name__}: {e}"}
        return {"ok": True}

    def _models(self) -> dict[str, Any] | None:
        if not self.runs_nodes:
            return None
        warm = getattr(self.runtime, "warm", None)
        if warm is None:
            return {"ok": True, "detail": "models load on first use (warm start is off)"}
        status = warm.status()
        out: dict[str, Any] = {"ok": status.ready, **status.to_dict()}
        if status.failed:
            out["detail"] = "could not load: " + ", ".join(status.failed)
        elif not status.ready:
            out["detail"] = "loading default models"
        return out

    def report(self) -> dict[str, Any]:
        checks = {"database": self._database()}
        for name, check in (("broker", self._broker()), ("models", self._models())):
            if check is not None:
                checks[name] = check
        not_ready = [n for n, c in checks.items() if not c["ok"]]
        body = {"status": "ready" if not not_ready else "not_ready", "ready": not not_ready, "not_ready": not_ready, "checks": checks}
        with self._lock:
            self._last = (time.monotonic(), body)
        return body

    def cached_ready(self) -> bool:
        with self._lock:
            last = self._last
        if last is None or time.monotonic() - last[0] > self.cache_s:
            return self.report()["ready"]
        return last[1]["ready"]
