"""The guarded client against a real local HTTP server: refusals, pinning, redirects, caps."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from pixelmill.net import BadImage, BlockedUrl, FetchFailed, SafeHttpClient, UrlPolicy, system_resolver

from .conftest import LocalServer, reply

LOOPBACK_ALLOWED = UrlPolicy(allow_networks=["127.0.0.0/8"])


def resolver_with(names: dict[str, list[str]]):
    """The system resolver, plus a few test names (the way an operator's split DNS would answer)."""

    def resolve(host: str, port: int) -> list[str]:
        return names[host] if host in names else system_resolver(host, port)

    return resolve


# ------------------------------------------------------------------ refusals before connecting


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data/", "url_resolves_to_blocked_address"),
        ("http://10.0.0.1/", "url_resolves_to_blocked_address"),
        ("http://192.168.1.1/", "url_resolves_to_blocked_address"),
        ("http://100.64.0.1/", "url_resolves_to_blocked_address"),
        ("http://0.0.0.0/", "url_resolves_to_blocked_address"),
        ("http://224.0.0.1/", "url_resolves_to_blocked_address"),
        ("http://[::1]/", "url_resolves_to_blocked_address"),
        ("http://[::ffff:169.254.169.254]/", "url_resolves_to_blocked_address"),
        ("http://[fe80::1]/", "url_resolves_to_blocked_address"),
        ("http://[fd00::1]/", "url_resolves_to_blocked_address"),
        ("http://[2002:a00::1]/", "url_resolves_to_blocked_address"),
        ("http://2130706433/", "url_resolves_to_blocked_address"),  # 127.0.0.1 as one integer
        ("http://localhost/", "url_resolves_to_blocked_address"),
        ("ftp://example.com/file", "url_scheme_not_allowed"),
        ("file:///etc/passwd", "url_scheme_not_allowed"),
        ("gopher://127.0.0.1:6379/", "url_scheme_not_allowed"),
        ("http://", "url_invalid"),
        ("not a url at all", "url_scheme_not_allowed"),
    ],
)
def test_refuses_internal_and_odd_urls_without_connecting(url: str, code: str, connects: list) -> None:
    client = SafeHttpClient(UrlPolicy())
    with pytest.raises(BlockedUrl) as refused:
        client.get_bytes(url)
    assert refused.value.code == code
    assert connects == []


def test_refuses_local_server_unless_allow_listed(local_server: LocalServer, connects: list) -> None:
    local_server.routes["/hello"] = lambda h: reply(h, 200, b"hello")
    with pytest.raises(BlockedUrl) as refused:
        SafeHttpClient(UrlPolicy()).get_bytes(local_server.url("/hello"))
    assert refused.value.code == "url_resolves_to_blocked_address"
    assert connects == [] and local_server.seen == []

    assert SafeHttpClient(LOOPBACK_ALLOWED).get_bytes(local_server.url("/hello")) == b"hello"
    assert connects == [("127.0.0.1", local_server.port)]


def test_post_is_refused_the_same_way(connects: list) -> None:
    with pytest.raises(BlockedUrl):
        SafeHttpClient().post_json("http://169.254.169.254/hook", b"{}", {})
    assert connects == []


def test_name_is_refused_if_any_of_its_addresses_is_internal(connects: list) -> None:
    client = SafeHttpClient(UrlPolicy(), resolver=resolver_with({"mixed.test": ["93.184.216.34", "10.0.0.7"]}))
    with pytest.raises(BlockedUrl) as refused:
        client.get_bytes("http://mixed.test/")
    assert refused.value.code == "url_resolves_to_blocked_address"
    assert connects == []


def test_deny_hosts_refuses_by_name(connects: list) -> None:
    client = SafeHttpClient(UrlPolicy(deny_hosts=[".internal"]))
    with pytest.raises(BlockedUrl) as refused:
        client.get_bytes("http://metadata.google.internal/")
    assert refused.value.code == "url_host_not_allowed"
    assert connects == []


# ------------------------------------------------------------------ pinning


