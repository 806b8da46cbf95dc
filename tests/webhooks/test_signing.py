"""Webhook signatures verified with the reference Standard Webhooks library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from pixelmill.webhooks import bfl_signature, new_secret, sign_headers, standard_secret, verify_bfl_signature

PAYLOAD = json.dumps({"type": "execution.completed", "data": {"id": "ex_1", "status": "Ready"}}, separators=(",", ":")).encode()


def test_new_secret_is_standard_webhooks_format() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_secret() != secret


def test_both_rotated_secrets_verify_and_tampering_fails() -> None:
    old, new = new_secret(), new_secret()
    headers = sign_headers("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", PAYLOAD, [old, new])

    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in headers["webhook-signature"].split(" "))
    for secret in (old, new):
        assert Webhook(secret).verify(PAYLOAD, headers) == json.loads(PAYLOAD)

    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(PAYLOAD.replace(b"Ready", b"Error"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(PAYLOAD, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(PAYLOAD, {**headers, "webhook-id": "msg_other"})


def test_timestamp_is_signed_and_old_attempts_are_rejected() -> None:
    secret = new_secret()
    stale = sign_headers("msg_1", PAYLOAD, [secret], timestamp=datetime.now(timezone.utc) - timedelta(minutes=10))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(PAYLOAD, stale)

    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    headers = sign_headers("msg_1", PAYLOAD, [secret], timestamp=moment)
    assert headers["webhook-timestamp"] == str(int(moment.timestamp()))


def test_plain_bfl_secret_signs_with_its_utf8_bytes() -> None:
    plain = "my-bfl-webhook-secret"
    headers = sign_headers("msg_bfl", PAYLOAD, [plain])
    assert Webhook(plain.encode("utf-8")).verify(PAYLOAD, headers)
    assert Webhook(standard_secret(plain)).verify(PAYLOAD, headers)
    assert standard_secret(plain) == "whsec_" + base64.b64encode(plain.encode()).decode()


def test_bfl_signature_is_hex_hmac_of_raw_body() -> None:
    secret = "s3cret"
    expected = "sha256=" + hmac.new(b"s3cret", PAYLOAD, hashlib.sha256).hexdigest()
    assert bfl_signature(secret, PAYLOAD) == expected
    assert verify_bfl_signature(secret, PAYLOAD, expected)
    assert not verify_bfl_signature(secret, PAYLOAD + b" ", expected)


@pytest.mark.parametrize("msg_id", ["", "msg.1", "msg\n1"])
def test_message_ids_that_would_break_the_signed_content_are_refused(msg_id: str) -> None:
    with pytest.raises(ValueError):
        sign_headers(msg_id, PAYLOAD, [new_secret()])


def test_signing_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        sign_headers("msg_1", PAYLOAD, [])
    with pytest.raises(ValueError):
        sign_headers("msg_1", PAYLOAD, [""])
