"""Per-account rate limits over moving windows (``pixelmill.presenters.limit_headers`` reports them in responses).

Three windows per account, each taken from its :class:`~pixelmill.accounts.plans.Plan`
(a ``None`` limit is unlimited and has no window):

- ``requests``: API requests (``requests_per_minute`` per ``request_window_s``);
  the HTTP layer counts the requests that change state and reports the window
  on reads (see ``pixelmill.api.middleware``);
- ``executions-minute``: executions created per 60 s;
- ``executions-day``: executions created per 86 400 s.

Counting uses the ``limits`` library's moving-window strategy, so a burst can never
exceed the limit inside any window of that length, and each slot frees exactly one
window after it was taken.  Storage is chosen by URI: ``memory://`` for one API
process, ``redis://host:6379/0`` when several API nodes must share the counts.

Limits are keyed by their amount and window: changing an account's plan starts it
on fresh counters.  Slots are stamped with the API node's clock, so nodes sharing
Redis need synchronised clocks (NTP).  Storage failures raise
:class:`RateLimitStorageError` on use (constructing a limiter never connects);
whether to let requests through when the store is down is the caller's choice.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace

from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from pixelmill.accounts.plans import Plan
from pixelmill.errors import RateLimited

REQUESTS = "requests"
EXECUTIONS_MINUTE = "executions-minute"
EXECUTIONS_DAY = "executions-day"
AUTH_FAILURES = "auth-failures"
#: the bad-key gate's window (``auth_failures_per_minute``)
AUTH_WINDOW_S = 60

RateLimitStorageError = StorageError
"""Raised when the rate-limit store (e.g. Redis) cannot be reached."""

#: how long a process reuses what it read of a shared store's window for a read's report (the
#: request window on a GET, the bad-key gate for a known key): see :meth:`RateLimiter.remembered_states`
READ_REUSE_S = 1.0

_NAMESPACE = "pixelmill"
_REDIS_KEY_PREFIX = "pixelmill:ratelimit"
_LOCK_STRIPES = 64


@dataclass(frozen=True)
class LimitState:
    """Where one window of one account stands right now."""

    name: str
    """``"requests"``, ``"executions-minute"`` or ``"executions-day"``."""
    limit: int
    remaining: int
    reset_after: float
    """Seconds until the oldest counted slot frees (0 when nothing is counted)."""
    window_s: int


@dataclass(frozen=True)
class RateDecision:
    """The outcome of one hit: allowed or not, and every window it touched."""

    allowed: bool
    states: list[LimitState]
    violated: LimitState | None = None
    retry_after: int | None = None
    """Whole seconds to wait before retrying; ``>= 1`` when refused, else ``None``."""


@dataclass(frozen=True)
class _Window:
    name: str
    limit: int
    window_s: int

    @property
    def item(self) -> RateLimitItemPerSecond:
        return RateLimitItemPerSecond(self.limit, self.window_s, namespace=_NAMESPACE)


def _request_windows(plan: Plan) -> list[_Window]:
    if plan.requests_per_minute is None:
        return []
    return [_Window(REQUESTS, plan.requests_per_minute, plan.request_window_s)]


def _execution_windows(plan: Plan) -> list[_Window]:
    """Execution windows, shortest first (the order they are consumed in)."""
    windows = []
    if plan.executions_per_minute is not None:
        windows.append(_Window(EXECUTIONS_MINUTE, plan.executions_per_minute, 60))
    if plan.executions_per_day is not None:
        windows.append(_Window(EXECUTIONS_DAY, plan.executions_per_day, 86_400))
    return windows


def retry_after_s(state: LimitState) -> int:
    """Whole seconds a refused client should wait for ``state`` to free a slot (>= 1)."""
    return max(1, math.ceil(state.reset_after))


class RateLimiter:
    """Counts requests and executions per account against its plan.

    ``storage_uri`` is any ``limits`` storage URI: ``memory://`` (one process) or
    ``redis://127.0.0.1:6379/0`` (shared by every API node; keys are prefixed
    ``pixelmill:ratelimit``).  Methods are thread-safe.
    """

    def __init__(self, storage_uri: str = "memory://") -> None:
        self.storage_uri = storage_uri
        self._options: dict[str, str | bool] = {"wrap_exceptions": True}
        if storage_uri.split("://", 1)[0].startswith(("redis", "valkey")):
            self._options["key_prefix"] = _REDIS_KEY_PREFIX
        self._connect()
        self._execution_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        #: (window name, key) -> (time.monotonic() of the read, the state read): a shared store's only
        self._recent: dict[tuple[str, str], tuple[float, LimitState]] = {}

    @property
    def in_memory(self) -> bool:
        """True for the one-process ``memory://`` store: its checks do no I/O."""
        return self.storage_uri.startswith("memory://")

    def _connect(self) -> None:
        self._storage = storage_from_string(self.storage_uri, **self._options)
        self._strategy = MovingWindowRateLimiter(self._storage)

    # -- queries -------------------------------------------------------------------

    def _state(self, window: _Window, account_id: str) -> LimitState:
        read_at = time.monotonic()
        stats = self._strategy.get_window_stats(window.item, window.name, account_id)
        remaining = max(0, min(window.limit, stats.remaining))
        reset_after = max(0.0, stats.reset_time - time.time()) if remaining < window.limit else 0.0
        state = LimitState(window.name, window.limit, remaining, reset_after, window.window_s)
        if not self.in_memory:
            if len(self._recent) > 100_000:  # bounded: entries older than READ_REUSE_S are of no use
                self._recent.clear()
            self._recent[(window.name, account_id)] = (read_at, state)
        return state

    def _remembered(self, window: _Window, key: str) -> LimitState | None:
        entry = self._recent.get((window.name, key))
        if entry is None:
            return None
        age = time.monotonic() - entry[0]
        if age > READ_REUSE_S or entry[1].limit != window.limit or entry[1].window_s != window.window_s:
            return None
        state = entry[1]
        return replace(state, reset_after=max(0.0, state.reset_after - age)) if state.reset_after else state

    def remembered_states(
        self, account_id: str, plan: Plan, client: str, auth_limit: int | None
    ) -> tuple[RateDecision | None, list[LimitState]] | None:
        """What a read by a known key needs (the bad-key gate of ``client`` when ``auth_limit`` is
        set, the account's request window), from memory only: None when any of it must be read.

        A shared store's windows are reused for :data:`READ_REUSE_S` after this process read or
        counted them, so a client polling its result costs the store nothing more.  What this
        process counts shows at once (a hit reads its window again; a bad key forgets its
        client's gate); what another API node counted shows within :data:`READ_REUSE_S`.  Hits
        (state-changing requests, submits, bad keys) always go to the store.  An in-memory store
        is read each time (it costs no I/O)."""
        if self.in_memory:
            return None
        gate = None
        if auth_limit is not None:
            state = self._remembered(_Window(AUTH_FAILURES, auth_limit, AUTH_WINDOW_S), client)
            if state is None:
                return None
            gate = _gate(state)
        states = []
        for window in _request_windows(plan):
            state = self._remembered(window, account_id)
            if state is None:
                return None
            states.append(state)
        return gate, states

    def request_states(self, account_id: str, plan: Plan) -> list[LimitState]:
        """The request window of the account (none for an unlimited plan), consuming nothing."""
        return [self._state(w, account_id) for w in _request_windows(plan)]

    def peek(self, account_id: str, plan: Plan) -> list[LimitState]:
        """Every finite window of the account, consuming nothing."""
        windows = _request_windows(plan) + _execution_windows(plan)
        return [self._state(w, account_id) for w in windows]

    # -- hits ----------------------------------------------------------------------

    def hit_request(self, account_id: str, plan: Plan) -> RateDecision:
        """Count one API request; refused when the request window is full.

        The decision's ``states`` hold the request window only (none for an
        unlimited plan); execution windows are reported by :meth:`hit_execution`.
        """
        states: list[LimitState] = []
        for window in _request_windows(plan):
            allowed = self._strategy.hit(window.item, window.name, account_id)
            state = self._state(window, account_id)
            states.append(state)
            if not allowed:
                return RateDecision(False, states, state, retry_after_s(state))
        return RateDecision(True, states)

    def hit_execution(self, account_id: str, plan: Plan, cost: int = 1) -> RateDecision:
        """Count ``cost`` new executions against the per-minute and per-day windows.

        Either every window takes ``cost`` or none does: each window is first
        checked for room, and only when all have it are they consumed, shortest
        window first.  Within one process a per-account lock makes this atomic.
        Across API nodes sharing Redis two submits can both see room and race on
        the last slot; each consumption is itself atomic in Redis, so the limit is
        never exceeded — the loser is refused and at worst keeps a per-minute slot
        it already took, which frees within 60 s.  Over-counting briefly is the
        safe direction, so no cross-key transaction is used.

        The states of an allowed decision are derived from the counts read just
        before consuming (another node may have moved them since).  When refused,
        ``violated`` is the full window that frees last and ``retry_after`` is when
        its oldest slot frees; for ``cost > 1`` that is the earliest moment a retry
        can succeed, not a promise that it will.  A ``cost`` larger than a window's
        limit is always refused: callers should reject such batches up front.
        """
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost}")
        windows = _execution_windows(plan)
        lock = self._execution_locks[hash(account_id) % _LOCK_STRIPES]
        with lock:
            before = [self._state(w, account_id) for w in windows]
            full = [s for s in before if s.remaining < cost]
            if full:
                return _refusal(before, full)
            for window in windows:
                if not self._strategy.hit(window.item, window.name, account_id, cost=cost):
                    states = [self._state(w, account_id) for w in windows]
                    return _refusal(states, [s for s in states if s.name == window.name])
        return RateDecision(True, [_after_taking(s, cost) for s in before])

    # -- failed authentication, per client address -------------------------------------

    def auth_failures(self, client: str, limit: int, window_s: int = AUTH_WINDOW_S) -> RateDecision:
        """Whether ``client`` may still try keys: refused once ``limit`` bad keys came from it within ``window_s``."""
        return _gate(self._state(_Window(AUTH_FAILURES, limit, window_s), client))

    def hit_auth_failure(self, client: str, limit: int, window_s: int = AUTH_WINDOW_S) -> None:
        """Count one request from ``client`` that presented an unknown or revoked key."""
        self._strategy.hit(_Window(AUTH_FAILURES, limit, window_s).item, AUTH_FAILURES, client)
        self._recent.pop((AUTH_FAILURES, client), None)  # its next request reads the gate as it is now

    def reset(self) -> None:
        """Forget every count in this limiter's storage (tests, admin resets).

        On Redis only keys under the ``pixelmill:ratelimit`` prefix are removed.  An
        embedded store is replaced by a fresh one rather than cleared in place, as
        clearing races with its background expiry sweep.
        """
        self._recent.clear()
        if isinstance(self._storage, MemoryStorage):
            self._connect()
        else:
            self._storage.reset()


