"""The FastAPI application: mounts every dialect on one runtime."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from pixelmill import __version__
from pixelmill.api.dialects import apiframe, bfl, openai_images, workflows
from pixelmill.api.account_http import router as account_router
from pixelmill.api.admin import router as admin_router
from pixelmill.api.contract import install_openapi
from pixelmill.api.errors import install_error_handlers
from pixelmill.api.files import render_execution
from pixelmill.api.hot_reads import HotReads
from pixelmill.api.guard import RequestGuard, ScopedCors
from pixelmill.api.events_http import router as events_router
from pixelmill.api.middleware import AccountsMiddleware
from pixelmill.api.request_id import RequestIdMiddleware
from pixelmill.api.scheduling import SchedulingHeadersMiddleware
from pixelmill.api.files import router as files_router
from pixelmill.api.models_http import router as models_router
from pixelmill.api.studio import router as studio_router
from pixelmill.api.webhooks_http import router as webhooks_router
from pixelmill.ops import heap
from pixelmill.ops.metrics import exposition


#: ``/healthz``, ``/readyz`` and ``/metrics``.  Like every route, each is a module's function that
#: finds its runtime on the app: FastAPI keeps every endpoint it has looked at in a cache of 4,096,
#: so an endpoint that closed over its runtime kept the runtime (its database engine, its models)
#: for as long as the process lived, whatever became of the app.
ops_router = APIRouter(include_in_schema=False)


@ops_router.get("/healthz")
async def healthz():  # on the loop, touching nothing: answers even when every worker thread waits
    return {"status": "ok", "version": __version__}


@ops_router.get("/readyz")
async def readyz(request: Request):
    """Ready for traffic: database reachable and migrated, broker (scale-out), default models (if it runs nodes)."""
    body = await run_in_threadpool(request.app.state.runtime.readiness.report)
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@ops_router.get("/metrics")
async def metrics(request: Request):
    data, content_type = await run_in_threadpool(exposition, request.app.state.runtime)
    return Response(data, media_type=content_type)


def _add_routes(app: FastAPI, *routers) -> None:
    """The routers' own routes, in order, as the app's.

    Each router is a module's, its routes built once when it is imported.  ``include_router``
    would wrap them for each app and build every route's models again for it (FastAPI does
    that lazily, at the first request into the router: about 200 ms of the event loop on
    two cores, 850 pydantic adapters and 3 MB per app).  None of these routers is given a
    prefix, dependencies or responses of the app's, so their routes are the app's as they are.
    """
    for router in routers:
        app.router.routes.extend(router.routes)


def _hot_reads() -> HotReads:
    """The poll routes answered before routing (same reads and renderers as the routes)."""
    hot = HotReads()
    hot.add("/v1/get_result", bfl.render_finished, query_id="id")
    hot.add("/api/v1/executions/{execution_id}", render_execution)
    hot.add("/api/v1/executions/{execution_id}/poll", render_execution)
    return hot


def create_app(runtime, manage_runtime: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if manage_runtime:
            runtime.start()
        _app.openapi()  # built now, before the port opens, not on the loop at the first GET /openapi.json
        heap.settle()  # the code and state a server keeps: out of the cycle collector's scans
        try:
            yield
        finally:
            if manage_runtime:
                runtime.stop()
            heap.thaw()

    app = FastAPI(title="pixelmill", version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app)
    install_openapi(app)
    # added before request_id, so it sits inside it: its own answers get an X-Request-Id too
    app.add_middleware(SchedulingHeadersMiddleware)  # innermost: its context reaches the routes
    app.add_middleware(AccountsMiddleware, hot_reads=_hot_reads())
    app.add_middleware(RequestGuard)  # outside the accounts step: refused before any key lookup
    if getattr(runtime, "tracing", None) is not None:  # a span per request, inside the request id (it names it)
        from pixelmill.api.tracing import TracingMiddleware

        app.add_middleware(TracingMiddleware, tracing=runtime.tracing)
    app.add_middleware(RequestIdMiddleware)  # outside the three above: their own answers carry the id too

    if runtime.settings.cors_origins:  # off by default; outermost, so preflights need no key
        app.add_middleware(ScopedCors, origins=runtime.settings.cors_origins)

    _add_routes(
        app,
        ops_router,
        files_router,
        admin_router,
        account_router,  # before workflows: POST /api/v1/executions
        workflows.router,
        models_router,
        webhooks_router,  # webhook settings and logs, trigger URLs (with CORS on /api/v1/hooks)
        events_router,
        openai_images.router,  # before bfl: POST /v1/{endpoint} would match
        apiframe.router,
        bfl.router,
        studio_router,  # Studio at /, /assets/…
    )
    return app
