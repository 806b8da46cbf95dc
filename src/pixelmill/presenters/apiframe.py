"""Apiframe-style job shapes: ``{jobId, status, progress, result: {images}, error, createdAt, completedAt, cost}``.

Statuses are QUEUED, PROCESSING, COMPLETED and FAILED.  A cancelled execution is
reported as FAILED with ``error.code == "cancelled"``: clients of this style poll
until COMPLETED or FAILED, so a fifth status would keep them polling forever.
``progress`` is a whole percentage (0-100).  Times are ISO 8601 UTC strings.
The same body is what a job webhook carries.
"""

from __future__ import annotations

from typing import Any, Callable

from pixelmill.domain.status import ExecutionStatus
from pixelmill.engine.views import ExecutionView, FileView
from pixelmill.presenters.timestamps import iso_utc

STATUS = {
    ExecutionStatus.QUEUED: "QUEUED",
    ExecutionStatus.RUNNING: "PROCESSING",
    ExecutionStatus.SUCCEEDED: "COMPLETED",
    ExecutionStatus.FAILED: "FAILED",
    ExecutionStatus.CANCELLED: "FAILED",
}


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC with milliseconds (``2026-11-23T10:44:08.123Z``)."""
    if ts is None:
        return None
    return iso_utc(ts)


def render_submitted(view: ExecutionView) -> dict[str, Any]:
    """The 202 body of ``POST /v2/images/generate``: always QUEUED, the state the job was
    accepted in (a worker may already have picked it up; polling tells)."""
    return {"jobId": view.id, "status": "QUEUED"}


def render_job(view: ExecutionView, url_for: Callable[[FileView], str]) -> dict[str, Any]:
    """``GET /v2/jobs/{id}``: the job's state, and its image URLs once COMPLETED."""
    status = view.status
    result = None
    if status == ExecutionStatus.SUCCEEDED:
        result = {
            "images": [url_for(f) for f in view.result_files()],
            "seed": next((n.seed for n in view.sink_nodes()), None),
        }
    error = None
    if status in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        error = {
            "code": view.error_code or ("cancelled" if status == ExecutionStatus.CANCELLED else "failed"),
            "message": view.error_message or ("Cancelled by the client" if status == ExecutionStatus.CANCELLED else "Generation failed"),
        }
    progress = 100 if status == ExecutionStatus.SUCCEEDED else int(view.progress * 100)
    return {
        "jobId": view.id,
        "status": STATUS[status],
        "model": view.request.get("model"),
        "progress": progress,
        "queuePosition": view.queue_position if not status.is_terminal() else None,
        "result": result,
        "error": error,
        "createdAt": iso(view.created_at),
        "startedAt": iso(view.started_at),
        "completedAt": iso(view.finished_at) if status.is_terminal() else None,
        "cost": view.cost if status.is_terminal() else view.cost_estimate,
    }
