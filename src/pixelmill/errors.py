"""One error tree.  Each error has a stable code and an HTTP status.

Domain code raises these; each API dialect renders them in its own shape.
"""

from __future__ import annotations

from typing import Any


class PixelmillError(Exception):
    code: str = "internal_error"
    status: int = 500
    message: str = "Internal error"

    def __init__(self, message: str | None = None, *, code: str | None = None, status: int | None = None, **details: Any):
        self.message = message or self.message
        if code:
            self.code = code
        if status:
            self.status = status
        self.details = details
        self.headers: dict[str, str] = {}
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class BadRequest(PixelmillError):
    code, status, message = "bad_request", 400, "Bad request"


class InvalidInput(PixelmillError):
    """A request that parsed but whose values are wrong (422)."""

    code, status, message = "invalid_input", 422, "Invalid input"


class Unauthorized(PixelmillError):
    code, status, message = "unauthorized", 401, "Missing API key"


class Forbidden(PixelmillError):
    code, status, message = "forbidden", 403, "Forbidden"


class NotFound(PixelmillError):
    code, status, message = "not_found", 404, "Not found"


class Conflict(PixelmillError):
    code, status, message = "conflict", 409, "Conflict"


class Gone(PixelmillError):
    code, status, message = "gone", 410, "Gone"


class PayloadTooLarge(PixelmillError):
    code, status, message = "payload_too_large", 413, "Request body too large"


class InsufficientCredits(PixelmillError):
    code, status, message = "insufficient_credits", 402, "Not enough credits"


class RateLimited(PixelmillError):
    """A limit refused the request.  ``windows`` are the limits the request touched
    (``pixelmill.accounts.ratelimit.LimitState``), ``violated`` the full one;
    ``concurrent`` marks a cap on work in flight rather than a window."""

    code, status, message = "rate_limited", 429, "Rate limit exceeded"

    def __init__(self, message: str | None = None, *, windows: Any = (), violated: Any = None, concurrent: bool = False, **kw: Any):
        super().__init__(message, **kw)
        self.windows = list(windows)
        self.violated = violated
        self.concurrent = concurrent


class ServiceUnavailable(PixelmillError):
    code, status, message = "service_unavailable", 503, "Service unavailable"


class NodeFailed(PixelmillError):
    """A node run failed; recorded on the node run, never raised to HTTP."""

    code, status, message = "node_failed", 500, "Node failed"
