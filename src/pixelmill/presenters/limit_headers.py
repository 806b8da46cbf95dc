"""HTTP headers that report rate limits and when to retry, built from what the errors and limiters carry."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pixelmill.accounts.ratelimit import LimitState, retry_after_s
from pixelmill.errors import PixelmillError, RateLimited


def _most_restrictive(states: Sequence[LimitState]) -> LimitState:
    """Fewest remaining; on a tie, the one that takes longest to free."""
    return min(states, key=lambda s: (s.remaining, -s.reset_after))


def rate_limit_headers(states: Sequence[LimitState], violated: LimitState | None = None, concurrent: bool = False) -> dict[str, str]:
    """HTTP headers describing ``states`` (empty when every window is unlimited).

    - ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` for the violated window,
      or else the most restrictive one.  ``X-RateLimit-Reset`` is **seconds from
      now** (rounded up) until that window frees a slot — relative, not a Unix
      timestamp, matching ``Retry-After``.
    - ``RateLimit-Policy`` and ``RateLimit`` per the IETF ``ratelimit-headers``
      draft (structured-field lists), one item per window:
      ``RateLimit-Policy: "requests";q=10;w=60, "executions-day";q=50;w=86400`` and
      ``RateLimit: "requests";r=3;t=42`` (``t`` = delta-seconds until reset).  A
      ``concurrent`` limit (active tasks) has ``qu="concurrent-requests"`` instead of a window.
    - ``Retry-After`` (whole seconds, >= 1 and never earlier than ``t``) when
      ``violated`` is given.
    """
    if not states and violated is None:
        return {}
    shown = list(states) if states else [violated]  # type: ignore[list-item]
    primary = violated or _most_restrictive(shown)
    unit = (lambda s: 'qu="concurrent-requests"') if concurrent else (lambda s: f"w={s.window_s}")
    headers = {
        "X-RateLimit-Limit": str(primary.limit),
        "X-RateLimit-Remaining": str(primary.remaining),
        "X-RateLimit-Reset": str(math.ceil(primary.reset_after)),
        "RateLimit-Policy": ", ".join(f'"{s.name}";q={s.limit};{unit(s)}' for s in shown),
        "RateLimit": ", ".join(f'"{s.name}";r={s.remaining};t={math.ceil(s.reset_after)}' for s in shown),
    }
    if violated is not None:
        headers["Retry-After"] = str(retry_after_s(violated))
    return headers


def error_headers(err: PixelmillError) -> dict[str, str]:
    """The headers an error's answer carries: its limits for a rate limit, ``Retry-After`` when it says when."""
    headers: dict[str, str] = {}
    if isinstance(err, RateLimited) and err.violated is not None:
        headers.update(rate_limit_headers(err.windows, err.violated, err.concurrent))
    retry_after = err.details.get("retry_after")
    if isinstance(retry_after, (int, float)) and "Retry-After" not in headers:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    headers.update(err.headers)
    return headers
