"""Webhook settings and delivery logs (``/api/v1/webhooks``), and workflow trigger URLs.

* ``GET  /api/v1/webhooks/events?execution_id=&state=&limit=`` — delivery log, newest first,
  each event with its attempts (status code, latency, error).
* ``POST /api/v1/webhooks/events/{id}/redeliver`` — send an event again (same ``webhook-id``).
* ``GET/PUT /api/v1/webhooks/config`` — the account's webhook URL (``{"url": …}``; null clears).
* ``GET  /api/v1/webhooks/secret`` — the current signing secret ``{"key": "whsec_…"}``.
* ``POST /api/v1/webhooks/secret/rotate`` — a new secret; the previous one keeps signing
  (a second ``v1,`` entry) until the next rotation, so receivers can switch without a gap.
* ``POST /api/v1/workflows/{id}/publish`` / ``…/trigger/rotate`` / ``DELETE …/trigger`` —
  trigger URLs; ``POST /api/v1/hooks/{token}`` starts the workflow without an API key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pixelmill.accounts.keys import Principal
from pixelmill.api import contract, wire
from pixelmill.api.deps import json_body, page_limit, principal
from pixelmill.errors import InvalidInput, PixelmillError
from pixelmill.net.safe_http import SafeHttpError
from pixelmill.presenters.workflow import EXECUTION_STATUS
from pixelmill.webhooks.dispatcher import payload_json
from pixelmill.webhooks.settings import DeliveryView

router = APIRouter(prefix="/api/v1", tags=["Webhooks"])

DeliveryLimit = page_limit(200)


# --- delivery log ------------------------------------------------------------
def _render_event(d: DeliveryView) -> dict[str, Any]:
    return {
        "id": d.id,
        "executionId": d.execution_id,
        "type": d.event_type,
        "url": d.url,
        "state": d.state,
        "attempts": d.attempts,
        "nextAttemptAt": d.next_attempt_at if d.state == "pending" else None,
        "createdAt": d.created_at,
        "deliveredAt": d.delivered_at,
        "deliveries": [
            {"attemptedAt": a.attempted_at, "statusCode": a.status_code, "latencyMs": a.latency_ms, "error": a.error}
            for a in d.tries
        ],
    }


@router.get("/webhooks/events", responses=contract.responses(*contract.COMMON, ok={200: wire.WebhookEventPage}))
def list_events(
    request: Request,
    limit: DeliveryLimit = 50,
    execution_id: str | None = None,
    state: str | None = None,
    include_payload: bool = False,
    who: Principal = Depends(principal),
):
    q = {"execution_id": execution_id, "state": state}
    rt = request.app.state.runtime
    found = rt.webhook_settings.deliveries(who.account_id, q.get("execution_id") or None, q.get("state") or None, limit)
    data = [_render_event(d) for d in found]
    if include_payload:
        for item, d in zip(data, found):
            item["payload"] = payload_json(d.payload)
    return {"data": data}


@router.post("/webhooks/events/{event_id}/redeliver", status_code=202, responses=contract.responses(*contract.COMMON, ok={202: wire.WebhookEvent}))
def redeliver(event_id: str, request: Request, who: Principal = Depends(principal)):
    """Queue the event again now, with a fresh retry schedule; the webhook-id stays the same."""
    rt = request.app.state.runtime
    delivery = rt.webhook_settings.redeliver(who.account_id, event_id)
    rt.dispatcher.wake()
    return JSONResponse(_render_event(delivery), status_code=202)


# --- endpoint and secret -------------------------------------------------------
@router.get("/webhooks/config", responses=contract.responses(*contract.COMMON, ok={200: wire.WebhookConfig}))
def get_config(request: Request, who: Principal = Depends(principal)):
    return {"url": request.app.state.runtime.webhook_settings.endpoint(who.account_id)}


@router.put("/webhooks/config", openapi_extra=contract.json_request(wire.WebhookConfig), responses=contract.responses(*contract.COMMON, ok={200: wire.WebhookConfig}))
async def put_config(request: Request, who: Principal = Depends(principal)):
    """Set (or clear, with null) the URL that receives every execution event of the account."""
    body = await json_body(request)
    if not isinstance(body, dict) or "url" not in body:
        raise InvalidInput('The body must be {"url": "https://…"} or {"url": null}', code="invalid_body")
    url = body["url"]
    rt = request.app.state.runtime
    if url is not None:
        if not isinstance(url, str) or not 1 <= len(url) <= 2083:
            raise InvalidInput("url must be a string of 1–2083 characters", code="invalid_webhook_url")
        try:
            await run_in_threadpool(rt.http.resolve, url)  # the same policy deliveries use
        except SafeHttpError as e:
            raise InvalidInput(f"This webhook URL cannot be used: {e.message}", code="invalid_webhook_url", reason=e.code) from None
    await run_in_threadpool(rt.webhook_settings.set_endpoint, who.account_id, url)
    return {"url": url}


@router.get("/webhooks/secret", responses=contract.responses(*contract.COMMON, ok={200: wire.WebhookSecret}))
def get_secret(request: Request, who: Principal = Depends(principal)):
    return {"key": request.app.state.runtime.webhook_settings.secret(who.account_id)}


@router.post("/webhooks/secret/rotate", responses=contract.responses(*contract.COMMON, ok={200: wire.WebhookSecret}))
def rotate_secret(request: Request, who: Principal = Depends(principal)):
    secrets = request.app.state.runtime.webhook_settings.rotate_secret(who.account_id)
    return {"key": secrets[0], "previousKeyActive": len(secrets) > 1}


# --- workflow triggers ---------------------------------------------------------
@router.post("/workflows/{workflow_id}/publish", status_code=201, responses=contract.responses(*contract.COMMON, ok={201: wire.Trigger}))
def publish_workflow(workflow_id: str, request: Request, who: Principal = Depends(principal)):
    return JSONResponse(request.app.state.runtime.triggers.publish(who, workflow_id).to_dict(), status_code=201)


@router.get("/workflows/{workflow_id}/trigger", responses=contract.responses(*contract.COMMON, ok={200: wire.TriggerStatus}))
def trigger_status(workflow_id: str, request: Request, who: Principal = Depends(principal)):
    return request.app.state.runtime.triggers.status(who, workflow_id)


@router.post("/workflows/{workflow_id}/trigger/rotate", status_code=201, responses=contract.responses(*contract.COMMON, ok={201: wire.Trigger}))
def rotate_trigger(workflow_id: str, request: Request, who: Principal = Depends(principal)):
    return JSONResponse(request.app.state.runtime.triggers.rotate(who, workflow_id).to_dict(), status_code=201)


@router.delete("/workflows/{workflow_id}/trigger", status_code=204, responses=contract.responses(*contract.COMMON, ok={204: None}))
def revoke_trigger(workflow_id: str, request: Request, who: Principal = Depends(principal)):
    request.app.state.runtime.triggers.revoke(who, workflow_id)
    return Response(status_code=204)


CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "86400",
}
"""Trigger URLs are bearer secrets meant for browser forms and third-party services: any origin may call them."""


@router.options("/hooks/{token}", include_in_schema=False)
def hook_preflight(token: str):
    return Response(status_code=204, headers=CORS_HEADERS)


@router.post("/hooks/{token}", status_code=202, openapi_extra={"security": [], **contract.json_request(wire.ExecuteRequest, required=False)}, responses=contract.responses(*contract.SUBMIT, ok={202: wire.Started}))
async def run_hook(token: str, request: Request):
    """Start the published workflow: JSON (``{"inputs": {…}}`` or the inputs themselves) or form fields."""
    rt = request.app.state.runtime
    try:
        values = await _hook_inputs(request)
        view = await run_in_threadpool(rt.triggers.start, token, values)
    except PixelmillError as e:
        e.headers.update(CORS_HEADERS)
        raise
    return JSONResponse(
        {"executionId": view.id, "status": EXECUTION_STATUS[view.status], "pollUrl": f"/api/v1/executions/{view.id}/poll"},
        status_code=202,
        headers=CORS_HEADERS,
    )


async def _hook_inputs(request: Request) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        limit = request.app.state.runtime.settings.max_body_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise InvalidInput(f"Request body is larger than {limit} bytes", code="payload_too_large", status=413)
        form = await request.form(max_files=0, max_fields=200)
        values: dict[str, Any] = {}
        for name, value in form.multi_items():
            if not isinstance(value, str):
                raise InvalidInput("File fields are not accepted; send text fields", code="invalid_inputs")
            values[name] = value
        return values
    if not (await request.body()).strip():
        return {}
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object of inputs", code="invalid_body")
    if set(body) == {"inputs"} and isinstance(body["inputs"], dict):
        return body["inputs"]
    return body
