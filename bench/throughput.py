"""Images/s through the API against a direct sequential pipeline loop, and the latency the API adds.

Side by side in one run, with the shipped pixelmill-tiny model (no batching):

* **direct**: the model's backend called in a plain loop in this process
  (``--images`` images, one after the other), and the p50/p99 of one bare call;
* **API**: an embedded server (uvicorn subprocess, SQLite, in-process worker,
  models preloaded) receiving the same number of images from 1, 4 and 16
  clients, each ``POST /v1/flux-dev`` with ``Prefer: wait`` (the answer comes
  when the image is done).  images/s and the ratio API/direct are printed
  (target ≥ 0.97×);
* **added latency**: one client, call by call: a bare call in this process, then
  the same image asked of the server, 40 times (``--pairs``), each API call less
  the bare call just before it (p50 and p99; target ≤ 5 ms p50, ≤ 20 ms p99).
  Pairs, because this machine's speed drifts by more than the difference between
  runs minutes apart.  The API as shipped checks every output with the image
  classifier (output moderation), so a second server without it, the platform
  alone, answers in the same pairs.

    python bench/throughput.py [--images 16] [--size 256] [--steps 16] [--clients 1,4,16] [--pairs 40] [--worker-threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path

from _harness import Http, bench_env, free_port, make_key, p50, percentile, server


_BACKEND = None


def direct(images: int, size: int, steps: int, threads: int) -> tuple[float, list[float]]:
    """images/s of a sequential loop over the backend with ``threads`` torch threads, and each call's seconds."""
    global _BACKEND
    import pixelmill  # noqa: F401  (before torch: the loop runs with the server's OpenMP settings, see pixelmill/__init__.py)
    import torch

    from pixelmill.models.base import StepControl, TextToImageRequest
    from pixelmill.models.catalog import ModelCatalog
    from pixelmill.models.registry import ModelRegistry

    if _BACKEND is None:
        _BACKEND = ModelRegistry(ModelCatalog.load(None)).backend("pixelmill-tiny")
    backend = _BACKEND
    torch.set_num_threads(threads)
    request = lambda i: TextToImageRequest(prompt=f"a red circle on blue {i}", width=size, height=size, steps=steps, seed=i)  # noqa: E731
    for i in range(2):
        backend.generate(request(-1 - i), StepControl())
    calls = []
    start = time.perf_counter()
    for i in range(images):
        t = time.perf_counter()
        backend.generate(request(i), StepControl())
        calls.append(time.perf_counter() - t)
    return images / (time.perf_counter() - start), calls


async def through_api(port: int, key: str, images: int, clients: int, size: int, steps: int, offset: int) -> tuple[float, list[float]]:
    """images/s with ``clients`` concurrent clients, and each request's submit→answer seconds.

    Seeds start at ``offset``: every point asks for new images (an unchanged request would be a cache hit).
    """
    todo = list(range(offset, offset + images))
    latencies: list[float] = []

    async def client() -> None:
        http = Http(port, {"x-key": key})
        try:
            while todo:
                i = todo.pop()
                body = {"prompt": f"a red circle on blue {i}", "width": size, "height": size, "steps": steps, "seed": i}
                t = time.perf_counter()
                status, raw = await http.request("POST", "/v1/flux-dev", body, {"Prefer": "wait=120"})
                latencies.append(time.perf_counter() - t)
                assert status == 200 and json.loads(raw)["status"] == "Ready", raw[:300]
        finally:
            http.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return images / (time.perf_counter() - start), latencies


async def one_call(http: Http, i: int, size: int, steps: int) -> float:
    """Seconds of one ``Prefer: wait`` submit→answer."""
    body = {"prompt": f"a red circle on blue {i}", "width": size, "height": size, "steps": steps, "seed": i}
    t = time.perf_counter()
    status, raw = await http.request("POST", "/v1/flux-dev", body, {"Prefer": "wait=120"})
    elapsed = time.perf_counter() - t
    assert status == 200 and json.loads(raw)["status"] == "Ready", raw[:300]
    return elapsed


