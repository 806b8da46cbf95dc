"""Accounts on every request, over HTTP on SQLite and PostgreSQL: rate-limit headers
and 429s, the active-task cap, execution windows, and Idempotency-Key replay."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid

import httpx
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient

from pixelmill.accounts import idempotency as idem
from pixelmill.accounts import keys, ledger
from pixelmill.api.app import create_app
from tests.conftest import FakeBackend, create_key, wait_for

SMALL = {"prompt": "a red circle", "width": 256, "height": 256}
UNLIMITED = {"executions_per_minute": None, "executions_per_day": None}
PLANS = {
    "ten-rpm": {"requests_per_minute": 10, **UNLIMITED},
    "two-active": {"requests_per_minute": 1000, "max_active_tasks": 2, **UNLIMITED},
    "two-per-minute": {"requests_per_minute": 1000, "executions_per_minute": 2, "executions_per_day": None},
    "two-per-day": {"requests_per_minute": 1000, "executions_per_minute": None, "executions_per_day": 2},
    "one-per-minute": {"requests_per_minute": 1000, "executions_per_minute": 1, "executions_per_day": None},
    "bulk": {"requests_per_minute": 1000, **UNLIMITED},
    "monthly": {"requests_per_minute": 1000, "monthly_credits": 50.0, **UNLIMITED},
}


@pytest.fixture
def api(make_runtime, db_url):
    """``api(plan, credits=…, backend=…)`` → (runtime, client with that plan's key)."""

    def make(plan: str, credits: float = 1000.0, backend=None, **settings):
        rt = make_runtime(db_url, backend=backend, plans=PLANS, **settings)
        client = TestClient(create_app(rt, manage_runtime=False))
        client.headers["x-key"] = create_key(rt, credits=credits, plan=plan)
        return rt, client

    return make


def _account_id(rt, key: str) -> str:
    with rt.db.engine.connect() as conn:
        return keys.authenticate(conn, key).account_id


def _executions(rt, client) -> list:
    return rt.executions.list(_account_id(rt, client.headers["x-key"]), limit=1000)


def _policies(response) -> str:
    return response.headers.get("RateLimit-Policy", "")


# -- request rate limits -----------------------------------------------------------------


def test_headers_on_success_and_on_error_responses(api):
    rt, client = api("ten-rpm")
    r = client.get("/v1/credits")
    assert r.status_code == 200
    assert r.headers["X-RateLimit-Limit"] == "10"
    assert r.headers["X-RateLimit-Remaining"] == "10"  # reads are not counted
    assert '"requests";q=10;w=60' in _policies(r)
    assert r.headers["RateLimit"].startswith('"requests";r=10;t=0')

    r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 250})  # 422 from the dialect
    assert r.status_code == 422
    assert r.headers["X-RateLimit-Remaining"] == "9"
    assert r.headers["RateLimit"].startswith('"requests";r=9;t=')
    assert 0 < int(r.headers["X-RateLimit-Reset"]) <= 60
    assert "X-Request-Id" in r.headers


def test_eleventh_request_in_a_minute_is_429(api):
    rt, client = api("ten-rpm")
    for i in range(10):
        r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 250})
        assert r.status_code == 422, (i, r.text)
    r = client.post("/v1/flux-dev", json=SMALL)
    assert r.status_code == 429
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    body = r.json()
    assert body["error"]["code"] == "rate_limited"
    assert body["violated_policies"] == ["requests"]
    assert body["retry_after"] == retry_after
    assert body["limit"] == 10 and body["window_s"] == 60
    assert "10 requests per 60 s" in body["detail"]
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert r.headers["X-RateLimit-Limit"] == "10"
    assert r.headers["RateLimit-Policy"] == '"requests";q=10;w=60'
    assert r.headers["RateLimit"] == f'"requests";r=0;t={retry_after}'
    assert _executions(rt, client) == []  # refused before the dialect ran
    # reads still work (and report the full window); other accounts are unaffected
    r = client.get("/v1/credits")
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "0"
    other = create_key(rt, account="other", plan="ten-rpm")
    assert client.post("/v1/flux-dev", json={"prompt": "x", "width": 250}, headers={"x-key": other}).status_code == 422