def _gate(state: LimitState) -> RateDecision:
    """The bad-key gate's decision, from its window's ``state``."""
    if state.remaining <= 0:
        return RateDecision(False, [state], state, retry_after_s(state))
    return RateDecision(True, [state])


def _refusal(states: list[LimitState], full: list[LimitState]) -> RateDecision:
    violated = max(full, key=lambda s: s.reset_after)
    return RateDecision(False, states, violated, retry_after_s(violated))


def _after_taking(state: LimitState, cost: int) -> LimitState:
    """``state`` once ``cost`` more slots are counted (a fresh window starts now)."""
    reset_after = state.reset_after if state.remaining < state.limit else float(state.window_s)
    return replace(state, remaining=state.remaining - cost, reset_after=reset_after)


def rate_limited_error(decision: RateDecision) -> RateLimited:
    """The 429 error for a refused ``decision``, carrying the windows its headers report (``pixelmill.presenters.limit_headers``).

    Details: ``violated_policies`` (the IETF draft's name for the full windows),
    ``limit``, ``window_s`` and ``retry_after`` in seconds from now (like the
    ``Retry-After`` header, never a timestamp).
    """
    violated = decision.violated
    if decision.allowed or violated is None:
        raise ValueError("the decision was allowed; there is nothing to refuse")
    retry_after = decision.retry_after or retry_after_s(violated)
    if violated.name == AUTH_FAILURES:
        return RateLimited(
            f"Too many requests with invalid API keys from this address: {violated.limit} per "
            f"{violated.window_s} s; retry in {retry_after} s",
            code="too_many_auth_failures",
            limit=violated.limit,
            window_s=violated.window_s,
            retry_after=retry_after,
        )
    return RateLimited(
        f"Rate limit exceeded: {violated.limit} {violated.name} per {violated.window_s} s; "
        f"retry in {retry_after} s",
        violated_policies=[violated.name],
        limit=violated.limit,
        window_s=violated.window_s,
        retry_after=retry_after,
        windows=decision.states,
        violated=violated,
    )
