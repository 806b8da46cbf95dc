"""When to try a webhook again, and what one attempt's result means.

The schedule is the Standard Webhooks example: the first attempt immediately,
then, each delay counted from the failure of the attempt before it, 5 s, 5 min,
30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h: ten attempts over about 75 hours,
then the message is given up. Each delay gets ±10 % random jitter so endpoints
that failed together are not retried together.

How an attempt is judged (:func:`classify`), following the Standard Webhooks
"delivery success and failure" rules, which are also what Svix does:

* ``2xx`` → ``delivered``.
* ``410 Gone`` → ``disable``: the receiver asked us to stop; the endpoint is
  disabled and its pending messages are not retried.
* every other status is a failed attempt → ``retry`` on the schedule. That
  includes ``3xx`` (redirects are not followed; the URL should be updated),
  ``429``/``502``/``503``/``504`` (the receiver is loaded: also see
  :func:`should_throttle`) and the other ``4xx``: the spec says "the rest of the
  status codes should be treated as a failure", and a 401/404 is often a
  receiver's deployment in progress that fixes itself within the retry window.
* timeouts, refused or reset connections, DNS failures, TLS errors → ``retry``.
* a URL refused by our own outbound policy (internal address, bad scheme…) →
  ``give_up``: retrying cannot help this message, and the endpoint is left as it
  is for the operator or its owner to fix.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Literal

Outcome = Literal["delivered", "retry", "disable", "give_up"]

RETRY_DELAYS_S: tuple[float, ...] = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600)
"""Delay before attempt ``n`` (1-based) is ``RETRY_DELAYS_S[n - 1]``, counted from the previous failure."""

MAX_ATTEMPTS = len(RETRY_DELAYS_S)
JITTER = 0.10
MAX_RETRY_AFTER_S = RETRY_DELAYS_S[-1]
"""A receiver's ``Retry-After`` is honoured up to this many seconds."""

POLICY_REFUSALS = frozenset(
    {
        "url_invalid",
        "url_scheme_not_allowed",
        "url_host_not_allowed",
        "url_resolves_to_blocked_address",
    }
)
"""Error codes of :class:`pixelmill.net.BlockedUrl` that make a message ``give_up``."""

THROTTLE_STATUSES = frozenset({429, 502, 503, 504})


def next_attempt_delay(
    attempt_number: int,
    retry_after_header: str | None = None,
    rng: random.Random | None = None,
    *,
    now: datetime | None = None,
) -> float | None:
    """Seconds to wait after failed attempt ``attempt_number`` (1-based), or ``None`` to give up.

    ``attempt_number=0`` (nothing tried yet) gives ``0.0``. The scheduled delay gets
    ±10 % jitter from ``rng``; a ``Retry-After`` header (seconds or HTTP date)
    replaces it when it asks for longer, capped at 24 h. ``Retry-After`` never adds
    attempts beyond the schedule.
    """
    if attempt_number < 0:
        raise ValueError("attempt_number counts attempts made, from 0")
    if attempt_number >= MAX_ATTEMPTS:
        return None
    base = RETRY_DELAYS_S[attempt_number]
    delay = base * (1.0 + (rng or random).uniform(-JITTER, JITTER)) if base else 0.0
    asked = parse_retry_after(retry_after_header, now=now)
    if asked is not None and asked > delay:
        delay = min(asked, MAX_RETRY_AFTER_S)
    return delay


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` value in seconds from now: delta-seconds or an HTTP date; ``None`` if absent or invalid."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return max(seconds, 0.0)


def classify(status_code: int | None, error: str | None = None) -> Outcome:
    """What one attempt means: see the module docstring for the rules.

    ``status_code`` is the receiver's answer (``None`` when none came);
    ``error`` the error code when the attempt failed without an answer.
    """
    if status_code is None:
        if error in POLICY_REFUSALS:
            return "give_up"
        return "retry"
    if 200 <= status_code < 300:
        return "delivered"
    if status_code == 410:
        return "disable"
    return "retry"


def should_throttle(status_code: int | None) -> bool:
    """True when the answer says the receiver is overloaded (429, 502, 503, 504).

    A dispatcher may slow down all deliveries to that endpoint, not just retry this one.
    """
    return status_code in THROTTLE_STATUSES
