"""https through the pinned address: SNI, Host and certificate checks use the URL's host name."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pixelmill.net import FetchFailed, SafeHttpClient, UrlPolicy

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

HOST = "images.pixelmill.test"


@dataclass
class TlsServer:
    port: int
    ca_file: str
    server_names: list[str | None] = field(default_factory=list)
    host_headers: list[str] = field(default_factory=list)


def _make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf certificate for HOST signed by it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=pixelmill test CA")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={HOST}")
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{HOST}\n")
    openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "san.ext",
    )  # fmt: skip
    return directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    ca, cert, key = _make_certificates(tmp_path_factory.mktemp("tls"))
    state = TlsServer(port=0, ca_file=str(ca))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.host_headers.append(self.headers["Host"])
            body = b"secure hello"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def remember_sni(sock: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        state.server_names.append(server_name)

    context.sni_callback = remember_sni

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # refused handshakes are expected in these tests

    server = Server(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _client(tls_server: TlsServer, names: dict[str, str]) -> SafeHttpClient:
    policy = UrlPolicy(allow_networks=["127.0.0.0/8"], ca_bundle=tls_server.ca_file)
    return SafeHttpClient(policy, resolver=lambda host, port: [names[host]])


def test_https_to_pinned_address_verifies_the_host_name(tls_server: TlsServer, connects: list) -> None:
    client = _client(tls_server, {HOST: "127.0.0.1"})
    assert client.get_bytes(f"https://{HOST}:{tls_server.port}/photo.png") == b"secure hello"
    assert connects == [("127.0.0.1", tls_server.port)]
    assert tls_server.server_names[-1] == HOST
    assert tls_server.host_headers[-1] == f"{HOST}:{tls_server.port}"


def test_certificate_for_another_name_is_refused(tls_server: TlsServer, connects: list) -> None:
    client = _client(tls_server, {"other.pixelmill.test": "127.0.0.1"})
    with pytest.raises(FetchFailed) as failed:
        client.get_bytes(f"https://other.pixelmill.test:{tls_server.port}/")
    assert failed.value.code == "tls_error"


def test_untrusted_certificate_is_refused(tls_server: TlsServer, connects: list) -> None:
    client = SafeHttpClient(UrlPolicy(allow_networks=["127.0.0.0/8"]), resolver=lambda host, port: ["127.0.0.1"])
    with pytest.raises(FetchFailed) as failed:
        client.get_bytes(f"https://{HOST}:{tls_server.port}/")
    assert failed.value.code == "tls_error"
