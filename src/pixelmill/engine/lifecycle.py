"""State changes of executions and node runs, each inside the caller's transaction.

The runner and the cancel path share these, so an execution finishes, fails or
is cancelled in exactly one way: node rows, execution row, ledger settlement
and events are written together.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.accounts import ledger
from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.hooks import Hooks, LifecycleEvent, run_after_commit, wants_after_commit
from pixelmill.store.db import after_commit
from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import execution_events, executions, node_runs


# Statements built once, and run through their compiled form (:mod:`pixelmill.store.prebuilt`).
# Parameters named ``b_…`` are the WHERE clause's; the others set the columns of the same name.
_update_run = sa.update(node_runs).where(node_runs.c.id == sa.bindparam("b_id"))
INSERT_EVENT = prebuilt(sa.insert(execution_events))
UPDATE_RUN = prebuilt(_update_run)
CLAIM_RUN = prebuilt(_update_run.where(node_runs.c.status == sa.bindparam("b_status"), node_runs.c.attempts == sa.bindparam("b_attempts")))
RUNS_OF_EXECUTION = prebuilt(sa.select(node_runs).where(node_runs.c.execution_id == sa.bindparam("b_execution_id")))
CLOSE_OPEN_RUNS = prebuilt(
    sa.update(node_runs).where(
        node_runs.c.execution_id == sa.bindparam("b_execution_id"),
        node_runs.c.status.in_([NodeStatus.WAITING, NodeStatus.QUEUED, NodeStatus.RUNNING]),
    )
)
EXECUTION_COST = prebuilt(
    sa.select(sa.func.coalesce(sa.func.sum(node_runs.c.cost_micro), 0)).where(node_runs.c.execution_id == sa.bindparam("b_execution_id"))
)
EXECUTION_ROW = prebuilt(sa.select(executions).where(executions.c.id == sa.bindparam("b_id")))
_update_execution = sa.update(executions).where(executions.c.id == sa.bindparam("b_id"))
UPDATE_EXECUTION = prebuilt(_update_execution)
START_EXECUTION = prebuilt(_update_execution.where(executions.c.status == ExecutionStatus.QUEUED).values(status=ExecutionStatus.RUNNING))


@dataclass(frozen=True)
class NodeTask:
    """The message a queue carries: which node run to execute."""

    node_run_id: str
    execution_id: str
    queue: str = "default"

    @classmethod
    def of(cls, run) -> "NodeTask":
        """The task of a ``node_runs`` row (it needs ``id``, ``execution_id`` and ``queue``)."""
        return cls(run.id, run.execution_id, run.queue or "default")


class Lifecycle:
    def __init__(self, hooks: list[Hooks] | None = None, progress_event_every_s: float = 1.0):
        self.hooks: list[Hooks] = list(hooks or [])
        self.progress_event_every_s = progress_event_every_s
        self._progress_sent: dict[str, float] = {}
        self._progress_lock = threading.Lock()

    def add_hook(self, hook: Hooks) -> None:
        """Call ``hook`` for every event from now on (after the hooks added before it)."""
        if not isinstance(hook, Hooks):
            raise TypeError(f"{type(hook).__name__} is not a pixelmill.engine.hooks.Hooks")
        self.hooks.append(hook)

    def event(
        self, conn: Connection, execution_id: str, event: str, data: dict[str, Any] | None = None, facts: dict[str, Any] | None = None
    ) -> None:
        """Append to the execution's event log and tell the hooks (in this transaction, then after commit)."""
        ev = LifecycleEvent(execution_id, event, data or {}, time.time(), facts or {})
        conn.execute(INSERT_EVENT, {"execution_id": execution_id, "event": event, "data": ev.data, "created_at": ev.created_at})
        hooks = list(self.hooks)
        for hook in hooks:
            hook.on_event(conn, ev)
        later = [h for h in hooks if wants_after_commit(h)]
        if later:
            after_commit(conn, lambda: run_after_commit(later, ev))

    # --- node level -------------------------------------------------------
    def start_node(self, conn: Connection, run, worker: str) -> dict[str, Any] | None:
        """Claim ``run`` (a row as read) for ``worker``: a compare-and-set on its status and attempt count.

        The columns the claim set, for the one caller whose update matched; everyone else
        who read the same row gets None and must not run it.  The attempt is counted, and
        ``node.started`` written, by the winner only."""
        now = time.time()
        claimed = {"status": NodeStatus(run.status).start(), "started_at": now, "attempts": run.attempts + 1, "worker": worker, "progress": 0.0}
        won = conn.execute(CLAIM_RUN, {"b_id": run.id, "b_status": run.status, "b_attempts": run.attempts, **claimed}).rowcount
        if won != 1:
            return None
        # a row read with its execution's status (``execution_status``) says when the execution already runs
        running = getattr(run, "execution_status", ExecutionStatus.QUEUED) != ExecutionStatus.QUEUED
        if not running and conn.execute(START_EXECUTION, {"b_id": run.execution_id, "started_at": now}).rowcount == 1:
            self.event(conn, run.execution_id, "execution.started", {})
        self.event(conn, run.execution_id, "node.started", {"node": run.node_id, "attempt": run.attempts + 1}, _node_facts(run, started_at=now))
        return claimed

    def succeed_node(self, conn: Connection, run, outputs: dict[str, Any], cost_micro: int, cached: bool) -> list[NodeTask]:
        """Record a node's outputs and what it costs (micro-credits); queue the nodes that became runnable;
        finish the execution if done."""
        now = time.time()
        conn.execute(
            UPDATE_RUN,
            {"b_id": run.id, "status": NodeStatus.SUCCEEDED, "finished_at": now, "progress": 1.0, "outputs": outputs,
             "cost_micro": int(cost_micro), "cached": cached},
        )
        data: dict[str, Any] = {"node": run.node_id, "outputs": outputs, "cached": cached}
        if not cached and run.started_at is not None:  # what run-time estimates learn from
            data.update(queue=run.queue or "default", seconds=round(now - run.started_at, 4))
        self.event(conn, run.execution_id, "node.completed", data, _node_facts(run, finished_at=now))
        runs = conn.execute(RUNS_OF_EXECUTION, {"b_execution_id": run.execution_id}).all()
        done = {r.node_id for r in runs if r.status == NodeStatus.SUCCEEDED}
        tasks = []
        for r in runs:
            if r.status == NodeStatus.WAITING and all(src in done for src, _ in r.links.values()):
                conn.execute(UPDATE_RUN, {"b_id": r.id, "status": NodeStatus.QUEUED, "queued_at": now})
                tasks.append(NodeTask.of(r))
        if all(r.status == NodeStatus.SUCCEEDED for r in runs):
            self.finish_execution(conn, run.execution_id, ExecutionStatus.SUCCEEDED)
        return tasks

    def fail_node(self, conn: Connection, run, code: str, message: str, cancelled: bool = False) -> None:
        status = NodeStatus.CANCELLED if cancelled else NodeStatus.FAILED
        now = time.time()
        conn.execute(
            sa.update(node_runs)
            .where(node_runs.c.id == run.id)
            .values(status=status, finished_at=now, error_code=code, error_message=message[:2000])
        )
        self.event(
            conn, run.execution_id, "node.failed" if not cancelled else "node.cancelled", {"node": run.node_id, "error": message},
            _node_facts(run, finished_at=now),
        )
        final = ExecutionStatus.CANCELLED if cancelled else ExecutionStatus.FAILED
        self.finish_execution(conn, run.execution_id, final, code, message)

    def progress(self, conn: Connection, node_run_id: str, fraction: float) -> bool:
        """Store progress; True when the execution was asked to cancel.

        At most one ``execution.progress`` event per execution every
        ``progress_event_every_s`` (per process) goes to the event log and hooks.
        """
        conn.execute(sa.update(node_runs).where(node_runs.c.id == node_run_id).values(progress=fraction))
        row = conn.execute(
            sa.select(executions.c.id, executions.c.cancel_requested, executions.c.status, node_runs.c.node_id)
            .join(node_runs, node_runs.c.execution_id == executions.c.id)
            .where(node_runs.c.id == node_run_id)
        ).first()
        stop = bool(row and (row.cancel_requested or ExecutionStatus(row.status).is_terminal()))
        if row is not None and not stop and fraction < 1.0 and self._progress_due(row.id):
            self.event(conn, row.id, "execution.progress", {"node": row.node_id, "progress": round(fraction, 4)})
        return stop

    def _progress_due(self, execution_id: str) -> bool:
        now = time.monotonic()
        with self._progress_lock:
            last = self._progress_sent.get(execution_id)
            if last is not None and now - last < self.progress_event_every_s:
                return False
            if len(self._progress_sent) > 10_000:  # forget old executions
                self._progress_sent = {k: v for k, v in self._progress_sent.items() if now - v < 60}
            self._progress_sent[execution_id] = now
            return True

    # --- execution level --------------------------------------------------
    def finish_execution(
        self, conn: Connection, execution_id: str, status: ExecutionStatus, code: str | None = None, message: str | None = None
    ) -> bool:
        """Move the execution to a terminal status, close open nodes, settle credits.  Idempotent."""
        ex = conn.execute(EXECUTION_ROW, {"b_id": execution_id}).first()
        if ex is None or ExecutionStatus(ex.status).is_terminal():
            return False
        current = ExecutionStatus(ex.status)
        new = {ExecutionStatus.SUCCEEDED: current.succeed, ExecutionStatus.FAILED: current.fail, ExecutionStatus.CANCELLED: current.cancel}[status]()
        now = time.time()
        open_state = NodeStatus.CANCELLED if new == ExecutionStatus.CANCELLED else NodeStatus.SKIPPED
        conn.execute(CLOSE_OPEN_RUNS, {"b_execution_id": execution_id, "status": open_state, "finished_at": now})
        actual = 0
        if new == ExecutionStatus.SUCCEEDED:
            actual = int(conn.execute(EXECUTION_COST, {"b_execution_id": execution_id}).scalar())
        conn.execute(
            UPDATE_EXECUTION,
            {"b_id": execution_id, "status": new, "finished_at": now, "cost_actual_micro": actual, "error_code": code,
             "error_message": (message or None) and message[:2000]},
        )
        if ex.cost_estimate_micro or actual:  # nothing was held (a free execution): nothing to give back or take
            ledger.settle_micro(conn, ex.account_id, execution_id, ex.cost_estimate_micro, actual)
        self.event(
            conn, execution_id, f"execution.{new.value}", {"error": message} if message else {},
            {"dialect": ex.dialect, "cost_actual_micro": actual},
        )
        return True


def _node_facts(run, **times: float) -> dict[str, Any]:
    """A node event's facts (see LifecycleEvent.facts) from the run's row as the writer read it."""
    mapping = getattr(run, "_mapping", None)
    if mapping is None or not {"node_type", "params", "queued_at", "started_at"} <= mapping.keys():
        return {}
    facts = {"node_type": mapping["node_type"], "params": mapping["params"], "queued_at": mapping["queued_at"],
             "started_at": mapping["started_at"], "finished_at": None}
    facts.update(times)
    return facts
