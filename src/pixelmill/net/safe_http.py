"""The guarded outbound HTTP client: every URL pixelmill fetches or calls goes through it.

What it guarantees, per request hop:

1. The URL is parsed and its scheme checked against the policy.
2. The host is resolved **once** (``socket.getaddrinfo``, or an injected resolver).
   If *any* resolved address is loopback, private, link-local, CGNAT, multicast,
   reserved, unspecified, an IPv6 transition range (6to4, Teredo, NAT64) or an
   IPv4-mapped form of one of those, the request is refused with
   :class:`BlockedUrl` before any socket is opened, unless the address falls in one
   of the operator's ``allow_networks``.
3. The connection goes to the **pinned** resolved address, never to a second
   lookup of the name, so a DNS answer cannot change between check and connect.
   The request keeps the original ``Host`` header, and for https the TLS SNI and
   certificate hostname verification use the original host name.
4. Redirects are followed by hand (GET only), each hop re-checked, up to
   ``max_redirects``.
5. Bodies are streamed with a byte cap; a total deadline bounds slow senders.

Environment proxies are never used (a proxy would bypass the pinning).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import certifi
import httpcore
import httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pixelmill.models.imageops import DECODE_FORMATS, ImageDecodeError, ImageTooLargeError
from pixelmill.models.imageops import decode_image as _decode

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""Turns ``(host, port)`` into the list of IP address strings it resolves to."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Ranges refused on top of what ``ipaddress`` reports as non-global, spelled out so
# the rule does not depend on the Python version's special-purpose registry.
_BLOCKED_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network", includes 0.0.0.0
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes 255.255.255.255
        "::/128",
        "::1/128",
        "::/96",  # deprecated IPv4-compatible addresses
        "::ffff:0:0/96",  # IPv4-mapped (checked again after unmapping)
        "64:ff9b::/96",  # NAT64
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, includes Teredo 2001::/32
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)


class SafeHttpError(Exception):
    """Base of the client's errors: a stable machine ``code`` and a human message."""

    code: str = "outbound_http_error"
    http_status: int = 422

    def __init__(self, code: str, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status_code = status_code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BlockedUrl(SafeHttpError):
    """The policy refused a URL (or a redirect hop, or a response) before or while fetching.

    Codes: ``url_invalid``, ``url_scheme_not_allowed``, ``url_host_not_allowed``,
    ``url_resolves_to_blocked_address``, ``too_many_redirects``, ``response_too_large``,
    ``image_too_large``.
    """


class FetchFailed(SafeHttpError):
    """The URL was allowed but fetching it failed.

    Codes: ``url_unresolvable``, ``connect_failed``, ``tls_error``, ``timeout``,
    ``network_error``, ``http_status`` (non-2xx answer to a GET; ``status_code`` set).
    """


class BadImage(SafeHttpError):
    """The fetched bytes are not an image Pillow can decode (code ``image_invalid``)."""


class UrlPolicy(BaseModel):
    """What outbound URLs may reach, and how long and how much they may take."""

    model_config = ConfigDict(frozen=True)

    allow_schemes: list[str] = Field(default_factory=lambda: ["http", "https"])
    allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs the operator allow-lists even though they are internal, e.g. 10.0.0.0/8.",
    )
    deny_hosts: list[str] = Field(
        default_factory=list,
        description="Host names refused by name; an entry starting with '.' matches a suffix.",
    )
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(15.0, gt=0)
    total_timeout: float = Field(60.0, gt=0, description="Deadline for a whole GET, redirects included.")
    max_redirects: int = Field(3, ge=0)
    max_response_bytes: int = Field(25 * 1024 * 1024, gt=0)
    user_agent: str = "pixelmill-fetch/1"
    ca_bundle: str | None = Field(None, description="CA file for https; default: the certifi bundle.")

    @field_validator("allow_schemes")
    @classmethod
    def _lower_schemes(cls, value: list[str]) -> list[str]:
        return [scheme.lower() for scheme in value]

    @field_validator("allow_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("deny_hosts")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        return [host.lower().rstrip(".") for host in value]


@dataclass(frozen=True)
class ResolvedUrl:
    """One checked hop: the URL plus the single address it will be connected to."""

    url: httpx.URL
    host: str
    port: int
    address: IPAddress


@dataclass(frozen=True)
class SafeResponse:
    """The outcome of a POST: status, headers (lower-cased names), time and a body excerpt."""

    status_code: int
    headers: dict[str, str]
    elapsed_ms: float
    body_excerpt: bytes = field(default=b"")


def is_blocked_address(address: IPAddress) -> bool:
    """True for any address that is not a plain public unicast address."""
    address = _unmap(address)
    if any(address in network for network in _BLOCKED_NETWORKS if network.version == address.version):
        return True
    return (
        not address.is_global
        or address.is_multicast
        or address.is_private
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
    )


def _unmap(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` is ``a.b.c.d`` for every decision (and for connecting)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the operating system (``getaddrinfo``), TCP addresses only."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _PinnedBackend(httpcore.SyncBackend):
    """A network backend that connects to one pre-resolved address whatever host it is asked for.

    httpcore still uses the URL's host for the ``Host`` header and for TLS
    (``server_hostname``: SNI and certificate verification); only the TCP connect
    target is replaced.
    """

    def __init__(self, host: str, address: IPAddress) -> None:
        self._host = host
        self._address = str(address)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        if host.lower() != self._host:
            raise httpcore.ConnectError(f"connection to unchecked host {host!r} refused")
        return super().connect_tcp(self._address, port, timeout, local_address, socket_options)


class _PinnedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connection pool uses :class:`_PinnedBackend`.

    httpx offers no public hook for the network backend, so the pool the parent
    builds is replaced by an equivalent one (HTTP/1.1, no retries) that has it.
    """

    def __init__(self, backend: _PinnedBackend, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False, retries=0)
        if not hasattr(self, "_pool"):  # pragma: no cover - guards an httpx internals change
            raise RuntimeError("unsupported httpx version: HTTPTransport has no _pool")
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            http1=True,
            http2=False,
            retries=0,
            network_backend=backend,
        )


class SafeHttpClient:
    """Outbound HTTP for untrusted URLs: image inputs and webhook endpoints.

    Thread-safe: every call builds its own short-lived connection; the only shared
    state is the TLS context.
    """

    def __init__(self, policy: UrlPolicy | None = None, *, resolver: Resolver | None = None) -> None:
        self.policy = policy or UrlPolicy()
        self._resolver = resolver or system_resolver
        self._allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in self.policy.allow_networks]
        self._ssl_context = ssl.create_default_context(cafile=self.policy.ca_bundle or certifi.where())

    # ----------------------------------------------------------------- checks

    def resolve(self, url: str | httpx.URL) -> ResolvedUrl:
        """Check one URL against the policy and pick the address to connect to.

        Makes a DNS lookup but opens no connection, so it is also the way to
        validate a webhook URL when it is registered. Raises :class:`BlockedUrl`
        or :class:`FetchFailed` (``url_unresolvable``).
        """
        parsed = self._parse(url)
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if self._denied_by_name(host):
            raise BlockedUrl("url_host_not_allowed", f"host {host!r} is not allowed")
        addresses = self._addresses(host, port)
        for address in addresses:
            if self._is_refused(address):
                raise BlockedUrl(
                    "url_resolves_to_blocked_address",
                    f"host {host!r} resolves to {address}, which is not a public address",
                )
        return ResolvedUrl(url=parsed, host=host, port=port, address=addresses[0])

    def _parse(self, url: str | httpx.URL) -> httpx.URL:
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise BlockedUrl("url_invalid", f"not a valid URL: {exc}") from None
        scheme = parsed.scheme.lower()
        if not scheme or scheme not in self.policy.allow_schemes:
            raise BlockedUrl("url_scheme_not_allowed", f"scheme {scheme!r} is not allowed")
        if not parsed.raw_host:
            raise BlockedUrl("url_invalid", "the URL has no host")
        return parsed

    def _denied_by_name(self, host: str) -> bool:
        for entry in self.policy.deny_hosts:
            if host == entry.lstrip(".") or (entry.startswith(".") and host.endswith(entry)):
                return True
        return False

    def _addresses(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [_unmap(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            found = self._resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise FetchFailed("url_unresolvable", f"cannot resolve {host!r}: {exc}") from None
        addresses: list[IPAddress] = []
        for text in found:
            address = _unmap(ipaddress.ip_address(text.split("%", 1)[0]))
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise FetchFailed("url_unresolvable", f"{host!r} resolves to no address")
        return addresses

    def _is_refused(self, address: IPAddress) -> bool:
        if any(address in network for network in self._allowed if network.version == address.version):
            return False
        return is_blocked_address(address)

    # ----------------------------------------------------------------- requests

    def get_bytes(self, url: str, *, max_bytes: int | None = None) -> bytes:
        """GET a URL, following checked redirects, and return at most ``max_bytes`` of body.

        Raises :class:`BlockedUrl` (policy, redirects, size) or :class:`FetchFailed`.
        """
        cap = min(max_bytes or self.policy.max_response_bytes, self.policy.max_response_bytes)
        deadline = time.monotonic() + self.policy.total_timeout
        current: str | httpx.URL = url
        for _hop in range(self.policy.max_redirects + 1):
            target = self.resolve(current)
            with self._exchange(target, "GET", {}, None, self._timeout(None)) as response:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT_STATUSES and location:
                    current = self._redirect_target(target.url, location)
                    continue
                if not 200 <= response.status_code < 300:
                    raise FetchFailed(
                        "http_status",
                        f"GET {target.url} answered {response.status_code}",
                        status_code=response.status_code,
                    )
                return self._read_capped(response, cap, deadline)
        raise BlockedUrl("too_many_redirects", f"more than {self.policy.max_redirects} redirects")

    def post_json(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        *,
        excerpt_bytes: int = 2048,
    ) -> SafeResponse:
        """POST ``body`` (JSON bytes) to a checked URL; redirects are **not** followed.

        A 3xx is returned as is (Standard Webhooks counts it as a failed delivery).
        Reads at most ``excerpt_bytes`` of the answer. Raises :class:`BlockedUrl`
        or :class:`FetchFailed` for refusals and network errors.
        """
        send_headers = {"content-type": "application/json"}
        send_headers.update({name.lower(): value for name, value in (headers or {}).items()})
        target = self.resolve(url)
        started = time.monotonic()
        deadline = started + (timeout or self.policy.total_timeout)
        with self._exchange(target, "POST", send_headers, body, self._timeout(timeout)) as response:
            excerpt = self._read_excerpt(response, excerpt_bytes, deadline)
            return SafeResponse(
                status_code=response.status_code,
                headers={name.lower(): value for name, value in response.headers.items()},
                elapsed_ms=(time.monotonic() - started) * 1000.0,
                body_excerpt=excerpt,
            )

    def fetch_image(
        self,
        url: str,
        max_bytes: int | None = None,
        max_pixels: int = 40_000_000,
        *,
        formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP"),
    ) -> Image.Image:
        """Fetch and decode an image with the size checked from its header before decoding."""
        return decode_image(self.get_bytes(url, max_bytes=max_bytes), max_pixels=max_pixels, formats=formats)

    # ----------------------------------------------------------------- plumbing

    def _timeout(self, total: float | None) -> httpx.Timeout:
        read = min(self.policy.read_timeout, total) if total else self.policy.read_timeout
        connect = min(self.policy.connect_timeout, total) if total else self.policy.connect_timeout
        return httpx.Timeout(read, connect=connect, pool=connect)

    def _redirect_target(self, base: httpx.URL, location: str) -> httpx.URL:
        try:
            return base.join(location)
        except (httpx.InvalidURL, ValueError) as exc:
            raise BlockedUrl("url_invalid", f"invalid redirect location {location!r}: {exc}") from None

    @contextlib.contextmanager
    def _exchange(
        self,
        target: ResolvedUrl,
        method: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: httpx.Timeout,
    ) -> Iterator[httpx.Response]:
        """Open one request to the pinned address and yield the streaming response."""
        transport = _PinnedTransport(_PinnedBackend(target.host, target.address), self._ssl_context)
        all_headers = {"user-agent": self.policy.user_agent, "accept-encoding": "identity", **headers}
        with (
            _mapped_errors(target),
            httpx.Client(transport=transport, timeout=timeout, trust_env=False, follow_redirects=False) as client,
            client.stream(method, target.url, headers=all_headers, content=body) as response,
        ):
            yield response

    @staticmethod
    def _read_capped(response: httpx.Response, cap: int, deadline: float) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise BlockedUrl("response_too_large", f"response declares {declared} bytes, limit is {cap}")
        buffer = bytearray()
        for chunk in response.iter_raw():
            buffer += chunk
            if len(buffer) > cap:
                raise BlockedUrl("response_too_large", f"response exceeds the limit of {cap} bytes")
            if time.monotonic() > deadline:
                raise FetchFailed("timeout", "response took longer than the total deadline")
        return bytes(buffer)

    @staticmethod
    def _read_excerpt(response: httpx.Response, limit: int, deadline: float) -> bytes:
        buffer = bytearray()
        for chunk in response.iter_raw():
            buffer += chunk
            if len(buffer) >= limit or time.monotonic() > deadline:
                break
        return bytes(buffer[:limit])


@contextlib.contextmanager
def _mapped_errors(target: ResolvedUrl) -> Iterator[None]:
    """Turn httpx transport errors into :class:`FetchFailed` with a stable code."""
    where = f"{target.host}:{target.port} ({target.address})"
    try:
        yield
    except httpx.TimeoutException as exc:
        raise FetchFailed("timeout", f"timed out talking to {where}: {exc}") from None
    except httpx.ConnectError as exc:
        code = "tls_error" if _caused_by_ssl(exc) else "connect_failed"
        raise FetchFailed(code, f"cannot connect to {where}: {exc}") from None
    except httpx.TransportError as exc:
        raise FetchFailed("network_error", f"error talking to {where}: {exc}") from None


def _caused_by_ssl(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    formats: tuple[str, ...] = DECODE_FORMATS,
) -> Image.Image:
    """Decode fetched bytes with :func:`pixelmill.models.imageops.decode_image`.

    The declared size is checked before any pixel data is decompressed, so a
    tiny file declaring 20000x20000 costs nothing.  Its errors come back as this
    client's: :class:`BlockedUrl` (``image_too_large``) or :class:`BadImage`
    (``image_invalid``).
    """
    try:
        return _decode(data, max_pixels=max_pixels, formats=formats)
    except ImageTooLargeError as exc:
        raise BlockedUrl("image_too_large", str(exc)) from None
    except ImageDecodeError as exc:
        raise BadImage("image_invalid", f"cannot decode image: {exc}") from None