def test_connects_to_the_resolved_address_and_keeps_the_host_header(local_server: LocalServer, connects: list) -> None:
    local_server.routes["/pinned"] = lambda h: reply(h, 200, b"pinned")
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    client = SafeHttpClient(LOOPBACK_ALLOWED, resolver=resolve)
    assert client.get_bytes(f"http://images.pixelmill.test:{local_server.port}/pinned") == b"pinned"
    assert calls == ["images.pixelmill.test"]  # resolved once, never again by the connection
    assert connects == [("127.0.0.1", local_server.port)]
    assert local_server.seen[0]["headers"]["host"] == f"images.pixelmill.test:{local_server.port}"


# ------------------------------------------------------------------ redirects


def test_redirect_to_internal_address_is_refused_before_connecting(local_server: LocalServer, connects: list) -> None:
    local_server.routes["/go"] = lambda h: reply(h, 302, headers={"Location": "http://10.1.2.3/admin"})
    with pytest.raises(BlockedUrl) as refused:
        SafeHttpClient(LOOPBACK_ALLOWED).get_bytes(local_server.url("/go"))
    assert refused.value.code == "url_resolves_to_blocked_address"
    assert connects == [("127.0.0.1", local_server.port)]


def test_redirect_to_name_of_internal_host_is_refused(local_server: LocalServer, connects: list) -> None:
    local_server.routes["/go"] = lambda h: reply(h, 301, headers={"Location": "http://metadata.test/computeMetadata"})
    client = SafeHttpClient(LOOPBACK_ALLOWED, resolver=resolver_with({"metadata.test": ["169.254.169.254"]}))
    with pytest.raises(BlockedUrl) as refused:
        client.get_bytes(local_server.url("/go"))
    assert refused.value.code == "url_resolves_to_blocked_address"
    assert connects == [("127.0.0.1", local_server.port)]


