"""Serving result files at signed, expiring URLs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pixelmill.engine.views import ExecutionView
from pixelmill.errors import Forbidden
from pixelmill.files.signing import content_disposition
from pixelmill.presenters.workflow import render_execution as render_workflow_execution

router = APIRouter()


@router.get("/files/{file_id}/{filename}", include_in_schema=False)
def get_file(file_id: str, filename: str, request: Request, exp: str = "", sig: str = ""):
    rt = request.app.state.runtime
    problem = rt.signer.verify_file(file_id, filename, exp, sig)
    if problem == "expired":
        raise Forbidden("This URL has expired; fetch a fresh one from the result", code="url_expired")
    if problem:
        raise Forbidden("Invalid URL signature", code="bad_signature")
    stored = rt.files.read(file_id)
    return Response(
        stored.data,
        media_type=stored.content_type,
        headers={"Cache-Control": "private, max-age=600", "Content-Disposition": content_disposition(filename)},
    )


def request_base_url(request: Request) -> str:
    """The base of the URLs this request's answer signs (worked out once per request, and once per
    scheme, host and root path: building Starlette's URL costs more than signing one)."""
    scope = request.scope
    base = scope.get(_BASE_URL)
    if base is None:
        base = request.app.state.runtime.settings.public_base_url
        if not base:
            host = next((v for k, v in scope["headers"] if k == b"host"), None)
            key = (scope.get("scheme"), host, scope.get("root_path", ""), None if host else scope.get("server"))
            base = _BASES.get(key)
            if base is None:
                base = str(request.base_url)
                if len(_BASES) < 1024:  # the names a server is reached by: a few
                    _BASES[key] = base
        scope[_BASE_URL] = base
    return base


_BASE_URL = "pixelmill.base_url"
_BASES: dict[tuple, str] = {}


def signed_url(request: Request, file_view) -> str:
    return request.app.state.runtime.signer.url(request_base_url(request), file_view.id, file_view.filename)


def signed_stream_url(request: Request, execution_id: str) -> str:
    """A key-less URL of an execution's live events, valid for an hour."""
    return request.app.state.runtime.signer.stream_url(request_base_url(request), execution_id)


def render_execution(request: Request, view: ExecutionView) -> dict:
    """The workflow-API shape of an execution, its files and live stream at signed URLs."""
    return render_workflow_execution(view, lambda f: signed_url(request, f), signed_stream_url(request, view.id))
