"""Publisher: puts node tasks on the job queue and makes sure none is lost on the way.

A node run is committed as QUEUED first and published afterwards (a worker
must never receive a run it cannot read yet).  Publishing can fail after that
commit: the broker is briefly unreachable when a worker finishes a node and
publishes the node after it.  The submit path answers 503 and fails the
execution in that case; a worker cannot answer anyone, so the run would stay
QUEUED forever.

So every successful publish stamps ``node_runs.published_at``, and a sweeper
thread (``start``) re-publishes QUEUED runs of active executions whose stamp
is still missing ``republish_after_s`` after they were queued.  Claiming a run
for re-publication moves its ``queued_at`` forward with a compare-and-set, so
several sweepers (every API node and worker runs one) publish it once.  A
duplicate delivery is harmless anyway: ``NodeRunner`` ignores runs that are
no longer QUEUED.

In scale-out (``abandoned_after_s``) the sweep also puts back on the queue the
runs a dead worker left RUNNING: a run still RUNNING that long after it
started (past the node deadline, which stops a live worker's run, plus a
margin) goes back to QUEUED and is published again.  A worker's message is
only a wake-up (the scheduler picks what it runs), so the message the broker
hands out again after the death may start another run and leave the dead
worker's run with no message at all.  The move is a compare-and-set on the
run's status and start time, so it loses to a worker that took the run over
meanwhile, and a run is moved once.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import sqlalchemy as sa

from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.lifecycle import NodeTask
from pixelmill.periodic import Periodic
from pixelmill.store.db import Database
from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import executions, node_runs

log = logging.getLogger("pixelmill.publisher")

_STAMP = prebuilt(
    sa.update(node_runs).where(node_runs.c.id.in_(sa.bindparam("ids", expanding=True))).values(published_at=sa.bindparam("at"))
)


class Publisher:
    """``publisher(task)`` enqueues a task and records that it was published."""

    def __init__(
        self, db: Database, enqueue: Callable[[NodeTask], None], republish_after_s: float = 30.0, abandoned_after_s: float | None = None,
        stamp: bool = True,
    ):
        self.db = db
        self.enqueue = enqueue
        #: record each publish; False for a queue in this process's memory, whose enqueue cannot fail
        #: on the way (its runs are recovered from the database at start, stamped or not)
        self.stamp = stamp
        self.republish_after_s = republish_after_s
        #: scale-out: a run RUNNING this long after its start was left by a dead worker (None: never)
        self.abandoned_after_s = abandoned_after_s
        self._sweeper = Periodic(
            "pixelmill-republish", self.sweep, lambda: max(0.5, self.republish_after_s / 2), what="republish sweep", log=log
        )

    def __call__(self, task: NodeTask) -> None:
        self.publish_many([task])

    def publish_many(self, tasks: list[NodeTask]) -> None:
        """Enqueue ``tasks`` in order, then stamp the ones that went out in one write.

        Raises the broker's error at the first task that could not be enqueued
        (the ones before it are stamped, the rest stay unstamped for the sweeper).
        """
        sent: list[str] = []
        try:
            for task in tasks:
                self.enqueue(task)  # raises when the broker is unreachable; the run stays unstamped
                sent.append(task.node_run_id)
        finally:
            if sent and self.stamp:
                self._stamp(sent)

    def _stamp(self, run_ids: list[str]) -> None:
        try:
            with self.db.transaction() as conn:
                conn.execute(_STAMP, {"ids": run_ids, "at": time.time()})
        except Exception as exc:  # they are on the queue; at worst a sweeper publishes them once more, which is harmless
            log.warning("node runs %s were published but could not be stamped: %s", ", ".join(run_ids), exc)

    def republish(self, older_than_s: float | None = None) -> int:
        """Publish again the QUEUED runs never stamped as published; returns how many went out.

        Stops at the first failure (the broker is still down): the rest waits
        for the next sweep.
        """
        older = self.republish_after_s if older_than_s is None else older_than_s
        cutoff = time.time() - older
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(node_runs.c.id, node_runs.c.execution_id, node_runs.c.queued_at, node_runs.c.queue)
                .join(executions, executions.c.id == node_runs.c.execution_id)
                .where(
                    node_runs.c.status == NodeStatus.QUEUED,
                    node_runs.c.published_at.is_(None),
                    node_runs.c.queued_at <= cutoff,
                    executions.c.status.in_(ExecutionStatus.active()),
                )
                .order_by(node_runs.c.queued_at)
                .limit(500)
            ).all()
        sent = 0
        for row in rows:
            if not self._claim(row.id, row.queued_at):
                continue  # another sweeper took it, or it was published or started meanwhile
            task = NodeTask.of(row)
            try:
                self(task)
            except Exception as exc:
                log.warning("re-publishing node run %s failed (%s); next sweep in %.0f s", row.id, exc, self.republish_after_s)
                break
            log.info("re-published node run %s of execution %s", row.id, row.execution_id)
            sent += 1
        return sent

    def sweep(self) -> int:
        """One sweep: abandoned runs back on the queue, then unpublished runs published; how many went out."""
        return self.requeue_abandoned() + self.republish()

    def requeue_abandoned(self) -> int:
        """Put back on the queue the RUNNING runs of active executions that started more than
        ``abandoned_after_s`` ago (their worker died); returns how many were published."""
        if self.abandoned_after_s is None:
            return 0
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(node_runs.c.id, node_runs.c.execution_id, node_runs.c.queue, node_runs.c.started_at, node_runs.c.worker)
                .join(executions, executions.c.id == node_runs.c.execution_id)
                .where(
                    node_runs.c.status == NodeStatus.RUNNING,
                    node_runs.c.started_at < time.time() - self.abandoned_after_s,
                    executions.c.status.in_(ExecutionStatus.active()),
                )
                .limit(500)
            ).all()
        sent = 0
        for row in rows:
            with self.db.transaction() as conn:
                moved = conn.execute(
                    sa.update(node_runs)
                    .where(node_runs.c.id == row.id, node_runs.c.status == NodeStatus.RUNNING, node_runs.c.started_at == row.started_at)
                    .values(status=NodeStatus.QUEUED, progress=0.0, picked_at=None, published_at=None, queued_at=time.time())
                ).rowcount
            if moved != 1:
                continue  # a worker took it over, or it finished, or another sweeper moved it
            log.warning("node run %s of execution %s was left running by %s; queued again", row.id, row.execution_id, row.worker)
            try:
                self(NodeTask.of(row))
            except Exception as exc:  # queued and unstamped: the republish sweep sends it once the broker is back
                log.warning("publishing node run %s again failed (%s)", row.id, exc)
                break
            sent += 1
        return sent

    def _claim(self, run_id: str, queued_at: float) -> bool:
        with self.db.transaction() as conn:
            result = conn.execute(
                sa.update(node_runs)
                .where(
                    node_runs.c.id == run_id,
                    node_runs.c.status == NodeStatus.QUEUED,
                    node_runs.c.published_at.is_(None),
                    node_runs.c.queued_at == queued_at,
                )
                .values(queued_at=time.time())
            )
            return result.rowcount == 1

    # --- sweeper thread ---------------------------------------------------
    def start(self) -> None:
        """Sweep every half ``republish_after_s`` in a daemon thread (no-op when it is 0)."""
        if self.republish_after_s > 0:
            self._sweeper.start()

    def stop(self) -> None:
        self._sweeper.stop(timeout=10)


def publish_all(enqueue: Callable[[NodeTask], None], tasks: list[NodeTask]) -> None:
    """Enqueue ``tasks`` through ``enqueue``: a :class:`Publisher` stamps them in one write, a bare callable takes them one by one."""
    if isinstance(enqueue, Publisher):
        enqueue.publish_many(tasks)
    else:
        for task in tasks:
            enqueue(task)
