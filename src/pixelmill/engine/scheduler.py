"""The scheduler: which runnable node run a free worker runs next.

The queues (embedded threads, Celery over Redis) only carry wake-ups: one
message per runnable node run.  Whoever receives a message does not run *that*
node run; it asks :meth:`Scheduler.pick` for the next one of the same queue
(``model.<name>`` or ``default``) and runs that.  The decision is made in the
database, so it is the same in one process and across many workers:

1. **Expired work goes first, out.**  A queued run of an execution whose
   start-by time passed (and that never started) fails as ``expired``; one
   whose run deadline passed fails as ``deadline_exceeded``.  Both release
   the credit hold (a refund).
2. **Plan priority** (``Plan.priority``): work of a higher-priority plan runs
   before any of a lower one.
3. **Weighted fair share between accounts** (``Plan.weight``): among accounts
   of one plan priority, the one that used the least run time over the last
   ``window_s`` seconds, divided by its weight, goes next (least attained
   service, the practical form of weighted fair queueing for work whose size
   is only known once it ran).  A running node counts at least the typical
   node run time, so several workers do not all pick the same account.
4. **Request priority, then age, inside an account**: an account's own work
   runs in ``executions.priority`` order (higher first), then oldest first.

5. **Model affinity (scale-out workers).**  A worker's pick looks at the heads
   of every queue it consumes, not only the delivered one.  Among the heads of
   the highest plan priority it takes, in fair order, first those whose model it
   holds (or that need none), then cold ones it is a cheapest place to load;
   a head whose model another live worker holds, or that another worker could
   load without unloading anything while this one could not, is left to that
   worker (``worker_models``, advertised every few seconds).  When it is left
   nothing, the delivery is handed back to its queue after a short pause
   (:class:`Deferred`).  The bound: a head waiting ``affinity_max_wait_s`` or
   longer is taken by whichever worker asks next, in fair order, so affinity
   delays no run by more than that.  A run taken from another queue than the
   delivered one hands the delivered wake-up back to its queue, so every queue
   keeps a message per waiting run.

Picking marks the run ``picked_at`` with a compare-and-set, a lease of
``pick_lease_s`` until the worker's runner claims it, so two workers never
pick the same run; a picker that dies before claiming loses its lease.

A message therefore never pins a node run: the number of messages equals the
number of runnable runs (plus harmless duplicates), and each delivery runs at
most one.  When the pick finds nothing (every run is taken), the delivery
falls back to its own node run, which keeps at-least-once redelivery intact:
a duplicate of a finished run is a no-op, a run still running elsewhere is
retried later (``NodeBusy``).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.accounts.plans import Plan
from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.lifecycle import Lifecycle, NodeTask
from pixelmill.errors import InvalidInput
from pixelmill.periodic import Periodic
from pixelmill.store.db import Database
from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import accounts, executions, node_runs, worker_models

log = logging.getLogger("pixelmill.scheduler")

DEFAULT_TYPICAL_S = 1.0
PICK_ROUNDS = 50  # reads of the heads one pick makes while other workers lease each head it read


@dataclass(frozen=True)
class RequestScheduling:
    """What a client may ask of the scheduler for one request."""

    priority: int | None = None
    start_within_s: float | None = None  # not started within this many seconds: expired
    cancel_after_s: float | None = None  # not finished within this many seconds: stopped
    retention_s: float | None = None  # keep the result (and its files) at most this long; shorter than the server's only


PRIORITY_HEADER = "pixelmill-priority"
START_WITHIN_HEADER = "pixelmill-start-within"
CANCEL_AFTER_HEADER = "pixelmill-cancel-after"
RETENTION_HEADER = "pixelmill-retention"
SCHEDULING_HEADERS = (PRIORITY_HEADER, START_WITHIN_HEADER, CANCEL_AFTER_HEADER, RETENTION_HEADER)

request_scheduling: ContextVar[dict[str, str] | None] = ContextVar("pixelmill_request_scheduling", default=None)
"""The scheduling headers of the HTTP request being served (set by the HTTP layer,
parsed by the submit path so a bad value is a 422 in the dialect's own shape)."""


def requested_scheduling() -> RequestScheduling | None:
    """What the current request's headers ask for (:data:`request_scheduling`); None without any."""
    raw = request_scheduling.get()
    return parse_scheduling_headers(raw.get) if raw else None
MAX_DEADLINE_S = 7 * 24 * 3600


def parse_scheduling_headers(get: Callable[[str], str | None]) -> RequestScheduling | None:
    """The scheduling a request's headers ask for (``get`` reads one header); None if none.

    Raises :class:`InvalidInput` (422) naming the header for a malformed value.
    """
    raw = {name: get(name) for name in SCHEDULING_HEADERS}
    if not any(v is not None for v in raw.values()):
        return None
    values: dict[str, float | int | None] = {}
    for name, value in raw.items():
        if value is None:
            values[name] = None
            continue
        try:
            number = int(value) if name == PRIORITY_HEADER else float(value)
        except ValueError:
            kind = "an integer" if name == PRIORITY_HEADER else "a number of seconds"
            raise InvalidInput(f"header {name} must be {kind}; got {value!r}", code="invalid_scheduling_header", header=name) from None
        if name != PRIORITY_HEADER and not (0 < number <= MAX_DEADLINE_S and math.isfinite(number)):
            raise InvalidInput(
                f"header {name} must be between 0 and {MAX_DEADLINE_S} seconds; got {value!r}", code="invalid_scheduling_header", header=name
            )
        values[name] = number
    return RequestScheduling(values[PRIORITY_HEADER], values[START_WITHIN_HEADER], values[CANCEL_AFTER_HEADER], values[RETENTION_HEADER])  # type: ignore[arg-type]


class WaitingRun(NamedTuple):
    """A waiting node run as a queue position starts from (the columns of ``_next_waiting_statement``)."""

    id: str
    queue: str
    queued_at: float | None
    account_id: str
    priority: int


@dataclass
class _Head:
    run_id: str
    execution_id: str
    account_id: str
    plan: str
    queued_at: float
    queue: str = "default"


@dataclass(frozen=True)
class WorkerView:
    """The worker asking for work, for model affinity: its name (as in ``worker_models``), the
    queues it consumes, the models it holds (resident or loading) and its unused model memory."""

    name: str
    queues: tuple[str, ...]
    resident: frozenset[str] = frozenset()
    free_bytes: int | None = None  # None: no budget


@dataclass(frozen=True)
class Deferred:
    """Every waiting run this worker could take is better run by another worker: hand the
    delivery back and ask again; ``retry_in_s``: until the first of them is overdue."""

    retry_in_s: float


MODEL_QUEUE_PREFIX = "model."


def model_of(queue: str) -> str | None:
    """The model behind a ``model.<name>`` queue; None for queues of nodes that need no model."""
    return queue[len(MODEL_QUEUE_PREFIX):] if queue.startswith(MODEL_QUEUE_PREFIX) else None


def load_cost(holds: bool, free: int | None, need: int) -> tuple[int, int]:
    """How dear running a model's node is on a worker (lower is cheaper): (0, 0) it holds the
    model; (1, 0) it loads it without unloading anything (room in its budget, or no budget);
    (1, 1) it has to unload models to make room."""
    if holds:
        return (0, 0)
    return (1, 0) if free is None or free >= max(need, 1) else (1, 1)


@dataclass
class _Usage:
    seconds: float = 0.0
    running: int = 0


class Scheduler:
    """Fair, priority- and deadline-aware choice of the next node run of a queue."""

    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        plans: Mapping[str, Plan],
        default_plan: str = "free",
        window_s: float = 300.0,
        pick_lease_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        local_leases: bool = False,
        fair: bool = True,
        expire_every_s: float = 1.0,
        affinity_max_wait_s: float = 30.0,
        worker_stale_s: float = 30.0,
    ):
        self.db = db
        self.lifecycle = lifecycle
        self.plans = plans
        self.default_plan = default_plan
        self.window_s = window_s
        self.pick_lease_s = pick_lease_s
        self.clock = clock
        self._typical: tuple[float, float] | None = None  # (measured at, seconds)
        self._typical_lock = threading.Lock()
        #: one process owns the database (embedded): leases live in memory, saving a write per pick
        self.local_leases = local_leases
        self._leases: dict[str, float] = {}
        self._lease_lock = threading.Lock()
        #: False ("fifo" setting): queue positions in arrival order, as the queue runs them
        self.fair = fair
        self.expire_every_s = expire_every_s
        self._expired_at: dict[str, float] = {}
        # the database briefly away, or another process expired it first: logged at debug level
        self._sweeper = Periodic("pixelmill-expiry", self.expire, lambda: self.expire_every_s, what="expiry sweep", log=log, level=logging.DEBUG)
        #: model affinity's bound: a run waiting this long goes to the next worker that asks (0: no affinity)
        self.affinity_max_wait_s = affinity_max_wait_s
        #: another worker's ``worker_models`` rows older than this are ignored (the worker is gone)
        self.worker_stale_s = worker_stale_s
        #: queue positions are worked out from one read of a queue's waiting runs, shared by the
        #: position reads of the next ``position_snapshot_s`` until a change is heard (:meth:`changed`)
        self.position_snapshot_s = 1.0
        self._snapshots: dict[str, _Snapshot] = {}
        self._refreshing: dict[str, threading.Lock] = {}
        self._generation = 0
        self._snapshot_lock = threading.Lock()

    # --- policy -----------------------------------------------------------
    def plan(self, name: str | None) -> Plan:
        return self.plans.get(name or "") or self.plans.get(self.default_plan) or Plan(name=self.default_plan)

    def check_priority(self, plan_name: str, priority: int) -> int:
        """``priority`` if the plan allows it; else a 422 naming the allowed range."""
        plan = self.plan(plan_name)
        if not plan.min_request_priority <= priority <= plan.max_request_priority:
            raise InvalidInput(
                f"priority {priority} is outside the {plan.name} plan's range "
                f"{plan.min_request_priority}..{plan.max_request_priority}",
                code="priority_out_of_range",
                min_priority=plan.min_request_priority,
                max_priority=plan.max_request_priority,
            )
        return priority

    # --- picking ----------------------------------------------------------
    def pick(self, queue: str, worker: WorkerView | None = None) -> NodeTask | Deferred | None:
        """Choose and lease the next node run of ``queue``; None when nothing is waiting.

        With ``worker`` (a scale-out worker, affinity on): the next run of any
        queue it consumes, by model affinity (the module's rule 5); ``Deferred``
        when everything waiting is better run by another worker.

        When other workers lease every head this pick read (they picked at the same moment),
        it reads the heads again: runs behind those heads still wait, and the delivery asking
        may be the last one that can start them (its own run may be among the leased ones).
        """
        now = self.clock()
        if now - self._expired_at.get(queue, 0.0) >= self.expire_every_s:  # late work is also never picked (below)
            self._expired_at[queue] = now
            self.expire(queue, now)
        affine = worker is not None and self.affinity_max_wait_s > 0
        queues = list(dict.fromkeys([queue, *worker.queues])) if affine and worker is not None else [queue]
        for _ in range(PICK_ROUNDS):  # each lost round means another worker took a run, so the waiting set shrank
            with self.db.read() as conn:
                heads = self._heads(conn, queues, now, with_plans=affine)
                if not heads:
                    return None
                if len(heads) == 1:  # nothing to order: no plans, use or typical run time to read
                    order = heads
                else:
                    usage = self._usage(conn, {h.account_id for h in heads}, now)
                    typical = self.typical_seconds(conn)
                    order = sorted(heads, key=lambda h: self._key(h, usage.get(h.account_id), typical))
                if affine and worker is not None:
                    chosen = self._affine(conn, order, worker, now)
                    if isinstance(chosen, Deferred):
                        return chosen
                    order = chosen
            for head in order:
                if self._lease(head.run_id, now):
                    return NodeTask(head.run_id, head.execution_id, head.queue)
        log.warning("every pick of queue %s lost to other workers %d times in a row", queue, PICK_ROUNDS)
        return None

    def _affine(self, conn: Connection, order: list[_Head], worker: WorkerView, now: float) -> list[_Head] | Deferred:
        """``order`` (fair order) cut to what ``worker`` should take, cheapest first (rule 5)."""
        top = self.plan(order[0].plan).priority
        eligible = [h for h in order if self.plan(h.plan).priority == top]
        overdue = [h for h in eligible if now - h.queued_at >= self.affinity_max_wait_s]
        if overdue:  # the bound: waited long enough, whoever asks takes it
            return overdue
        places = self._places(conn, worker.name, now)
        ranked = []
        for head in eligible:
            model = model_of(head.queue)
            if model is None:
                ranked.append(((0, 0), head))
                continue
            others = places.get(model, [])
            need = max((size for _, _, size in others), default=0)
            mine = load_cost(model in worker.resident, worker.free_bytes, need)
            if any(load_cost(holds, free, need) < mine for holds, free, _ in others):
                continue  # another live worker is a cheaper place for it
            ranked.append((mine, head))
        if not ranked:
            return Deferred(max(0.05, min(self.affinity_max_wait_s - (now - h.queued_at) for h in eligible)))
        return [h for _, h in sorted(ranked, key=lambda item: item[0])]  # stable: fair order within a cost

    def _places(self, conn: Connection, me: str, now: float) -> dict[str, list[tuple[bool, int | None, int]]]:
        """What the other live workers advertise, per model: (holds it, unused budget, its size there)."""
        rows = conn.execute(
            sa.select(worker_models.c.model, worker_models.c.state, worker_models.c.free_bytes, worker_models.c.memory_bytes).where(
                worker_models.c.worker != me, worker_models.c.updated_at >= now - self.worker_stale_s
            )
        ).all()
        out: dict[str, list[tuple[bool, int | None, int]]] = {}
        for r in rows:
            out.setdefault(r.model, []).append((r.state in ("resident", "loading"), r.free_bytes, int(r.memory_bytes or 0)))
        return out

    def _key(self, head: _Head, usage: _Usage | None, typical: float) -> tuple:
        plan = self.plan(head.plan)
        return (-plan.priority, self._normalised(usage, typical) / plan.weight, head.queued_at, head.run_id)

    @staticmethod
    def _normalised(usage: _Usage | None, typical: float) -> float:
        if usage is None:
            return 0.0
        return max(usage.seconds, 0.0) + usage.running * typical

    def _waiting(self, queues: bool = True):
        """Waiting, pickable runs of ``:queues`` (bound: queues, now, lease_cutoff, taken; without ``queues``,
        of any queue: the caller says which)."""
        if self.local_leases:
            leased = node_runs.c.id.not_in(sa.bindparam("taken", expanding=True))
        else:
            leased = sa.or_(node_runs.c.picked_at.is_(None), node_runs.c.picked_at < sa.bindparam("lease_cutoff"))
        now = sa.bindparam("now")
        return (
            sa.select(
                node_runs.c.id,
                node_runs.c.execution_id,
                node_runs.c.queued_at,
                node_runs.c.queue,
                executions.c.account_id,
                executions.c.priority,
            )
            .join(executions, executions.c.id == node_runs.c.execution_id)
            .where(
                node_runs.c.queue.in_(sa.bindparam("queues", expanding=True)) if queues else sa.true(),
                node_runs.c.status == NodeStatus.QUEUED,
                leased,
                executions.c.status.in_(ExecutionStatus.active()),
                executions.c.cancel_requested.is_(False),
                sa.or_(executions.c.start_by.is_(None), executions.c.start_by >= now, executions.c.status != ExecutionStatus.QUEUED),
                sa.or_(executions.c.deadline_at.is_(None), executions.c.deadline_at >= now),
            )
        )

    def _waiting_params(self, now: float, queue: str | list[str] | None = None) -> dict:
        """The parameters :meth:`_waiting` binds; ``:queues`` only with ``queue``."""
        params: dict = {"now": now}
        if queue is not None:
            params["queues"] = [queue] if isinstance(queue, str) else list(queue)
        if self.local_leases:
            with self._lease_lock:
                params["taken"] = list(self._leases)
        else:
            params["lease_cutoff"] = now - self.pick_lease_s
        return params

    @functools.cached_property
    def _heads_statement(self):
        """The first waiting run of each account in ``:queue``, read by index in time that grows with the
        accounts waiting, not with their runs: the accounts waiting, one index seek each (a loose scan of
        ``ix_node_runs_waiting``: each step finds the next account after the last), then each one's first
        run in pick order (the same index, walked until a run that may start)."""
        queue = sa.bindparam("queue")

        def account_after(after):  # the least account with a run waiting on the queue (after ``after``)
            scan = node_runs.alias("scan")
            q = sa.select(scan.c.account_id).where(scan.c.queue == queue, scan.c.status == NodeStatus.QUEUED, scan.c.account_id.is_not(None))
            if after is not None:
                q = q.where(scan.c.account_id > after)
            return q.order_by(scan.c.account_id).limit(1).scalar_subquery()

        waiting_accounts = sa.select(account_after(None).label("account_id")).cte("waiting_accounts", recursive=True)
        waiting_accounts = waiting_accounts.union_all(
            sa.select(account_after(waiting_accounts.c.account_id)).where(waiting_accounts.c.account_id.is_not(None))
        )
        first = (
            self._waiting(queues=False)
            .with_only_columns(node_runs.c.id)
            .where(node_runs.c.queue == queue, node_runs.c.account_id == waiting_accounts.c.account_id)
            .order_by(node_runs.c.priority.desc(), node_runs.c.queued_at, node_runs.c.id)
            .limit(1)
            .correlate(waiting_accounts)
            .scalar_subquery()
        )
        head = node_runs.alias("head")
        return prebuilt(
            sa.select(head.c.id, head.c.execution_id, head.c.queued_at, head.c.queue, head.c.account_id, head.c.priority).select_from(
                waiting_accounts.join(head, head.c.id == first)
            )
        )

    def _heads(self, conn: Connection, queues: list[str], now: float, with_plans: bool = False) -> list[_Head]:
        """The first waiting run of each account in each of ``queues`` (request priority, then age), with
        their accounts' plans where there are several heads to order, or ``with_plans`` says."""
        params = self._waiting_params(now)  # the heads statement reads one queue: one read per queue
        rows = [row for queue in queues for row in conn.execute(self._heads_statement, {**params, "queue": queue}).all()]
        plans = self._plans(conn, {r.account_id for r in rows}) if with_plans or len(rows) > 1 else {}
        return [_Head(r.id, r.execution_id, r.account_id, plans.get(r.account_id), r.queued_at or 0.0, r.queue) for r in rows]

    @functools.cached_property
    def _plans_statement(self):
        return prebuilt(sa.select(accounts.c.id, accounts.c.plan).where(accounts.c.id.in_(sa.bindparam("ids", expanding=True))))

    def _plans(self, conn: Connection, account_ids: set[str]) -> dict[str, str | None]:
        """The plan of each account, read apart from the waiting runs: one account's row is locked by each
        of its submits and charges, and joined to every waiting run it slowed every scan (PostgreSQL)."""
        if not account_ids:
            return {}
        return {r.id: r.plan for r in conn.execute(self._plans_statement, {"ids": sorted(account_ids)})}

    @functools.cached_property
    def _usage_statement(self):
        now, since = sa.bindparam("now"), sa.bindparam("since")
        greatest = sa.func.max if self.db.engine.dialect.name == "sqlite" else sa.func.greatest  # SQLite's 2-argument max()
        # wrapped so no planner drives this from the accounts' executions (their whole history): the
        # node runs' time and status indexes pick the few recent or running runs, then their executions by key
        accounts_in = sa.func.coalesce(executions.c.account_id, "").in_(sa.bindparam("accounts", expanding=True))

        def runs(started):  # two index-backed halves instead of one OR, which would scan the accounts' whole history
            return (
                sa.select(executions.c.account_id, node_runs.c.started_at, node_runs.c.finished_at, node_runs.c.status)
                .join(executions, executions.c.id == node_runs.c.execution_id)
                .where(accounts_in, started, node_runs.c.cached.is_(False))
            )

        recent = sa.union_all(
            runs(node_runs.c.started_at >= since),  # started in the window
            runs(sa.and_(node_runs.c.status == NodeStatus.RUNNING, node_runs.c.started_at < since)),  # running since before it
        ).subquery()
        running = sa.case((recent.c.status == NodeStatus.RUNNING, 1), else_=0)
        return (
            sa.select(
                recent.c.account_id,
                sa.func.sum(sa.func.coalesce(recent.c.finished_at, now) - greatest(recent.c.started_at, since)).label("seconds"),
                sa.func.sum(running).label("running"),
            )
            .group_by(recent.c.account_id)
        )

    def _usage(self, conn: Connection, account_ids: set[str], now: float) -> dict[str, _Usage]:
        """Run time each account used in the window (running runs count their time so far) and its running runs.

        Use only orders accounts against each other: for one account alone nothing is read (the
        read grows with the runs the accounts started in the window)."""
        if len(account_ids) < 2:
            return {}
        rows = conn.execute(self._usage_statement, {"now": now, "since": now - self.window_s, "accounts": sorted(account_ids)}).all()
        return {r.account_id: _Usage(float(r.seconds or 0.0), int(r.running or 0)) for r in rows}

    def typical_seconds(self, conn: Connection) -> float:
        """The recent mean node run time (cached for a few seconds); 1 s before anything ran."""
        now = time.monotonic()
        with self._typical_lock:
            if self._typical is not None and now - self._typical[0] < 5.0:
                return self._typical[1]
        from pixelmill.engine.estimates import recent_node_seconds

        value = recent_node_seconds(conn) or DEFAULT_TYPICAL_S
        with self._typical_lock:
            self._typical = (now, max(value, 1e-3))
        return self._typical[1]

    def _lease(self, run_id: str, now: float) -> bool:
        if self.local_leases:
            with self._lease_lock:
                if run_id in self._leases:
                    return False
                self._leases[run_id] = now
            # a read that began before another thread's claim committed still shows that run waiting
            # after the thread dropped its lease: a lease holds only for a run still waiting now
            with self.db.read() as conn:
                if conn.execute(self._still_waiting_statement, {"id": run_id}).first() is not None:
                    return True
            self.release(run_id)
            return False
        with self.db.transaction() as conn:
            result = conn.execute(
                sa.update(node_runs)
                .where(
                    node_runs.c.id == run_id,
                    node_runs.c.status == NodeStatus.QUEUED,
                    sa.or_(node_runs.c.picked_at.is_(None), node_runs.c.picked_at < now - self.pick_lease_s),
                )
                .values(picked_at=now)
            )
            return result.rowcount == 1

    @functools.cached_property
    def _still_waiting_statement(self):
        return prebuilt(sa.select(node_runs.c.id).where(node_runs.c.id == sa.bindparam("id"), node_runs.c.status == NodeStatus.QUEUED))

    @functools.cached_property
    def _batch_head_statement(self):
        return sa.select(node_runs.c.id, node_runs.c.node_type, node_runs.c.params, node_runs.c.links).where(node_runs.c.id == sa.bindparam("id"))

    @functools.cached_property
    def _batch_statement(self):
        """Waiting runs of ``:queues`` of one node type other than ``:first``, in each account's order
        (bound as :meth:`_waiting`, plus first, node_type and limit)."""
        return (
            self._waiting()
            .add_columns(node_runs.c.node_type, node_runs.c.params, node_runs.c.links)
            .where(node_runs.c.id != sa.bindparam("first"), node_runs.c.node_type == sa.bindparam("node_type"))
            .order_by(executions.c.priority.desc(), node_runs.c.queued_at)
            .limit(sa.bindparam("limit"))
        )

    def companions(self, first: NodeTask, batch_key: Callable[[object], tuple[str, int] | None], limit: int = 256) -> list[NodeTask]:
        """Waiting runs of ``first``'s queue that may run in one call with it, leased, in the pick order.

        ``batch_key(row)`` gives a row's ``(key, largest batch)`` or None; runs
        with ``first``'s key join it up to that size, taken in the order
        :meth:`pick` would start them (each account's share advancing by the
        typical run time per run taken).
        """
        now = self.clock()
        with self.db.read() as conn:
            head = conn.execute(self._batch_head_statement, {"id": first.node_run_id}).first()
            wanted = batch_key(head) if head is not None else None
            if wanted is None or wanted[1] <= 1:
                return []
            params = self._waiting_params(now, first.queue) | {"first": first.node_run_id, "node_type": head.node_type, "limit": limit}
            rows = conn.execute(self._batch_statement, params).all()
            rows = [r for r in rows if (k := batch_key(r)) is not None and k[0] == wanted[0]]
            if not rows:
                return []
            usage = self._usage(conn, {r.account_id for r in rows}, now)
            typical = self.typical_seconds(conn)
            plans = self._plans(conn, {r.account_id for r in rows})
        taken_per_account: dict[str, int] = {}
        keyed = []
        for r in rows:  # rows come in each account's own order (priority, then age)
            k = taken_per_account.get(r.account_id, 0)
            taken_per_account[r.account_id] = k + 1
            plan = self.plan(plans.get(r.account_id))
            share = (self._normalised(usage.get(r.account_id), typical) + k * typical) / plan.weight
            keyed.append(((-plan.priority, share, r.queued_at or 0.0, r.id), r))
        batch = []
        for _, r in sorted(keyed, key=lambda item: item[0]):
            if len(batch) >= wanted[1] - 1:
                break
            if self._lease(r.id, now):
                batch.append(NodeTask(r.id, r.execution_id, first.queue))
        return batch

    def release(self, run_id: str) -> None:
        """The picker is done with ``run_id`` (claimed and ran it, or gave up): drop its local lease."""
        if self.local_leases:
            with self._lease_lock:
                self._leases.pop(run_id, None)

    def leased_elsewhere(self, run_id: str) -> bool:
        """True while ``run_id`` waits under another worker's pick lease (that worker will run it)."""
        if self.local_leases:
            with self._lease_lock:
                return run_id in self._leases
        with self.db.read() as conn:
            row = conn.execute(sa.select(node_runs.c.status, node_runs.c.picked_at).where(node_runs.c.id == run_id)).first()
        return bool(
            row is not None and row.status == NodeStatus.QUEUED and row.picked_at is not None and row.picked_at >= self.clock() - self.pick_lease_s
        )

    # --- deadlines --------------------------------------------------------
    def expire(self, queue: str | None = None, now: float | None = None) -> int:
        """Fail queued work past its start-by or run deadline (refunding it); returns how many executions."""
        now = self.clock() if now is None else now
        late = sa.or_(
            sa.and_(executions.c.start_by.is_not(None), executions.c.start_by < now, executions.c.status == ExecutionStatus.QUEUED),
            sa.and_(executions.c.deadline_at.is_not(None), executions.c.deadline_at < now),
        )
        q = (
            sa.select(executions.c.id, executions.c.status, executions.c.start_by, executions.c.deadline_at)
            .join(node_runs, node_runs.c.execution_id == executions.c.id)
            .where(node_runs.c.status == NodeStatus.QUEUED, executions.c.status.in_(ExecutionStatus.active()), late)
            .distinct()
        )
        if queue is not None:
            q = q.where(node_runs.c.queue == queue)
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        done = 0
        for row in rows:
            started = row.status != ExecutionStatus.QUEUED
            expired = not started and row.start_by is not None and row.start_by < now
            with self.db.transaction() as conn:
                if expired:
                    ok = self.lifecycle.finish_execution(
                        conn, row.id, ExecutionStatus.FAILED, "expired", "The task did not start before its start-by time; nothing was charged"
                    )
                else:
                    ok = self.lifecycle.finish_execution(
                        conn, row.id, ExecutionStatus.FAILED, "deadline_exceeded", "The task did not finish before its run deadline; nothing was charged"
                    )
            done += int(ok)
        return done

    def start(self) -> None:
        """Expire late work every second in a daemon thread, also while every worker is busy."""
        self._sweeper.start()

    def stop(self) -> None:
        self._sweeper.stop()

    # --- queue position ---------------------------------------------------
    @functools.cached_property
    def _next_waiting_statement(self):
        """An execution's first waiting run, with its account and request priority (one index lookup)."""
        return prebuilt(
            sa.select(node_runs.c.id, node_runs.c.queue, node_runs.c.queued_at, node_runs.c.account_id, node_runs.c.priority)
            .where(node_runs.c.execution_id == sa.bindparam("execution_id"), node_runs.c.status == NodeStatus.QUEUED)
            .order_by(node_runs.c.queued_at, node_runs.c.id)
            .limit(1)
        )

    @functools.cached_property
    def _accounts_waiting_statement(self):
        """Per account, its waiting runs of ``:queue`` and when the oldest was queued (a covering index range)."""
        return prebuilt(
            sa.select(node_runs.c.account_id, sa.func.count().label("n"), sa.func.min(node_runs.c.queued_at).label("oldest"))
            .where(node_runs.c.queue == sa.bindparam("queue"), node_runs.c.status == NodeStatus.QUEUED)
            .group_by(node_runs.c.account_id)
        )

    @functools.cached_property
    def _own_ahead_statement(self):
        """How many waiting runs of an account on a queue it runs before one of them (request priority, then
        age): counted where it is asked, so runs its account queued a moment ago are never missed."""
        priority, queued_at, run_id = sa.bindparam("priority"), sa.bindparam("queued_at"), sa.bindparam("id")
        return prebuilt(
            sa.select(sa.func.count())
            .select_from(node_runs)
            .where(
                node_runs.c.queue == sa.bindparam("queue"),
                node_runs.c.status == NodeStatus.QUEUED,
                node_runs.c.account_id == sa.bindparam("account_id"),
                sa.or_(
                    node_runs.c.priority > priority,
                    sa.and_(
                        node_runs.c.priority == priority,
                        sa.or_(node_runs.c.queued_at < queued_at, sa.and_(node_runs.c.queued_at == queued_at, node_runs.c.id < run_id)),
                    ),
                ),
            )
        )

    def changed(self) -> None:
        """A run was queued, started or ended somewhere: the next position read reads the queue again
        (one request at a time; the others meanwhile answer from the snapshot there is)."""
        with self._snapshot_lock:
            self._generation += 1

    def _snapshot(self, conn: Connection, mine, now: float) -> "_Snapshot":
        """How many runs each account has waiting on ``mine``'s queue, with the accounts' use and plans,
        read once and shared (``mine``'s own account's runs ahead of it are counted apart, live).

        Read again once older than ``position_snapshot_s`` or after :meth:`changed`, by one request
        at a time: meanwhile the others answer from the snapshot there is, when it knows their account."""
        def current(snap: _Snapshot, generation: int) -> bool:
            return snap.generation == generation and time.monotonic() - snap.read_at < self.position_snapshot_s

        with self._snapshot_lock:
            snap, generation = self._snapshots.get(mine.queue), self._generation
            refresh = self._refreshing.setdefault(mine.queue, threading.Lock())
        # a snapshot that knows the account's plan and use serves a run queued after it was read
        if snap is not None and mine.account_id in snap.plans:
            if current(snap, generation):
                return snap
            # out of date: one request reads the queue again, the others answer from the snapshot there is
            if not refresh.acquire(blocking=False):
                return snap
            try:
                return self._read_snapshot(conn, mine, now, generation)
            finally:
                refresh.release()
        with refresh:  # no snapshot knows this account: wait for the one being read, or read it
            with self._snapshot_lock:
                snap, generation = self._snapshots.get(mine.queue), self._generation
            if snap is not None and mine.account_id in snap.plans and current(snap, generation):
                return snap
            return self._read_snapshot(conn, mine, now, generation)

    def _read_snapshot(self, conn: Connection, mine, now: float, generation: int) -> "_Snapshot":
        read_at = time.monotonic()
        rows = conn.execute(self._accounts_waiting_statement, {"queue": mine.queue}).all()
        usage = self._usage(conn, {r.account_id for r in rows} | {mine.account_id}, now)
        plans = self._plans(conn, {r.account_id for r in rows} | {mine.account_id})
        snap = _Snapshot(generation, read_at, rows, usage, plans)
        with self._snapshot_lock:
            self._snapshots[mine.queue] = snap
        return snap

    def position(self, conn: Connection, execution_id: str, head: "WaitingRun | None" = None) -> int | None:
        """How many waiting node runs the scheduler will start before this execution's next one.

        Follows :meth:`pick`'s order: every waiting run of a higher plan
        priority, the account's own runs ahead of it, and of each other
        account of the same plan priority as many runs as it gets before this
        account's turn comes, given both accounts' recent use and weights (each
        pick adds the typical run time to the picked account's use).  It moves
        with the queue, not with the clock.  None when nothing of it waits.
        ``head``: the execution's first waiting run, when the caller has it (else it is read).
        """
        now = self.clock()
        mine = head if head is not None else conn.execute(self._next_waiting_statement, {"execution_id": execution_id}).first()
        if mine is None:
            return None
        snapshot = self._snapshot(conn, mine, now)
        own_ahead = conn.execute(
            self._own_ahead_statement,
            {"queue": mine.queue, "account_id": mine.account_id, "priority": mine.priority, "queued_at": mine.queued_at, "id": mine.id},
        ).scalar_one()
        usage, typical = snapshot.usage, self.typical_seconds(conn)
        my_plan = self.plan(snapshot.plans.get(mine.account_id))
        my_turn = (self._normalised(usage.get(mine.account_id), typical) + own_ahead * typical) / my_plan.weight
        ahead = own_ahead
        for r in snapshot.accounts.values():
            if r.account_id == mine.account_id:
                continue
            plan = self.plan(r.plan)
            if plan.priority != my_plan.priority:
                ahead += int(r.n) if plan.priority > my_plan.priority else 0
                continue
            # picks j = 0, 1, ... of this account come first while (u + j*typical) / w < my_turn;
            # on a tie the older waiting run goes first
            used = self._normalised(usage.get(r.account_id), typical)
            x = (my_turn * plan.weight - used) / typical
            picks = math.ceil(x) if x > 0 else 0
            if x > -1e-9 and abs(x - round(x)) < 1e-9 and (r.oldest or 0.0) < (mine.queued_at or 0.0):
                picks = round(x) + 1
            ahead += max(0, min(int(r.n), picks))
        return ahead


