"""The workflow API (``/api/v1``): workflows as JSON graphs, executions with per-node runs.

Status strings use one casing everywhere: QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from pixelmill.accounts.keys import Principal
from pixelmill.api import contract, wire
from pixelmill.api.deps import Offset, json_body, page_limit, principal, webhook_url_error, webhook_url_refusal
from pixelmill.workflows.service import WorkflowDefinition
from pixelmill.api import wait
from pixelmill.api.files import render_execution
from pixelmill.api.wait import requested_wait
from pixelmill.presenters.workflow import EXECUTION_STATUS
from pixelmill.errors import InvalidInput

router = APIRouter(prefix="/api/v1", tags=["Workflows"])

Limit = page_limit(100)


async def _definition_body(request: Request) -> Any:
    """A workflow definition's JSON, its ``webhook_url`` checked like any webhook URL."""
    body = await json_body(request)
    url = body.get("webhook_url") if isinstance(body, dict) else None
    if isinstance(url, str):
        refusal = await webhook_url_refusal(request, url)
        if refusal is not None:
            raise webhook_url_error(refusal)
    return body


# --- workflows ---------------------------------------------------------------
@router.get("/nodes", responses=contract.responses(*contract.COMMON, ok={200: wire.DataList}))
def node_types(request: Request, who: Principal = Depends(principal)):
    return {"data": request.app.state.runtime.nodes.describe()}


@router.post("/workflows", status_code=201, openapi_extra=contract.json_request(WorkflowDefinition), responses=contract.responses(*contract.COMMON, ok={201: wire.Workflow}))
async def create_workflow(request: Request, who: Principal = Depends(principal)):
    body = await _definition_body(request)
    wf = await run_in_threadpool(request.app.state.runtime.workflows.create, who, body)
    return JSONResponse(wf, status_code=201, headers={"Location": f"/api/v1/workflows/{wf['id']}"})


@router.post("/workflows/validate", openapi_extra=contract.json_request(WorkflowDefinition), responses=contract.responses(*contract.COMMON, 402, ok={200: wire.Validation}))
async def validate_workflow(request: Request, who: Principal = Depends(principal)):
    svc = request.app.state.runtime.workflows
    body = await json_body(request)

    def check() -> dict:
        prepared = svc.validate(svc.parse(body))
        return {"valid": True, "estimatedCredits": prepared.cost, "breakdown": prepared.breakdown()}

    return await run_in_threadpool(check)


@router.get("/workflows", responses=contract.responses(*contract.COMMON, ok={200: wire.WorkflowPage}))
def list_workflows(request: Request, limit: Limit = 20, offset: Offset = 0, who: Principal = Depends(principal)):
    items, total = request.app.state.runtime.workflows.list(who, limit, offset)
    return {"data": items, "total": total, "limit": limit, "offset": offset}


@router.get("/workflows/{workflow_id}", responses=contract.responses(*contract.COMMON, ok={200: wire.Workflow}))
def get_workflow(workflow_id: str, request: Request, who: Principal = Depends(principal)):
    return request.app.state.runtime.workflows.get(who, workflow_id)


@router.put("/workflows/{workflow_id}", openapi_extra=contract.json_request(WorkflowDefinition), responses=contract.responses(*contract.COMMON, ok={200: wire.Workflow}))
async def update_workflow(workflow_id: str, request: Request, who: Principal = Depends(principal)):
    body = await _definition_body(request)
    return await run_in_threadpool(request.app.state.runtime.workflows.update, who, workflow_id, body)


@router.delete("/workflows/{workflow_id}", status_code=204, responses=contract.responses(*contract.COMMON, ok={204: None}))
def delete_workflow(workflow_id: str, request: Request, who: Principal = Depends(principal)):
    request.app.state.runtime.workflows.delete(who, workflow_id)
    return Response(status_code=204)


@router.post("/workflows/{workflow_id}/execute", openapi_extra=contract.json_request(wire.ExecuteRequest), responses=contract.responses(*contract.SUBMIT, ok={200: wire.Execute, 201: wire.Execute}))
async def execute_workflow(workflow_id: str, request: Request, who: Principal = Depends(principal)):
    """Body: ``{"inputs": {...}}`` or ``{"batch": [{...}, ...]}``; ``?dry_run=true`` only prices it."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object with 'inputs' or 'batch'", code="invalid_body")
    svc = request.app.state.runtime.workflows
    if "batch" in body:
        sets = body["batch"]
        if not isinstance(sets, list) or not sets or len(sets) > 100 or not all(isinstance(s, dict) for s in sets):
            raise InvalidInput("'batch' must be a list of 1–100 input objects", code="invalid_batch")
    else:
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict):
            raise InvalidInput("'inputs' must be an object", code="invalid_inputs")
        sets = [inputs]
    webhook_url = body.get("webhook_url")
    if webhook_url is not None and not isinstance(webhook_url, str):
        raise InvalidInput("'webhook_url' must be a string", code="invalid_webhook_url", param="webhook_url")
    refusal = await webhook_url_refusal(request, webhook_url)
    if refusal is not None:
        raise webhook_url_error(refusal)
    if request.query_params.get("dry_run") in ("1", "true") or body.get("dry_run") is True:
        estimates = await run_in_threadpool(lambda: [svc.estimate(who, workflow_id, s) for s in sets])
        return {
            "dryRun": True,
            "estimatedCredits": round(sum(p.cost for p in estimates), 4),
            "runs": [{"estimatedCredits": p.cost, "breakdown": p.breakdown()} for p in estimates],
        }
    batch_id, views = await run_in_threadpool(
        lambda: svc.execute(who, workflow_id, sets, webhook_url=webhook_url, webhook_events=body.get("webhook_events"))
    )
    wait_s = requested_wait(request.headers.get("prefer"), request.app.state.runtime.settings.max_wait_s)
    if wait_s is not None:  # Prefer: wait[=N]: hold until done or N s, answer with the execution
        return await wait.workflow_response(request, who.account_id, workflow_id, batch_id, views, wait_s)
    runs = [render_execution(request, v) for v in views]
    first = views[0]
    payload = {
        "executionId": first.id,
        "workflowId": workflow_id,
        "batchId": batch_id,
        "status": runs[0]["status"],
        "pollUrl": f"/api/v1/executions/{first.id}/poll",
        "streamUrl": runs[0]["streamUrl"],
        "executionRuns": runs,
    }
    location = f"/api/v1/executions/{first.id}" if batch_id is None else f"/api/v1/batches/{batch_id}"
    return JSONResponse(payload, status_code=201, headers={"Location": location})


# --- executions ----------------------------------------------------------------
@router.get("/executions", responses=contract.responses(*contract.COMMON, ok={200: wire.ExecutionPage}))
def list_executions(
    request: Request,
    limit: Limit = 20,
    before: Annotated[float | None, Query(allow_inf_nan=False, description="The nextCursor of the previous page")] = None,
    workflow_id: str | None = None,
    batch_id: str | None = None,
    status: Annotated[
        Literal["QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"] | None, Query(description="Only executions in this status")
    ] = None,
    who: Principal = Depends(principal),
):
    rt = request.app.state.runtime
    by_name = {name: s for s, name in EXECUTION_STATUS.items()}
    views = rt.executions.list(
        who.account_id, limit=limit + 1, before=before, workflow_id=workflow_id or None, batch_id=batch_id or None,
        status=by_name[status] if status else None,
    )
    more = len(views) > limit
    views = views[:limit]
    return {
        "data": [render_execution(request, v) for v in views],
        "hasMore": more,
        "nextCursor": views[-1].created_at if more else None,
    }


@router.get("/executions/{execution_id}", responses=contract.responses(*contract.COMMON, ok={200: wire.Execution}))
@router.get("/executions/{execution_id}/poll", responses=contract.responses(*contract.COMMON, ok={200: wire.Execution}))
async def get_execution(
    execution_id: str,
    request: Request,
    include: Annotated[
        Literal["graph"] | None,
        Query(description="graph: add the graph it ran (nodes, params, links), to submit again to POST /api/v1/executions"),
    ] = None,
    who: Principal = Depends(principal),
):
    executions = request.app.state.runtime.executions
    view = executions.cached(who.account_id, execution_id) or await run_in_threadpool(executions.get, who.account_id, execution_id)
    body = render_execution(request, view)
    if include == "graph":
        body["graph"] = await run_in_threadpool(executions.graph, who.account_id, execution_id)
    return JSONResponse(body)


@router.post("/executions/{execution_id}/cancel", responses=contract.responses(*contract.COMMON, ok={200: wire.Execution}))
def cancel_execution(execution_id: str, request: Request, who: Principal = Depends(principal)):
    return render_execution(request, request.app.state.runtime.executions.cancel(who.account_id, execution_id))


@router.delete("/executions/{execution_id}/outputs", status_code=204, responses=contract.responses(*contract.COMMON, 409, ok={204: None}))
def delete_execution_outputs(execution_id: str, request: Request, who: Principal = Depends(principal)):
    """Delete a finished execution's result files now (its record stays until retention removes it); 409 while it runs."""
    rt = request.app.state.runtime
    rt.janitor.delete_outputs(who.account_id, execution_id)
    rt.executions.forget(execution_id)
    return Response(status_code=204)


@router.get("/batches/{batch_id}", responses=contract.responses(*contract.COMMON, ok={200: wire.Batch}))
def get_batch(batch_id: str, request: Request, who: Principal = Depends(principal)):
    views = request.app.state.runtime.executions.list(who.account_id, limit=100, batch_id=batch_id)
    if not views:
        from pixelmill.errors import NotFound

        raise NotFound("Batch not found", code="batch_not_found")
    runs = [render_execution(request, v) for v in reversed(views)]
    statuses = {r["status"] for r in runs}
    status = "COMPLETED" if statuses == {"COMPLETED"} else ("RUNNING" if statuses & {"QUEUED", "RUNNING"} else "FAILED" if "FAILED" in statuses else "CANCELLED" if statuses == {"CANCELLED"} else "COMPLETED")
    return {"batchId": batch_id, "status": status, "executionRuns": runs}
