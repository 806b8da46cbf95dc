"""A small HTTP server for processes without the API (``pixelmill worker``): /healthz, /readyz, /metrics."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_health(runtime, host: str, port: int) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; returns the server (``server_address`` has the bound port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, "application/json", json.dumps({"status": "ok"}).encode())
            elif path == "/readyz":
                body = runtime.readiness.report()
                self._send(200 if body["ready"] else 503, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                from pixelmill.ops.metrics import exposition

                data, ctype = exposition(runtime)
                self._send(200, ctype, data)
            else:
                self._send(404, "application/json", b'{"error":{"code":"not_found","message":"Not found"}}')

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="pixelmill-health", daemon=True).start()
    return server
