"""ExecutionService: the one entry point every dialect uses to create and read work."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import sqlalchemy as sa

from pixelmill import moderation
from pixelmill.accounts import idempotency, ledger
from pixelmill.accounts.admission import AdmissionPolicy
from pixelmill.accounts.keys import Principal
from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.estimates import RunTimes, estimate_start_at
from pixelmill.engine.graph import PreparedGraph, cache_key, prepare
from pixelmill.engine.lifecycle import Lifecycle, NodeTask
from pixelmill.engine.publisher import publish_all
from pixelmill.engine.scheduler import RequestScheduling, Scheduler, WaitingRun, requested_scheduling
from pixelmill.engine.views import EventView, ExecutionView, NodeRunView, PreviewView, load_events, load_execution, load_previews
from pixelmill.errors import InsufficientCredits, NotFound, ServiceUnavailable
from pixelmill.ids import new_id
from pixelmill.nodes.base import NodeRegistry
from pixelmill.nodes.services import NodeServices
from pixelmill.store.db import Database
from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import executions, node_runs

log = logging.getLogger("pixelmill.engine")



# node runs queued before a moment: a queue position in arrival order
_QUEUED_BEFORE = prebuilt(
    sa.select(sa.func.count()).select_from(node_runs)
    .where(node_runs.c.status == NodeStatus.QUEUED, node_runs.c.queued_at < sa.bindparam("before"))
)


#: built once: building an insert of this many columns per call costs more than executing it
INSERT_EXECUTION = prebuilt(sa.insert(executions))
INSERT_NODE_RUN = prebuilt(sa.insert(node_runs))


class FinishedViews:
    """A bounded, thread-safe LRU of finished executions' views (they never change)."""

    def __init__(self, max_size: int = 20_000):
        self.max_size = max_size
        self._views: OrderedDict[str, ExecutionView] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, execution_id: str) -> ExecutionView | None:
        with self._lock:
            view = self._views.get(execution_id)
            if view is not None:
                self._views.move_to_end(execution_id)
            return view

    def discard(self, execution_id: str | None = None) -> None:
        """Forget one execution's view (its stored record changed), or every view when None."""
        with self._lock:
            if execution_id is None:
                self._views.clear()
            else:
                self._views.pop(execution_id, None)

    def put(self, view: ExecutionView) -> None:
        with self._lock:
            self._views[view.id] = view
            if len(self._views) > self.max_size:
                self._views.popitem(last=False)


class LiveViews:
    """Recent views of unfinished executions, each kept until a notice says it changed, ``ttl_s`` at most
    (``queued_ttl_s`` for a queued one).

    A poll of a running execution is answered from here (:meth:`ExecutionService.cached`)
    instead of the database.  Every state change an execution logs reaches every process as
    a notice (:mod:`pixelmill.engine.notify`) and drops its view, so a poll never shows an
    execution unfinished after this process heard it finish; a lost notice costs at most
    ``ttl_s`` of staleness (progress and queue position may be that old).  A queued execution
    changes by notices only (it starts, it is cancelled); what moves meanwhile is its queue
    position, which costs a pass over the waiting runs to work out, so its view is kept longer
    (``queued_ttl_s``) and a crowd polling a long queue does not recompute it.  A view read
    before the latest notice about its execution is never stored.
    """

    def __init__(self, ttl_s: float, queued_ttl_s: float | None = None, max_size: int = 20_000):
        self.ttl_s = ttl_s
        self.queued_ttl_s = ttl_s if queued_ttl_s is None else queued_ttl_s
        self.max_size = max_size
        self._views: OrderedDict[str, tuple[float, ExecutionView]] = OrderedDict()
        self._changed: OrderedDict[str, float] = OrderedDict()  # the latest notice per execution (bounded)
        self._lock = threading.Lock()

    @staticmethod
    def stamp() -> float:
        """Take before reading what a view is built from; give it to :meth:`put`."""
        return time.monotonic()

    def get(self, execution_id: str) -> ExecutionView | None:
        with self._lock:
            entry = self._views.get(execution_id)
            if entry is None:
                return None
            ttl = self.queued_ttl_s if entry[1].status == ExecutionStatus.QUEUED else self.ttl_s
            if time.monotonic() - entry[0] > ttl:
                del self._views[execution_id]
                return None
            return entry[1]

    def put(self, view: ExecutionView, read_at: float) -> None:
        if self.ttl_s <= 0 or view.status.is_terminal():
            return
        with self._lock:
            if self._changed.get(view.id, float("-inf")) >= read_at:
                return  # it changed while it was read
            self._views[view.id] = (read_at, view)
            self._views.move_to_end(view.id)
            if len(self._views) > self.max_size:
                self._views.popitem(last=False)

    def changed(self, execution_id: str) -> None:
        with self._lock:
            self._views.pop(execution_id, None)
            self._changed[execution_id] = time.monotonic()
            self._changed.move_to_end(execution_id)
            if len(self._changed) > self.max_size:
                self._changed.popitem(last=False)


