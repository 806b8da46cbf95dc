"""Fixtures for the guarded HTTP client: a real local HTTP server and a connect spy."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class LocalServer:
    """An HTTP server on 127.0.0.1 with per-path handlers and a log of what it received."""

    server: ThreadingHTTPServer
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[dict[str, object]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if "Content-Length" not in (headers or {}):
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def make_handler(state: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append({"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
            route = state.routes.get(self.path.split("?", 1)[0])
            if route is None:
                reply(self, 404, b"not found")
            else:
                route(self)

        do_GET = _dispatch
        do_POST = _dispatch

    return Handler


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    state = LocalServer(server=None)  # type: ignore[arg-type]
    state.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.server.daemon_threads = True
    thread = threading.Thread(target=state.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    state.server.shutdown()
    state.server.server_close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Every outbound TCP connect made during the test; any non-loopback one fails the test."""
    made: list[tuple[str, int]] = []
    real_connect = socket.socket.connect

    def spy(sock: socket.socket, address: tuple) -> None:  # type: ignore[type-arg]
        host, port = str(address[0]), int(address[1])
        made.append((host, port))
        if not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"test tried to connect to non-loopback {host}:{port}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    yield made
    assert all(ipaddress.ip_address(host).is_loopback for host, _ in made), made
