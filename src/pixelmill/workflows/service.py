"""Workflow CRUD, input substitution and execution (single, batch, dry run)."""

from __future__ import annotations

import copy
import time
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pixelmill.accounts.keys import Principal
from pixelmill.engine.graph import GraphProblems, PreparedGraph
from pixelmill.engine.service import ExecutionService, Submission
from pixelmill.engine.views import ExecutionView
from pixelmill.errors import InvalidInput, NotFound
from pixelmill.ids import new_id
from pixelmill.store.db import Database
from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import workflows

INPUT_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool}


class WorkflowInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(default="string", pattern="^(string|integer|number|boolean)$")
    default: Any = None
    required: bool = False
    description: str | None = None


class WorkflowDefinition(BaseModel):
    """What a client sends to create or replace a workflow."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    inputs: dict[str, WorkflowInput] = Field(default_factory=dict)
    nodes: dict[str, Any]
    webhook_url: str | None = Field(default=None, max_length=2083)


def substitute(nodes: dict[str, Any], declared: dict[str, WorkflowInput], values: dict[str, Any]) -> dict[str, Any]:
    """Replace every ``{"$input": name}`` in node params with the given or default value."""
    problems = []
    for name in values:
        if name not in declared:
            problems.append({"node": None, "loc": ["inputs", name], "msg": f"unknown input {name!r}; declared: {', '.join(declared) or 'none'}"})
    resolved: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in values:
            v = values[name]
            want = INPUT_TYPES[spec.type]
            if not isinstance(v, want) or (spec.type in ("integer", "number") and isinstance(v, bool)):
                problems.append({"node": None, "loc": ["inputs", name], "msg": f"input {name!r} must be a {spec.type}"})
            resolved[name] = v
        elif spec.default is not None:
            resolved[name] = spec.default
        elif spec.required:
            problems.append({"node": None, "loc": ["inputs", name], "msg": f"input {name!r} is required"})
    if problems:
        raise GraphProblems(problems=problems)

    def walk(value):
        if isinstance(value, dict):
            if set(value) == {"$input"}:
                name = value["$input"]
                if not isinstance(name, str) or name not in declared:
                    problems.append({"node": None, "loc": ["nodes"], "msg": f"references undeclared input {name!r}"})
                    return None
                return resolved.get(name)
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    out = {}
    for node_id, spec in nodes.items():
        spec = copy.deepcopy(spec)
        if isinstance(spec, dict) and isinstance(spec.get("params"), dict):
            spec["params"] = {k: v for k, v in walk(spec["params"]).items() if v is not None}
        out[node_id] = spec
    if problems:
        raise GraphProblems(problems=problems)
    return out


# A 1x1 PNG: what a required image input stands for while a definition is checked
_SAMPLE_IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"
_SAMPLE_PARAMS = {("load_image", "data"): _SAMPLE_IMAGE, ("load_image", "url"): "https://example.com/input.png"}


def _sample_values(nodes: dict[str, Any]) -> dict[str, Any]:
    """Stand-in values for inputs that feed a param needing a well-formed value (an
    image's ``data`` or ``url``), so a definition whose image is a required input
    validates; the real value is checked when the workflow is executed."""
    out: dict[str, Any] = {}
    for spec in nodes.values():
        params = spec.get("params") if isinstance(spec, dict) else None
        if not isinstance(params, dict):
            continue
        for key, value in params.items():
            if isinstance(value, dict) and set(value) == {"$input"} and isinstance(value["$input"], str):
                sample = _SAMPLE_PARAMS.get((spec.get("type"), key))
                if sample is not None:
                    out.setdefault(value["$input"], sample)
    return out


#: an account's workflow, unless deleted (built once: it is read on every execute)
_WORKFLOW = prebuilt(
    sa.select(workflows).where(
        workflows.c.id == sa.bindparam("id"), workflows.c.account_id == sa.bindparam("account"), workflows.c.deleted_at.is_(None)
    )
)


class WorkflowService:
    def __init__(self, db: Database, executions: ExecutionService):
        self.db = db
        self.executions = executions

    # --- CRUD -------------------------------------------------------------
    def parse(self, body: Any) -> WorkflowDefinition:
        try:
            return WorkflowDefinition.model_validate(body)
        except ValidationError as e:
            raise InvalidInput(
                "The workflow definition is invalid",
                code="invalid_workflow",
                problems=[{"node": None, "loc": list(err["loc"]), "msg": err["msg"]} for err in e.errors()],
            ) from None

    def validate(self, definition: WorkflowDefinition) -> PreparedGraph:
        """Check the graph with each input at its default (or a placeholder of its type)."""
        placeholders = {"string": "", "integer": 0, "number": 0.0, "boolean": False}
        samples = _sample_values(definition.nodes)
        values = {
            n: s.default if s.default is not None else samples.get(n, placeholders[s.type]) for n, s in definition.inputs.items()
        }
        return self.executions.prepare({"nodes": substitute(definition.nodes, definition.inputs, values)})

    def create(self, principal: Principal, body: Any) -> dict:
        definition = self.parse(body)
        self.validate(definition)
        wid, now = new_id(), time.time()
        with self.db.transaction() as conn:
            conn.execute(
                sa.insert(workflows).values(
                    id=wid, account_id=principal.account_id, name=definition.name, description=definition.description,
                    graph={"nodes": definition.nodes}, inputs={k: v.model_dump() for k, v in definition.inputs.items()},
                    webhook_url=definition.webhook_url, version=1, created_at=now, updated_at=now,
                )
            )
        return self.get(principal, wid)

    def update(self, principal: Principal, workflow_id: str, body: Any) -> dict:
        definition = self.parse(body)
        self.validate(definition)
        with self.db.transaction() as conn:
            n = conn.execute(
                sa.update(workflows)
                .where(workflows.c.id == workflow_id, workflows.c.account_id == principal.account_id, workflows.c.deleted_at.is_(None))
                .values(
                    name=definition.name, description=definition.description, graph={"nodes": definition.nodes},
                    inputs={k: v.model_dump() for k, v in definition.inputs.items()}, webhook_url=definition.webhook_url,
                    version=workflows.c.version + 1, updated_at=time.time(),
                )
            ).rowcount
        if not n:
            raise NotFound("Workflow not found", code="workflow_not_found")
        return self.get(principal, workflow_id)

    def delete(self, principal: Principal, workflow_id: str) -> None:
        with self.db.transaction() as conn:
            n = conn.execute(
                sa.update(workflows)
                .where(workflows.c.id == workflow_id, workflows.c.account_id == principal.account_id, workflows.c.deleted_at.is_(None))
                .values(deleted_at=time.time())
            ).rowcount
        if not n:
            raise NotFound("Workflow not found", code="workflow_not_found")

    def _row(self, principal: Principal, workflow_id: str):
        with self.db.read() as conn:
            row = conn.execute(_WORKFLOW, {"id": workflow_id, "account": principal.account_id}).first()
        if row is None:
            raise NotFound("Workflow not found", code="workflow_not_found")
        return row

    def get(self, principal: Principal, workflow_id: str) -> dict:
        return _render(self._row(principal, workflow_id))

    def list(self, principal: Principal, limit: int = 20, offset: int = 0) -> tuple[list[dict], int]:
        with self.db.read() as conn:
            where = sa.and_(workflows.c.account_id == principal.account_id, workflows.c.deleted_at.is_(None))
            total = conn.execute(sa.select(sa.func.count()).select_from(workflows).where(where)).scalar()
            rows = conn.execute(sa.select(workflows).where(where).order_by(workflows.c.created_at.desc()).limit(limit).offset(offset)).all()
        return [_render(r) for r in rows], int(total)

    # --- execution --------------------------------------------------------
    def _definition(self, row) -> WorkflowDefinition:
        return WorkflowDefinition(name=row.name, inputs=row.inputs, nodes=row.graph["nodes"], webhook_url=row.webhook_url)

    def estimate(self, principal: Principal, workflow_id: str, inputs: dict[str, Any]) -> PreparedGraph:
        d = self._definition(self._row(principal, workflow_id))
        return self.executions.prepare({"nodes": substitute(d.nodes, d.inputs, inputs)})

    def execute(
        self, principal: Principal, workflow_id: str, input_sets: list[dict[str, Any]], webhook_url: str | None = None,
        webhook_events: list[str] | None = None, dialect: str = "workflow",
    ) -> tuple[str | None, list[ExecutionView]]:
        """Run the workflow once per input set (validated all first), all or nothing; several sets share a batch id."""
        row = self._row(principal, workflow_id)
        d = self._definition(row)
        prepared = []
        for i, values in enumerate(input_sets):
            try:
                graph = {"nodes": substitute(d.nodes, d.inputs, values)}
                prepared.append((graph, self.executions.prepare(graph)))
            except GraphProblems as e:
                if len(input_sets) > 1:
                    for p in e.details.get("problems", []):
                        p["batchIndex"] = i
                raise
        batch_id = new_id() if len(input_sets) > 1 else None
        views = self.executions.submit_many(
            [
                (
                    Submission(
                        principal=principal, graph=graph, dialect=dialect, label=row.name, request={"inputs": values},
                        webhook_url=webhook_url or row.webhook_url, webhook_events=webhook_events,
                        workflow_id=row.id, batch_id=batch_id,
                    ),
                    prep,
                )
                for (graph, prep), values in zip(prepared, input_sets)
            ]
        )
        return views[0].batch_id, views  # a retried request gets its first executions back, with their batch


def _render(row) -> dict:
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "inputs": row.inputs,
        "nodes": row.graph["nodes"],
        "webhook_url": row.webhook_url,
        "version": row.version,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }
