"""Workflow API shapes: executions with per-node runs (one casing: QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED)."""

from __future__ import annotations

from typing import Any, Callable

from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.views import ExecutionView, FileView

EXECUTION_STATUS = {
    ExecutionStatus.QUEUED: "QUEUED",
    ExecutionStatus.RUNNING: "RUNNING",
    ExecutionStatus.SUCCEEDED: "COMPLETED",
    ExecutionStatus.FAILED: "FAILED",
    ExecutionStatus.CANCELLED: "CANCELLED",
}
NODE_STATUS = {
    NodeStatus.WAITING: "WAITING",
    NodeStatus.QUEUED: "QUEUED",
    NodeStatus.RUNNING: "RUNNING",
    NodeStatus.SUCCEEDED: "COMPLETED",
    NodeStatus.FAILED: "FAILED",
    NodeStatus.CANCELLED: "CANCELLED",
    NodeStatus.SKIPPED: "SKIPPED",
}


def _ms(a: float | None, b: float | None) -> int | None:
    return int(round((b - a) * 1000)) if a is not None and b is not None else None


def render_execution(
    view: ExecutionView, url_for: Callable[[FileView], str], stream_url: str | None = None
) -> dict[str, Any]:
    """The workflow API's execution object.  ``stream_url``, when given, is a signed URL of
    its live events that needs no API key (for a browser's ``EventSource``)."""
    node_runs = []
    for n in view.nodes:
        node_runs.append(
            {
                "nodeId": n.node_id,
                "type": n.node_type,
                "status": NODE_STATUS[n.status],
                "progress": 1.0 if n.status == NodeStatus.SUCCEEDED else round(n.progress, 4),
                "queuedAt": n.queued_at,
                "startedAt": n.started_at,
                "finishedAt": n.finished_at,
                "durationMs": _ms(n.started_at, n.finished_at),
                "credits": n.cost if n.status == NodeStatus.SUCCEEDED else 0.0,
                "estimatedCredits": n.cost,
                "cached": n.cached,
                "seed": n.seed,
                "outputs": [
                    {"url": url_for(f), "contentType": f.content_type, "width": f.width, "height": f.height}
                    for f in n.files
                ],
                "error": {"code": n.error_code, "message": n.error_message} if n.error_code else None,
            }
        )
    body = {
        "id": view.id,
        "executionId": view.id,
        "workflowId": view.workflow_id,
        "batchId": view.batch_id,
        "status": EXECUTION_STATUS[view.status],
        "progress": 1.0 if view.status == ExecutionStatus.SUCCEEDED else view.progress,
        "queuePosition": view.queue_position,
        "estimatedStartAt": getattr(view, "estimated_start_at", None) if not view.status.is_terminal() else None,
        "createdAt": view.created_at,
        "startedAt": view.started_at,
        "finishedAt": view.finished_at,
        "durationMs": _ms(view.started_at, view.finished_at),
        "credits": {"estimated": view.cost_estimate, "charged": view.cost_actual if view.status.is_terminal() else None},
        "error": {"code": view.error_code, "message": view.error_message} if view.error_code else None,
        "outputs": [url_for(f) for f in view.result_files()],
        "nodeRuns": node_runs,
        "inputs": view.request.get("inputs"),
    }
    if stream_url is not None:
        body["streamUrl"] = stream_url
    return body
