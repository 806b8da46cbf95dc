"""pixelmill Studio: the web app served at ``/`` on the API's own port.

The built assets live in ``pixelmill/studio/`` (built from ``web/`` and shipped
in the package, so no Node.js is needed at run time).  Studio uses hash routes
(``/#/playground``), so the server only answers ``/``, ``/index.html`` and the
files under ``/assets/``; every other path keeps its API meaning (an unknown
one is a JSON 404).

Studio pages carry a strict Content-Security-Policy: scripts and styles only
from this origin, no inline code, no framing; images and connections to this
origin (and to ``public_base_url``'s origin, where result URLs point).
"""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from pixelmill.errors import NotFound

STUDIO_DIR = Path(__file__).resolve().parent.parent / "studio"
BUILD_INFO = "build-info.json"

router = APIRouter(include_in_schema=False)


def content_security_policy(public_base_url: str | None) -> str:
    extra = ""
    if public_base_url:
        parts = urlsplit(public_base_url)
        if parts.scheme in ("http", "https") and parts.netloc:
            extra = f" {parts.scheme}://{parts.netloc}"
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' data: blob:{extra}",
            f"connect-src 'self'{extra}",
            "font-src 'self'",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def _headers(request: Request, cache: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(request.app.state.runtime.settings.public_base_url),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": cache,
    }


def studio_built(directory: Path = STUDIO_DIR) -> bool:
    return (directory / "index.html").is_file()


def build_info(directory: Path = STUDIO_DIR) -> dict:
    try:
        return json.loads((directory / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return {}


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/index.html", methods=["GET", "HEAD"])
def studio_index(request: Request):
    index = STUDIO_DIR / "index.html"
    if not index.is_file():
        raise NotFound("Studio is not built into this installation; build it with `npm ci && npm run build` in web/", code="studio_not_built")
    return FileResponse(index, media_type="text/html; charset=utf-8", headers=_headers(request, "no-cache"))


@router.api_route("/assets/{name}", methods=["GET", "HEAD"])
def studio_asset(name: str, request: Request):
    # one flat folder of hashed file names: anything else (.., sub-folders) is not there
    path = STUDIO_DIR / "assets" / name
    if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        raise NotFound("Not Found", code="not_found")
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=_headers(request, "public, max-age=31536000, immutable"))


@router.api_route("/favicon.svg", methods=["GET", "HEAD"])
def studio_icon(request: Request):
    path = STUDIO_DIR / "favicon.svg"
    if not path.is_file():
        raise NotFound("Not Found", code="not_found")
    return FileResponse(path, media_type="image/svg+xml", headers=_headers(request, "public, max-age=86400"))


def startup_message(runtime) -> str:
    """What ``pixelmill serve`` prints about Studio: its URL and, while the installation
    has no API key yet, how to make the first one."""
    from pixelmill.accounts.keys import any_active_key

    url = runtime.settings.resolved_base_url() + "/"
    lines = [f"Studio: {url}" if studio_built() else "Studio is not built into this installation (see web/README.md)"]
    try:
        with runtime.db.read() as conn:
            has_key = any_active_key(conn)
    except Exception:  # a fresh data directory: no schema yet, so no key either
        has_key = False
    if not has_key:
        lines.append("No API key yet. Create the first one, then sign in to Studio with it:")
        lines.append("    pixelmill keys create --account me      (./serve installs it as .venv/bin/pixelmill)")
    return "\n".join(lines)
