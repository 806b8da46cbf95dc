"""Serving result files at signed, expiring URLs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pixelmill.errors import Forbidden
from pixelmill.files.signing import content_disposition

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


def signed_url(request: Request, file_view) -> str:
    rt = request.app.state.runtime
    base = rt.settings.public_base_url or str(request.base_url)
    return rt.signer.url(base, file_view.id, file_view.filename)


def signed_stream_url(request: Request, execution_id: str) -> str:
    """A key-less URL of an execution's live events, valid for an hour."""
    rt = request.app.state.runtime
    base = rt.settings.public_base_url or str(request.base_url)
    return rt.signer.stream_url(base, execution_id)
