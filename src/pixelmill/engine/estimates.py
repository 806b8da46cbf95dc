"""Estimated start times of queued executions: queue position × the recent average node run time."""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.views import ExecutionView
from pixelmill.store.prebuilt import prebuilt
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


#: when the work running now started (built once: it is read on every view of a queued execution)
BUSY_SINCE = prebuilt(sa.select(sa.func.min(node_runs.c.started_at)).where(node_runs.c.status == NodeStatus.RUNNING))


def estimate_start_at(
    conn: Connection, view: ExecutionView, now: float | None = None, mean_s: Callable[[], float | None] | None = None
) -> float | None:
    """When a queued execution should start (UNIX seconds); its start time once running; None when unknown.

    The estimate depends on the queue's state, never on the clock alone, so polling
    the same queue twice gives the same answer: the work now running started at
    ``busy_since`` and should end one mean run time later, then each of the
    ``queue_position`` runs ahead takes one mean run time.  With nothing running,
    the count starts from when the execution was queued.  It moves when the
    queue moves (a run ends early or late, one ahead is cancelled).  ``mean_s``
    gives the mean run time (the engine passes its in-memory :class:`RunTimes`);
    without it the store's recent runs are averaged.
    """
    if view.status == ExecutionStatus.RUNNING:
        return view.started_at
    if view.status != ExecutionStatus.QUEUED or view.queue_position is None:
        return None
    mean = mean_s() if mean_s is not None else recent_node_seconds(conn)
    if mean is None and view.queue_position != 0:
        return None  # nothing to count the runs ahead with, whatever runs now
    busy_since = conn.execute(BUSY_SINCE).scalar()
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


class RunTimes:
    """How long node runs take: a moving average per queue (one queue per model), kept in memory.

    Fed by ``node.completed`` notices (which carry ``queue`` and ``seconds``; in
    scale-out they arrive from the workers through the notifier), seeded once from
    the store's last ``window`` runs, so an estimate costs no query.
    """

    def __init__(self, db=None, window: int = RECENT_RUNS):
        self.db = db
        self.window = window
        self._lock = threading.Lock()
        self._by_queue: dict[str, deque[float]] = {}
        self._all: deque[float] = deque(maxlen=window)
        self._seeded = db is None

    def record(self, queue: str, seconds: float) -> None:
        if seconds < 0:
            return
        with self._lock:
            self._by_queue.setdefault(queue, deque(maxlen=self.window)).append(seconds)
            self._all.append(seconds)

    def mean(self, queue: str | None = None) -> float | None:
        """Mean seconds of the queue's recent runs (all queues' when it has none); None when nothing ran yet."""
        if not self._seeded:
            self._seed()
        with self._lock:
            samples = self._by_queue.get(queue or "") or self._all
            return sum(samples) / len(samples) if samples else None

    def _seed(self) -> None:
        self._seeded = True
        try:
            with self.db.read() as conn:
                rows = conn.execute(
                    sa.select(node_runs.c.queue, (node_runs.c.finished_at - node_runs.c.started_at).label("took"))
                    .where(
                        node_runs.c.status == NodeStatus.SUCCEEDED,
                        node_runs.c.finished_at.is_not(None),
                        node_runs.c.started_at.is_not(None),
                        node_runs.c.cached.is_(False),
                    )
                    .order_by(node_runs.c.status, node_runs.c.finished_at.desc())
                    .limit(self.window)
                ).all()
        except Exception:  # no estimates yet is better than a failed read
            return
        for r in reversed(rows):
            self.record(r.queue or "default", float(r.took))
