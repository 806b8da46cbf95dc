"""Serving result files at signed, expiring URLs."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response

from pixelmill.errors import Forbidden, NotFound
from pixelmill.store.tables import files

router = APIRouter()


@router.get("/files/{file_id}/{filename}", include_in_schema=False)
def get_file(file_id: str, filename: str, request: Request, exp: str = "", sig: str = ""):
    rt = request.app.state.runtime
    problem = rt.signer.verify(file_id, exp, sig)
    if problem == "expired":
        raise Forbidden("This URL has expired; fetch a fresh one from the result", code="url_expired")
    if problem:
        raise Forbidden("Invalid URL signature", code="bad_signature")
    with rt.db.engine.connect() as conn:
        row = conn.execute(sa.select(files).where(files.c.id == file_id)).first()
    if row is None or not rt.storage.exists(row.storage_key):
        raise NotFound("File not found", code="file_not_found")
    data = rt.storage.get(row.storage_key)
    return Response(
        data,
        media_type=row.content_type,
        headers={"Cache-Control": "private, max-age=600", "Content-Disposition": f'inline; filename="{filename}"'},
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
