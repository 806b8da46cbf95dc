"""Rate limits: the same contract over the embedded store and over Redis.

Redis runs in db 15; only keys under the limiter's own prefix are cleared, before
and after each test.  The Redis cases are skipped, with the reason printed, when no
server answers on 127.0.0.1:6379.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from pixelmill.accounts.plans import DEFAULT_PLANS, Plan
from pixelmill.accounts.ratelimit import (
    EXECUTIONS_DAY,
    EXECUTIONS_MINUTE,
    REQUESTS,
    LimitState,
    RateLimiter,
    rate_limited_error,
)
from pixelmill.presenters.limit_headers import error_headers, rate_limit_headers

REDIS_URI = "redis://127.0.0.1:6379/15"


def _redis_unreachable_reason() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URI, socket_connect_timeout=0.5, socket_timeout=0.5).ping()
    except Exception as exc:  # any failure means: no usable server
        return f"REDIS NOT REACHABLE at {REDIS_URI} ({exc!r}): Redis rate-limit contract NOT tested"
    return None


def _limiter(uri: str) -> RateLimiter:
    if uri.startswith("redis"):
        reason = _redis_unreachable_reason()
        if reason:
            pytest.skip(reason)
    limiter = RateLimiter(uri)
    limiter.reset()
    return limiter


@pytest.fixture(params=["memory://", pytest.param(REDIS_URI, marks=pytest.mark.redis)], ids=["memory", "redis"])
def storage_uri(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def limiter(storage_uri: str) -> Iterator[RateLimiter]:
    limiter = _limiter(storage_uri)
    yield limiter
    limiter.reset()


@pytest.fixture
def account() -> str:
    return f"acct_{uuid.uuid4().hex[:12]}"


def tiny(**limits: int | None) -> Plan:
    return Plan(name="tiny", **limits)


def state(states: list[LimitState], name: str) -> LimitState:
    return next(s for s in states if s.name == name)


# -- requests -------------------------------------------------------------------------


def test_ten_requests_pass_then_eleventh_is_refused(limiter: RateLimiter, account: str) -> None:
    plan = DEFAULT_PLANS["free"]
    remaining = [limiter.hit_request(account, plan) for _ in range(10)]
    assert all(d.allowed for d in remaining)
    assert [d.states[0].remaining for d in remaining] == list(range(9, -1, -1))

    refused = limiter.hit_request(account, plan)
    assert not refused.allowed
    assert refused.violated is not None and refused.violated.name == REQUESTS
    assert refused.violated.remaining == 0
    assert refused.retry_after is not None and 1 <= refused.retry_after <= 60


def test_accounts_are_counted_separately(limiter: RateLimiter, account: str) -> None:
    plan = tiny(requests_per_minute=2)
    for _ in range(3):
        limiter.hit_request(account, plan)
    assert not limiter.hit_request(account, plan).allowed

    other = limiter.hit_request(account + "_other", plan)
    assert other.allowed
    assert other.states[0].remaining == 1


def test_slot_frees_when_window_passes(limiter: RateLimiter, account: str) -> None:
    plan = tiny(requests_per_minute=2, request_window_s=1)
    assert limiter.hit_request(account, plan).allowed
    assert limiter.hit_request(account, plan).allowed
    refused = limiter.hit_request(account, plan)
    assert not refused.allowed
    assert refused.retry_after == 1
    assert refused.violated is not None and 0 < refused.violated.reset_after <= 1

    time.sleep(refused.violated.reset_after + 0.05)
    assert limiter.hit_request(account, plan).allowed


def test_refused_requests_do_not_extend_the_wait(limiter: RateLimiter, account: str) -> None:
    plan = tiny(requests_per_minute=1, request_window_s=1)
    assert limiter.hit_request(account, plan).allowed
    for _ in range(5):
        assert not limiter.hit_request(account, plan).allowed
    time.sleep(1.05)
    assert limiter.hit_request(account, plan).allowed


# -- executions -----------------------------------------------------------------------


def test_daily_execution_limit_refuses_without_consuming(limiter: RateLimiter, account: str) -> None:
    plan = tiny(executions_per_minute=10, executions_per_day=3)
    for _ in range(3):
        assert limiter.hit_execution(account, plan).allowed

    refused = limiter.hit_execution(account, plan)
    assert not refused.allowed
    assert refused.violated is not None and refused.violated.name == EXECUTIONS_DAY
    assert refused.retry_after is not None and refused.retry_after >= 1

    after = limiter.peek(account, plan)
    assert state(after, EXECUTIONS_MINUTE).remaining == 7  # the refused one took nothing
    assert state(after, EXECUTIONS_DAY).remaining == 0


def test_minute_execution_limit_refuses_without_consuming(limiter: RateLimiter, account: str) -> None:
    plan = tiny(executions_per_minute=2, executions_per_day=100)
    assert limiter.hit_execution(account, plan, cost=2).allowed

    refused = limiter.hit_execution(account, plan)
    assert not refused.allowed
    assert refused.violated is not None and refused.violated.name == EXECUTIONS_MINUTE
    assert refused.retry_after is not None and 1 <= refused.retry_after <= 60
    assert state(limiter.peek(account, plan), EXECUTIONS_DAY).remaining == 98


def test_batch_larger_than_what_is_left_takes_nothing(limiter: RateLimiter, account: str) -> None:
    plan = tiny(executions_per_minute=10, executions_per_day=5)
    assert limiter.hit_execution(account, plan, cost=3).allowed
    refused = limiter.hit_execution(account, plan, cost=3)
    assert not refused.allowed
    assert refused.violated is not None and refused.violated.name == EXECUTIONS_DAY

    assert state(limiter.peek(account, plan), EXECUTIONS_MINUTE).remaining == 7
    assert limiter.hit_execution(account, plan, cost=2).allowed  # exactly what was left


def test_executions_and_requests_are_separate_windows(limiter: RateLimiter, account: str) -> None:
    plan = tiny(requests_per_minute=5, executions_per_minute=2)
    limiter.hit_execution(account, plan, cost=2)
    assert state(limiter.peek(account, plan), REQUESTS).remaining == 5
    limiter.hit_request(account, plan)
    assert state(limiter.peek(account, plan), EXECUTIONS_MINUTE).remaining == 0


def test_peek_consumes_nothing(limiter: RateLimiter, account: str) -> None:
    plan = DEFAULT_PLANS["free"]
    for _ in range(5):
        states = limiter.peek(account, plan)
    assert [(s.name, s.remaining, s.reset_after) for s in states] == [
        (REQUESTS, 10, 0.0),
        (EXECUTIONS_MINUTE, 10, 0.0),
        (EXECUTIONS_DAY, 50, 0.0),
    ]


def test_concurrent_submits_never_exceed_the_limit(limiter: RateLimiter, account: str) -> None:
    plan = tiny(executions_per_minute=50, executions_per_day=7)
    results: list[bool] = []

    def submit() -> None:
        for _ in range(5):
            results.append(limiter.hit_execution(account, plan).allowed)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 7
    assert state(limiter.peek(account, plan), EXECUTIONS_DAY).remaining == 0


def test_unlimited_plan_never_refuses(limiter: RateLimiter, account: str) -> None:
    plan = Plan(name="unlimited")
    for _ in range(200):
        request = limiter.hit_request(account, plan)
        execution = limiter.hit_execution(account, plan, cost=5)
        assert request.allowed and execution.allowed
    assert request.states == [] and execution.states == []
    assert limiter.peek(account, plan) == []
    assert rate_limit_headers(request.states) == {}


def test_enterprise_reports_no_daily_window(limiter: RateLimiter, account: str) -> None:
    decision = limiter.hit_execution(account, DEFAULT_PLANS["enterprise"])
    assert [s.name for s in decision.states] == [EXECUTIONS_MINUTE]
    assert "executions-day" not in rate_limit_headers(decision.states)["RateLimit-Policy"]


def test_reset_forgets_counts(limiter: RateLimiter, account: str) -> None:
    plan = tiny(requests_per_minute=1)
    limiter.hit_request(account, plan)
    assert not limiter.hit_request(account, plan).allowed
    limiter.reset()
    assert limiter.hit_request(account, plan).allowed


# -- headers --------------------------------------------------------------------------

# RFC 8941 list of items: sf-string with integer parameters.
_ITEM = re.compile(r'^"([a-z0-9-]+)"((?:;[a-z][a-z0-9_.*-]*=-?\d{1,15})+)$')


def parse_sf_list(value: str) -> dict[str, dict[str, int]]:
    """Parse the draft's headers as RFC 8941 lists; fails on any syntax slip."""
    parsed: dict[str, dict[str, int]] = {}
    for member in re.split(r",[ \t]*", value):
        match = _ITEM.match(member)
        assert match, f"not a structured-field item: {member!r}"
        params = dict(p.split("=") for p in match.group(2).strip(";").split(";"))
        parsed[match.group(1)] = {k: int(v) for k, v in params.items()}
    return parsed


