"""Read models of executions, built from the store; what every dialect renders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.accounts.ledger import from_micro
from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.models.imageops import extension_for
from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import execution_events, executions, files, node_runs



@dataclass
class FileView:
    id: str
    content_type: str
    width: int | None
    height: int | None
    size: int
    meta: dict[str, Any]

    @property
    def filename(self) -> str:
        return f"{self.id}.{extension_for(self.content_type)}"


@dataclass
class NodeRunView:
    id: str
    node_id: str
    node_type: str
    status: NodeStatus
    params: dict[str, Any]
    progress: float
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    error_code: str | None
    error_message: str | None
    seed: int | None
    cost: float
    cached: bool
    files: list[FileView] = field(default_factory=list)
    links: dict[str, tuple[str, str]] = field(default_factory=dict)
    queue: str = "default"  # the job queue it runs from (one per model)
    """Input name -> (upstream node id, output name)."""


@dataclass
class ExecutionView:
    id: str
    account_id: str
    dialect: str
    label: str
    status: ExecutionStatus
    request: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float
    error_code: str | None
    error_message: str | None
    cost_estimate: float
    cost_actual: float | None
    cancel_requested: bool
    webhook_url: str | None
    workflow_id: str | None
    batch_id: str | None
    nodes: list[NodeRunView]
    priority: int = 0  # the request's priority within its account (``Prefer: priority``)
    queue_position: int | None = None
    estimated_start_at: float | None = None

    @property
    def progress(self) -> float:
        if not self.nodes:
            return 0.0
        return round(sum(1.0 if n.status.is_terminal() else n.progress for n in self.nodes) / len(self.nodes), 4)

    @property
    def cost(self) -> float:
        return self.cost_actual if self.cost_actual is not None else self.cost_estimate

    def sink_nodes(self) -> list[NodeRunView]:
        """Nodes nothing else consumes: the execution's results."""
        consumed = set()
        for n in self.nodes:
            for src, _out in n.links.values():
                consumed.add(src)
        return [n for n in self.nodes if n.node_id not in consumed]

    def result_files(self) -> list[FileView]:
        return [f for n in self.sink_nodes() for f in n.files]


@dataclass
class PreviewView:
    """One intermediate image set a node published while it ran (a ``node.preview`` event)."""

    seq: int  # the event's position in the execution's log
    node_id: str
    index: int  # 0-based, per node
    files: list[FileView]


@dataclass
class EventView:
    """One entry of an execution's event log; ``preview`` is set on ``node.preview`` events."""

    seq: int
    event: str
    data: dict[str, Any]
    created_at: float
    preview: PreviewView | None = None


def load_events(conn: Connection, execution_id: str, after_seq: int = 0, limit: int = 500) -> list[EventView]:
    """Up to ``limit`` events logged after ``after_seq``, oldest first, previews with their files."""
    rows = conn.execute(
        sa.select(execution_events)
        .where(execution_events.c.execution_id == execution_id, execution_events.c.seq > after_seq)
        .order_by(execution_events.c.seq)
        .limit(limit)
    ).all()
    events = [EventView(r.seq, r.event, r.data or {}, r.created_at) for r in rows]
    if any(e.event == "node.preview" for e in events):
        previews = {p.seq: p for p in load_previews(conn, execution_id, after_seq)}
        for e in events:
            e.preview = previews.get(e.seq)
    return events


def load_previews(conn: Connection, execution_id: str, after_seq: int = 0) -> list[PreviewView]:
    """The execution's previews logged after ``after_seq``, oldest first."""
    rows = conn.execute(
        sa.select(execution_events.c.seq, execution_events.c.data)
        .where(
            execution_events.c.execution_id == execution_id,
            execution_events.c.event == "node.preview",
            execution_events.c.seq > after_seq,
        )
        .order_by(execution_events.c.seq)
    ).all()
    wanted = [fid for r in rows for fid in (r.data or {}).get("files", [])]
    by_id = {f.id: f for f in conn.execute(sa.select(files).where(files.c.id.in_(wanted)))} if wanted else {}
    return [
        PreviewView(
            seq=r.seq,
            node_id=r.data.get("node", ""),
            index=int(r.data.get("index", 0)),
            files=[
                FileView(f.id, f.content_type, f.width, f.height, f.size, f.meta or {})
                for f in (by_id.get(fid) for fid in r.data.get("files", []))
                if f is not None
            ],
        )
        for r in rows
    ]


# built once: a read binds parameters to these instead of building statements per request
_EXECUTION_BY_ID = prebuilt(sa.select(executions).where(executions.c.id == sa.bindparam("eid")))
_RUNS_OF_EXECUTION = prebuilt(
    sa.select(node_runs).where(node_runs.c.execution_id == sa.bindparam("eid")).order_by(node_runs.c.queued_at.nulls_last(), node_runs.c.id)
)
_FILES_BY_ID = prebuilt(sa.select(files).where(files.c.id.in_(sa.bindparam("ids", expanding=True))))


def load_execution(conn: Connection, execution_id: str, account_id: str | None = None) -> ExecutionView | None:
    row = conn.execute(_EXECUTION_BY_ID, {"eid": execution_id}).first()
    if row is None or (account_id is not None and row.account_id != account_id):
        return None
    runs = conn.execute(_RUNS_OF_EXECUTION, {"eid": execution_id}).all()
    wanted = [fid for r in runs for fid in (r.outputs or {}).get("images", [])]
    file_rows = conn.execute(_FILES_BY_ID, {"ids": wanted}).all() if wanted else []
    by_id = {f.id: f for f in file_rows}
    order = row.graph.get("order") or [r.node_id for r in runs]
    runs_by_node = {r.node_id: r for r in runs}
    nodes = []
    for node_id in order:
        r = runs_by_node.get(node_id)
        if r is None:
            continue
        params = {k: v for k, v in r.params.items() if not k.startswith("__")}
        file_ids = (r.outputs or {}).get("images", [])
        nodes.append(
            NodeRunView(
                id=r.id,
                node_id=r.node_id,
                node_type=r.node_type,
                status=NodeStatus(r.status),
                params=params,
                progress=r.progress or 0.0,
                queued_at=r.queued_at,
                started_at=r.started_at,
                finished_at=r.finished_at,
                error_code=r.error_code,
                error_message=r.error_message,
                seed=r.seed,
                cost=from_micro(r.cost_micro or 0),
                cached=bool(r.cached),
                links={name: (src, out) for name, (src, out) in (r.links or {}).items()},
                queue=r.queue or "default",
                files=[
                    FileView(f.id, f.content_type, f.width, f.height, f.size, f.meta or {})
                    for f in (by_id.get(fid) for fid in file_ids)
                    if f is not None
                ],
            )
        )
    return ExecutionView(
        id=row.id,
        account_id=row.account_id,
        dialect=row.dialect,
        label=row.label,
        status=ExecutionStatus(row.status),
        request=row.request,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        expires_at=row.expires_at,
        error_code=row.error_code,
        error_message=row.error_message,
        cost_estimate=from_micro(row.cost_estimate_micro or 0),
        cost_actual=None if row.cost_actual_micro is None else from_micro(row.cost_actual_micro),
        cancel_requested=bool(row.cancel_requested),
        webhook_url=row.webhook_url,
        workflow_id=row.workflow_id,
        batch_id=row.batch_id,
        nodes=nodes,
        priority=row.priority or 0,
    )
