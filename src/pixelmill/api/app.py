"""The FastAPI application: mounts every dialect on one runtime."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
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



async def _prepare_routes(app: FastAPI) -> None:
    """Let FastAPI build every route's request models now, before the port opens.

    FastAPI builds them lazily, on the event loop, when a request first walks
    a router: with the BFL endpoints' models that held the first request (and
    every request behind it) for seconds.  One request per method for a path
    that no route takes walks them all; its 404 goes nowhere.
    """
    from starlette.exceptions import HTTPException

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    for method in ("GET", "POST", "PUT", "DELETE"):
        path = "/.well-known/pixelmill/route-warm-up"
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"", "headers": [],
            "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 0), "app": app, "state": {},
        }
        try:
            await app.router(scope, receive, send)
        except HTTPException:
            pass


def _hot_reads() -> HotReads:
    """The poll routes answered from memory for a finished execution (same renderers as the routes)."""
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
        await _prepare_routes(_app)
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

    @app.get("/healthz", include_in_schema=False)
    async def healthz():  # on the loop, touching nothing: answers even when every worker thread waits
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        """Ready for traffic: database reachable and migrated, broker (scale-out), default models (if it runs nodes)."""
        body = await run_in_threadpool(runtime.readiness.report)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        data, content_type = await run_in_threadpool(exposition, runtime)
        return Response(data, media_type=content_type)

    app.include_router(files_router)
    app.include_router(admin_router)
    app.include_router(account_router)  # before workflows: POST /api/v1/executions
    app.include_router(workflows.router)
    app.include_router(models_router)
    app.include_router(webhooks_router)  # webhook settings and logs, trigger URLs (with CORS on /api/v1/hooks)
    app.include_router(events_router)
    app.include_router(openai_images.router)  # before bfl: POST /v1/{endpoint} would match
    app.include_router(apiframe.router)
    app.include_router(bfl.router)
    app.include_router(studio_router)  # Studio at /, /assets/…
    return app