def test_headers_describe_every_window(limiter: RateLimiter, account: str) -> None:
    plan = tiny(requests_per_minute=10, executions_per_minute=10, executions_per_day=50)
    for _ in range(3):
        limiter.hit_request(account, plan)
    limiter.hit_execution(account, plan, cost=4)
    headers = rate_limit_headers(limiter.peek(account, plan))

    assert parse_sf_list(headers["RateLimit-Policy"]) == {
        "requests": {"q": 10, "w": 60},
        "executions-minute": {"q": 10, "w": 60},
        "executions-day": {"q": 50, "w": 86400},
    }
    current = parse_sf_list(headers["RateLimit"])
    assert {name: v["r"] for name, v in current.items()} == {
        "requests": 7,
        "executions-minute": 6,
        "executions-day": 46,
    }
    assert 59 <= current["requests"]["t"] <= 60
    assert 86399 <= current["executions-day"]["t"] <= 86400
    # Legacy headers follow the most restrictive window: executions-minute (6 left).
    assert headers["X-RateLimit-Limit"] == "10"
    assert headers["X-RateLimit-Remaining"] == "6"
    assert 59 <= int(headers["X-RateLimit-Reset"]) <= 60  # seconds from now, not a timestamp
    assert "Retry-After" not in headers


def test_refusal_headers_carry_retry_after(limiter: RateLimiter, account: str) -> None:
    plan = tiny(requests_per_minute=2)
    for _ in range(2):
        limiter.hit_request(account, plan)
    refused = limiter.hit_request(account, plan)
    headers = rate_limit_headers(refused.states, refused.violated)

    assert headers["Retry-After"] == str(refused.retry_after)
    assert headers["X-RateLimit-Remaining"] == "0"
    t = parse_sf_list(headers["RateLimit"])["requests"]["t"]
    assert int(headers["Retry-After"]) >= t >= 1  # Retry-After never earlier than t


