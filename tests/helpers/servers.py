"""A real HTTP server for tests: the app under uvicorn on a free local port, in a thread."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager

import uvicorn

from tests.conftest import wait_for


@contextmanager
def serve(app):
    """Run ``app`` under uvicorn on a free local port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls in timings
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # the app's lifespan runs as in `pixelmill serve` (with manage_runtime=False it builds the API
    # document and keeps what lives long out of the cycle collector's scans, as a server does)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
