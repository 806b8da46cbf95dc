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

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import HTTPBearer
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pixelmill.accounts.directory import AccountDirectory
from pixelmill.api import contract
from pixelmill.api.deps import Offset, page_limit
from pixelmill.errors import Forbidden, NotFound, Unauthorized


ADMIN_BEARER = HTTPBearer(scheme_name="AdminBearer", auto_error=False, description="Authorization: Bearer <admin key> (the admin_key setting)")


def require_admin(request: Request, _admin: Any = Security(ADMIN_BEARER)) -> None:
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


router = APIRouter(
    prefix="/admin/v1",
    tags=["Admin"],
    dependencies=[Depends(require_admin)],
    responses=contract.responses(400, 401, 403, 404, 405, 409, 413, 422),
)


MAX_GRANT = 1_000_000_000_000
"""The largest grant in one request, in credits (the ledger counts micro-credits in 64 bits)."""


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    plan: str | None = None
    credits: float | None = Field(default=None, ge=0, le=MAX_GRANT)
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

    amount: float = Field(gt=0, le=MAX_GRANT)
    entry_key: str | None = Field(default=None, min_length=1, max_length=140)
    """Makes the grant exactly-once: a repeated grant with the same key adds nothing."""
    note: str | None = Field(default=None, max_length=500)


AccountLimit = page_limit(1000)
EntryLimit = page_limit(1000, "Ledger entries", minimum=0)


def _accounts(request: Request) -> AccountDirectory:
    return request.app.state.runtime.accounts


@router.post("/accounts", status_code=201)
def create_account(body: AccountCreate, request: Request):
    return _accounts(request).open(body.name, body.plan, body.credits).to_dict()


@router.get("/accounts")
def list_accounts(request: Request, limit: AccountLimit = 100, offset: Offset = 0):
    return {"data": [a.to_dict() for a in _accounts(request).list(limit, offset)]}


@router.get("/accounts/{account_id}")
def get_account(account_id: str, request: Request):
    return _accounts(request).get(account_id).to_dict()


@router.put("/accounts/{account_id}/plan")
def set_plan(account_id: str, body: PlanChange, request: Request):
    return _accounts(request).set_plan(account_id, body.plan).to_dict()


@router.put("/accounts/{account_id}/moderation")
def set_moderation(account_id: str, body: ModerationChange, request: Request):
    """Pin the account's moderation tolerance (or give it back to each request with null)."""
    return _accounts(request).set_moderation(account_id, body.safety_tolerance).to_dict()


@router.post("/accounts/{account_id}/keys", status_code=201)
def create_key(account_id: str, request: Request, body: KeyCreate | None = None):
    created = _accounts(request).create_key(account_id, (body.name if body else "") or "")
    return {"id": created.id, "key": created.key, "prefix": created.prefix, "account_id": created.account_id}


@router.get("/accounts/{account_id}/keys")
def list_keys(account_id: str, request: Request):
    return {"data": _accounts(request).keys(account_id)}


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, request: Request):
    _accounts(request).revoke_key(key_id)
    return {"id": key_id, "revoked": True}


@router.post("/accounts/{account_id}/credits")
def grant_credits(account_id: str, body: CreditGrant, request: Request):
    result = _accounts(request).grant(account_id, body.amount, body.entry_key, body.note)
    return JSONResponse(result.to_dict(), status_code=201 if result.granted else 200)


@router.get("/accounts/{account_id}/usage")
def usage(
    account_id: str,
    request: Request,
    since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    entries: EntryLimit = 50,
):
    """Executions by status, credits spent (settled) and held (in flight), recent ledger entries."""
    return _accounts(request).usage(account_id, since=since, entries=entries)
