"""Delivering signed webhooks to a real local receiver that verifies them like a customer would."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from pixelmill.net import SafeHttpClient, UrlPolicy
from pixelmill.webhooks import (
    BFL_SIGNATURE_HEADER,
    bfl_signature,
    deliver,
    new_secret,
    next_attempt_delay,
    sign_headers,
    standard_secret,
    verify_bfl_signature,
)

LOCAL = SafeHttpClient(UrlPolicy(allow_networks=["127.0.0.0/8"]))
PAYLOAD = json.dumps({"type": "execution.completed", "data": {"id": "ex_42", "status": "Ready"}}).encode()


@dataclass
class Receiver:
    """A customer endpoint: verifies the Standard Webhooks signature, dedupes on webhook-id."""

    secret: str
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # scripted replies, then 200
    delay_s: float = 0.0
    verified: list[dict] = field(default_factory=list)
    seen_ids: list[str] = field(default_factory=list)
    rejected: int = 0
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            receiver.raw.append((headers, body))
            if receiver.delay_s:
                time.sleep(receiver.delay_s)
            try:
                event = Webhook(receiver.secret).verify(body, headers)
            except WebhookVerificationError:
                receiver.rejected += 1
                status, extra = 401, {}
            else:
                if receiver.answers:
                    status, extra = receiver.answers.pop(0)
                else:
                    status, extra = 200, {}
                if 200 <= status < 300 and headers["webhook-id"] not in receiver.seen_ids:
                    receiver.seen_ids.append(headers["webhook-id"])
                    receiver.verified.append(event)
            reply = json.dumps({"status": status}).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(secret=new_secret())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_signed_delivery_is_verified_by_the_receiver(receiver: Receiver) -> None:
    attempt = deliver(LOCAL, receiver.url, PAYLOAD, sign_headers("msg_ex42_completed", PAYLOAD, [receiver.secret]))
    assert attempt.outcome == "delivered" and attempt.delivered
    assert attempt.status_code == 200 and attempt.error is None
    assert attempt.latency_ms > 0
    assert json.loads(attempt.response_excerpt) == {"status": 200}
    assert receiver.verified == [json.loads(PAYLOAD)]
    headers, body = receiver.raw[0]
    assert body == PAYLOAD
    assert headers["content-type"] == "application/json"


def test_rotation_old_secret_still_verifies(receiver: Receiver) -> None:
    headers = sign_headers("msg_rot", PAYLOAD, [new_secret(), receiver.secret])
    assert deliver(LOCAL, receiver.url, PAYLOAD, headers).delivered


def test_wrong_secret_is_rejected_and_retried(receiver: Receiver) -> None:
    attempt = deliver(LOCAL, receiver.url, PAYLOAD, sign_headers("msg_bad", PAYLOAD, [new_secret()]))
    assert (attempt.status_code, attempt.outcome) == (401, "retry")
    assert receiver.rejected == 1 and receiver.verified == []


def test_retry_then_delivered_once_with_same_id(receiver: Receiver) -> None:
    receiver.answers = [(503, {"Retry-After": "30"}), (502, {})]
    rng = random.Random(3)
    outcomes, delays = [], []
    for attempt_number in range(1, 5):
        headers = sign_headers("msg_retry", PAYLOAD, [receiver.secret])  # fresh timestamp each attempt
        attempt = deliver(LOCAL, receiver.url, PAYLOAD, headers)
        outcomes.append(attempt.outcome)
        if attempt.delivered:
            break
        delays.append(next_attempt_delay(attempt_number, attempt.retry_after, rng))
    assert outcomes == ["retry", "retry", "delivered"]
    assert delays[0] == 30.0  # Retry-After beat the ~5 s schedule
    assert 270 <= delays[1] <= 330
    assert receiver.seen_ids == ["msg_retry"]


def test_gone_disables(receiver: Receiver) -> None:
    receiver.answers = [(410, {})]
    attempt = deliver(LOCAL, receiver.url, PAYLOAD, sign_headers("msg_gone", PAYLOAD, [receiver.secret]))
    assert (attempt.status_code, attempt.outcome) == (410, "disable")


def test_redirect_is_a_failed_attempt_and_not_followed(receiver: Receiver) -> None:
    receiver.answers = [(301, {"Location": "http://169.254.169.254/"})]
    attempt = deliver(LOCAL, receiver.url, PAYLOAD, sign_headers("msg_moved", PAYLOAD, [receiver.secret]))
    assert (attempt.status_code, attempt.outcome) == (301, "retry")
    assert len(receiver.raw) == 1


def test_timeout_and_dead_endpoint_do_not_raise(receiver: Receiver) -> None:
    receiver.delay_s = 1.0
    attempt = deliver(LOCAL, receiver.url, PAYLOAD, sign_headers("msg_slow", PAYLOAD, [receiver.secret]), timeout=0.2)
    assert (attempt.status_code, attempt.error, attempt.outcome) == (None, "timeout", "retry")
    assert attempt.latency_ms < 900

    dead = deliver(LOCAL, "http://127.0.0.1:9/hooks", PAYLOAD, {})
    assert dead.status_code is None and dead.outcome == "retry"
    assert dead.error in {"connect_failed", "network_error"}


def test_internal_url_gives_up_without_sending() -> None:
    attempt = deliver(SafeHttpClient(), "http://169.254.169.254/latest", PAYLOAD, {})
    assert (attempt.status_code, attempt.error, attempt.outcome) == (None, "url_resolves_to_blocked_address", "give_up")


def test_bfl_style_header_alongside_standard_headers(receiver: Receiver) -> None:
    plain = "user-given-bfl-secret"
    receiver.secret = standard_secret(plain)  # what the customer configures: whsec_ + base64(secret)
    headers = {**sign_headers("msg_bfl", PAYLOAD, [plain]), BFL_SIGNATURE_HEADER: bfl_signature(plain, PAYLOAD)}
    assert deliver(LOCAL, receiver.url, PAYLOAD, headers).delivered
    received, body = receiver.raw[0]
    assert verify_bfl_signature(plain, body, received["x-bfl-signature"])
