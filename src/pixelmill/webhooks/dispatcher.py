"""The webhook dispatcher: sends due outbox rows, records every attempt, reschedules failures.

Each pass (:meth:`Dispatcher.run_once`):

1. picks due rows (``state = 'pending' and next_attempt_at <= now``) that are the
   oldest pending row of their (execution, URL): events of one execution reach an
   endpoint in creation order, and event n+1 waits until n is delivered or given up;
2. claims each with a compare-and-set on ``(attempts, next_attempt_at)`` that also
   moves ``next_attempt_at`` a lease into the future, so two processes never send
   the same row at once and a process that dies mid-send leaves the row to be
   retried when the lease ends (at-least-once: receivers dedupe on ``webhook-id``);
3. signs (Standard Webhooks with every account secret, newest first, plus the
   request's BFL ``webhook_secret`` and its ``X-BFL-Signature`` when set), POSTs
   once, records a ``webhook_attempts`` row (status, latency, error);
4. applies the outcome: ``delivered``; ``retry`` on the schedule of
   :func:`~pixelmill.webhooks.schedule.next_attempt_delay` (``Retry-After``
   honoured) until it is exhausted → ``failed``; a policy refusal (internal
   address…) → ``failed`` at once; ``410 Gone`` → the endpoint is disabled: this
   and every pending row of the account for that URL become ``disabled``, and the
   URL is cleared from the account and from its unfinished executions, so nothing
   more is queued for it (a workflow that names the URL queues again for its next
   execution, until that endpoint answers 410 again).

All state lives in the database; :meth:`start` runs passes in a thread.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy as sa

from pixelmill.domain.status import ExecutionStatus
from pixelmill.net.safe_http import SafeHttpClient
from pixelmill.store.db import Database
from pixelmill.store.tables import accounts, executions, webhook_attempts, webhook_events
from pixelmill.ops.metrics import observe_webhook
from pixelmill.webhooks.schedule import next_attempt_delay
from pixelmill.webhooks.sender import DEFAULT_TIMEOUT_S, DeliveryAttempt, deliver
from pixelmill.webhooks.signing import BFL_SECRET_HEADER, BFL_SIGNATURE_HEADER, bfl_signature, new_secret, sign_headers

log = logging.getLogger("pixelmill.webhooks")



def account_secrets(conn, account_id: str, create: bool = True) -> list[str]:
    """The account's signing secrets, newest first; one is made when it has none and ``create``."""
    secrets = conn.execute(sa.select(accounts.c.webhook_secrets).where(accounts.c.id == account_id)).scalar()
    secrets = list(secrets or [])
    if not secrets and create:
        secrets = [new_secret()]
        conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(webhook_secrets=secrets))
    return secrets


def disable_endpoint(conn, account_id: str, url: str) -> int:
    """Stop sending to ``url`` for the account: pending rows → disabled, the URL cleared where it is set."""
    n = conn.execute(
        sa.update(webhook_events)
        .where(webhook_events.c.account_id == account_id, webhook_events.c.url == url, webhook_events.c.state == "pending")
        .values(state="disabled")
    ).rowcount
    conn.execute(sa.update(accounts).where(accounts.c.id == account_id, accounts.c.webhook_url == url).values(webhook_url=None))
    conn.execute(
        sa.update(executions)
        .where(executions.c.account_id == account_id, executions.c.webhook_url == url, executions.c.status.in_(ExecutionStatus.active()))
        .values(webhook_url=None)
    )
    return n


@dataclass(frozen=True)
class _Claimed:
    id: str
    account_id: str
    url: str
    payload: str
    bfl_secret: str | None
    attempts: int


