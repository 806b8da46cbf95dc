"""The webhook outbox: execution events become ``webhook_events`` rows in the same transaction.

:class:`Outbox` is a lifecycle hook (:class:`~pixelmill.engine.hooks.Hooks`). The
lifecycle calls its ``on_event`` with the connection of the state change, so a row exists if
and only if the change committed; the dispatcher sends rows later, from the
database, so a restart loses nothing.

Who receives what:

* the execution's own ``webhook_url`` (per request) and, when set and different,
  the account's ``webhook_url`` each get one row per event (one ``webhook-id``
  per destination);
* ``executions.webhook_events`` filters which events are sent (``None`` = all,
  except for BFL requests, which get only the final result, as BFL sends it).
  Filter entries: full types (``execution.started``, ``execution.progress``,
  ``node.completed``, ``execution.completed``, ``execution.failed``,
  ``execution.cancelled``) or short names: ``start``/``started``,
  ``progress``/``logs``, ``output``/``node``, ``completed`` (every terminal
  event, as Replicate's ``completed``), ``succeeded``, ``failed``,
  ``cancelled``/``canceled``.

Bodies:

* BFL requests: BFL's ``get_result`` shape (``presenters.bfl.render_result``);
* everything else: ``{"type", "timestamp", "data": <workflow execution>}``
  (``presenters.workflow.render_execution``); node events add ``"nodeId"``.

Result URLs in bodies are signed against ``settings.resolved_base_url()``
(``public_base_url``; set it on any server whose webhooks leave the machine),
valid for ``settings.webhook_file_url_ttl_s`` so a delivery retried later still
carries a working link.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.engine.hooks import Hooks, LifecycleEvent
from pixelmill.engine.views import ExecutionView, FileView, load_execution
from pixelmill.files.signing import UrlSigner
from pixelmill.ids import new_id
from pixelmill.presenters.bfl import render_result
from pixelmill.presenters.timestamps import iso_utc
from pixelmill.presenters.workflow import render_execution
from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import accounts, executions, webhook_events

WEBHOOK_TYPES: dict[str, str] = {
    "execution.started": "execution.started",
    "execution.progress": "execution.progress",
    "node.completed": "node.completed",
    "execution.succeeded": "execution.completed",
    "execution.failed": "execution.failed",
    "execution.cancelled": "execution.cancelled",
}
"""Lifecycle event → webhook event type.  Other lifecycle events are not sent."""

TERMINAL_TYPES = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})

FILTER_ALIASES: dict[str, frozenset[str]] = {
    "start": frozenset({"execution.started"}),
    "started": frozenset({"execution.started"}),
    "progress": frozenset({"execution.progress"}),
    "logs": frozenset({"execution.progress"}),
    "output": frozenset({"node.completed"}),
    "node": frozenset({"node.completed"}),
    "completed": TERMINAL_TYPES,
    "succeeded": frozenset({"execution.completed"}),
    "failed": frozenset({"execution.failed"}),
    "cancelled": frozenset({"execution.cancelled"}),
    "canceled": frozenset({"execution.cancelled"}),
    **{t: frozenset({t}) for t in WEBHOOK_TYPES.values()},
}


def wanted_types(filter_: Iterable[str] | None, dialect: str) -> frozenset[str]:
    """The webhook types a filter selects (``None``: all; BFL: the final result only)."""
    if filter_ is None:
        return TERMINAL_TYPES if dialect == "bfl" else frozenset(WEBHOOK_TYPES.values())
    if isinstance(filter_, str):
        filter_ = filter_.split(",")
    out: set[str] = set()
    for name in filter_:
        out |= FILTER_ALIASES.get(str(name).strip().lower(), frozenset())
    return frozenset(out)


#: an execution's webhook targets (built once: it is read for every state change)
_TARGETS = prebuilt(
    sa.select(
        executions.c.account_id,
        executions.c.dialect,
        executions.c.webhook_url,
        executions.c.webhook_secret,
        executions.c.webhook_events,
        accounts.c.webhook_url.label("account_webhook_url"),
    )
    .join(accounts, accounts.c.id == executions.c.account_id)
    .where(executions.c.id == sa.bindparam("execution_id"))
)
_INSERT = prebuilt(sa.insert(webhook_events))
#: where a connection keeps the targets it read (see :meth:`Outbox.on_event`)
_TARGETS_READ = "_pixelmill_webhook_targets"
_UNREAD = object()


class Outbox(Hooks):
    """Queues webhook deliveries for execution events, inside the event's transaction."""

    def __init__(self, signer: UrlSigner, base_url: str, file_url_ttl_s: int = 24 * 3600):
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        self.file_url_ttl_s = file_url_ttl_s
        self._lock = threading.Lock()
        self._last_ts = 0.0

    def url_for(self, f: FileView) -> str:
        return self.signer.url(self.base_url, f.id, f.filename, ttl_s=self.file_url_ttl_s)

    def _timestamp(self) -> float:
        """Strictly increasing within the process, so rows of one execution keep their order."""
        with self._lock:
            self._last_ts = max(time.time(), self._last_ts + 1e-6)
            return self._last_ts

    def on_event(self, conn: Connection, event: LifecycleEvent) -> None:
        execution_id, data = event.execution_id, event.data
        wtype = WEBHOOK_TYPES.get(event.type)
        if wtype is None:
            return
        # read once per transaction: a claim or completion writes several events of one execution
        tx = conn.get_transaction()
        kept = conn.__dict__.get(_TARGETS_READ)
        if kept is None or kept[0] is not tx:
            kept = conn.__dict__[_TARGETS_READ] = (tx, {})
        seen = kept[1]
        row = seen.get(execution_id, _UNREAD)
        if row is _UNREAD:
            row = seen[execution_id] = conn.execute(_TARGETS, {"execution_id": execution_id}).first()
        if row is None:
            return
        targets: list[tuple[str, str | None]] = []
        if row.webhook_url:
            targets.append((row.webhook_url, row.webhook_secret))
        if row.account_webhook_url and row.account_webhook_url != row.webhook_url:
            targets.append((row.account_webhook_url, None))
        if not targets or wtype not in wanted_types(row.webhook_events, row.dialect):
            return
        view = load_execution(conn, execution_id)
        if view is None:
            return
        now = self._timestamp()
        payload = json.dumps(self.payload(view, wtype, data, now), separators=(",", ":"), default=str)
        for url, bfl_secret in targets:
            conn.execute(
                _INSERT,
                dict(
                    id=new_id(),
                    account_id=row.account_id,
                    execution_id=execution_id,
                    event_type=wtype,
                    url=url,
                    payload=payload,
                    bfl_secret=bfl_secret if row.dialect == "bfl" else None,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )

    def payload(self, view: ExecutionView, wtype: str, data: dict[str, Any], now: float) -> dict[str, Any]:
        """The body for one event: BFL's get_result, or a typed envelope around the execution."""
        if view.dialect == "bfl":
            return render_result(view, self.url_for)
        body: dict[str, Any] = {"type": wtype, "timestamp": iso_utc(now)}
        if wtype == "node.completed" and data.get("node"):
            body["nodeId"] = data["node"]
        if view.dialect == "apiframe":
            from pixelmill.presenters.apiframe import render_job

            body["data"] = render_job(view, self.url_for)  # the GET /v2/jobs/{id} shape
        else:
            body["data"] = render_execution(view, self.url_for)
        return body
