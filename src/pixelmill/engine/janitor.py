"""Retention: nothing is kept forever.

:class:`Janitor` deletes, in small batches, per kind of data:

* **result files** once their execution has expired (``expires_at``: the server's
  ``result_ttl_s``, or less where the client asked for less) or the file's own
  expiry (``file_retention_s``) passed — the stored object, then its row;
* **finished executions** with their node runs, events, files and webhook
  outbox rows, ``retention_executions_s`` after they expired;
* **progress and preview events** of finished executions after ``retention_events_s``
  (the terminal events stay with the execution);
* expired **idempotency records** and finished **webhook events** (their own stores'
  purges, on the same schedule).

The credit ledger is never deleted: it is the account's record, and the stored
balance reconciles to it.  ``delete_outputs`` removes one execution's result files
now (``DELETE /api/v1/executions/{id}/outputs``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import sqlalchemy as sa

from pixelmill.domain.status import ExecutionStatus
from pixelmill.errors import Conflict, NotFound
from pixelmill.periodic import Periodic
from pixelmill.store.db import Database
from pixelmill.store.tables import execution_events, executions, files, node_runs, webhook_attempts, webhook_events

log = logging.getLogger("pixelmill.janitor")

TERMINAL = [s.value for s in ExecutionStatus if s.is_terminal()]
KEPT_EVENTS = ("execution.created", "execution.started", "execution.succeeded", "execution.failed", "execution.cancelled")


@dataclass
class Swept:
    files: int = 0
    executions: int = 0
    events: int = 0
    idempotency: int = 0
    webhooks: int = 0

    def total(self) -> int:
        return self.files + self.executions + self.events + self.idempotency + self.webhooks


class Janitor:
    def __init__(
        self, db: Database, storage, *, executions_s: float, events_s: float, interval_s: float = 300.0,
        batch: int = 500, idempotency=None, dispatcher=None, clock=time.time,
    ):
        self.db = db
        self.storage = storage
        self.executions_s = executions_s
        self.events_s = events_s
        self.interval_s = interval_s
        self.batch = batch
        self.idempotency = idempotency
        self.dispatcher = dispatcher
        self.clock = clock
        self._sweeper = Periodic("pixelmill-janitor", self._sweep_backlog, lambda: self.interval_s, what="retention sweep", log=log)

    # --- one pass ---------------------------------------------------------------
    def sweep(self) -> Swept:
        now = self.clock()
        out = Swept()
        out.files = self._expired_files(now)
        out.executions = self._old_executions(now)
        out.events = self._old_events(now)
        if self.idempotency is not None:
            out.idempotency = int(self.idempotency.purge_expired() or 0)
        if self.dispatcher is not None:
            out.webhooks = int(self.dispatcher.purge() or 0)
        if out.total():
            log.info("retention: deleted %s", out)
        return out

    def _delete_file_rows(self, rows) -> int:
        for r in rows:
            try:
                self.storage.delete(r.storage_key)
            except FileNotFoundError:
                pass
        ids = [r.id for r in rows]
        if ids:
            with self.db.transaction() as conn:
                conn.execute(sa.delete(files).where(files.c.id.in_(ids)))
        return len(ids)

    def _expired_files(self, now: float) -> int:
        expired_execution = sa.select(executions.c.id).where(
            executions.c.id == files.c.execution_id, executions.c.expires_at < now, executions.c.status.in_(TERMINAL)
        )
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(files.c.id, files.c.storage_key)
                .where(sa.or_(files.c.expires_at < now, sa.exists(expired_execution)))
                .limit(self.batch)
            ).all()
        return self._delete_file_rows(rows)

    def _old_executions(self, now: float) -> int:
        with self.db.engine.connect() as conn:
            ids = conn.execute(
                sa.select(executions.c.id)
                .where(executions.c.status.in_(TERMINAL), executions.c.expires_at < now - self.executions_s)
                .limit(self.batch)
            ).scalars().all()
            rows = conn.execute(sa.select(files.c.id, files.c.storage_key).where(files.c.execution_id.in_(ids))).all() if ids else []
        if not ids:
            return 0
        self._delete_file_rows(rows)
        with self.db.transaction() as conn:
            hooks = sa.select(webhook_events.c.id).where(webhook_events.c.execution_id.in_(ids), webhook_events.c.state != "pending")
            conn.execute(sa.delete(webhook_attempts).where(webhook_attempts.c.event_id.in_(hooks)))
            conn.execute(sa.delete(webhook_events).where(webhook_events.c.execution_id.in_(ids), webhook_events.c.state != "pending"))
            conn.execute(sa.delete(execution_events).where(execution_events.c.execution_id.in_(ids)))
            conn.execute(sa.delete(node_runs).where(node_runs.c.execution_id.in_(ids)))
            pending = sa.select(webhook_events.c.execution_id).where(webhook_events.c.execution_id.in_(ids))
            n = conn.execute(sa.delete(executions).where(executions.c.id.in_(ids), executions.c.id.not_in(pending))).rowcount
        return int(n or 0)

    def _old_events(self, now: float) -> int:
        finished = sa.select(executions.c.id).where(
            executions.c.id == execution_events.c.execution_id, executions.c.status.in_(TERMINAL)
        )
        with self.db.engine.connect() as conn:
            seqs = conn.execute(
                sa.select(execution_events.c.seq)
                .where(execution_events.c.created_at < now - self.events_s, execution_events.c.event.not_in(KEPT_EVENTS), sa.exists(finished))
                .limit(self.batch * 10)
            ).scalars().all()
        if not seqs:
            return 0
        with self.db.transaction() as conn:
            return int(conn.execute(sa.delete(execution_events).where(execution_events.c.seq.in_(seqs))).rowcount or 0)

    # --- now, for one execution --------------------------------------------------
    def delete_outputs(self, account_id: str, execution_id: str) -> int:
        """Delete one finished execution's files now (results and previews); how many were deleted."""
        with self.db.engine.connect() as conn:
            status = conn.execute(
                sa.select(executions.c.status).where(executions.c.id == execution_id, executions.c.account_id == account_id)
            ).scalar()
            if status is None:
                raise NotFound("Execution not found", code="execution_not_found")
            if status not in TERMINAL:
                raise Conflict("The execution is still running; cancel it or wait until it finishes", code="execution_active")
            rows = conn.execute(sa.select(files.c.id, files.c.storage_key).where(files.c.execution_id == execution_id)).all()
        return self._delete_file_rows(rows)

    # --- background ---------------------------------------------------------------
    def start(self) -> None:
        if self.interval_s > 0:
            self._sweeper.start()

    def stop(self) -> None:
        self._sweeper.stop(timeout=10)

    def _sweep_backlog(self) -> None:
        while self.sweep().total() >= self.batch and not self._sweeper.stopping.is_set():
            pass  # a backlog: keep going in batches