def paired(servers: dict[str, tuple[int, str]], pairs: int, size: int, steps: int, threads: int) -> dict[str, list[float]]:
    """The latency each server adds to one client's image, call by call: a bare call in this process,
    then the same image asked of each server in turn, ``pairs`` times (every call on a quiet machine,
    all of them in the same stretch of it).  Each server's list: its call less the bare call before it;
    ``"bare"``: the bare calls."""
    import torch

    from pixelmill.models.base import StepControl, TextToImageRequest

    loop = asyncio.new_event_loop()
    https = {name: Http(port, {"x-key": key}) for name, (port, key) in servers.items()}
    try:
        added: dict[str, list[float]] = {"bare": [], **{name: [] for name in servers}}
        for i in range(pairs):
            seed = 2_000_000 + i
            torch.set_num_threads(threads)
            t = time.perf_counter()
            _BACKEND.generate(TextToImageRequest(prompt=f"a red circle on blue {seed}", width=size, height=size, steps=steps, seed=seed), StepControl())
            bare = time.perf_counter() - t
            added["bare"].append(bare)
            for name, http in https.items():
                added[name].append(loop.run_until_complete(one_call(http, seed, size, steps)) - bare)
        return added
    finally:
        for http in https.values():
            http.close()
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--pairs", type=int, default=40, help="bare call / API call pairs for the added latency")
    ap.add_argument("--worker-threads", type=int, default=2, help="the embedded server's generation threads (its default: 2)")
    a = ap.parse_args()
    clients = [int(c) for c in a.clients.split(",")]

    import os

    cores = len(os.sched_getaffinity(0))
    # the anchor is the direct loop at its best: torch on every core, or on one (which wins when
    # other work takes a core); measured before and after the API points, averaged
    runs: dict[int, list[tuple[float, list[float]]]] = {t: [direct(a.images, a.size, a.steps, t)] for t in sorted({cores, 1})}
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[int, str]] = {}
        # as shipped (every image goes through the output classifier), and the platform alone
        for name, classifier in (("as shipped", "auto"), ("no classifier", "none")):
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            env = bench_env(tmp, preload_models="true", worker_threads=str(a.worker_threads), moderation_image_classifier=classifier)
            key, port = make_key(env), free_port()
            stack.enter_context(server(env, port, log=tmp / "server.log"))
            asyncio.run(through_api(port, key, 2, 1, a.size, a.steps, 1_000_000))  # warm-up
            servers[name] = (port, key)
        port, key = servers["as shipped"]
        api = {c: asyncio.run(through_api(port, key, a.images, c, a.size, a.steps, 10_000 * (n + 1))) for n, c in enumerate(clients)}
        for t in runs:
            runs[t].append(direct(a.images, a.size, a.steps, t))
        rates = {t: sum(r for r, _ in rs) / len(rs) for t, rs in runs.items()}
        best = max(rates, key=rates.get)
        added = paired(servers, a.pairs, a.size, a.steps, best) if a.pairs > 0 else {}
    direct_rate = rates[best]

    print(f"\npixelmill-tiny {a.size}x{a.size}, {a.steps} steps, {a.images} images per point, worker_threads={a.worker_threads}")
    print("direct loop, mean of a run before and after the API points: "
          + ", ".join(f"{t} torch thread{'s' if t > 1 else ''} {r:.2f} img/s" for t, r in rates.items()) + f" (anchor: {best})")
    print(f"{'clients':>8} {'API img/s':>10} {'direct img/s':>13} {'ratio':>7}")
    for c in clients:
        print(f"{c:>8} {api[c][0]:10.2f} {direct_rate:13.2f} {api[c][0] / direct_rate:6.2f}x")
    if added:
        bare = added.pop("bare")
        print(f"\none client, Prefer: wait submit->answer less the bare call just before it ({a.pairs} pairs on {best} torch "
              f"thread{'s' if best > 1 else ''}; bare call p50 {p50(bare) * 1000:.0f} ms, p99 {percentile(bare, 0.99) * 1000:.0f} ms), "
              "target <= 5 ms p50, <= 20 ms p99:")
        for name, diffs in added.items():
            print(f"  {name:>14}: added {p50(diffs) * 1000:+.1f} ms p50, {percentile(diffs, 0.99) * 1000:+.1f} ms p99")


if __name__ == "__main__":
    main()
