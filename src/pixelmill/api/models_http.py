"""``GET /api/v1/models``: the catalog with each model's residency on the workers.

For each model: its catalog settings, and where it is in memory — ``cold``,
``loading`` or ``resident`` — on which device, how long its last load took and
how many bytes it holds.  In embedded mode the server's own worker answers; in
scale-out every worker advertises what it holds (``worker_models``) and the
model lists each worker that has it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from pixelmill.accounts.keys import Principal
from pixelmill.api import contract, wire
from pixelmill.api.deps import principal

router = APIRouter(prefix="/api/v1", tags=["Models"])


@router.get("/models", responses=contract.responses(*contract.COMMON, ok={200: wire.DataList}))
def list_models(request: Request, who: Principal = Depends(principal)):
    """Every catalog model with its state, device, load time and memory."""
    from pixelmill.engine.placement import residency_report

    return residency_report(request.app.state.runtime)
