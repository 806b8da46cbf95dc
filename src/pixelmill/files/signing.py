"""Signed, expiring URLs (HMAC-SHA256 over a subject and expiry): result files, and
live-event streams for clients that cannot send an API key (a browser's EventSource)."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode


class UrlSigner:
    def __init__(self, secret: str, ttl_s: int = 600):
        self._key = secret.encode()
        self.ttl_s = ttl_s

    def _sig(self, file_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{file_id}.{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def url(self, base_url: str, file_id: str, filename: str, now: float | None = None, ttl_s: int | None = None) -> str:
        expires = int((now if now is not None else time.time()) + (ttl_s or self.ttl_s))
        query = urlencode({"exp": expires, "sig": self._sig(file_id, expires)})
        return f"{base_url.rstrip('/')}/files/{file_id}/{filename}?{query}"

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
        query = urlencode({"exp": expires, "sig": self._sig(f"events:{execution_id}", expires)})
        return f"{base_url.rstrip('/')}/api/v1/executions/{execution_id}/events?{query}"

    def verify_stream(self, execution_id: str, exp: str | int, sig: str, now: float | None = None) -> str | None:
        """None when the stream URL is valid, else 'expired' or 'bad_signature'."""
        return self.verify(f"events:{execution_id}", exp, sig, now)


STREAM_TTL_S = 3600
