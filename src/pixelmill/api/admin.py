"""The admin API (``/admin/v1``): accounts, keys, plans, credits and usage.

Guarded by ``Authorization: Bearer <Settings.admin_key>``.  With no admin key
configured the whole API is absent (404); a missing key is 401, a wrong one 403.

- ``POST   /admin/v1/accounts`` — create an account, granted its plan's
  ``initial_credits`` (or ``credits`` from the body);
- ``GET    /admin/v1/accounts`` and ``GET /admin/v1/accounts/{id}``;
- ``PUT    /admin/v1/accounts/{id}/plan`` — move an account to another plan;
- ``POST   /admin/v1/accounts/{id}/keys`` (the secret is in this response only),
  ``GET /admin/v1/accounts/{id}/keys``, ``DELETE /admin/v1/keys/{key_id}``;
- ``POST   /admin/v1/accounts/{id}/credits`` — a ledger grant, exactly once per
  ``entry_key`` (given, or generated and returned);
- ``GET    /admin/v1/accounts/{id}/usage`` — executions by status, credits spent
  and held, recent ledger entries.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pixelmill import moderation
from pixelmill.accounts import keys, ledger
from pixelmill.accounts.plans import open_account
from pixelmill.accounts.usage import account_usage
from pixelmill.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from pixelmill.store.tables import accounts


def require_admin(request: Request) -> None:
    """The admin guard: 404 when no admin key is configured, 401 missing, 403 wrong."""
    expected = request.app.state.runtime.settings.admin_key
    if not expected:
        raise NotFound("Not Found", code="not_found")
    auth = request.headers.get("authorization", "")
    presented = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not presented:
        raise Unauthorized("Missing admin key: send Authorization: Bearer <admin key>", code="missing_admin_key")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Forbidden("Invalid admin key", code="invalid_admin_key")


router = APIRouter(prefix="/admin/v1", tags=["Admin"], dependencies=[Depends(require_admin)], include_in_schema=False)


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    plan: str | None = None
    credits: float | None = Field(default=None, ge=0)
    """Initial credits; default: the plan's ``initial_credits``."""


class PlanChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str


class ModerationChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    safety_tolerance: int | None = Field(ge=0, le=6)
    """Pinned for every request of the account (0 strict .. 6 permissive); null: each request's own."""


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)


class CreditGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: float = Field(gt=0)
    entry_key: str | None = Field(default=None, min_length=1, max_length=140)
    """Makes the grant exactly-once: a repeated grant with the same key adds nothing."""
    note: str | None = Field(default=None, max_length=500)


def _rt(request: Request):
    return request.app.state.runtime


def _check_plan(rt, plan: str) -> str:
    if plan not in rt.plans:
        raise InvalidInput(f"Unknown plan {plan!r}; plans: {', '.join(sorted(rt.plans))}", code="unknown_plan", plans=sorted(rt.plans))
    return plan


def _account(conn, account_id: str) -> dict[str, Any]:
    row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
    if row is None:
        raise NotFound(f"Account {account_id} not found", code="account_not_found")
    return {
        "id": row.id,
        "name": row.name,
        "plan": row.plan,
        "created_at": row.created_at,
        "disabled_at": row.disabled_at,
        "credits": ledger.balance(conn, row.id),
        "safety_tolerance": row.safety_tolerance,
    }


@router.post("/accounts", status_code=201)
def create_account(body: AccountCreate, request: Request):
    rt = _rt(request)
    plan = _check_plan(rt, body.plan or rt.settings.default_plan)
    with rt.db.transaction() as conn:
        if keys.find_account_by_name(conn, body.name) is not None:
            raise Conflict(f"An account named {body.name!r} already exists", code="account_exists")
        account_id = open_account(conn, body.name, rt.plans[plan], body.credits)
        return _account(conn, account_id)


@router.get("/accounts")
def list_accounts(request: Request, limit: int = 100, offset: int = 0):
    rt = _rt(request)
    if not (1 <= limit <= 1000) or offset < 0:
        raise InvalidInput("limit must be 1–1000 and offset ≥ 0", code="invalid_pagination")
    with rt.db.engine.connect() as conn:
        rows = conn.execute(sa.select(accounts.c.id).order_by(accounts.c.created_at, accounts.c.id).limit(limit).offset(offset)).scalars().all()
        return {"data": [_account(conn, aid) for aid in rows]}


@router.get("/accounts/{account_id}")
def get_account(account_id: str, request: Request):
    with _rt(request).db.engine.connect() as conn:
        return _account(conn, account_id)


@router.put("/accounts/{account_id}/plan")
def set_plan(account_id: str, body: PlanChange, request: Request):
    rt = _rt(request)
    plan = _check_plan(rt, body.plan)
    with rt.db.transaction() as conn:
        _account(conn, account_id)
        conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(plan=plan))
        return _account(conn, account_id)


@router.put("/accounts/{account_id}/moderation")
def set_moderation(account_id: str, body: ModerationChange, request: Request):
    """Pin the account's moderation tolerance (or give it back to each request with null)."""
    rt = _rt(request)
    with rt.db.transaction() as conn:
        _account(conn, account_id)
        moderation.set_account_override(conn, account_id, body.safety_tolerance)
        return _account(conn, account_id)


@router.post("/accounts/{account_id}/keys", status_code=201)
def create_key(account_id: str, request: Request, body: KeyCreate | None = None):
    rt = _rt(request)
    with rt.db.transaction() as conn:
        created = keys.create_key(conn, account_id, (body.name if body else "") or "")
    return {"id": created.id, "key": created.key, "prefix": created.prefix, "account_id": created.account_id}


@router.get("/accounts/{account_id}/keys")
def list_keys(account_id: str, request: Request):
    with _rt(request).db.engine.connect() as conn:
        _account(conn, account_id)
        return {"data": keys.list_keys(conn, account_id)}


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, request: Request):
    with _rt(request).db.transaction() as conn:
        if not keys.revoke_key(conn, key_id):
            raise NotFound(f"No active key {key_id}", code="key_not_found")
    return {"id": key_id, "revoked": True}


@router.post("/accounts/{account_id}/credits")
def grant_credits(account_id: str, body: CreditGrant, request: Request):
    rt = _rt(request)
    entry_key = body.entry_key or f"admin-grant:{uuid.uuid4()}"
    with rt.db.transaction() as conn:
        _account(conn, account_id)
        granted = ledger.grant(conn, account_id, body.amount, f"admin:{account_id}:{entry_key}", note=body.note or "granted by an administrator")
        credits = ledger.balance(conn, account_id)
    result = {"account_id": account_id, "entry_key": entry_key, "amount": body.amount, "granted": granted, "credits": credits}
    return JSONResponse(result, status_code=201 if granted else 200)


@router.get("/accounts/{account_id}/usage")
def usage(account_id: str, request: Request, since: float | None = None, entries: int = 50):
    """Executions by status, credits spent (settled) and held (in flight), recent ledger entries."""
    if not (0 <= entries <= 1000):
        raise InvalidInput("entries must be 0–1000", code="invalid_pagination")
    with _rt(request).db.engine.connect() as conn:
        result = account_usage(conn, account_id, since=since, entries=entries)
    if result is None:
        raise NotFound(f"Account {account_id} not found", code="account_not_found")
    return result
