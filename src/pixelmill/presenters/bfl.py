"""BFL shapes: get_result (also the body of BFL webhooks)."""

from __future__ import annotations

from typing import Any, Callable

from pixelmill.domain.status import ExecutionStatus
from pixelmill.engine.views import ExecutionView, FileView

STATUS = {
    ExecutionStatus.QUEUED: "Pending",
    ExecutionStatus.RUNNING: "Pending",
    ExecutionStatus.SUCCEEDED: "Ready",
    ExecutionStatus.FAILED: "Error",
    ExecutionStatus.CANCELLED: "Error",
}


#: failures that BFL reports as their own statuses
MODERATED = {"request_moderated": "Request Moderated", "content_moderated": "Content Moderated"}


def render_result(view: ExecutionView, url_for: Callable[[FileView], str]) -> dict[str, Any]:
    """BFL's get_result shape (also the body of BFL webhooks)."""
    status = STATUS[view.status]
    if view.status == ExecutionStatus.FAILED and view.error_code in MODERATED:
        status = MODERATED[view.error_code]
    result = None
    details = None
    sinks = view.sink_nodes()
    node = sinks[-1] if sinks else None
    if view.status == ExecutionStatus.SUCCEEDED and node and node.files:
        f = node.files[0]
        sample = url_for(f)
        result = {
            "sample": sample,
            "seed": node.seed,
            "prompt": node.params.get("prompt", ""),
            "start_time": view.started_at,
            "end_time": view.finished_at,
            "duration": round((view.finished_at or 0) - (view.started_at or view.created_at), 3),
            "cost": view.cost,
        }
    elif view.status in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        details = {"code": view.error_code, "message": view.error_message}
    progress = None if view.status.is_terminal() else view.progress
    if view.status == ExecutionStatus.SUCCEEDED:
        progress = 1.0
    out = {"id": view.id, "status": status, "result": result, "progress": progress, "details": details, "preview": None}
    if view.queue_position is not None and not view.status.is_terminal():
        out["queue_position"] = view.queue_position
        estimated = getattr(view, "estimated_start_at", None)  # extra field: when a queued task should start
        if estimated is not None:
            out["estimated_start_time"] = estimated
    return out
