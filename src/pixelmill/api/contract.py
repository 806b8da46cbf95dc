"""The HTTP contract as Pydantic models: error bodies, wire shapes, security schemes,
and the helpers routes use to declare their request body and responses per status.

Routes read their JSON with :func:`pixelmill.api.deps.json_body` (bounded, and with
each dialect's own error shape), so request models are declared for the document
with :func:`json_request` rather than as FastAPI body parameters; responses are
declared with :func:`responses`.  The served document (``/openapi.json``, shown at
``/docs``) is checked against real responses by property-based fuzzing (schemathesis)
in the test suite, and its BFL part against BFL's own OpenAPI document.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

# --- error bodies ---------------------------------------------------------------------


class ErrorInfo(BaseModel):
    """The stable part of every error: a machine-readable ``code`` and a message; some
    errors add fields (``param``, ``problems``, ``retry_after`` ...)."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable machine-readable error code, e.g. not_found, invalid_input, rate_limited")
    message: str


class ErrorBody(BaseModel):
    """The error body of the workflow, Apiframe, admin and BFL routes."""

    model_config = ConfigDict(extra="allow")

    detail: Any = Field(description="The message (FastAPI-style clients read it); a list of problems for request validation")
    message: str | None = None
    error: ErrorInfo


class ValidationProblem(BaseModel):
    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """A 422: FastAPI's shape (``detail`` lists each problem with ``loc``, ``msg``, ``type``;
    what BFL answers) or, for checks beyond the schema, the common error body."""

    model_config = ConfigDict(extra="allow")

    detail: list[ValidationProblem] | str
    message: str | None = None
    error: ErrorInfo | None = None


class BflValidationError(BaseModel):
    """BFL's 422 (FastAPI's ``HTTPValidationError``), with the top-level ``message`` BFL's SDK reads."""

    model_config = ConfigDict(extra="allow")

    detail: list[ValidationProblem]
    message: str | None = None


class OpenAIErrorInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str
    type: str = Field(description="invalid_request_error, requests, insufficient_quota or server_error")
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error body, used on ``/v1/images/*`` and ``/v1/models``."""

    error: OpenAIErrorInfo


_DESCRIPTIONS = {
    400: "Bad request: malformed JSON, a body nested too deep, NUL characters, a bad header",
    401: "Missing, unknown or revoked key",
    402: "Not enough credits (the body breaks the cost down)",
    403: "Forbidden: a disabled account, a wrong or expired signature",
    404: "Not found (or not the key's)",
    405: "Method not allowed; the Allow header lists every method of the path",
    409: "Conflict: a request with this Idempotency-Key is still running",
    413: "Request body too large",
    422: "Invalid input",
    429: "Too many requests or active tasks; Retry-After says when to retry",
    500: "Internal error",
    501: "Not offered by this server",
    503: "Temporarily unavailable (queue or database busy); Retry-After says when to retry",
    504: "The synchronous wait ran out; the execution continues",
}

COMMON = (400, 401, 403, 404, 405, 413, 422, 429, 503)
"""Errors any authenticated route can answer."""
SUBMIT = COMMON + (402, 409)


def responses(*statuses: int, shape: Literal["common", "openai", "bfl"] = "common", ok: dict[int, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: ``ok`` maps success statuses to their model (or
    None for no body), ``statuses`` are the errors it can answer, in the dialect's
    ``shape`` (``bfl``: FastAPI's 422, otherwise the common body)."""
    out: dict[int | str, dict[str, Any]] = {}
    statuses = tuple(sorted(set(statuses) | {400}))  # a NUL in the path or query is a 400 on every route
    for status, model in (ok or {}).items():
        if model is None:
            out[status] = {"description": "Success, no body"}
        elif isinstance(model, (list, tuple)):  # one of several shapes
            schema = {"anyOf": [ref(m) for m in model]}
            out[status] = {"description": "Success", "content": {"application/json": {"schema": schema}}}
        else:
            out[status] = {"model": model, "description": "Success"}
    for status in statuses:
        if shape == "openai":
            model: Any = OpenAIErrorBody
        elif status == 422:
            model = BflValidationError if shape == "bfl" else ValidationErrorBody
        else:
            model = ErrorBody
        out[status] = {"model": model, "description": _DESCRIPTIONS.get(status, "Error")}
    return out


def with_event_stream(declared: dict[int | str, dict[str, Any]], status: int = 200, description: str = "Server-Sent Events") -> dict[int | str, dict[str, Any]]:
    """``declared`` with ``text/event-stream`` as a second content type of ``status``."""
    entry = dict(declared.get(status, {"description": description}))
    event = {"description": description + " (each event's data is a JSON object)"}
    entry["content"] = {**entry.get("content", {}), "text/event-stream": {"schema": event}}
    return {**declared, status: entry}


_REQUEST_MODELS: dict[str, type[BaseModel]] = {}


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A ``$ref`` to ``model``, whose schema is added to the document's components."""
    _REQUEST_MODELS[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_request(model: type[BaseModel], *, required: bool = True, media: str = "application/json", description: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the request body (its schema goes to the components)."""
    _REQUEST_MODELS[model.__name__] = model
    body: dict[str, Any] = {"required": required, "content": {media: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
    if description:
        body["description"] = description
    return {"requestBody": body}


def form_request(model: type[BaseModel], *, json_model: type[BaseModel] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a multipart body (and optionally a JSON alternative)."""
    _REQUEST_MODELS[model.__name__] = model
    content: dict[str, Any] = {"multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if json_model is not None:
        _REQUEST_MODELS[json_model.__name__] = json_model
        content["application/json"] = {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}}
    return {"requestBody": {"required": True, "content": content}}


def install_openapi(app: FastAPI) -> None:
    """Serve a document whose components also hold the request models declared with
    :func:`json_request`, and whose admin routes use the admin bearer."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for name, model in _REQUEST_MODELS.items():
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
            for def_name, definition in schema.pop("$defs", {}).items():
                schemas.setdefault(def_name, definition)
            schemas[name] = schema
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
