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

from pixelmill.errors import PixelmillError
from pixelmill.store.db import database_busy


def error_response(err: PixelmillError) -> JSONResponse:
    body = {"detail": err.message, "message": err.message, "error": err.to_dict()}
    body.update({k: v for k, v in err.details.items() if k not in body})
    return JSONResponse(body, status_code=err.status, headers=err.headers or None)


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
    async def _http_error(_request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return JSONResponse(
            {"detail": err.detail, "message": str(err.detail), "error": {"code": code, "message": str(err.detail)}},
            status_code=err.status_code,
            headers=getattr(err, "headers", None),
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