def test_redirect_to_other_scheme_is_refused(local_server: LocalServer, connects: list) -> None:
    local_server.routes["/go"] = lambda h: reply(h, 302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(BlockedUrl) as refused:
        SafeHttpClient(LOOPBACK_ALLOWED).get_bytes(local_server.url("/go"))
    assert refused.value.code == "url_scheme_not_allowed"


def test_relative_redirects_are_followed_up_to_the_limit(local_server: LocalServer, connects: list) -> None:
    for n in range(1, 6):
        local_server.routes[f"/hop{n}"] = lambda h, n=n: reply(h, 307, headers={"Location": f"/hop{n - 1}"})
    local_server.routes["/hop0"] = lambda h: reply(h, 200, b"arrived")
    client = SafeHttpClient(LOOPBACK_ALLOWED.model_copy(update={"max_redirects": 3}))

    assert client.get_bytes(local_server.url("/hop3")) == b"arrived"
    with pytest.raises(BlockedUrl) as refused:
        client.get_bytes(local_server.url("/hop5"))
    assert refused.value.code == "too_many_redirects"


def test_post_does_not_follow_redirects(local_server: LocalServer, connects: list) -> None:
    local_server.routes["/hook"] = lambda h: reply(h, 308, headers={"Location": "http://10.0.0.1/"})
    answer = SafeHttpClient(LOOPBACK_ALLOWED).post_json(local_server.url("/hook"), b'{"a":1}', {"x-test": "1"})
    assert answer.status_code == 308
    assert answer.headers["location"] == "http://10.0.0.1/"
    seen = local_server.seen[0]
    assert seen["body"] == b'{"a":1}'
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["x-test"] == "1"
    assert connects == [("127.0.0.1", local_server.port)]


# ------------------------------------------------------------------ sizes and errors


def test_body_size_cap_with_and_without_content_length(local_server: LocalServer, connects: list) -> None:
    big = b"x" * 200_000
    local_server.routes["/declared"] = lambda h: reply(h, 200, big)

    def undeclared(h) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(big)
        h.close_connection = True

    local_server.routes["/undeclared"] = undeclared
    client = SafeHttpClient(LOOPBACK_ALLOWED.model_copy(update={"max_response_bytes": 100_000}))
    for path in ("/declared", "/undeclared"):
        with pytest.raises(BlockedUrl) as refused:
            client.get_bytes(local_server.url(path))
        assert refused.value.code == "response_too_large"
    with pytest.raises(BlockedUrl):  # a per-call cap never raises the policy's cap
        client.get_bytes(local_server.url("/declared"), max_bytes=10**9)
    with pytest.raises(BlockedUrl):
        SafeHttpClient(LOOPBACK_ALLOWED).get_bytes(local_server.url("/declared"), max_bytes=1000)
    assert len(SafeHttpClient(LOOPBACK_ALLOWED).get_bytes(local_server.url("/declared"))) == len(big)


def test_non_2xx_and_closed_port_are_fetch_failures(local_server: LocalServer, connects: list) -> None:
    client = SafeHttpClient(LOOPBACK_ALLOWED)
    with pytest.raises(FetchFailed) as failed:
        client.get_bytes(local_server.url("/missing"))
    assert (failed.value.code, failed.value.status_code) == ("http_status", 404)

    closed_port = local_server.port
    local_server.server.server_close()
    with pytest.raises(FetchFailed) as failed:
        client.get_bytes(f"http://127.0.0.1:{closed_port}/")
    assert failed.value.code in {"connect_failed", "network_error"}


def test_read_timeout(local_server: LocalServer, connects: list) -> None:
    import time

    local_server.routes["/slow"] = lambda h: (time.sleep(1.0), reply(h, 200, b"late"))
    client = SafeHttpClient(LOOPBACK_ALLOWED.model_copy(update={"read_timeout": 0.2}))
    with pytest.raises(FetchFailed) as failed:
        client.post_json(local_server.url("/slow"), b"{}", {})
    assert failed.value.code == "timeout"


# ------------------------------------------------------------------ images


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of one colour: a few KiB that decode to width*height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(local_server: LocalServer, connects: list) -> None:
    bomb = png_bomb(20_000, 20_000)
    assert len(bomb) < 200_000
    local_server.routes["/bomb.png"] = lambda h: reply(h, 200, bomb, {"Content-Type": "image/png"})
    with pytest.raises(BlockedUrl) as refused:
        SafeHttpClient(LOOPBACK_ALLOWED).fetch_image(local_server.url("/bomb.png"), max_bytes=1_000_000, max_pixels=4096 * 4096)
    assert refused.value.code == "image_too_large"


def test_fetch_image_decodes_a_real_png_and_refuses_garbage(local_server: LocalServer, connects: list) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), (200, 10, 10)).save(buffer, format="PNG")
    local_server.routes["/red.png"] = lambda h: reply(h, 200, buffer.getvalue())
    local_server.routes["/junk.png"] = lambda h: reply(h, 200, b"this is not an image")
    client = SafeHttpClient(LOOPBACK_ALLOWED)

    image = client.fetch_image(local_server.url("/red.png"), max_bytes=1_000_000, max_pixels=10_000)
    assert image.size == (32, 16) and image.getpixel((0, 0)) == (200, 10, 10)
    with pytest.raises(BlockedUrl):
        client.fetch_image(local_server.url("/red.png"), max_bytes=1_000_000, max_pixels=100)
    with pytest.raises(BadImage) as bad:
        client.fetch_image(local_server.url("/junk.png"), max_bytes=1_000_000, max_pixels=10_000)
    assert bad.value.code == "image_invalid"


def test_ipv4_mapped_ipv6_is_treated_as_ipv4(local_server: LocalServer, connects: list) -> None:
    local_server.routes["/mapped"] = lambda h: reply(h, 200, b"mapped")
    url = f"http://[::ffff:127.0.0.1]:{local_server.port}/mapped"
    with pytest.raises(BlockedUrl):
        SafeHttpClient(UrlPolicy()).get_bytes(url)
    assert SafeHttpClient(LOOPBACK_ALLOWED).get_bytes(url) == b"mapped"
    assert connects == [("127.0.0.1", local_server.port)]


def test_slow_drip_body_hits_the_total_deadline(local_server: LocalServer, connects: list) -> None:
    import time

    def drip(h) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        for _ in range(100):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.02)

    local_server.routes["/drip"] = drip
    client = SafeHttpClient(LOOPBACK_ALLOWED.model_copy(update={"total_timeout": 0.3, "read_timeout": 1.0}))
    started = time.monotonic()
    with pytest.raises(FetchFailed) as failed:
        client.get_bytes(local_server.url("/drip"))
    assert failed.value.code == "timeout"
    assert time.monotonic() - started < 1.0