def test_bad_keys_and_unlimited_paths_carry_no_limits(api):
    rt, client = api("ten-rpm")
    for _ in range(12):
        r = client.post("/v1/flux-dev", json=SMALL, headers={"x-key": "sk-unknown"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_api_key"
        assert "X-RateLimit-Limit" not in r.headers
    r = client.post("/v1/flux-dev", json=SMALL, headers={"x-key": ""})
    assert r.status_code in (401, 403) and "X-RateLimit-Limit" not in r.headers
    r = client.get("/healthz")
    assert r.status_code == 200 and "X-RateLimit-Limit" not in r.headers
    r = client.get("/files/nope/x.png?exp=1&sig=0")
    assert r.status_code in (403, 404) and "X-RateLimit-Limit" not in r.headers
    # bearer and X-API-Key are counted the same way
    key = client.headers["x-key"]
    r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 250}, headers={"x-key": "", "Authorization": f"Bearer {key}"})
    assert r.headers["X-RateLimit-Remaining"] == "9"
    r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 250}, headers={"x-key": "", "X-API-Key": key})
    assert r.headers["X-RateLimit-Remaining"] == "8"


def test_too_many_bad_keys_from_one_address_are_refused_before_lookup(api):
    rt, client = api("bulk", auth_failures_per_minute=5)
    good = client.headers["x-key"]
    for _ in range(5):
        assert client.get("/v1/credits", headers={"x-key": "sk-guess"}).status_code == 403
    r = client.get("/v1/credits", headers={"x-key": "sk-guess"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_auth_failures"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # from that address even a good key waits: a guess that hits would look the same
    assert client.get("/v1/credits", headers={"x-key": good}).status_code == 429
    rt.limiter.reset()
    assert client.get("/v1/credits", headers={"x-key": good}).status_code == 200


def test_two_runtimes_sharing_redis_share_the_request_count(make_runtime, sqlite_url):
    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError:
        pytest.skip("Redis is not reachable at 127.0.0.1:6379: shared-limit test NOT run")
    rt1 = make_runtime(sqlite_url, plans=PLANS, rate_limit_storage=url)
    rt2 = make_runtime(sqlite_url, plans=PLANS, rate_limit_storage=url)
    key = create_key(rt1, account=f"shared-{uuid.uuid4().hex[:8]}", plan="ten-rpm")
    c1 = TestClient(create_app(rt1, manage_runtime=False), headers={"x-key": key})
    c2 = TestClient(create_app(rt2, manage_runtime=False), headers={"x-key": key})
    for _ in range(6):
        assert c1.post("/v1/flux-dev", json={"prompt": "x", "width": 250}).status_code == 422
    r = c2.post("/v1/flux-dev", json={"prompt": "x", "width": 250})
    assert r.headers["X-RateLimit-Remaining"] == "3"
    for _ in range(3):
        c2.post("/v1/flux-dev", json={"prompt": "x", "width": 250})
    assert c1.post("/v1/flux-dev", json=SMALL).status_code == 429


def test_reads_by_a_known_key_reuse_the_shared_stores_recent_counts(make_runtime, sqlite_url, monkeypatch):
    """With limits in Redis (several API nodes), a read by a key the node knows reports the
    request window and passes the bad-key gate from what this node read or counted in the last
    READ_REUSE_S (1 s), instead of a round trip to Redis (and a thread-pool hop) for each: a client
    polling its result costs the store nothing more. What another node counted shows within
    READ_REUSE_S; what this node counts (a submit, a bad key) shows at once, and a guess (an
    unknown key) always reads the store."""
    from pixelmill.accounts import ratelimit

    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError:
        pytest.skip("Redis is not reachable at 127.0.0.1:6379: shared-store read test NOT run")
    monkeypatch.setattr(ratelimit, "READ_REUSE_S", 60.0)  # long: the test's own pace does not matter
    rt1 = make_runtime(sqlite_url, plans=PLANS, rate_limit_storage=url, auth_failures_per_minute=5)
    rt2 = make_runtime(sqlite_url, plans=PLANS, rate_limit_storage=url, auth_failures_per_minute=5)
    rt1.limiter.reset()
    key = create_key(rt1, account=f"reads-{uuid.uuid4().hex[:8]}", plan="ten-rpm")
    c1 = TestClient(create_app(rt1, manage_runtime=False), headers={"x-key": key})
    c2 = TestClient(create_app(rt2, manage_runtime=False), headers={"x-key": key})
    reads = []
    real = rt1.limiter._strategy.get_window_stats
    monkeypatch.setattr(rt1.limiter._strategy, "get_window_stats", lambda *a: reads.append(a[1]) or real(*a))

    assert c1.post("/v1/flux-dev", json={"prompt": "x", "width": 250}).status_code == 422  # counted: 9 left
    first = c1.get("/v1/get_result?id=nope")
    assert first.headers["X-RateLimit-Remaining"] == "9"
    reads.clear()
    for _ in range(20):
        r = c1.get("/v1/get_result?id=nope")
        assert (r.status_code, r.json()) == (first.status_code, first.json()) and r.headers["X-RateLimit-Remaining"] == "9"
    assert reads == []  # neither the request window nor the bad-key gate was read again

    assert c2.post("/v1/flux-dev", json={"prompt": "x", "width": 250}).status_code == 422  # another node counts one
    assert c1.get("/v1/get_result?id=nope").headers["X-RateLimit-Remaining"] == "9"  # not yet seen here...
    monkeypatch.setattr(ratelimit, "READ_REUSE_S", 0.0)
    assert c1.get("/v1/get_result?id=nope").headers["X-RateLimit-Remaining"] == "8"  # ...seen once READ_REUSE_S is past
    monkeypatch.setattr(ratelimit, "READ_REUSE_S", 60.0)
    assert c1.post("/v1/flux-dev", json={"prompt": "x", "width": 250}).status_code == 422  # this node counts one
    reads.clear()
    r = c1.get("/v1/get_result?id=nope")
    assert r.headers["X-RateLimit-Remaining"] == "7" and reads == []  # seen at once, from the count; the gate remembered open

    for _ in range(5):  # guesses from this address: each reads the gate, each is counted
        assert c1.get("/v1/get_result?id=nope", headers={"x-key": "sk-guess"}).status_code == 403
    r = c1.get("/v1/get_result?id=nope")
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_auth_failures"  # at once, good key or not
    rt1.limiter.reset()


# -- admission: active tasks and execution windows --------------------------------------


def test_active_task_cap_is_429_concurrent_requests(api):
    rt, client = api("two-active", backend=FakeBackend(step_delay=0.04))  # flux-dev: 28 steps, ~1 s a task
    ids, cost = [], 0.0
    for _ in range(2):
        r = client.post("/v1/flux-dev", json=SMALL)
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
        cost += r.json()["cost"]
    r = client.post("/v1/flux-dev", json=SMALL)
    assert r.status_code == 429
    body = r.json()
    assert body["error"]["code"] == "active_task_limit"
    assert body["violated_policies"] == ["active-tasks"] and body["limit"] == 2 and body["active"] == 2
    assert r.headers["Retry-After"] == "1"
    assert '"active-tasks";q=2;qu="concurrent-requests"' in _policies(r)
    assert '"requests";q=1000;w=60' in _policies(r)  # the request window is reported too
    assert r.headers["X-RateLimit-Limit"] == "2"
    assert len(_executions(rt, client)) == 2
    assert client.get("/v1/credits").json()["credits"] == pytest.approx(1000 - cost, abs=1e-3)  # nothing held for the refusal
    # once one finishes there is room again
    wait_for(lambda: client.get(f"/v1/get_result?id={ids[0]}").json()["status"] == "Ready", timeout=30)
    r = client.post("/v1/flux-dev", json=SMALL)
    assert r.status_code == 200
    account = _account_id(rt, client.headers["x-key"])
    for execution_id in (ids[1], r.json()["id"]):  # leave no work running past the test
        rt.executions.cancel(account, execution_id)


@pytest.mark.parametrize("plan,window", [("two-per-minute", "executions-minute"), ("two-per-day", "executions-day")])
def test_execution_windows(api, plan, window):
    rt, client = api(plan)
    r = client.post("/v1/flux-dev", json=SMALL)
    assert r.status_code == 200
    assert f'"{window}";q=2;w=' in _policies(r)  # a submit reports the windows it consumed
    assert f'"{window}";r=1;t=' in r.headers["RateLimit"]
    assert client.post("/v1/flux-dev", json=SMALL).status_code == 200
    r = client.post("/v1/flux-dev", json=SMALL)
    assert r.status_code == 429
    body = r.json()
    assert body["error"]["code"] == "rate_limited" and body["violated_policies"] == [window]
    assert int(r.headers["Retry-After"]) >= 1 and body["retry_after"] == int(r.headers["Retry-After"])
    assert r.headers["X-RateLimit-Limit"] == "2" and r.headers["X-RateLimit-Remaining"] == "0"
    assert len(_executions(rt, client)) == 2


def test_refusals_for_credits_or_validation_consume_no_execution_quota(api):
    rt, client = api("one-per-minute", credits=0.01)
    r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 1024, "height": 1024})
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
    assert client.post("/v1/flux-dev", json={"prompt": "x", "width": 250}).status_code == 422
    account = _account_id(rt, client.headers["x-key"])
    with rt.db.transaction() as conn:
        ledger.grant(conn, account, 100, "top-up")
    r = client.post("/v1/flux-dev", json=SMALL)
    assert r.status_code == 200, r.text  # the only slot of the minute was still free
    assert client.post("/v1/flux-dev", json=SMALL).status_code == 429