def test_refusal_becomes_a_429_error_with_headers(limiter: RateLimiter, account: str) -> None:
    plan = tiny(executions_per_minute=10, executions_per_day=1)
    limiter.hit_execution(account, plan)
    refused = limiter.hit_execution(account, plan)
    error = rate_limited_error(refused)

    assert error.status == 429
    assert error.to_dict()["violated_policies"] == ["executions-day"]
    assert error.to_dict()["retry_after"] == refused.retry_after  # seconds, not a timestamp
    assert error_headers(error)["Retry-After"] == str(refused.retry_after)
    assert error_headers(error)["X-RateLimit-Limit"] == "1"
    with pytest.raises(ValueError):
        rate_limited_error(limiter.hit_execution(account + "_other", plan))


def test_headers_of_a_fresh_account_show_full_quota(limiter: RateLimiter, account: str) -> None:
    headers = rate_limit_headers(limiter.peek(account, DEFAULT_PLANS["pro"]))
    assert parse_sf_list(headers["RateLimit"])["requests"] == {"r": 60, "t": 0}
    assert headers["X-RateLimit-Reset"] == "0"


# -- several API nodes ----------------------------------------------------------------


@pytest.mark.redis
def test_two_limiters_on_shared_redis_see_the_same_counts(account: str) -> None:
    node_a, node_b = _limiter(REDIS_URI), RateLimiter(REDIS_URI)
    try:
        plan = tiny(requests_per_minute=4, executions_per_day=3)
        for node in (node_a, node_b, node_a, node_b):
            assert node.hit_request(account, plan).allowed
        assert not node_a.hit_request(account, plan).allowed
        assert not node_b.hit_request(account, plan).allowed

        assert node_a.hit_execution(account, plan, cost=2).allowed
        assert state(node_b.peek(account, plan), EXECUTIONS_DAY).remaining == 1
        assert not node_b.hit_execution(account, plan, cost=2).allowed
        assert node_b.hit_execution(account, plan).allowed
        assert not node_a.hit_execution(account, plan).allowed
    finally:
        node_a.reset()


@pytest.mark.redis
def test_nodes_racing_on_shared_redis_never_exceed_the_limit(account: str) -> None:
    nodes = [_limiter(REDIS_URI)] + [RateLimiter(REDIS_URI) for _ in range(3)]
    plan = tiny(executions_per_minute=100, executions_per_day=9)
    results: list[bool] = []

    def submit(node: RateLimiter) -> None:
        for _ in range(6):
            results.append(node.hit_execution(account, plan).allowed)

    try:
        threads = [threading.Thread(target=submit, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(True) == 9
    finally:
        nodes[0].reset()


def test_memory_store_is_per_process(account: str) -> None:
    """``memory://`` limiters do not share counts: one API node only."""
    one, two = RateLimiter(), RateLimiter()
    plan = tiny(requests_per_minute=1)
    assert one.hit_request(account, plan).allowed
    assert two.hit_request(account, plan).allowed


def test_bad_keys_are_counted_per_client_address(limiter: RateLimiter, account: str) -> None:
    client, other = f"203.0.113.7-{account}", f"198.51.100.9-{account}"
    for _ in range(3):
        assert limiter.auth_failures(client, 3).allowed
        limiter.hit_auth_failure(client, 3)
    refused = limiter.auth_failures(client, 3)
    assert not refused.allowed and 1 <= refused.retry_after <= 60
    assert rate_limited_error(refused).code == "too_many_auth_failures"
    assert limiter.auth_failures(other, 3).allowed  # another address is not affected