def _visible(view: ExecutionView, account_id: str | None) -> ExecutionView:
    """``view`` if the account may see it (None: any account) and it has not expired; else NotFound."""
    if (account_id is not None and view.account_id != account_id) or view.expires_at < time.time():
        raise NotFound("Task not found", code="execution_not_found")
    return view


@dataclass
class Submission:
    principal: Principal
    graph: dict[str, Any]
    dialect: str
    label: str
    request: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_events: list[str] | None = None
    workflow_id: str | None = None
    batch_id: str | None = None
    #: scheduling the client asked for; None: what the request's headers said (``request_scheduling``)
    scheduling: RequestScheduling | None = None


class ExecutionService:
    def __init__(
        self,
        db: Database,
        nodes: NodeRegistry,
        services: NodeServices,
        enqueue: Callable[[NodeTask], None],
        lifecycle: Lifecycle,
        result_ttl_s: int = 24 * 3600,
        admission: AdmissionPolicy | None = None,
        scheduler: Scheduler | None = None,
        live_view_ttl_s: float = 0.5,
        queued_view_ttl_s: float = 2.0,
    ):
        self.db = db
        self.nodes = nodes
        self.services = services
        self.enqueue = enqueue
        self.lifecycle = lifecycle
        self.result_ttl_s = result_ttl_s
        self.admission = admission or AdmissionPolicy()
        self.scheduler = scheduler
        self.run_times = RunTimes(db)
        self._finished = FinishedViews()
        self._live = LiveViews(live_view_ttl_s, queued_view_ttl_s)

    def prepare(self, graph: dict[str, Any]) -> PreparedGraph:
        return prepare(graph, self.nodes, self.services)

    def submit(self, sub: Submission, prepared: PreparedGraph | None = None, queue_state: bool = True) -> ExecutionView:
        """Create, price and queue an execution; its view.

        Under an ``Idempotency-Key`` (:data:`pixelmill.accounts.idempotency.current_claim`)
        the execution is written into the key's record in the same transaction, and a
        retry of a request whose execution exists gets that execution back: nothing
        new is created, run or charged (the same holds for :meth:`submit_many`).
        ``queue_state=False``: the answer shows no queue position or estimated start (a
        dialect whose submit answer has neither: its polls read them)."""
        return self.submit_many([(sub, prepared)], queue_state)[0]

    def submit_many(self, items: list[tuple[Submission, PreparedGraph | None]], queue_state: bool = True) -> list[ExecutionView]:
        """Create several executions of one account all or nothing (a workflow batch).

        One transaction: the credit check is for the sum of their estimates (402 naming
        each run's cost when short), the active-task cap counts the runs already added,
        and any refusal leaves nothing created, held or queued.
        """
        if not items:
            return []
        account = items[0][0].principal.account_id
        claim = idempotency.current_claim.get()
        if claim is not None and claim.resumed:  # a retry: the first request's executions exist
            existing = self._resumed(claim, account, len(items))
            if existing is not None:
                return existing
        prepared_items = [(sub, prepared or self.prepare(sub.graph)) for sub, prepared in items]
        principal = prepared_items[0][0].principal
        if any(sub.principal.account_id != account for sub, _ in prepared_items):
            raise ValueError("submit_many takes the executions of one account")
        tasks: list[NodeTask] = []
        ids: list[str] = []
        views: list[ExecutionView | None] = []
        binding = claim is not None and claim.execution_id is None
        read_at = self._live.stamp()
        with claim.lock if binding else contextlib.nullcontext(), self.db.transaction() as conn:
            ledger.lock_account(conn, account)
            # admission: checks that consume nothing run now; what consumes quota
            # (execution windows) runs only once the credit check has passed
            self.admission.check(conn, principal)
            # the tolerance an operator pinned for the account: read only when a node has one to override
            tolerant = any(hasattr(node.params, "safety_tolerance") for _, prepared in prepared_items for node in prepared.nodes.values())
            override = moderation.account_override(conn, account) if tolerant else None
            verdicts = [self._moderate(prepared, override) for _, prepared in prepared_items]
            needed = sum(ledger.to_micro(prepared.cost) for (_, prepared), v in zip(prepared_items, verdicts) if v is None)
            available = ledger.balance_micro(conn, account)
            if needed > available:
                cost, have = ledger.from_micro(needed), ledger.from_micro(available)
                details: dict[str, Any] = dict(insufficientCredits=True, requiredCredits=cost, availableCredits=have)
                if len(prepared_items) == 1:
                    details["breakdown"] = prepared_items[0][1].breakdown()
                    message = f"This request needs {cost} credits; {have} are available"
                else:
                    details["runs"] = [
                        {"batchIndex": i, "requiredCredits": p.cost, "breakdown": p.breakdown()} for i, (_, p) in enumerate(prepared_items)
                    ]
                    message = f"These {len(prepared_items)} runs need {cost} credits together; {have} are available"
                raise InsufficientCredits(message, **details)
            for i, (sub, prepared) in enumerate(prepared_items):
                if i:
                    self.admission.check(conn, principal)  # the cap counts the runs added above
                self.admission.consume(conn, principal)
                eid = new_id()
                ids.append(eid)
                tasks.extend(self._insert(conn, eid, sub, prepared, views, safety_override=override, moderated=verdicts[i]))
            if binding:  # the key's record names this request's work, committed with it or not at all
                idempotency.bind(conn, claim, ids[0])
        if binding:
            claim.execution_id = ids[0]
        try:  # after commit: a worker never sees an uncommitted row
            publish_all(self.enqueue, tasks)
        except Exception as exc:  # broker unreachable: fail them whole, release the holds, tell the client
            log.error("could not queue executions %s: %s", ", ".join(ids), exc)
            message = "The job queue could not be reached; nothing was run and no credits were charged"
            with self.db.transaction() as conn:
                for eid in ids:
                    self.lifecycle.finish_execution(conn, eid, ExecutionStatus.FAILED, "queue_unavailable", message)
            raise ServiceUnavailable(  # answered with Retry-After: 5
                "The job queue is unavailable; nothing was charged, retry shortly",
                code="queue_unavailable",
                execution_id=ids[0],
                retry_after=5,
            ) from exc
        # the answers are what was written, nothing read back (a refused prompt's failed execution aside);
        # queue positions are read after the commit, outside the write lock, from the runs just queued
        if queue_state and any(view is not None for view in views):
            with self.db.read() as conn:
                for view in views:
                    if view is not None:
                        self._with_queue_state(conn, view)
                        self._live.put(view, read_at)
        return [view if view is not None else self.get(account, eid) for view, eid in zip(views, ids)]

    def _moderate(self, prepared: PreparedGraph, override: int | None) -> moderation.Verdict | None:
        """The prompt policy's refusal of any node's prompt at its tolerance (the account's pinned one if set)."""
        moderator = getattr(self.services, "moderator", None)
        if moderator is None:
            return None
        for node in prepared.nodes.values():
            tolerance = getattr(node.params, "safety_tolerance", None)
            prompt = getattr(node.params, "prompt", None)
            if tolerance is None or not isinstance(prompt, str):
                continue
            verdict = moderator.check_prompt(prompt, moderation.effective_tolerance(tolerance, override))
            if verdict is not None:
                return verdict
        return None

    def _insert(
        self,
        conn,
        eid: str,
        sub: Submission,
        prepared: PreparedGraph,
        views: list[ExecutionView | None],
        safety_override: int | None = None,
        moderated: moderation.Verdict | None = None,
    ) -> list[NodeTask]:
        """Write one execution, its node runs and its hold; the node tasks to queue once committed.

        Appends the execution's view, built from what was written, to ``views``.
        A request the prompt policy refused (``moderated``) is written already
        failed, with nothing held and nothing to queue (and None appended)."""
        account = sub.principal.account_id
        cost = 0.0 if moderated else prepared.cost
        now = time.time()  # each execution its own time: list cursors order them
        tasks: list[NodeTask] = []
        wanted = sub.scheduling or requested_scheduling() or RequestScheduling()
        priority = wanted.priority or 0
        if wanted.priority is not None and self.scheduler is not None:
            priority = self.scheduler.check_priority(sub.principal.plan, wanted.priority)
        start_by = now + wanted.start_within_s if wanted.start_within_s else None
        deadline_at = now + wanted.cancel_after_s if wanted.cancel_after_s else None
        graph_json = dict(prepared.raw)
        graph_json["order"] = list(prepared.nodes)
        conn.execute(
            INSERT_EXECUTION,
            dict(
                id=eid,
                account_id=account,
                dialect=sub.dialect,
                label=sub.label,
                status=ExecutionStatus.QUEUED,
                graph=graph_json,
                request=sub.request,
                created_at=now,
                expires_at=now + min(self.result_ttl_s, wanted.retention_s or self.result_ttl_s),  # a client may ask for less
                cost_estimate_micro=ledger.to_micro(cost),
                cancel_requested=False,
                webhook_url=sub.webhook_url,
                webhook_secret=sub.webhook_secret,
                webhook_events=sub.webhook_events,
                workflow_id=sub.workflow_id,
                batch_id=sub.batch_id,
                priority=priority,
                start_by=start_by,
                deadline_at=deadline_at,
            )
        )
        keys: dict[str, str] = {}
        written: list[NodeRunView] = []
        rows: list[dict] = []
        for node_id, node in prepared.nodes.items():
            params = node.params.model_dump(mode="json")
            if safety_override is not None and "safety_tolerance" in params:
                params["safety_tolerance"] = safety_override
            seed = None
            if node.type.uses_seed:
                seed = params.get("seed")
                if seed is None:
                    seed = random.SystemRandom().randrange(0, 2**32)
                    params["seed"] = seed
            key = None
            if node.type.deterministic:
                key = cache_key(node.type.name, params, seed, [keys.get(s, "") for s in sorted(node.depends_on)])
                keys[node_id] = key
            queue = node.type.queue_name(node.params)
            runnable = not node.links
            run_id = new_id()
            rows.append(
                dict(
                    id=run_id,
                    execution_id=eid,
                    node_id=node_id,
                    node_type=node.type.name,
                    status=NodeStatus.QUEUED if runnable else NodeStatus.WAITING,
                    params=params,
                    queue=queue,
                    links={k: list(v) for k, v in node.links.items()},
                    queued_at=now if runnable else None,
                    progress=0.0,
                    seed=seed,
                    cost_micro=ledger.to_micro(node.cost),
                    attempts=0,
                    cache_key=key,
                    cached=False,
                    account_id=account,
                    priority=priority,
                )
            )
            if runnable:
                tasks.append(NodeTask(run_id, eid, queue))
            written.append(
                NodeRunView(
                    id=run_id, node_id=node_id, node_type=node.type.name, status=NodeStatus.QUEUED if runnable else NodeStatus.WAITING,
                    params=dict(params), progress=0.0,
                    queued_at=now if runnable else None, started_at=None, finished_at=None, error_code=None,
                    error_message=None, seed=seed, cost=node.cost, cached=False,
                    links={k: (src, out) for k, (src, out) in node.links.items()}, queue=queue,
                )
            )
        conn.execute(INSERT_NODE_RUN, rows)  # one statement for every node
        if moderated is not None:
            self.lifecycle.event(conn, eid, "execution.created", {"cost": 0.0})
            self.lifecycle.finish_execution(conn, eid, ExecutionStatus.FAILED, moderated.code, moderated.reason)
            views.append(None)
            return []
        views.append(
            ExecutionView(
                id=eid, account_id=account, dialect=sub.dialect, label=sub.label, status=ExecutionStatus.QUEUED, request=sub.request,
                created_at=now, started_at=None, finished_at=None, expires_at=now + self.result_ttl_s, error_code=None,
                error_message=None, cost_estimate=cost, cost_actual=None, cancel_requested=False, webhook_url=sub.webhook_url,
                workflow_id=sub.workflow_id, batch_id=sub.batch_id, nodes=written, priority=priority,
            )
        )
        if cost > 0:
            ledger.hold(conn, account, eid, cost)
        self.lifecycle.event(conn, eid, "execution.created", {"cost": cost})
        return tasks

    def _resumed(self, claim: idempotency.Claim, account_id: str, count: int) -> list[ExecutionView] | None:
        """The executions a retried request created the first time (with its batch, when it made several)."""
        if count == 1:
            return [self.get(account_id, claim.execution_id)]
        with self.db.read() as conn:
            batch = conn.execute(sa.select(executions.c.batch_id).where(executions.c.id == claim.execution_id)).scalar()
            if batch is None:
                return None
            ids = conn.execute(
                sa.select(executions.c.id)
                .where(executions.c.batch_id == batch, executions.c.account_id == account_id)
                .order_by(executions.c.created_at, executions.c.id)
            ).scalars().all()
        return [self.get(account_id, i) for i in ids] if len(ids) == count else None

    def get(self, account_id: str | None, execution_id: str) -> ExecutionView:
        """The execution if it exists, belongs to the account and has not expired; else NotFound.

        Read from the database unless it is finished and in memory."""
        view = self.finished(account_id, execution_id)
        if view is not None:
            return view
        read_at = self._live.stamp()
        with self.db.read() as conn:
            view = load_execution(conn, execution_id, account_id)
            if view is None or view.expires_at < time.time():
                raise NotFound("Task not found", code="execution_not_found")
            if not view.status.is_terminal():
                self._with_queue_state(conn, view)
                self._live.put(view, read_at)
                return view
        self._finished.put(view)
        return view

    def cached(self, account_id: str | None, execution_id: str) -> ExecutionView | None:
        """The execution from memory (no I/O): finished, or unfinished and read recently with no
        change heard since (:class:`LiveViews`); None when not in memory: ask :meth:`get`.
        NotFound for another account's execution or an expired one."""
        view = self.finished(account_id, execution_id)
        if view is not None:
            return view
        view = self._live.get(execution_id)
        return None if view is None else _visible(view, account_id)

    def changed(self, execution_id: str) -> None:
        """A notice said the execution changed: its next read goes to the database."""
        self._live.changed(execution_id)

    def finished(self, account_id: str | None, execution_id: str) -> ExecutionView | None:
        """A finished execution from memory (no I/O); None when not cached: ask :meth:`get`.

        Finished executions never change, so their views are kept (bounded, least
        recently used dropped); expiry is checked on every read.
        """
        view = self._finished.get(execution_id)
        return None if view is None else _visible(view, account_id)

    def forget(self, execution_id: str) -> None:
        """Drop a finished execution's view from memory: its files were deleted, the next read loads it again."""
        self._finished.discard(execution_id)
        self._live.changed(execution_id)

    def _with_queue_state(self, conn, view: ExecutionView) -> ExecutionView:
        """Set an unfinished execution's queue position and estimated start (as every view shows them)."""
        if not view.status.is_terminal():
            view.queue_position = self._queue_position(conn, view)
            queued = [n.queue for n in view.nodes if n.status == NodeStatus.QUEUED]
            view.estimated_start_at = estimate_start_at(conn, view, mean_s=lambda: self.run_times.mean(queued[0] if queued else None))
        return view

    def previews(self, account_id: str | None, execution_id: str, after_seq: int = 0) -> list[PreviewView]:
        """Intermediate images the execution's nodes published after ``after_seq`` (NotFound as ``get``)."""
        with self.db.read() as conn:
            owner = sa.select(executions.c.id).where(executions.c.id == execution_id, executions.c.expires_at >= time.time())
            if account_id is not None:
                owner = owner.where(executions.c.account_id == account_id)
            if conn.execute(owner).first() is None:
                raise NotFound("Task not found", code="execution_not_found")
            return load_previews(conn, execution_id, after_seq)

    def events(self, execution_id: str, after_seq: int = 0, limit: int = 500) -> list[EventView]:
        """The execution's log after ``after_seq`` (the caller checked it may see the execution)."""
        with self.db.read() as conn:
            return load_events(conn, execution_id, after_seq, limit)

    def _queue_position(self, conn, view: ExecutionView) -> int | None:
        queued = [n for n in view.nodes if n.status == NodeStatus.QUEUED]
        if not queued:
            return 0 if view.status == ExecutionStatus.RUNNING else None
        # its first waiting run as the view has it (written or read: not read again), as the scheduler
        # orders an execution's runs: oldest, then lowest id
        first = min(queued, key=lambda n: (n.queued_at or 0.0, n.id))
        if self.scheduler is not None and self.scheduler.fair:  # the scheduler's order, not arrival order
            head = WaitingRun(first.id, first.queue or "default", first.queued_at, view.account_id, view.priority)
            return self.scheduler.position(conn, view.id, head)
        return int(conn.execute(_QUEUED_BEFORE, {"before": first.queued_at or 0}).scalar())

    def graph(self, account_id: str | None, execution_id: str) -> dict[str, Any]:
        """The graph the execution ran, ``{"nodes": {…}}`` as submitted (what a dialect's recipe built, a
        workflow's graph with its inputs filled in): submitting it again re-runs it."""
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(executions.c.account_id, executions.c.expires_at, executions.c.graph).where(executions.c.id == execution_id)
            ).first()
        if row is None or (account_id is not None and row.account_id != account_id) or row.expires_at < time.time():
            raise NotFound("Task not found", code="execution_not_found")
        return {"nodes": (row.graph or {}).get("nodes") or {}}

    def list(
        self, account_id: str, limit: int = 20, before: float | None = None, workflow_id: str | None = None,
        batch_id: str | None = None, status: ExecutionStatus | None = None,
    ) -> list[ExecutionView]:
        with self.db.read() as conn:
            q = sa.select(executions.c.id).where(executions.c.account_id == account_id)
            if status is not None:
                q = q.where(executions.c.status == status)
            if before is not None:
                q = q.where(executions.c.created_at < before)
            if workflow_id:
                q = q.where(executions.c.workflow_id == workflow_id)
            if batch_id:
                q = q.where(executions.c.batch_id == batch_id)
            ids = conn.execute(q.order_by(executions.c.created_at.desc()).limit(limit)).scalars().all()
            return [self._with_queue_state(conn, v) for v in (load_execution(conn, i) for i in ids) if v is not None]

    def cancel(self, account_id: str, execution_id: str) -> ExecutionView:
        """Cancel a queued or running execution.  Running diffusion stops at its next step."""
        with self.db.transaction() as conn:
            view = load_execution(conn, execution_id, account_id)
            if view is None:
                raise NotFound("Execution not found", code="execution_not_found")
            if not view.status.is_terminal():
                conn.execute(sa.update(executions).where(executions.c.id == execution_id).values(cancel_requested=True))
                if not any(n.status == NodeStatus.RUNNING for n in view.nodes):
                    self.lifecycle.finish_execution(conn, execution_id, ExecutionStatus.CANCELLED, "cancelled", "Cancelled by the client")
                else:
                    self.lifecycle.event(conn, execution_id, "execution.cancel_requested", {})
        return self.get(account_id, execution_id)

    def recover(self) -> int:
        """Re-queue node runs left queued or running by a stopped process (embedded mode start-up)."""
        tasks = []
        with self.db.transaction() as conn:
            rows = conn.execute(
                sa.select(node_runs.c.id, node_runs.c.execution_id, node_runs.c.status, node_runs.c.queue)
                .join(executions, executions.c.id == node_runs.c.execution_id)
                .where(executions.c.status.in_(ExecutionStatus.active()), node_runs.c.status.in_([NodeStatus.QUEUED, NodeStatus.RUNNING]))
                .order_by(node_runs.c.queued_at)
            ).all()
            for r in rows:
                if r.status == NodeStatus.RUNNING:
                    conn.execute(sa.update(node_runs).where(node_runs.c.id == r.id).values(status=NodeStatus.QUEUED, progress=0.0, picked_at=None))
                else:  # a pick lease of the stopped process is void
                    conn.execute(sa.update(node_runs).where(node_runs.c.id == r.id).values(picked_at=None))
                tasks.append(NodeTask.of(r))
        for t in tasks:
            self.enqueue(t)
        return len(tasks)
