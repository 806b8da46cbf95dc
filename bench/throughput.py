"""Images/s through the API against a direct sequential pipeline loop, and the latency the API adds.

Side by side in one run, with the shipped pixelmill-tiny model (no batching):

* **direct**: the model's backend called in a plain loop in this process
  (``--images`` images, one after the other), and the p50/p99 of one bare call;
* **API**: an embedded server (uvicorn subprocess, SQLite, in-process worker,
  models preloaded) receiving the same number of images from 1, 4 and 16
  clients, each ``POST /v1/flux-dev`` with ``Prefer: wait`` (the answer comes
  when the image is done).  images/s and the ratio API/direct are printed
  (target ≥ 0.97×), and for one client the submit→answer latency minus the
  bare call (target ≤ 5 ms p50, ≤ 20 ms p99); the API as shipped checks every
  output with the image classifier (output moderation), so the one-client point
  is also run without it, which is the platform alone.

    python bench/throughput.py [--images 16] [--size 256] [--steps 16] [--clients 1,4,16] [--worker-threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--worker-threads", type=int, default=2, help="the embedded server's generation threads (its default: 2)")
    a = ap.parse_args()
    clients = [int(c) for c in a.clients.split(",")]

    import os

    cores = len(os.sched_getaffinity(0))
    # the anchor is the direct loop at its best: torch on every core, or on one (which wins when
    # other work takes a core); measured before and after the API points, averaged
    runs: dict[int, list[tuple[float, list[float]]]] = {t: [direct(a.images, a.size, a.steps, t)] for t in sorted({cores, 1})}
    def serve(classifier: str, points: list[int]) -> dict[int, tuple[float, list[float]]]:
        with tempfile.TemporaryDirectory() as tmp:
            env = bench_env(Path(tmp), preload_models="true", worker_threads=str(a.worker_threads), moderation_image_classifier=classifier)
            key = make_key(env)
            port = free_port()
            with server(env, port, log=Path(tmp) / "server.log"):
                asyncio.run(through_api(port, key, 2, 1, a.size, a.steps, 1_000_000))  # warm-up
                return {c: asyncio.run(through_api(port, key, a.images, c, a.size, a.steps, 10_000 * (n + 1))) for n, c in enumerate(points)}

    api = serve("auto", clients)  # as shipped: every image goes through the output classifier
    plain = serve("none", [1]) if 1 in clients else {}  # the platform alone: no output classifier

    for t in runs:
        runs[t].append(direct(a.images, a.size, a.steps, t))
    rates = {t: sum(r for r, _ in rs) / len(rs) for t, rs in runs.items()}
    best = max(rates, key=rates.get)
    direct_rate = rates[best]
    calls = [c for _, cs in runs[best] for c in cs]

    print(f"\npixelmill-tiny {a.size}x{a.size}, {a.steps} steps, {a.images} images per point, worker_threads={a.worker_threads}")
    print("direct loop, mean of a run before and after the API points: "
          + ", ".join(f"{t} torch thread{'s' if t > 1 else ''} {r:.2f} img/s" for t, r in rates.items()) + f" (anchor: {best})")
    print(f"{'clients':>8} {'API img/s':>10} {'direct img/s':>13} {'ratio':>7}")
    for c in clients:
        print(f"{c:>8} {api[c][0]:10.2f} {direct_rate:13.2f} {api[c][0] / direct_rate:6.2f}x")
    if 1 in api:
        bare50, bare99 = p50(calls) * 1000, percentile(calls, 0.99) * 1000
        lat = api[1][1]
        print(f"\none client, Prefer: wait submit->answer: p50 {p50(lat) * 1000:.0f} ms, p99 {percentile(lat, 0.99) * 1000:.0f} ms; "
              f"bare call p50 {bare50:.0f} ms, p99 {bare99:.0f} ms")
        print(f"added by the API: {p50(lat) * 1000 - bare50:+.1f} ms p50, {percentile(lat, 0.99) * 1000 - bare99:+.1f} ms p99 "
              f"(target <= 5 ms p50, <= 20 ms p99)")
        if plain:
            lat = plain[1][1]
            print(f"without the output image classifier (PIXELMILL_MODERATION_IMAGE_CLASSIFIER=none): {plain[1][0]:.2f} img/s "
                  f"({plain[1][0] / direct_rate:.2f}x), added {p50(lat) * 1000 - bare50:+.1f} ms p50, "
                  f"{percentile(lat, 0.99) * 1000 - bare99:+.1f} ms p99")


if __name__ == "__main__":
    main()
