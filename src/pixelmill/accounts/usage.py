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
    spent = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(executions.c.cost_actual_micro), 0)).where(*where)).scalar_one()
    held = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(executions.c.cost_estimate_micro), 0))
        .where(*where, executions.c.status.in_(ExecutionStatus.active()))
    ).scalar_one()
    return {
        "account_id": account_id,
        "plan": plan,
        "credits": ledger.balance(conn, account_id),
        "since": since,
        "as_of": time.time(),
        "executions": {"total": sum(by_status.values()), "by_status": by_status},
        "credits_spent": ledger.from_micro(int(spent)),
        "credits_held": ledger.from_micro(int(held)),
        "ledger": ledger.entries(conn, account_id, limit=entries) if entries else [],
    }


def usage_by_day(conn: Connection, account_id: str, days: int = 30, now: float | None = None) -> list[dict[str, Any]]:
    """Credits charged per UTC day and per model (node type for nodes other than text_to_image)
    over the last ``days`` days, from the finished node runs of the account.

    ``[{"day": "2026-01-31", "credits": 1.5, "byModel": {"pixelmill-tiny": 1.0, "upscale": 0.5}}, …]``,
    oldest first, one entry per day (empty days included).
    """
    from pixelmill.store.tables import node_runs

    now = time.time() if now is None else now
    start_day = int(now // 86400) - (days - 1)
    rows = conn.execute(
        sa.select(node_runs.c.finished_at, node_runs.c.node_type, node_runs.c.params, node_runs.c.cost_micro)
        .join(executions, executions.c.id == node_runs.c.execution_id)
        .where(
            executions.c.account_id == account_id,
            node_runs.c.status == "succeeded",
            node_runs.c.cached.is_(False),
            node_runs.c.finished_at >= start_day * 86400,
        )
    )
    totals: dict[int, dict[str, int]] = {d: {} for d in range(start_day, start_day + days)}  # micro-credits
    for finished_at, node_type, params, cost in rows:
        day = int(finished_at // 86400)
        if day not in totals or not cost:
            continue
        # a generating node is counted under its catalog model; other nodes under their type
        # (remove_background's own "model" parameter names a cut-out method, not a catalog model)
        name = params.get("model") if node_type == "text_to_image" and isinstance(params, dict) else None
        key = str(name or node_type)
        totals[day][key] = totals[day].get(key, 0) + int(cost)
    out = []
    for day, by_model in totals.items():
        out.append(
            {
                "day": time.strftime("%Y-%m-%d", time.gmtime(day * 86400)),
                "credits": ledger.from_micro(sum(by_model.values())),
                "byModel": {k: ledger.from_micro(v) for k, v in sorted(by_model.items())},
            }
        )
    return out
