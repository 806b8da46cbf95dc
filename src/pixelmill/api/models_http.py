"""The models: ``GET /api/v1/models`` (residency), and loading or unloading one (admin).

For each model: its catalog settings, and where it is in memory — ``cold``,
``loading`` or ``resident`` — on which device, how long its last load took and
how many bytes it holds.  In embedded mode the server's own worker answers; in
scale-out every worker advertises what it holds (``worker_models``) and the
model lists each worker that has it.

``POST /api/v1/models/{model}/load`` and ``…/unload`` take the admin key
(``Authorization: Bearer <admin key>``).  In embedded mode they act on the
server's own registry: load answers once the model is resident (a cold model is
loaded, making room within the memory budget as a generation would); unload
frees an idle model at once and answers 409 ``model_in_use`` while a generation
runs on it (``model_loading`` during a load, ``model_pinned`` for a backend the
embedding process registered).  In scale-out mode each worker decides what it
holds (the models of the queues it consumes, ``model_idle_unload_s``): both
answer 501 ``model_control_not_offered``.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request

from pixelmill.accounts.keys import Principal
from pixelmill.api import contract, wire
from pixelmill.api.admin import require_admin
from pixelmill.api.deps import principal
from pixelmill.errors import Conflict, NotFound, PixelmillError
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
    responses=contract.responses(400, 401, 403, 404, 405, 409, 422, 500, 501, ok={200: wire.ModelState}),
)


def _embedded_model(request: Request, model: str) -> str:
    """The catalog name of ``model`` (a name or an alias) on an embedded server; 404 / 501 otherwise."""
    rt = request.app.state.runtime
    spec = rt.catalog.resolve(model)
    if spec is None:
        raise NotFound(
            f"No model {model!r} in the catalog; models: {', '.join(rt.catalog.names())}", code="model_not_found", model=model
        )
    if rt.settings.queue != "inprocess":
        raise PixelmillError(
            "Models are loaded and unloaded by each worker in scale-out mode (the models of the queues it consumes, "
            "unloaded after model_idle_unload_s); this API acts on an embedded server's own models only",
            code="model_control_not_offered",
            status=501,
        )
    return spec.name


def _state(request: Request, name: str) -> dict:
    from pixelmill.engine.placement import residency_report

    entry = next(m for m in residency_report(request.app.state.runtime)["data"] if m["name"] == name)
    return {"name": name, "state": entry["state"], "workers": entry["workers"], "memory_bytes": entry["memory_bytes"], "load_seconds": entry["load_seconds"]}


@router.post("/models/{model}/load", **_CONTROL)
def load_model(model: str, request: Request):
    """Load a model now (no-op when resident); answers once it is resident."""
    name = _embedded_model(request, model)
    try:
        request.app.state.runtime.models.backend(name)
    except Exception as exc:
        log.exception("loading model %s on request failed", name)
        raise PixelmillError(f"Model {name} could not be loaded: {type(exc).__name__}: {exc}", code="model_load_failed", status=500) from None
    return _state(request, name)


@router.post("/models/{model}/unload", **_CONTROL)
def unload_model(model: str, request: Request):
    """Free an idle model's memory now (no-op when cold); 409 while it is in use."""
    name = _embedded_model(request, model)
    outcome = request.app.state.runtime.models.unload_idle(name)
    if outcome == Unloaded.IN_USE:
        raise Conflict(f"Model {name} is in use by a running generation; unload it once it is idle", code="model_in_use", model=name)
    if outcome == Unloaded.LOADING:
        raise Conflict(f"Model {name} is loading; unload it once the load finished", code="model_loading", model=name)
    if outcome == Unloaded.PINNED:
        raise Conflict(f"Model {name} was registered by the process that embeds pixelmill and cannot be unloaded", code="model_pinned", model=name)
    return _state(request, name)
