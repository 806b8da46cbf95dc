"""The calling account, and running a graph without saving it.

* ``GET  /api/v1/account`` — the key's account: plan, credits, usage (executions by
  status, credits spent and held), the newest ledger entries and credits per day
  and per model over the last ``days`` (1–90, default 30) days.
* ``GET /api/v1/account/keys`` — the account's active keys (prefix, name, created, last
  used; never a secret); ``POST /api/v1/account/keys`` (``{"name": …}``, optional) creates
  another (201; its secret is in that answer only; at most 50 active, else 409
  ``too_many_keys``); ``DELETE /api/v1/account/keys/{key_id}`` revokes one of the
  account's keys at once on every API node (another account's key: 404 ``key_not_found``).
* ``POST /api/v1/executions`` — run a graph ``{"nodes": {…}}`` as it is (the
  workflow graph format, no ``$input`` references): 201 + ``Location`` and the
  execution object; ``?dry_run=true`` (or ``"dry_run": true``) only prices it:
  ``{"dryRun": true, "estimatedCredits", "breakdown"}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from pixelmill.accounts.keys import Principal
from pixelmill.api import contract, wire
from pixelmill.api.deps import json_body, principal, read_body
from pixelmill.api.files import render_execution
from pixelmill.engine.service import Submission
from pixelmill.errors import InvalidInput

router = APIRouter(prefix="/api/v1", tags=["Account"])



@router.get("/account", responses=contract.responses(*contract.COMMON, ok={200: wire.Account}))
def get_account(
    request: Request,
    days: Annotated[int, Query(ge=1, le=90)] = 30,
    entries: Annotated[int, Query(ge=0, le=500)] = 50,
    who: Principal = Depends(principal),
):
    rt = request.app.state.runtime
    credits = rt.admission.balance(rt.db, who)  # grants this month's plan credits when due
    name, usage, daily = rt.accounts.own_usage(who.account_id, days=days, entries=entries)
    plan = rt.plans.get(who.plan)
    return {
        "id": who.account_id,
        "name": name,
        "plan": who.plan,
        "planLimits": _plan_dict(plan),
        "credits": credits,
        "executions": usage.get("executions"),
        "creditsSpent": usage.get("credits_spent"),
        "creditsHeld": usage.get("credits_held"),
        "ledger": usage.get("ledger", []),
        "usageByDay": daily,
    }


def _key_dict(row: dict[str, Any], who: Principal) -> dict[str, Any]:
    return {
        "id": row["id"],
        "prefix": row["prefix"],
        "name": row["name"] or "",
        "createdAt": row["created_at"],
        "lastUsedAt": row["last_used_at"],
        "current": row["id"] == who.key_id,
    }


@router.get("/account/keys", responses=contract.responses(*contract.COMMON, ok={200: wire.ApiKeyList}))
def list_own_keys(request: Request, who: Principal = Depends(principal)):
    """The account's active keys, oldest first (never their secrets)."""
    rows = request.app.state.runtime.accounts.own_keys(who.account_id)
    return {"data": [_key_dict(r, who) for r in rows]}


@router.post(
    "/account/keys",
    status_code=201,
    openapi_extra=contract.json_request(wire.ApiKeyCreate, required=False),
    responses=contract.responses(*contract.COMMON, 409, ok={201: wire.CreatedApiKey}),
)
async def create_own_key(request: Request, who: Principal = Depends(principal)):
    """Another key for the calling key's account; ``key`` (the secret) is shown in this answer only."""
    name = ""
    if (await read_body(request)).strip():
        body = await json_body(request)
        try:
            name = wire.ApiKeyCreate.model_validate(body).name
        except ValidationError as e:
            raise InvalidInput(
                "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()), code="invalid_body"
            ) from None
    created, row = await run_in_threadpool(request.app.state.runtime.accounts.create_own_key, who.account_id, name)
    return JSONResponse({**_key_dict(row, who), "key": created.key}, status_code=201)


@router.delete("/account/keys/{key_id}", responses=contract.responses(*contract.COMMON, ok={200: wire.RevokedApiKey}))
def revoke_own_key(key_id: str, request: Request, who: Principal = Depends(principal)):
    """Revoke one of the account's keys; it stops working at once."""
    request.app.state.runtime.accounts.revoke_own_key(who.account_id, key_id)
    return {"id": key_id, "revoked": True}


def _plan_dict(plan) -> dict[str, Any] | None:
    if plan is None:
        return None
    return plan.model_dump(mode="json")


@router.post(
    "/executions",
    status_code=201,
    openapi_extra=contract.json_request(wire.GraphRequest),
    responses=contract.responses(*contract.SUBMIT, ok={200: wire.Execute, 201: wire.Execution}),
)
async def run_graph(request: Request, who: Principal = Depends(principal)):
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("nodes"), dict):
        raise InvalidInput('The body must be a JSON object {"nodes": {…}}', code="invalid_body")
    rt = request.app.state.runtime
    graph = {"nodes": body["nodes"]}
    prepared = await run_in_threadpool(rt.executions.prepare, graph)
    if request.query_params.get("dry_run") in ("1", "true") or body.get("dry_run") is True:
        return JSONResponse({"dryRun": True, "estimatedCredits": prepared.cost, "breakdown": prepared.breakdown()}, status_code=200)
    label = str(body.get("label") or "graph")[:100]
    sub = Submission(principal=who, graph=graph, dialect="workflow", label=label)
    view = await run_in_threadpool(rt.executions.submit, sub, prepared)
    payload = render_execution(request, view)
    return JSONResponse(payload, status_code=201, headers={"Location": f"/api/v1/executions/{view.id}"})
