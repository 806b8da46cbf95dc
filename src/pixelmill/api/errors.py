"""Rendering of PixelmillError as JSON: ``{"detail": message, "message": message, "error": {code, message, ...}}``.

``detail`` keeps FastAPI-style clients happy, the top-level ``message`` is what
BFL's official SDK reads (``response.json()["message"]``), ``error.message`` what
most other guides read; ``error.code`` is the stable machine-readable code.
"""

from __future__ import annotations

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pixelmill.presenters.limit_headers import error_headers
from pixelmill.errors import PixelmillError
from pixelmill.store.db import database_busy


def error_response(err: PixelmillError) -> JSONResponse:
    body = {"detail": err.message, "message": err.message, "error": err.to_dict()}
    body.update({k: v for k, v in err.details.items() if k not in body})
    return JSONResponse(body, status_code=err.status, headers=error_headers(err) or None)


def validation_message(errors: list[dict]) -> str:
    """One sentence naming every problem of a FastAPI-style ``detail`` list: ``body.width: ...; body.model: ...``."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "Request validation failed"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PixelmillError)
    async def _pixelmill_error(_request: Request, err: PixelmillError):
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        headers = dict(getattr(err, "headers", None) or {})
        message = str(err.detail)
        if err.status_code == 405:
            allow = allowed_methods(request)
            headers["Allow"] = ", ".join(allow)
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allow)}"
        err_body = PixelmillError(message, code=code, status=err.status_code)
        if request.url.path.startswith(("/v1/images/", "/v1/models")):
            from pixelmill.presenters.openai_images import render_error

            status, body, extra = render_error(err_body)
            return JSONResponse(body, status_code=status, headers={**headers, **extra} or None)
        return JSONResponse(
            {"detail": message, "message": message, "error": {"code": code, "message": message}},
            status_code=err.status_code,
            headers=headers or None,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, err: RequestValidationError):
        errors = []
        for e in err.errors():
            e = dict(e)
            e.pop("url", None)
            if "ctx" in e:
                e["ctx"] = {k: str(v) for k, v in e["ctx"].items()}
            errors.append(e)
        message = validation_message(errors)
        return JSONResponse({"detail": errors, "message": message, "error": {"code": "validation_error", "message": message}}, status_code=422)

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    async def _database_error(_request: Request, err: Exception):
        busy = database_busy(err)
        if busy is not None:
            return error_response(busy)
        return await _unexpected(_request, err)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception):
        busy = database_busy(err)
        if busy is not None:
            return error_response(busy)
        return JSONResponse(
            {"detail": "Internal server error", "message": "Internal server error", "error": {"code": "internal_error", "message": "Internal server error"}},
            status_code=500,
        )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this request's path (the ``Allow`` header of a 405)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in _flat_routes(request.app.router.routes):
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            methods |= set(route_methods)
    return sorted(methods)


def _flat_routes(routes):
    try:  # FastAPI >= 0.16x keeps included routers nested
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: routes are already flat
        return list(routes)
    return list(iter_route_contexts(routes))