@dataclass
class _Account:
    account_id: str
    plan: str | None
    n: int = 0
    oldest: float | None = None


class _Snapshot:
    """One read of how many runs each account has waiting on a queue, and the accounts' recent use and plans."""

    def __init__(self, generation: int, read_at: float, rows, usage: dict, plans: dict):
        self.generation, self.read_at, self.usage, self.plans = generation, read_at, usage, plans
        self.accounts = {r.account_id: _Account(r.account_id, plans.get(r.account_id), int(r.n), r.oldest) for r in rows}


class FairDispatch:
    """The queue handler: a delivered task wakes a worker, the scheduler says what it runs.

    With ``run_batch`` and ``batch_key`` (the runner's), the picked run takes
    compatible waiting runs with it, run as one call (batching).
    """

    #: longest pause before a deferred delivery goes back to its queue
    MAX_DEFER_PAUSE_S = 0.5

    def __init__(
        self,
        scheduler: Scheduler,
        run: Callable[[NodeTask], None],
        run_batch: Callable[[list[NodeTask]], None] | None = None,
        batch_key: Callable[[object], tuple[str, int] | None] | None = None,
        worker: Callable[[], WorkerView] | None = None,
        requeue: Callable[[NodeTask], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.scheduler = scheduler
        self.run = run
        self.run_batch = run_batch
        self.batch_key = batch_key
        #: model affinity (scale-out workers): who is asking, and how a delivery goes back to its queue
        self.worker = worker
        self.requeue = requeue
        self.sleep = sleep

    def __call__(self, task: NodeTask) -> None:
        queue = task.queue or "default"
        try:
            view = self.worker() if self.worker is not None and self.requeue is not None else None
            chosen = self.scheduler.pick(queue, view)
        except Exception:  # the pick failed (database hiccup): run the delivered task as it is
            log.warning("fair pick failed for queue %s; running the delivered node run", task.queue, exc_info=True)
            chosen = None
        if isinstance(chosen, Deferred):  # a better-placed worker should run what waits: hand the wake-up back
            self.sleep(min(chosen.retry_in_s, self.MAX_DEFER_PAUSE_S))
            if self._requeue(task):
                return
            chosen = None  # it could not go back: run the delivered node run here
        if chosen is not None and chosen.queue != queue:  # another queue's run: this queue keeps its wake-up
            self._requeue(task)
        if chosen is None and self.scheduler.leased_elsewhere(task.node_run_id):
            return  # another worker picked the delivered run and is about to claim it
        batch = [chosen] if chosen is not None else []
        try:
            # batches are of one model's runs (a node type's batch key names its model): other queues never batch
            if chosen is not None and self.run_batch is not None and self.batch_key is not None and model_of(chosen.queue) is not None:
                try:
                    batch += self.scheduler.companions(chosen, self.batch_key)
                except Exception:
                    log.warning("could not gather a batch for node run %s; it runs alone", chosen.node_run_id, exc_info=True)
            if len(batch) > 1:
                self.run_batch(batch)
            else:
                self.run(chosen or task)
        finally:
            for t in batch:
                self.scheduler.release(t.node_run_id)

    def _requeue(self, task: NodeTask) -> bool:
        if self.requeue is None:
            return False
        try:
            self.requeue(task)
            return True
        except Exception:  # the broker is away
            log.warning("could not hand node run %s back to queue %s", task.node_run_id, task.queue, exc_info=True)
            return False
