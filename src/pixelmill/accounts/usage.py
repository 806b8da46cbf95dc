"""What an account has used: executions by status, credits spent and held, ledger entries."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.accounts import ledger
from pixelmill.domain.status import ExecutionStatus
from pixelmill.store.tables import accounts, executions


def account_usage(conn: Connection, account_id: str, since: float | None = None, entries: int = 50) -> dict[str, Any] | None:
    """Usage of one account (``None`` if it does not exist).

    ``credits_spent`` sums the settled cost of finished executions; ``credits_held``
    the estimates still held by queued and running ones; ``since`` (UNIX seconds)
    restricts both and the execution counts to executions created from then on.
    ``ledger`` holds the newest ``entries`` ledger entries.
    """
    plan = conn.execute(sa.select(accounts.c.plan).where(accounts.c.id == account_id)).scalar()
    if plan is None:
        return None
    where = [executions.c.account_id == account_id]
    if since is not None:
        where.append(executions.c.created_at >= since)
    by_status = {
        status: int(n)
        for status, n in conn.execute(sa.select(executions.c.status, sa.func.count()).where(*where).group_by(executions.c.status))
    }
    spent = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(executions.c.cost_actual), 0.0)).where(*where)).scalar_one()
    held = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(executions.c.cost_estimate), 0.0)).where(*where, executions.c.status.in_(ExecutionStatus.active()))
    ).scalar_one()
    return {
        "account_id": account_id,
        "plan": plan,
        "credits": ledger.balance(conn, account_id),
        "since": since,
        "as_of": time.time(),
        "executions": {"total": sum(by_status.values()), "by_status": by_status},
        "credits_spent": round(float(spent), 4),
        "credits_held": round(float(held), 4),
        "ledger": ledger.entries(conn, account_id, limit=entries) if entries else [],
    }
