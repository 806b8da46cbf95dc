"""Webhooks: outgoing deliveries and inbound triggers.

* :mod:`~pixelmill.webhooks.outbox` queues ``webhook_events`` rows inside the
  transaction of each execution state change;
* :mod:`~pixelmill.webhooks.dispatcher` claims due rows, signs each attempt with
  :func:`sign_headers`, sends it with :func:`deliver` and reschedules with
  :func:`next_attempt_delay` while the outcome is ``"retry"``;
* :mod:`~pixelmill.webhooks.triggers` turns secret trigger URLs into executions.
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
