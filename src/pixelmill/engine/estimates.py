"""Estimated start times of queued executions: queue position × the recent average node run time."""

from __future__ import annotations

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
    """When a queued execution should start (UNIX seconds); its start time once running; None when unknown.

    The estimate depends on the queue's state, never on the clock alone, so polling
    the same queue twice gives the same answer: the work now running started at
    ``busy_since`` and should end one mean run time later, then each of the
    ``queue_position`` runs ahead takes one mean run time.  With nothing running,
    the count starts from when the execution was queued.  It moves when the
    queue moves (a run ends early or late, one ahead is cancelled).
    """
    if view.status == ExecutionStatus.RUNNING:
        return view.started_at
    if view.status != ExecutionStatus.QUEUED or view.queue_position is None:
        return None
    busy_since = conn.execute(
        sa.select(sa.func.min(node_runs.c.started_at)).where(node_runs.c.status == NodeStatus.RUNNING)
    ).scalar()
    mean = recent_node_seconds(conn)
    if busy_since is None and view.queue_position == 0:
        return _queued_at(view)
    if mean is None:
        return None
    if busy_since is not None:
        return round(float(busy_since) + (view.queue_position + 1) * mean, 3)
    return round(_queued_at(view) + view.queue_position * mean, 3)


def _queued_at(view: ExecutionView) -> float:
    """When the execution's first still-queued node run was queued (its creation time if unknown)."""
    times = [n.queued_at for n in view.nodes if n.status == NodeStatus.QUEUED and n.queued_at]
    return round(min(times) if times else view.created_at, 3)


def attach_estimate(db, view: ExecutionView) -> ExecutionView:
    """Set ``view.estimated_start_at`` (what the presenters render) for an unfinished execution."""
    if not view.status.is_terminal():
        with db.engine.connect() as conn:
            view.estimated_start_at = estimate_start_at(conn, view)  # type: ignore[attr-defined]
    return view