# -- Idempotency-Key --------------------------------------------------------------------


def _ready(client, execution_id):
    return wait_for(lambda: client.get(f"/v1/get_result?id={execution_id}").json()["status"] == "Ready", timeout=30)


def test_replay_returns_the_original_without_new_work_or_charge(api):
    rt, client = api("bulk")
    h = {"Idempotency-Key": "order-42"}
    first = client.post("/v1/flux-dev", json=SMALL, headers=h)
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    _ready(client, first.json()["id"])
    second = client.post("/v1/flux-dev", content=json.dumps(SMALL, indent=2), headers={**h, "content-type": "application/json"})
    assert second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert second.headers["content-type"] == first.headers["content-type"]
    assert "X-RateLimit-Limit" in second.headers
    assert len(_executions(rt, client)) == 1
    assert client.get("/v1/credits").json()["credits"] == pytest.approx(1000 - first.json()["cost"], abs=1e-3)
    # the same key under another account is another request
    other = create_key(rt, account="other", plan="bulk")
    r = client.post("/v1/flux-dev", json=SMALL, headers={**h, "x-key": other})
    assert r.status_code == 200 and r.json()["id"] != first.json()["id"]


def test_same_key_different_body_is_422(api):
    rt, client = api("bulk")
    assert client.post("/v1/flux-dev", json=SMALL, headers={"Idempotency-Key": '"k1"'}).status_code == 200
    r = client.post("/v1/flux-dev", json={**SMALL, "prompt": "blue"}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    r = client.post("/v1/flux-pro-1.1", json=SMALL, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    assert len(_executions(rt, client)) == 1


def test_same_key_while_processing_is_409(api):
    rt, client = api("bulk")
    account = _account_id(rt, client.headers["x-key"])
    fp = idem.fingerprint("POST", "/v1/flux-dev", json.dumps(SMALL).encode())
    assert isinstance(rt.idempotency.begin(account, "busy", fp), idem.Claim)  # a first request, still running
    r = client.post("/v1/flux-dev", json=SMALL, headers={"Idempotency-Key": "busy"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "idempotency_key_in_progress"
    assert r.headers["Retry-After"] == "1"
    assert _executions(rt, client) == []


def test_client_errors_are_not_remembered(api):
    rt, client = api("bulk", credits=0.01)
    h = {"Idempotency-Key": "retry-me"}
    assert client.post("/v1/flux-dev", json={"prompt": "x", "width": 250}, headers=h).status_code == 422
    assert client.post("/v1/flux-dev", json=SMALL, headers=h).status_code == 402
    account = _account_id(rt, client.headers["x-key"])
    with rt.db.transaction() as conn:
        ledger.grant(conn, account, 100, "top-up")
    r = client.post("/v1/flux-dev", json=SMALL, headers=h)
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers
    assert client.post("/v1/flux-dev", json=SMALL, headers=h).headers["Idempotent-Replayed"] == "true"


def test_server_errors_are_not_remembered_the_retry_runs_again(api):
    """A 5xx tells the client to retry: it is never the key's final answer, so the retry does the work."""
    backend = FakeBackend(fail_with=RuntimeError("CUDA out of memory"))
    rt, client = api("bulk", backend=backend)
    h = {"Idempotency-Key": "gen-1"}
    body = {"model": "fake", "prompt": "x", "size": "256x256"}
    first = client.post("/v1/images/generations", json=body, headers=h)  # the OpenAI dialect waits for the result
    assert first.status_code == 500 and "out of memory" in first.text
    backend.fail_with = None
    again = client.post("/v1/images/generations", json=body, headers=h)
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert backend.calls == 2
    assert sorted(v.status.value for v in _executions(rt, client)) == ["failed", "succeeded"]
    third = client.post("/v1/images/generations", json=body, headers=h)  # now the answer is final: replayed
    assert third.headers["Idempotent-Replayed"] == "true" and third.json() == again.json()
    assert backend.calls == 2


def test_key_longer_than_255_is_400(api):
    rt, client = api("bulk")
    r = client.post("/v1/flux-dev", json=SMALL, headers={"Idempotency-Key": "k" * 256})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_idempotency_key"
    assert _executions(rt, client) == []
    assert client.post("/v1/flux-dev", json=SMALL, headers={"Idempotency-Key": "k" * 255}).status_code == 200


@contextlib.contextmanager
def _serve(app):
    """The app on a real HTTP server (uvicorn in a thread) on a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", backlog=512))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_hundred_simultaneous_identical_requests_create_one_execution(api):
    rt, client = api("bulk")
    key = client.headers["x-key"]
    n = 100
    barrier = threading.Barrier(n)
    results: list[tuple[int, dict, str | None]] = []

    def fire(base):
        with httpx.Client(base_url=base, timeout=60) as http:
            barrier.wait()
            r = http.post("/v1/flux-dev", json=SMALL, headers={"x-key": key, "Idempotency-Key": "once"})
            results.append((r.status_code, r.json(), r.headers.get("Idempotent-Replayed")))

    with _serve(create_app(rt, manage_runtime=False)) as base:
        threads = [threading.Thread(target=fire, args=(base,)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    assert len(results) == n
    assert {status for status, _, _ in results} <= {200, 409}, sorted({s for s, _, _ in results})
    ok = [(body, replayed) for status, body, replayed in results if status == 200]
    assert ok
    assert len({body["id"] for body, _ in ok}) == 1
    assert sum(replayed is None for _, replayed in ok) == 1  # one original, the rest replays
    assert all(body["error"]["code"] == "idempotency_key_in_progress" for status, body, _ in results if status == 409)
    executions = _executions(rt, client)
    assert len(executions) == 1 and executions[0].id == ok[0][0]["id"]


# -- monthly plan credits --------------------------------------------------------------------


def test_plan_credits_are_granted_once_per_calendar_month(api):
    import sqlalchemy as sa

    from pixelmill.store.tables import accounts

    rt, client = api("monthly", credits=10.0)
    account_id = _account_id(rt, client.headers["x-key"])
    # created this month: the initial credits cover it, no monthly grant yet
    assert client.get("/v1/credits").json()["credits"] == pytest.approx(10.0)
    with rt.db.transaction() as conn:  # the account was opened two months ago
        conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(created_at=time.time() - 62 * 86400))
    assert client.get("/v1/credits").json()["credits"] == pytest.approx(60.0)
    assert client.get("/v1/credits").json()["credits"] == pytest.approx(60.0)  # not twice in one month
    r = client.post("/v1/flux-dev", json=SMALL)  # a submit in the same month grants nothing more
    assert r.status_code == 200, r.text
    with rt.db.transaction() as conn:
        next_month = time.time() + 32 * 86400
        assert ledger.grant_monthly(conn, account_id, 50.0, now=next_month)
        assert not ledger.grant_monthly(conn, account_id, 50.0, now=next_month)
        grants = [e for e in ledger.entries(conn, account_id) if (e.get("entry_key") or "").startswith("monthly:")]
    assert len(grants) == 2
