"""The models: ``GET /api/v1/models`` (residency), and loading or unloading one (admin).

For each model: its catalog settings, and where it is in memory — ``cold``,
``loading`` or ``resident`` — on which device, how long its last load took and
how many bytes it holds.  In embedded mode the server's own worker answers; in
scale-out every worker advertises what it holds (``worker_models``) and the
model lists each worker that has it.

``POST /api/v1/models/{model}/load`` and ``…/unload`` take the admin key
(``Authorization: Bearer <admin key>``); a model is named as the catalog names
it (or by an alias); unknown: 404 ``model_not_found``.

* Embedded mode: they act on the server's own registry.  Load answers 200 once
  the model is resident (a cold model is loaded, making room within the memory
  budget as a generation would); unload frees an idle model at once.
* Scale-out: the request is broadcast to the running workers (Celery remote
  control); each worker that consumes the model's queue (``model.<name>``)
  acts on its own registry and replies.  Load answers 202 ``loading`` while
  workers load it in the background (200 when every one already holds it);
  ``GET /api/v1/models`` shows it resident once they advertised it.  No running
  worker serves the model: 409 ``model_not_served``.

Unload answers 409 ``model_in_use`` while a generation runs on the model (in
scale-out: on any worker; the idle ones have unloaded it), ``model_loading``
during a load, ``model_pinned`` for a backend the embedding process registered.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from pixelmill.accounts.keys import Principal
from pixelmill.api import contract, wire
from pixelmill.api.admin import require_admin
from pixelmill.api.deps import principal
from pixelmill.errors import Conflict, NotFound, PixelmillError, ServiceUnavailable
from pixelmill.models.registry import Unloaded

log = logging.getLogger("pixelmill.api")

router = APIRouter(prefix="/api/v1", tags=["Models"])


@router.get("/models", responses=contract.responses(*contract.COMMON, ok={200: wire.DataList}))
def list_models(request: Request, who: Principal = Depends(principal)):
    """Every catalog model with its state, device, load time and memory."""
    from pixelmill.engine.placement import residency_report

    return residency_report(request.app.state.runtime)


_CONTROL = dict(
    dependencies=[Depends(require_admin)],
    responses=contract.responses(400, 401, 403, 404, 405, 409, 422, 500, 503, ok={200: wire.ModelState, 202: wire.ModelState}),
)


def _catalog_model(request: Request, model: str) -> str:
    """The catalog name of ``model`` (a name or an alias); 404 otherwise."""
    rt = request.app.state.runtime
    spec = rt.catalog.resolve(model)
    if spec is None:
        raise NotFound(
            f"No model {model!r} in the catalog; models: {', '.join(rt.catalog.names())}", code="model_not_found", model=model
        )
    return spec.name


def _embedded(request: Request) -> bool:
    return request.app.state.runtime.settings.queue == "inprocess"


def _state(request: Request, name: str) -> dict:
    from pixelmill.engine.placement import residency_report

    entry = next(m for m in residency_report(request.app.state.runtime)["data"] if m["name"] == name)
    return {"name": name, "state": entry["state"], "workers": entry["workers"], "memory_bytes": entry["memory_bytes"], "load_seconds": entry["load_seconds"]}


def _refuse_unload(name: str, outcomes: list[str], where: str = "") -> None:
    if Unloaded.IN_USE in outcomes:
        raise Conflict(f"Model {name} is in use by a running generation{where}; unload it once it is idle", code="model_in_use", model=name)
    if Unloaded.LOADING in outcomes:
        raise Conflict(f"Model {name} is loading{where}; unload it once the load finished", code="model_loading", model=name)
    if Unloaded.PINNED in outcomes:
        raise Conflict(f"Model {name} was registered by the process that embeds pixelmill and cannot be unloaded", code="model_pinned", model=name)


def _ask_workers(request: Request, name: str, action: str) -> dict[str, dict]:
    """Broadcast a load or unload to the running workers; the replies of those that serve the model."""
    from pixelmill.engine.placement import live_workers

    rt = request.app.state.runtime
    try:
        replies = rt.queue.broadcast_model_control(name, action, workers=len(live_workers(rt.db)))
    except Exception as exc:
        log.warning("model control broadcast failed: %s", exc)
        raise ServiceUnavailable("The job queue cannot be reached to ask the workers; try again", code="queue_unavailable") from None
    serving = {worker: reply for worker, reply in replies.items() if reply.get("outcome") != "not_served"}
    if not serving:
        raise Conflict(
            f"No running worker serves model {name} (none consumes the queue model.{name})", code="model_not_served", model=name
        )
    if all(reply.get("outcome") == "failed" for reply in serving.values()):
        first = next(iter(serving.values()))
        raise PixelmillError(f"The workers could not {action} model {name}: {first.get('error')}", code="model_control_failed", status=500)
    return serving


def _replies(serving: dict[str, dict]) -> list[dict]:
    return [{"worker": worker, **reply} for worker, reply in sorted(serving.items())]


@router.post("/models/{model}/load", **_CONTROL)
def load_model(model: str, request: Request):
    """Load a model now (no-op when resident): embedded, answers once resident; scale-out, 202 while the workers load it."""
    name = _catalog_model(request, model)
    if not _embedded(request):
        serving = _ask_workers(request, name, "load")
        loading = any(r.get("outcome") == "loading" for r in serving.values())
        body = {"name": name, "state": "loading" if loading else "resident", "workers": _replies(serving)}
        return JSONResponse(body, status_code=202 if loading else 200)
    try:
        request.app.state.runtime.models.backend(name)
    except Exception as exc:
        log.exception("loading model %s on request failed", name)
        raise PixelmillError(f"Model {name} could not be loaded: {type(exc).__name__}: {exc}", code="model_load_failed", status=500) from None
    return _state(request, name)


@router.post("/models/{model}/unload", **_CONTROL)
def unload_model(model: str, request: Request):
    """Free an idle model's memory now (no-op when cold); 409 while it is in use."""
    name = _catalog_model(request, model)
    if not _embedded(request):
        serving = _ask_workers(request, name, "unload")
        _refuse_unload(name, [r.get("outcome") for r in serving.values()], " on a worker")
        return {"name": name, "state": "cold", "workers": _replies(serving)}
    _refuse_unload(name, [request.app.state.runtime.models.unload_idle(name)])
    return _state(request, name)
