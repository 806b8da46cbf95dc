"""Accounts on every API request, for every dialect: authentication, request rate
limits and ``Idempotency-Key`` handling, as one ASGI middleware.

For a request under an API prefix (``/v1/``, ``/v2/``, ``/api/``) that presents a
key (``x-key``, ``X-API-Key`` or ``Authorization: Bearer sk-…``):

1. **Authenticate once.**  The principal is stored on ``request.state.principal``;
   ``deps.principal`` reuses it.  A missing, unknown or revoked key is passed
   through untouched so the route's own auth answers 401/403.  Such failures are
   counted per client address (``auth_failures_per_minute``); past the limit,
   every request from that address that presents a key gets 429
   ``too_many_auth_failures`` with ``Retry-After`` until the window frees,
   before its key is even looked up, so keys cannot be guessed at volume.
2. **Count the request** in the plan's ``requests`` window.  Requests that change
   state (POST, PUT, PATCH, DELETE) are counted; reads (GET, HEAD, OPTIONS —
   polling ``get_result`` among them) are not, so a client polling once a second
   is never locked out of its own results; nor are POSTs that only check or
   price (``…/validate``, ``?dry_run=true``), which an editor sends as the user
   types; reads still carry the headers.  Over
   the limit → 429 ``rate_limited`` with ``Retry-After``.  Every response, errors
   included, carries ``X-RateLimit-Limit/-Remaining/-Reset``, ``RateLimit`` and
   ``RateLimit-Policy`` for the request window plus any execution windows the
   request consumed (:data:`pixelmill.accounts.admission.reported_states`).  If
   the rate-limit store is unreachable, requests are let through (logged).  A read
   by a key this process knows, on limits shared in Redis, reports the window and
   passes the bad-key gate from what this process read or counted in the last
   second (:meth:`~pixelmill.accounts.ratelimit.RateLimiter.remembered_states`):
   a poll costs the store nothing.
3. **Idempotency** for a POST carrying ``Idempotency-Key`` (except read-only POSTs
   such as ``…/validate``); see :mod:`pixelmill.accounts.idempotency`.  Replays,
   and answers taken from the execution an earlier request with the key created
   (a retry after a crash), carry ``Idempotent-Replayed: true`` and count as a
   request like any POST.
   The first request's status, body and headers are replayed, except headers
   that describe the response itself (rate limits, ``Date``, ``X-Request-Id``).
   The record is settled before the last
   byte of the response is sent, so a client that retries after reading the
   response always gets the replay.

Signed file URLs (``/files/…``), ``/healthz`` and ``/admin/…`` are outside the API
prefixes and pass straight through, as do requests that present the admin key
(the admin routes under ``/api/``, such as loading a model, check it themselves).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelmill.accounts import idempotency as idem
from pixelmill.accounts.admission import reported_states
from pixelmill.accounts.keys import Principal
from pixelmill.accounts.ratelimit import LimitState, RateDecision, RateLimitStorageError, rate_limited_error
from pixelmill.presenters.limit_headers import rate_limit_headers
from pixelmill.api.errors import error_response
from pixelmill.api.hot_reads import HotReads
from pixelmill.errors import BadRequest, Conflict, InvalidInput, PixelmillError
from pixelmill.store.db import database_busy

log = logging.getLogger("pixelmill.api")

API_PREFIXES = ("/v1/", "/v2/", "/api/", "/sync/")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY_POST_SUFFIXES = ("/validate",)
REPLAY_HEADER = "Idempotent-Replayed"
# response headers that describe this response, not the original one: never replayed
_NOT_REPLAYED = frozenset(
    {
        "content-length", "date", "server", "connection", "transfer-encoding", "set-cookie", "x-request-id",
        "retry-after", "ratelimit", "ratelimit-policy", "x-ratelimit-limit", "x-ratelimit-remaining",
        "x-ratelimit-reset", "idempotent-replayed",
    }
)
_INTERNAL_ERROR_BODY = b'{"detail":"Internal server error","message":"Internal server error","error":{"code":"internal_error","message":"Internal server error"}}'


def presented_key(headers: Headers) -> str | None:
    """The API key a request presents, as ``deps.presented_key`` reads it."""
    key = headers.get("x-key") or headers.get("x-api-key")
    if not key:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
    return key or None


def _is_admin_key(runtime: Any, key: str) -> bool:
    expected = runtime.settings.admin_key
    return bool(expected) and hmac.compare_digest(key.encode(), expected.encode())


@dataclass
class _Admitted:
    """What the first, threaded step decided about a request."""

    principal: Principal | None = None
    states: list[LimitState] = field(default_factory=list)
    refused: RateDecision | None = None
    outcome: Any = None  # an idempotency outcome, when a key was given


class AccountsMiddleware:
    """See the module docstring.  ``enabled=False`` passes every request through
    (the benchmark's baseline)."""

    def __init__(self, app: ASGIApp, enabled: bool = True, hot_reads: HotReads | None = None) -> None:
        self.app = app
        self.enabled = enabled
        self.hot_reads = hot_reads
        self._storage_warned_at = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or not scope["path"].startswith(API_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = presented_key(headers)
        runtime = scope["app"].state.runtime
        if key is None or _is_admin_key(runtime, key):  # the admin routes under /api/ check the admin key themselves
            await self.app(scope, receive, send)
            return
        method = scope["method"]

        raw_idem = headers.get("idempotency-key") if method == "POST" and not scope["path"].endswith(READ_ONLY_POST_SUFFIXES) else None
        idem_key: str | None = None
        idem_error: PixelmillError | None = None
        body: bytes | None = None
        if raw_idem is not None:
            try:
                idem_key = idem.parse_key(raw_idem)
            except ValueError as e:
                idem_error = BadRequest(str(e), code="invalid_idempotency_key", max_length=idem.MAX_KEY_LENGTH)
            else:
                body, receive = await _buffer_body(receive, headers, runtime.settings.max_body_bytes)
                if body is None:
                    idem_key = None  # over the size cap: the route answers 413, nothing to remember
        fp = idem.fingerprint(method, _path_with_query(scope), body, headers.get("content-type", "")) if idem_key is not None and body is not None else None

        client = (scope.get("client") or ("unknown", 0))[0]
        counted = method not in READ_METHODS and not _checks_only(scope)
        try:
            known = runtime.keys.cached(key) if fp is None else None
            admitted = None
            if known is not None and runtime.limiter.in_memory:
                # a known key on in-memory limits, with no idempotency record to claim, does no I/O:
                # no thread-pool hop (a submit's own work hops once, in its route)
                admitted = self._admit(runtime, key, counted, idem_key, fp, client, known)
            elif known is not None and not counted:
                admitted = self._admit_remembered(runtime, client, known)  # a read: the shared store's recent counts
            if admitted is None:
                admitted = await run_in_threadpool(self._admit, runtime, key, counted, idem_key, fp, client)
        except Exception as exc:
            busy = database_busy(exc)
            if busy is None:
                raise
            await error_response(busy)(scope, receive, send)
            return
        if admitted.refused is not None and admitted.principal is None:  # too many bad keys from this address
            await error_response(rate_limited_error(admitted.refused))(scope, receive, send)
            return
        if admitted.principal is None:  # bad key: the route's auth answers
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = admitted.principal
        sink: list[LimitState] = []
        token = reported_states.set(sink)
        try:
            await self._respond(scope, receive, send, runtime, admitted, sink, idem_error)
        finally:
            reported_states.reset(token)

    # -- step 1, in a worker thread: auth, request window, idempotency claim ---------

    def _admit(
        self, runtime: Any, key: str, counted: bool, idem_key: str | None, fp: str | None, client: str, known: Principal | None = None
    ) -> _Admitted:
        failures = runtime.settings.auth_failures_per_minute
        if failures is not None:
            try:
                gate = runtime.limiter.auth_failures(client, failures)
            except RateLimitStorageError:
                gate = None
            if gate is not None and not gate.allowed:
                return _Admitted(refused=gate)
        try:
            principal = known or runtime.keys.authenticate(key)  # ``known``: the cache's answer a moment ago
        except PixelmillError:
            if failures is not None:
                try:
                    runtime.limiter.hit_auth_failure(client, failures)
                except RateLimitStorageError:
                    pass
            return _Admitted()
        admitted = _Admitted(principal)
        plan = runtime.admission.plan_for(principal)
        try:
            if counted:
                decision = runtime.limiter.hit_request(principal.account_id, plan)
                admitted.states = decision.states
                if not decision.allowed:
                    admitted.refused = decision
                    return admitted
            else:
                admitted.states = runtime.limiter.request_states(principal.account_id, plan)
        except RateLimitStorageError as e:
            now = time.monotonic()
            if now - self._storage_warned_at > 60:
                self._storage_warned_at = now
                log.warning("rate-limit store unreachable, requests are not limited: %s", e)
        if idem_key is not None and fp is not None:
            admitted.outcome = runtime.idempotency.begin(principal.account_id, idem_key, fp)
        return admitted

    @staticmethod
    def _admit_remembered(runtime: Any, client: str, known: Principal) -> _Admitted | None:
        """A read by a known key, admitted from what this process read of the shared rate-limit store
        a moment ago (:meth:`RateLimiter.remembered_states`); None when something must be read."""
        remembered = runtime.limiter.remembered_states(
            known.account_id, runtime.admission.plan_for(known), client, runtime.settings.auth_failures_per_minute
        )
        if remembered is None:
            return None
        gate, states = remembered
        if gate is not None and not gate.allowed:
            return _Admitted(refused=gate)
        return _Admitted(known, states=states)

    # -- step 2: answer ---------------------------------------------------------------

    async def _respond(self, scope: Scope, receive: Receive, send: Send, runtime: Any, admitted: _Admitted, sink: list[LimitState], idem_error: PixelmillError | None) -> None:
        def with_limits(message: Message) -> Message:
            if message["type"] == "http.response.start":
                merged = MutableHeaders(raw=list(message.get("headers", [])))
                _merge_limit_headers(merged, admitted.states + sink)
                message = {**message, "headers": merged.raw}
            return message

        async def send_with_limits(message: Message) -> None:
            await send(with_limits(message))

        outcome = admitted.outcome
        if admitted.refused is not None:
            await error_response(rate_limited_error(admitted.refused))(scope, receive, send)
            return
        if idem_error is not None:
            await error_response(idem_error)(scope, receive, send_with_limits)
            return
        if isinstance(outcome, idem.Replay):
            replay = Response(outcome.body, status_code=outcome.status, headers={**outcome.headers, REPLAY_HEADER: "true"})
            await replay(scope, receive, send_with_limits)
            return
        if isinstance(outcome, idem.Mismatch):
            err = InvalidInput(
                "This Idempotency-Key was already used with a different request; use a new key for a new request",
                code="idempotency_key_reused",
            )
            await error_response(err)(scope, receive, send_with_limits)
            return
        if isinstance(outcome, idem.InProgress):
            err = Conflict(
                "A request with this Idempotency-Key is still being processed; retry shortly",
                code="idempotency_key_in_progress",
                retry_after=1,
            )
            err.headers["Retry-After"] = "1"
            await error_response(err)(scope, receive, send_with_limits)
            return
        if not isinstance(outcome, idem.Claim):
            hot = await self.hot_reads.answer(scope, runtime, admitted.principal.account_id) if self.hot_reads is not None else None
            if hot is not None:  # a poll of an execution, answered before routing (pixelmill.api.hot_reads)
                await hot(scope, receive, send_with_limits)
                return
            await self.app(scope, receive, send_with_limits)
            return
        await self._run_claimed(scope, receive, send, runtime, outcome, with_limits)

    async def _run_claimed(self, scope: Scope, receive: Receive, send: Send, runtime: Any, claim: idem.Claim, with_limits) -> None:
        """Run the request, settle the idempotency record, then send the last byte."""
        store: idem.IdempotencyStore = runtime.idempotency
        status = 500
        saved_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        settled = False

        async def settle() -> None:
            nonlocal settled
            settled = True
            await run_in_threadpool(store.settle, claim, status, b"".join(chunks), saved_headers)

        async def capture(message: Message) -> None:
            nonlocal status, saved_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                saved_headers = {
                    k.decode("latin-1"): v.decode("latin-1")
                    for k, v in message.get("headers", [])
                    if k.decode("latin-1").lower() not in _NOT_REPLAYED
                }
                if claim.resumed:  # answered from the execution the first request created
                    headers = MutableHeaders(raw=list(message.get("headers", [])))
                    headers[REPLAY_HEADER] = "true"
                    message = {**message, "headers": headers.raw}
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False) and not settled:
                    await settle()
            await send(with_limits(message))

        async def keep_alive() -> None:  # a slow request is not an abandoned one
            while True:
                await asyncio.sleep(store.abandon_after_s / 3)
                if not settled:
                    await run_in_threadpool(store.touch, claim)

        heartbeat = asyncio.get_running_loop().create_task(keep_alive())
        token = idem.current_claim.set(claim)  # the execution service binds its execution to the record
        try:
            await self.app(scope, receive, capture)
        except BaseException:
            if not settled:
                status, chunks[:] = 500, [_INTERNAL_ERROR_BODY]
                saved_headers = {"content-type": "application/json"}
                await settle()
            raise
        finally:
            heartbeat.cancel()
            idem.current_claim.reset(token)
        if not settled:  # the app ended without a complete response
            await settle()


def _merge_limit_headers(headers: MutableHeaders, states: list[LimitState]) -> None:
    """Add our windows to a response; a response that already describes a refusal
    (its own ``X-RateLimit-*``/``Retry-After``) keeps those and gains our policies."""
    if not states:
        return
    ours = rate_limit_headers(states)
    for name in ("RateLimit-Policy", "RateLimit"):
        existing = headers.get(name)
        headers[name] = f"{ours[name]}, {existing}" if existing else ours[name]
    if "x-ratelimit-limit" not in headers:
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            headers[name] = ours[name]


def _checks_only(scope: Scope) -> bool:
    """A POST that validates or prices and creates nothing."""
    if scope["path"].endswith(READ_ONLY_POST_SUFFIXES):
        return True
    qs = scope.get("query_string", b"").decode("latin-1")
    return any(part in ("dry_run=true", "dry_run=1") for part in qs.split("&"))


def _path_with_query(scope: Scope) -> str:
    qs = scope.get("query_string", b"")
    return scope["path"] + ("?" + qs.decode("latin-1") if qs else "")


async def _buffer_body(receive: Receive, headers: Headers, limit: int) -> tuple[bytes | None, Receive]:
    """Read the whole request body (for its fingerprint) and a ``receive`` that
    replays it to the app.  ``None`` when the body is over ``limit``: what was read
    is still replayed, followed by the rest of the stream."""
    length = headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        return None, receive
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # disconnected
            return None, _prepend([message], receive)
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            return None, _prepend([{"type": "http.request", "body": c, "more_body": True} for c in chunks[:-1]] + [message], receive)
    body = b"".join(chunks)
    return body, _prepend([{"type": "http.request", "body": body, "more_body": False}], receive)


def _prepend(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay

