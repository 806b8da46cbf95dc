"""Latency that accounts (auth, rate limits, idempotency) add to one API request.

Part 1 times ``RateLimiter.hit_request`` + ``rate_limit_headers`` (what every
counted request pays) and ``hit_execution`` (what a submit pays on top), on the
embedded ``memory://`` store and on Redis for comparison.  Traffic is spread over
many accounts on the ``pro`` plan so that most hits are allowed, as in normal
operation.

Part 2 times the full path through the ASGI app in embedded mode (SQLite, memory
store), called in-process without a socket: ``GET /v1/credits`` with the accounts
middleware vs. the same app with it disabled (the route then authenticates by
itself), and a ``POST`` refused by validation with and without an
``Idempotency-Key`` (claiming and releasing the key: two small writes).

    python bench/limits_overhead.py [--iterations 20000] [--app-iterations 3000] [--redis redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from pixelmill.accounts.plans import DEFAULT_PLANS
from pixelmill.accounts.ratelimit import RateLimiter, rate_limit_headers

TARGET_MS = 1.0


def _percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p50 = statistics.median(ordered) / 1e6
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6
    return p50, p99


def _time(op: Callable[[int], object], iterations: int, warmup: int = 500) -> tuple[float, float]:
    for i in range(warmup):
        op(-1 - i)
    samples = []
    for i in range(iterations):
        start = time.perf_counter_ns()
        op(i)
        samples.append(time.perf_counter_ns() - start)
    return _percentiles(samples)


def bench_storage(uri: str, iterations: int, accounts: int) -> dict[str, tuple[float, float]]:
    limiter = RateLimiter(uri)
    limiter.reset()
    plan = DEFAULT_PLANS["pro"]

    def request(i: int) -> None:
        decision = limiter.hit_request(f"acct{i % accounts}", plan)
        rate_limit_headers(decision.states, decision.violated)

    def execution(i: int) -> None:
        decision = limiter.hit_execution(f"acct{i % accounts}", plan)
        rate_limit_headers(decision.states, decision.violated)

    results = {"request": _time(request, iterations)}
    limiter.reset()
    results["execution"] = _time(execution, iterations)
    limiter.reset()
    return results


# -- part 2: the full path through the app ------------------------------------------------


async def _call(app, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
    """One request through the ASGI app, in-process; returns the status."""
    import asyncio

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    never = asyncio.Event()
    status = 0

    async def receive():
        if pending:
            return pending.pop()
        await never.wait()

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def bench_app(iterations: int, accounts: int = 50) -> dict[str, tuple[float, float]]:
    import asyncio
    import tempfile
    import uuid
    from pathlib import Path

    from pixelmill.accounts import keys, ledger
    from pixelmill.api.app import create_app
    from pixelmill.api.middleware import AccountsMiddleware
    from pixelmill.config import Settings
    from pixelmill.runtime import Runtime

    tmp = Path(tempfile.mkdtemp(prefix="pixelmill-bench-"))
    settings = Settings(data_dir=tmp, secret_key="bench", plans={"bench": {"requests_per_minute": 1_000_000}})
    rt = Runtime(settings)
    with rt.db.transaction() as conn:
        api_keys = []
        for i in range(accounts):
            aid = keys.create_account(conn, f"bench{i}", "bench")
            ledger.grant(conn, aid, 100, f"bench:{aid}")
            api_keys.append(keys.create_key(conn, aid).key)
    with_mw = create_app(rt, manage_runtime=False)
    without_mw = create_app(rt, manage_runtime=False)
    for m in without_mw.user_middleware:
        if m.cls is AccountsMiddleware:
            m.kwargs["enabled"] = False
    bad_body = b'{"prompt": "x", "width": 250}'
    json_ct = {"content-type": "application/json"}

    variants = {
        "get_without": (without_mw, "GET", "/v1/credits", b"", False, 200),
        "get_with": (with_mw, "GET", "/v1/credits", b"", False, 200),
        "post_without_key": (with_mw, "POST", "/v1/flux-dev", bad_body, False, 422),
        "post_with_key": (with_mw, "POST", "/v1/flux-dev", bad_body, True, 422),
    }

    async def run() -> dict[str, tuple[float, float]]:
        samples: dict[str, list[int]] = {name: [] for name in variants}
        # the variants take turns request by request, so that machine noise hits all alike
        for i in range(-200, iterations):  # 200 warm-up rounds
            for name, (app, method, path, body, idem, expect) in variants.items():
                headers = {"x-key": api_keys[i % accounts], **(json_ct if body else {})}
                if idem:
                    headers["idempotency-key"] = uuid.uuid4().hex
                start = time.perf_counter_ns()
                status = await _call(app, method, path, headers, body)
                elapsed = time.perf_counter_ns() - start
                assert status == expect, (name, status)
                if i >= 0:
                    samples[name].append(elapsed)
        return {name: _percentiles(s) for name, s in samples.items()}

    try:
        return asyncio.run(run())
    finally:
        rt.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="'' to skip Redis")
    parser.add_argument("--app-iterations", type=int, default=3_000, help="requests per variant through the app; 0 to skip")
    args = parser.parse_args()

    results = {"memory": bench_storage("memory://", args.iterations, args.accounts)}
    if args.redis:
        try:
            results["redis"] = bench_storage(args.redis, args.iterations, args.accounts)
        except Exception as exc:  # report and carry on with the embedded numbers
            print(f"redis: skipped ({exc!r})")

    for store, by_op in results.items():
        p50, p99 = by_op["request"]
        verdict = "ok" if p50 < TARGET_MS else "OVER TARGET"
        print(f"{store:6} rate limit check p50: {p50:.3f} ms  p99: {p99:.3f} ms  (target < {TARGET_MS:g} ms: {verdict})")
        p50, p99 = by_op["execution"]
        print(f"{store:6} execution check   p50: {p50:.3f} ms  p99: {p99:.3f} ms")
    if "redis" in results:
        ratio = results["redis"]["request"][0] / results["memory"]["request"][0]
        print(f"redis / memory (request check p50): {ratio:.1f}x")

    if args.app_iterations:
        app = bench_app(args.app_iterations)
        off, on = app["get_without"], app["get_with"]
        added = on[0] - off[0]
        verdict = "ok" if added < TARGET_MS else "OVER TARGET"
        print(f"GET /v1/credits without accounts middleware p50: {off[0]:.3f} ms  p99: {off[1]:.3f} ms")
        print(f"GET /v1/credits with accounts middleware    p50: {on[0]:.3f} ms  p99: {on[1]:.3f} ms")
        print(f"auth+limits+idempotency added p50: {added:.2f} ms  (target < {TARGET_MS:g} ms: {verdict})")
        plain, keyed = app["post_without_key"], app["post_with_key"]
        print(f"POST (422) without Idempotency-Key p50: {plain[0]:.3f} ms; with a new key p50: {keyed[0]:.3f} ms "
              f"(claim + release added: {keyed[0] - plain[0]:.2f} ms)")


if __name__ == "__main__":
    main()
