"""An account's webhook endpoint, signing secrets and delivery log (what ``/api/v1/webhooks`` shows and changes)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from pixelmill.errors import NotFound
from pixelmill.store.db import Database
from pixelmill.store.tables import accounts, webhook_attempts, webhook_events
from pixelmill.webhooks.dispatcher import account_secrets
from pixelmill.webhooks.signing import new_secret

MAX_SECRETS = 2  # the current one and, during rotation, the previous one


@dataclass(frozen=True)
class AttemptView:
    attempted_at: float
    status_code: int | None
    latency_ms: float | None
    error: str | None


@dataclass
class DeliveryView:
    """One webhook event for one destination and its delivery attempts, oldest first."""

    id: str
    execution_id: str | None
    event_type: str
    url: str
    state: str
    attempts: int
    next_attempt_at: float | None
    created_at: float
    delivered_at: float | None
    payload: str
    tries: list[AttemptView] = field(default_factory=list)


def _delivery(row, tries: list[AttemptView] | None = None) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        execution_id=row.execution_id,
        event_type=row.event_type,
        url=row.url,
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        payload=row.payload,
        tries=tries or [],
    )


class WebhookSettings:
    def __init__(self, db: Database):
        self.db = db

    # --- delivery log ---------------------------------------------------------
    def deliveries(self, account_id: str, execution_id: str | None = None, state: str | None = None, limit: int = 50) -> list[DeliveryView]:
        """The account's deliveries, newest first."""
        sel = sa.select(webhook_events).where(webhook_events.c.account_id == account_id)
        if execution_id:
            sel = sel.where(webhook_events.c.execution_id == execution_id)
        if state:
            sel = sel.where(webhook_events.c.state == state)
        with self.db.read() as conn:
            rows = conn.execute(sel.order_by(webhook_events.c.created_at.desc()).limit(limit)).all()
            tries: dict[str, list[AttemptView]] = {r.id: [] for r in rows}
            if rows:
                for a in conn.execute(
                    sa.select(webhook_attempts).where(webhook_attempts.c.event_id.in_(list(tries))).order_by(webhook_attempts.c.id)
                ):
                    tries[a.event_id].append(AttemptView(a.attempted_at, a.status_code, a.latency_ms, a.error))
        return [_delivery(r, tries[r.id]) for r in rows]

    def redeliver(self, account_id: str, event_id: str) -> DeliveryView:
        """Queue the event again now with a fresh retry schedule; :class:`NotFound` for another account's."""
        with self.db.transaction() as conn:
            found = conn.execute(
                sa.select(webhook_events.c.id).where(webhook_events.c.id == event_id, webhook_events.c.account_id == account_id)
            ).first()
            if found is None:
                raise NotFound("Webhook event not found", code="webhook_event_not_found")
            conn.execute(
                sa.update(webhook_events)
                .where(webhook_events.c.id == event_id)
                .values(state="pending", attempts=0, next_attempt_at=time.time())
            )
            return _delivery(conn.execute(sa.select(webhook_events).where(webhook_events.c.id == event_id)).first())

    # --- endpoint and secrets -------------------------------------------------
    def endpoint(self, account_id: str) -> str | None:
        with self.db.read() as conn:
            return conn.execute(sa.select(accounts.c.webhook_url).where(accounts.c.id == account_id)).scalar()

    def set_endpoint(self, account_id: str, url: str | None) -> None:
        """Set (or clear) the account's endpoint; it gets a signing secret if it has none."""
        with self.db.transaction() as conn:
            conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(webhook_url=url))
            account_secrets(conn, account_id)

    def secret(self, account_id: str) -> str:
        """The current signing secret (made on first use)."""
        with self.db.transaction() as conn:
            return account_secrets(conn, account_id)[0]

    def rotate_secret(self, account_id: str) -> list[str]:
        """A new current secret; the previous one keeps signing until the next rotation.  Newest first."""
        with self.db.transaction() as conn:
            current = account_secrets(conn, account_id, create=False)
            secrets = ([new_secret()] + current)[:MAX_SECRETS]
            conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(webhook_secrets=secrets))
        return secrets
