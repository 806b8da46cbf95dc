"""Signed, expiring URLs (HMAC-SHA256 over a subject and expiry): result files, and
live-event streams for clients that cannot send an API key (a browser's EventSource)."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote


class UrlSigner:
    def __init__(self, secret: str, ttl_s: int = 600):
        self._mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)  # keyed once; each signature copies it
        self.ttl_s = ttl_s

    def _sig(self, file_id: str, expires: int) -> str:
        mac = self._mac.copy()
        mac.update(f"{file_id}.{expires}".encode())
        return mac.hexdigest()[:32]

    def url(self, base_url: str, file_id: str, filename: str, now: float | None = None, ttl_s: int | None = None) -> str:
        """A file's URL.  The filename is part of what is signed, so the name a
        download is saved under cannot be changed without breaking the signature."""
        expires = int((now if now is not None else time.time()) + (ttl_s or self.ttl_s))
        sig = self._sig(_file_subject(file_id, filename), expires)  # hex: nothing in the query needs escaping
        return f"{base_url.rstrip('/')}/files/{quote(file_id, safe='')}/{quote(filename, safe='')}?exp={expires}&sig={sig}"

    def verify_file(self, file_id: str, filename: str, exp: str | int, sig: str, now: float | None = None) -> str | None:
        """None when a file URL (id, filename, expiry) is valid, else 'expired' or 'bad_signature'."""
        return self.verify(_file_subject(file_id, filename), exp, sig, now)

    def verify(self, file_id: str, exp: str | int, sig: str, now: float | None = None) -> str | None:
        """None when valid, else the reason: 'expired' or 'bad_signature'."""
        try:
            expires = int(exp)
        except (TypeError, ValueError):
            return "bad_signature"
        if not hmac.compare_digest(self._sig(file_id, expires), str(sig)):
            return "bad_signature"
        if (now if now is not None else time.time()) > expires:
            return "expired"
        return None

    # -- live-event streams ------------------------------------------------------------
    # The subject is prefixed so a stream signature can never open a file, nor the reverse.

    def stream_url(self, base_url: str, execution_id: str, now: float | None = None, ttl_s: int | None = None) -> str:
        expires = int((now if now is not None else time.time()) + (ttl_s or STREAM_TTL_S))
        sig = self._sig(f"events:{execution_id}", expires)
        return f"{base_url.rstrip('/')}/api/v1/executions/{execution_id}/events?exp={expires}&sig={sig}"

    def verify_stream(self, execution_id: str, exp: str | int, sig: str, now: float | None = None) -> str | None:
        """None when the stream URL is valid, else 'expired' or 'bad_signature'."""
        return self.verify(f"events:{execution_id}", exp, sig, now)


STREAM_TTL_S = 3600


def _file_subject(file_id: str, filename: str) -> str:
    return f"file:{file_id}/{filename}"


def content_disposition(filename: str, disposition: str = "inline") -> str:
    """A ``Content-Disposition`` value per RFC 6266: an ASCII ``filename`` fallback
    (quotes, backslashes, control and non-ASCII characters replaced) and the exact
    name as ``filename*=UTF-8''…`` (RFC 8187 percent-encoding).  No character of the
    name can end the header or the quoted string."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in filename) or "file"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
