"""One webhook delivery attempt: POST, measure, classify; never raises for network trouble.

A dispatcher holding an outbox row does, per attempt::

    headers = sign_headers(row.msg_id, row.payload, endpoint.secrets)
    attempt = deliver(client, endpoint.url, row.payload, headers)
    if attempt.outcome == "retry":
        delay = next_attempt_delay(row.attempts + 1, attempt.retry_after, rng)
        # None: give up; otherwise schedule the row delay seconds from now
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pixelmill.net.safe_http import SafeHttpClient, SafeHttpError
from pixelmill.webhooks.schedule import Outcome, classify

DEFAULT_TIMEOUT_S = 15.0
USER_AGENT = "pixelmill-webhooks/1"


@dataclass(frozen=True)
class DeliveryAttempt:
    """What happened when one webhook was sent once."""

    status_code: int | None
    """The receiver's HTTP status, ``None`` when no answer came."""
    latency_ms: float
    error: str | None
    """A stable error code (``timeout``, ``connect_failed``, ``url_resolves_to_blocked_address``…) or ``None``."""
    outcome: Outcome
    retry_after: str | None = None
    """The receiver's ``Retry-After`` header, raw, for :func:`~pixelmill.webhooks.schedule.next_attempt_delay`."""
    error_message: str | None = None
    response_excerpt: str = ""
    """The start of the receiver's answer (at most 1 KiB, decoded leniently), for delivery logs."""

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


def deliver(
    client: SafeHttpClient,
    url: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> DeliveryAttempt:
    """POST ``payload`` with ``headers`` (the signature headers) to ``url`` once.

    Redirects are not followed (a 3xx is a failed attempt). Network errors and
    policy refusals become a :class:`DeliveryAttempt` with ``error`` set; only
    programming errors propagate.
    """
    send_headers = {"user-agent": USER_AGENT, "content-type": "application/json", **headers}
    started = time.monotonic()
    try:
        response = client.post_json(url, payload, send_headers, timeout, excerpt_bytes=1024)
    except SafeHttpError as exc:
        return DeliveryAttempt(
            status_code=None,
            latency_ms=(time.monotonic() - started) * 1000.0,
            error=exc.code,
            outcome=classify(None, exc.code),
            error_message=exc.message,
        )
    return DeliveryAttempt(
        status_code=response.status_code,
        latency_ms=response.elapsed_ms,
        error=None,
        outcome=classify(response.status_code, None),
        retry_after=response.headers.get("retry-after"),
        response_excerpt=response.body_excerpt.decode("utf-8", errors="replace"),
    )
