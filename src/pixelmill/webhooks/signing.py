"""Webhook signatures: Standard Webhooks headers, and BFL's ``X-BFL-Signature``.

Standard Webhooks (https://www.standardwebhooks.com): the signed content is
``"{webhook-id}.{webhook-timestamp}.{body}"``, the signature is
``v1,<base64 HMAC-SHA256>``, and ``webhook-signature`` holds one such entry per
active secret, separated by spaces, so an endpoint rotating its secret verifies
with either the old or the new one.

Secrets:

* ``whsec_<base64>`` secrets are Standard Webhooks secrets: the key is the
  base64-decoded part. :func:`new_secret` makes these (32 random bytes).
* Any other string (for example a BFL request's plain ``webhook_secret``) is used
  as a key made of its UTF-8 bytes, i.e. it stands for the Standard Webhooks
  secret ``"whsec_" + base64(secret.encode("utf-8"))``
  (:func:`standard_secret`). A receiver verifies with
  ``standardwebhooks.Webhook(secret.encode())`` or with that ``whsec_`` string.

BFL's own scheme (as its integration guide describes): header
``X-BFL-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``, no timestamp.
The form BFL's official SDK examples check: ``X-Webhook-Secret: <secret>``, the
request's own ``webhook_secret`` sent back as it was given (receivers compare it
with ``hmac.compare_digest``; it is only sent where the request gave one).

Sign at each delivery attempt (same ``webhook-id``, fresh timestamp): receivers
refuse timestamps older than their tolerance (5 minutes in the reference library).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
from datetime import datetime, timezone

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
BFL_SIGNATURE_HEADER = "X-BFL-Signature"
BFL_SECRET_HEADER = "X-Webhook-Secret"


def new_secret(num_bytes: int = 32) -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of ``num_bytes`` random bytes."""
    if not 24 <= num_bytes <= 64:
        raise ValueError("Standard Webhooks secrets hold 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(num_bytes)).decode("ascii")


def standard_secret(secret: str) -> str:
    """The ``whsec_`` form of any secret we sign with (see the module docstring)."""
    if not secret:
        raise ValueError("a webhook secret may not be empty")
    if secret.startswith(SECRET_PREFIX):
        key = secret[len(SECRET_PREFIX) :]
        try:
            if not base64.b64decode(key + "==", validate=False):
                raise ValueError("a whsec_ secret must carry at least one key byte")
        except binascii.Error as exc:
            raise ValueError(f"invalid whsec_ secret: {exc}") from None
        return secret
    return SECRET_PREFIX + base64.b64encode(secret.encode("utf-8")).decode("ascii")


def sign_headers(
    msg_id: str,
    payload: bytes,
    secrets: list[str],
    timestamp: datetime | None = None,
) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt of ``payload``.

    ``secrets`` are all the endpoint's active secrets (two while rotating); each
    adds one ``v1,…`` entry to ``webhook-signature``. ``payload`` must be UTF-8
    (JSON always is). ``timestamp`` defaults to now.
    """
    if not secrets:
        raise ValueError("at least one secret is needed to sign a webhook")
    if not msg_id or any(ch in msg_id for ch in ".\r\n "):
        # The spec forbids '.' in the id: it delimits the signed content.
        raise ValueError("msg_id must be a non-empty string without '.', spaces or line breaks")
    moment = (timestamp or datetime.now(timezone.utc)).astimezone(timezone.utc)
    moment = moment.replace(microsecond=0)
    text = payload.decode("utf-8")
    signatures = [Webhook(standard_secret(secret)).sign(msg_id, moment, text) for secret in secrets]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": " ".join(dict.fromkeys(signatures)),
    }


def bfl_signature(secret: str, payload: bytes) -> str:
    """BFL's ``X-BFL-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of the raw body."""
    if not secret:
        raise ValueError("a webhook secret may not be empty")
    return "sha256=" + hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).hexdigest()


def verify_bfl_signature(secret: str, payload: bytes, header_value: str) -> bool:
    """True when ``header_value`` is the BFL signature of ``payload`` (constant-time compare)."""
    return hmac.compare_digest(bfl_signature(secret, payload), header_value.strip())
