"""Estimated start times of queued executions: queue position × the recent average node run time."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.views import ExecutionView
from pixelmill.store.tables import node_runs

RECENT_RUNS = 50


def recent_node_seconds(conn: Connection, limit: int = RECENT_RUNS) -> float | None:
    """Mean run time of the last ``limit`` node runs that finished (cached outputs excluded); None if none."""
    recent = (
        sa.select((node_runs.c.finished_at - node_runs.c.started_at).label("took"))
        .where(
            node_runs.c.status == NodeStatus.SUCCEEDED,
            node_runs.c.started_at.is_not(None),
            node_runs.c.finished_at.is_not(None),
            node_runs.c.cached.is_(False),
        )
        .order_by(node_runs.c.finished_at.desc())
        .limit(limit)
        .subquery()
    )
    mean = conn.execute(sa.select(sa.func.avg(recent.c.took))).scalar()
    return float(mean) if mean is not None else None


def estimate_start_at(conn: Connection, view: ExecutionView, now: float | None = None) -> float | None:
    """When a queued execution should start (UNIX seconds); its start time once running; None when unknown."""
    if view.status == ExecutionStatus.RUNNING:
        return view.started_at
    if view.status != ExecutionStatus.QUEUED or view.queue_position is None:
        return None
    now = time.time() if now is None else now
    if view.queue_position == 0:
        return now
    mean = recent_node_seconds(conn)
    if mean is None:
        return None
    return round(now + view.queue_position * mean, 3)


def attach_estimate(db, view: ExecutionView) -> ExecutionView:
    """Set ``view.estimated_start_at`` (what the presenters render) for an unfinished execution."""
    if not view.status.is_terminal():
        with db.engine.connect() as conn:
            view.estimated_start_at = estimate_start_at(conn, view)  # type: ignore[attr-defined]
    return view
