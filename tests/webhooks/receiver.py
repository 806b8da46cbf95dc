"""A customer's webhook endpoint on 127.0.0.1: verifies Standard Webhooks signatures and records what arrived."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    id: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers ``status`` (200 by default; a list is consumed first); ``up()``/``down()`` start and stop it."""

    port: int = field(default_factory=free_port)
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra = receiver.answers.pop(0) if receiver.answers else (200, {})
                if 200 <= status < 300:
                    receiver.received.append(Received(headers.get("webhook-id", ""), headers, body))
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> list[str]:
        return [r.id for r in self.received]

    def types(self) -> list[str]:
        return [r.json.get("type", r.json.get("status")) for r in self.received]


def verify(secret: str, r: Received) -> dict:
    """Verify like a customer with the standardwebhooks library; raises when the signature is wrong."""
    return Webhook(secret).verify(r.body, {k: v for k, v in r.headers.items() if k.startswith("webhook-")})
