"""Latency that rate limiting adds to one API request.

Times ``RateLimiter.hit_request`` + ``rate_limit_headers`` (what every request pays)
and ``hit_execution`` (what a submit pays on top), on the embedded ``memory://``
store and on Redis for comparison.  Traffic is spread over many accounts on the
``pro`` plan so that most hits are allowed, as in normal operation.

    python bench/limits_overhead.py [--iterations 20000] [--redis redis://127.0.0.1:6379/15]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="'' to skip Redis")
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


if __name__ == "__main__":
    main()