class Dispatcher:
    """Delivers the webhook outbox.  ``clock`` and ``rng`` are injectable so retry tests need not wait."""

    def __init__(
        self,
        db: Database,
        client: SafeHttpClient,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        batch_size: int = 50,
        concurrency: int = 4,
        poll_interval_s: float = 0.25,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retention_s: float | None = 30 * 86400,
        purge_every_s: float = 3600.0,
    ):
        self.db = db
        self.retention_s = retention_s
        self.purge_every_s = purge_every_s
        self._purged_at = 0.0
        self.client = client
        self.clock = clock
        self.rng = rng or random.Random()
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.lease_s = timeout_s + 30.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    # --- one pass ----------------------------------------------------------
    def due(self, now: float) -> list:
        """Due rows that are the oldest pending row of their (execution, URL)."""
        e = webhook_events.alias("e")
        p = webhook_events.alias("p")
        earlier = (
            sa.select(sa.literal(1))
            .select_from(p)
            .where(
                p.c.execution_id == e.c.execution_id,
                p.c.url == e.c.url,
                p.c.state == "pending",
                sa.or_(p.c.created_at < e.c.created_at, sa.and_(p.c.created_at == e.c.created_at, p.c.id < e.c.id)),
            )
        )
        q = (
            sa.select(e)
            .where(e.c.state == "pending", e.c.next_attempt_at <= now, ~sa.exists(earlier))
            .order_by(e.c.next_attempt_at, e.c.created_at)
            .limit(self.batch_size)
        )
        with self.db.read() as conn:
            return conn.execute(q).all()

    def claim(self, row, now: float) -> _Claimed | None:
        """Take the row for one attempt (compare-and-set); None when another process took it."""
        with self.db.transaction() as conn:
            n = conn.execute(
                sa.update(webhook_events)
                .where(
                    webhook_events.c.id == row.id,
                    webhook_events.c.state == "pending",
                    webhook_events.c.attempts == row.attempts,
                    webhook_events.c.next_attempt_at == row.next_attempt_at,
                )
                .values(next_attempt_at=now + self.lease_s)
            ).rowcount
        if n != 1:
            return None
        return _Claimed(row.id, row.account_id, row.url, row.payload, row.bfl_secret, row.attempts)

    def run_once(self) -> int:
        """One pass: send every due row once.  Returns the number of attempts made."""
        now = self.clock()
        claimed = [c for c in (self.claim(r, now) for r in self.due(now)) if c is not None]
        if not claimed:
            return 0
        if len(claimed) == 1 or self.concurrency <= 1:
            for c in claimed:
                self._attempt(c)
        else:
            pool = self._pool or ThreadPoolExecutor(self.concurrency, thread_name_prefix="pixelmill-webhook")
            self._pool = pool
            for f in [pool.submit(self._attempt, c) for c in claimed]:
                f.result()
        return len(claimed)

    def _attempt(self, c: _Claimed) -> None:
        try:
            with self.db.read() as conn:
                secrets = account_secrets(conn, c.account_id, create=False)
            if not secrets:
                with self.db.transaction() as conn:
                    secrets = account_secrets(conn, c.account_id)
            body = c.payload.encode("utf-8")
            signing = list(secrets) + ([c.bfl_secret] if c.bfl_secret else [])
            headers = sign_headers(c.id, body, signing)
            if c.bfl_secret:
                headers[BFL_SIGNATURE_HEADER] = bfl_signature(c.bfl_secret, body)
                headers[BFL_SECRET_HEADER] = c.bfl_secret  # the official SDK's form: the secret itself
            attempt = deliver(self.client, c.url, body, headers, timeout=self.timeout_s)
        except Exception as exc:  # never lose the row to a bug: record and retry on the schedule
            log.exception("webhook %s could not be sent", c.id)
            attempt = DeliveryAttempt(None, 0.0, "internal_error", "retry", error_message=f"{type(exc).__name__}: {exc}")
        self._record(c, attempt)

    def _record(self, c: _Claimed, attempt: DeliveryAttempt) -> None:
        now = self.clock()
        made = c.attempts + 1
        values: dict = {"attempts": made}
        if attempt.outcome == "delivered":
            values.update(state="delivered", delivered_at=now, next_attempt_at=None)
        elif attempt.outcome == "retry":
            delay = next_attempt_delay(made, attempt.retry_after, self.rng, now=datetime.fromtimestamp(now, timezone.utc))
            if delay is None:
                values.update(state="failed", next_attempt_at=None)
            else:
                values.update(next_attempt_at=now + delay)
        elif attempt.outcome == "disable":
            values.update(state="disabled", next_attempt_at=None)
        else:  # give_up
            values.update(state="failed", next_attempt_at=None)
        error = attempt.error
        if attempt.error_message:
            error = f"{attempt.error}: {attempt.error_message}"
        with self.db.transaction() as conn:
            conn.execute(
                sa.insert(webhook_attempts).values(
                    event_id=c.id, attempted_at=now, status_code=attempt.status_code,
                    latency_ms=round(attempt.latency_ms, 2), error=error,
                )
            )
            conn.execute(
                sa.update(webhook_events)
                .where(webhook_events.c.id == c.id, webhook_events.c.attempts == c.attempts)
                .values(**values)
            )
            if attempt.outcome == "disable":
                disable_endpoint(conn, c.account_id, c.url)
        observe_webhook(attempt.outcome)
        if attempt.outcome != "delivered":
            log.info("webhook %s to %s: %s (%s)", c.id, c.url, attempt.outcome, error or attempt.status_code)

    # --- background thread ---------------------------------------------------
    def purge(self, now: float | None = None) -> int:
        """Delete finished events (delivered, failed, disabled) older than the retention, with their attempts.

        Pending events are never purged, however old.  Returns how many events were deleted.
        """
        if self.retention_s is None:
            return 0
        cutoff = (self.clock() if now is None else now) - self.retention_s
        old = (
            sa.select(webhook_events.c.id)
            .where(webhook_events.c.state != "pending", webhook_events.c.created_at < cutoff)
            .limit(1000)
        )
        deleted = 0
        while True:
            with self.db.transaction() as conn:
                ids = list(conn.execute(old).scalars())
                if not ids:
                    return deleted
                conn.execute(sa.delete(webhook_attempts).where(webhook_attempts.c.event_id.in_(ids)))
                conn.execute(sa.delete(webhook_events).where(webhook_events.c.id.in_(ids)))
                deleted += len(ids)

    def _maybe_purge(self) -> None:
        now = self.clock()
        if now - self._purged_at >= self.purge_every_s:
            self._purged_at = now
            n = self.purge(now)
            if n:
                log.info("purged %d webhook events older than the retention", n)

    def wake(self) -> None:
        """Ask the thread for a pass now (e.g. after a commit that queued rows)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pixelmill-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                self._maybe_purge()
            except Exception:
                log.exception("webhook dispatcher pass failed")
                busy = 0
            if not busy:
                self._wake.wait(self.poll_interval_s)
                self._wake.clear()


def payload_json(text: str) -> dict:
    """A stored payload as an object (delivery logs show it)."""
    try:
        return json.loads(text)
    except ValueError:
        return {}
