"""Inbound triggers: a secret URL that starts a workflow without an API key.

Publishing a workflow makes a token (``trg_…``, shown once, stored as SHA-256);
``POST /api/v1/hooks/{token}`` then starts an execution of that workflow billed
to its owner, with the same credit checks, admission and rate limits as a call
made with one of the owner's keys.  Rotating replaces the token; revoking ends
it.  An unknown, rotated or revoked token, or a deleted workflow, is "not found".
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import sqlalchemy as sa

from pixelmill.accounts.admission import AdmissionPolicy
from pixelmill.accounts.keys import Principal
from pixelmill.engine.views import ExecutionView
from pixelmill.errors import Conflict, InvalidInput, NotFound
from pixelmill.ids import new_id
from pixelmill.store.db import Database
from pixelmill.store.tables import accounts, triggers, workflows

if TYPE_CHECKING:
    from pixelmill.workflows.service import WorkflowService

TOKEN_PREFIX = "trg_"
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off", ""})


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hook_path(token: str) -> str:
    return f"/api/v1/hooks/{token}"


@dataclass(frozen=True)
class PublishedTrigger:
    """A trigger just made: the token is in ``url`` and is never shown again."""

    id: str
    workflow_id: str
    token: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "triggerId": self.id,
            "workflowId": self.workflow_id,
            "triggerUrl": hook_path(self.token),
            "token": self.token,
            "createdAt": self.created_at,
        }


@dataclass(frozen=True)
class TriggerTarget:
    """What a valid token resolves to: the owner (as a principal without a key) and the workflow."""

    trigger_id: str
    principal: Principal
    workflow_id: str
    inputs: dict[str, Any]


def coerce_inputs(declared: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn text values (form fields, or strings in JSON) into the declared input types.

    Values that are not strings, and inputs declared as strings, pass unchanged;
    the workflow's own validation reports what is still wrong.
    """
    out: dict[str, Any] = {}
    problems = []
    for name, value in values.items():
        kind = (declared.get(name) or {}).get("type", "string")
        if not isinstance(value, str) or kind == "string":
            out[name] = value
            continue
        text = value.strip()
        try:
            if kind == "integer":
                out[name] = int(text)
            elif kind == "number":
                out[name] = float(text)
            elif kind == "boolean":
                low = text.lower()
                if low not in TRUE_WORDS | FALSE_WORDS:
                    raise ValueError(text)
                out[name] = low in TRUE_WORDS
            else:
                out[name] = value
        except ValueError:
            problems.append({"node": None, "loc": ["inputs", name], "msg": f"input {name!r} must be a {kind}, got {value!r}"})
    if problems:
        raise InvalidInput("Some inputs have the wrong type", code="invalid_inputs", problems=problems)
    return out


class TriggerService:
    """Publishing, rotating and revoking workflow triggers; starting executions from them."""

    def __init__(self, db: Database, workflows_service: WorkflowService, admission: AdmissionPolicy | None = None):
        self.db = db
        self.workflows = workflows_service
        self.admission = admission or AdmissionPolicy()
        """Counts each trigger call as one request of the owner's plan (``count_request``); raises to refuse."""

    def _owned_workflow(self, conn, principal: Principal, workflow_id: str) -> None:
        found = conn.execute(
            sa.select(workflows.c.id).where(
                workflows.c.id == workflow_id, workflows.c.account_id == principal.account_id, workflows.c.deleted_at.is_(None)
            )
        ).scalar()
        if found is None:
            raise NotFound("Workflow not found", code="workflow_not_found")

    def _active(self, conn, workflow_id: str):
        return conn.execute(
            sa.select(triggers).where(triggers.c.workflow_id == workflow_id, triggers.c.revoked_at.is_(None))
        ).first()

    def _insert(self, conn, principal: Principal, workflow_id: str) -> PublishedTrigger:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        tid, now = new_id(), time.time()
        conn.execute(
            sa.insert(triggers).values(
                id=tid, workflow_id=workflow_id, account_id=principal.account_id, token_hash=hash_token(token), created_at=now
            )
        )
        return PublishedTrigger(tid, workflow_id, token, now)

    def publish(self, principal: Principal, workflow_id: str) -> PublishedTrigger:
        """A new trigger for the workflow; 409 when it already has one (rotate it instead)."""
        with self.db.transaction() as conn:
            self._owned_workflow(conn, principal, workflow_id)
            if self._active(conn, workflow_id) is not None:
                raise Conflict(
                    "This workflow already has a trigger URL; rotate it to get a new one",
                    code="trigger_exists",
                )
            return self._insert(conn, principal, workflow_id)

    def rotate(self, principal: Principal, workflow_id: str) -> PublishedTrigger:
        """Revoke the workflow's trigger (if any) and make a new one."""
        with self.db.transaction() as conn:
            self._owned_workflow(conn, principal, workflow_id)
            self._revoke(conn, workflow_id)
            return self._insert(conn, principal, workflow_id)

    def revoke(self, principal: Principal, workflow_id: str) -> None:
        with self.db.transaction() as conn:
            self._owned_workflow(conn, principal, workflow_id)
            if not self._revoke(conn, workflow_id):
                raise NotFound("This workflow has no trigger URL", code="trigger_not_found")

    def _revoke(self, conn, workflow_id: str) -> int:
        return conn.execute(
            sa.update(triggers)
            .where(triggers.c.workflow_id == workflow_id, triggers.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        ).rowcount

    def status(self, principal: Principal, workflow_id: str) -> dict[str, Any]:
        """Whether the workflow is published (the token itself is never shown again)."""
        with self.db.read() as conn:
            self._owned_workflow(conn, principal, workflow_id)
            row = self._active(conn, workflow_id)
        return {"workflowId": workflow_id, "published": row is not None, "triggerId": row.id if row else None,
                "createdAt": row.created_at if row else None}

    def resolve(self, token: str) -> TriggerTarget:
        """The owner and workflow of a live token; NotFound otherwise."""
        if not token.startswith(TOKEN_PREFIX):
            raise NotFound("Unknown trigger", code="trigger_not_found")
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(
                    triggers.c.id, triggers.c.workflow_id, accounts.c.id.label("account_id"), accounts.c.plan,
                    accounts.c.disabled_at, workflows.c.inputs,
                )
                .join(accounts, accounts.c.id == triggers.c.account_id)
                .join(workflows, workflows.c.id == triggers.c.workflow_id)
                .where(triggers.c.token_hash == hash_token(token), triggers.c.revoked_at.is_(None), workflows.c.deleted_at.is_(None))
            ).first()
        if row is None or row.disabled_at is not None:
            raise NotFound("Unknown trigger", code="trigger_not_found")
        return TriggerTarget(row.id, Principal(row.account_id, row.plan, None), row.workflow_id, dict(row.inputs or {}))

    def start(self, token: str, values: Mapping[str, Any]) -> ExecutionView:
        """Start one execution of the token's workflow with ``values`` (coerced to the input types)."""
        target = self.resolve(token)
        self.admission.count_request(target.principal)
        inputs = coerce_inputs(target.inputs, values)
        _, views = self.workflows.execute(target.principal, target.workflow_id, [inputs], dialect="trigger")
        return views[0]
