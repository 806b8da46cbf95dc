"""Outgoing webhooks: signing, the retry schedule and single delivery attempts.

The persistent outbox and its dispatcher build on these: sign each attempt with
:func:`sign_headers`, send it with :func:`deliver`, and reschedule with
:func:`next_attempt_delay` while the outcome is ``"retry"``.
"""

from pixelmill.webhooks.schedule import (
    MAX_ATTEMPTS,
    RETRY_DELAYS_S,
    Outcome,
    classify,
    next_attempt_delay,
    parse_retry_after,
    should_throttle,
)
from pixelmill.webhooks.sender import DEFAULT_TIMEOUT_S, DeliveryAttempt, deliver
from pixelmill.webhooks.signing import (
    BFL_SIGNATURE_HEADER,
    bfl_signature,
    new_secret,
    sign_headers,
    standard_secret,
    verify_bfl_signature,
)

__all__ = [
    "BFL_SIGNATURE_HEADER",
    "DEFAULT_TIMEOUT_S",
    "MAX_ATTEMPTS",
    "RETRY_DELAYS_S",
    "DeliveryAttempt",
    "Outcome",
    "bfl_signature",
    "classify",
    "deliver",
    "new_secret",
    "next_attempt_delay",
    "parse_retry_after",
    "should_throttle",
    "sign_headers",
    "standard_secret",
    "verify_bfl_signature",
]
