"""Batching on the shipped model: images/s and latency at 16 concurrent clients.

Three ways to make the same images (same prompts, seeds, size and steps):

* ``direct``: a sequential loop of pipeline calls in this process (no server);
* ``unbatched``: the embedded server (SQLite, one worker) with ``max_batch = 1``;
* ``batched``: the same server with ``max_batch = --batch`` (compatible waiting
  requests run as one pipeline call).

Each of ``--clients`` threads submits ``--jobs`` requests one after the other
and waits for each.  Printed: images/s, p50/p99 latency (submit to finished),
and whether every batched image equals its unbatched twin (same seed).

    python bench/batching.py [--clients 16] [--jobs 1] [--size 256] [--steps 4] [--batch 8] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from pixelmill.accounts import keys, ledger
from pixelmill.config import Settings
from pixelmill.engine.service import Submission
from pixelmill.models.base import StepControl, TextToImageRequest
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.diffusers_backend import DiffusersBackend
from pixelmill.models.registry import ModelRegistry
from pixelmill.runtime import Runtime

MODEL = "pixelmill-tiny"
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white", "black"]
SHAPES = ["circle", "square", "triangle", "cross"]
PLANS = {"bench": {"max_active_tasks": 100_000, "executions_per_minute": None, "executions_per_day": None, "requests_per_minute": None}}


def prompt(i: int) -> str:
    return f"a {COLOURS[i % 8]} {SHAPES[i // 8 % 4]} on a {COLOURS[(i + 3) % 8]} background"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def direct(backend: DiffusersBackend, n: int, size: int, steps: int) -> dict:
    images, latencies = [], []
    start = time.perf_counter()
    for i in range(n):
        images.append(backend.generate(TextToImageRequest(prompt=prompt(i), width=size, height=size, steps=steps, seed=i), StepControl())[0])
        latencies.append(time.perf_counter() - start)  # all "submitted" at once, served in turn
    took = time.perf_counter() - start
    return {"images": images, "rate": n / took, "p50": statistics.median(latencies), "p99": percentile(latencies, 0.99)}


def served(backend: DiffusersBackend, spec, clients: int, jobs: int, size: int, steps: int, max_batch: int) -> dict:
    catalog = ModelCatalog(models=[spec.model_copy(update={"max_batch": max_batch})])
    models = ModelRegistry(catalog)
    models.register(MODEL, backend)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        settings = Settings(data_dir=Path(tmp), secret_key="bench", plans=PLANS, default_plan="bench", webhook_dispatcher=False)
        rt = Runtime(settings, catalog=catalog, models=models)
        rt.start()
        try:
            with rt.db.transaction() as conn:
                aid = keys.create_account(conn, "bench", "bench")
                ledger.grant(conn, aid, 10**9, "bench")
                key = keys.create_key(conn, aid).key
            with rt.db.engine.connect() as conn:
                who = keys.authenticate(conn, key)
            latencies: list[float] = []
            results: dict[int, str] = {}
            lock = threading.Lock()

            def client(c: int) -> None:
                for j in range(jobs):
                    i = c * jobs + j
                    graph = {"nodes": {"gen": {"type": "text_to_image", "params": {
                        "model": MODEL, "prompt": prompt(i), "width": size, "height": size, "steps": steps, "seed": i}}}}
                    t0 = time.perf_counter()
                    eid = rt.executions.submit(Submission(principal=who, graph=graph, dialect="workflow", label="bench")).id
                    while not (view := rt.executions.get(who.account_id, eid)).status.is_terminal():
                        time.sleep(0.5)  # polling 16 clients fast would take the CPU from the model
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        results[i] = view.result_files()[0].id if view.result_files() else ""

            start = time.perf_counter()
            threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.perf_counter() - start
            images = []
            import io

            import sqlalchemy as sa
            from PIL import Image

            from pixelmill.store.tables import files

            with rt.db.engine.connect() as conn:
                for i in sorted(results):
                    storage_key = conn.execute(sa.select(files.c.storage_key).where(files.c.id == results[i])).scalar_one()
                    images.append(Image.open(io.BytesIO(rt.storage.get(storage_key))).convert("RGB"))
        finally:
            rt.stop()
    n = clients * jobs
    return {"images": images, "rate": n / took, "p50": statistics.median(latencies), "p99": percentile(latencies, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=1, help="requests per client, one after the other")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = ModelCatalog.load().get(MODEL)
    backend = DiffusersBackend(spec)
    backend.load()
    n = args.clients * args.jobs
    backend.generate(TextToImageRequest(prompt=prompt(0), width=args.size, height=args.size, steps=1, seed=0), StepControl())  # warm
    rows = {
        "server, unbatched": served(backend, spec, args.clients, args.jobs, args.size, args.steps, 1),
        f"server, batch <= {args.batch}": served(backend, spec, args.clients, args.jobs, args.size, args.steps, args.batch),
        "direct loop": direct(backend, n, args.size, args.steps),
    }
    print(f"{MODEL} on {backend.device}, {args.size}x{args.size}, {args.steps} steps, {args.clients} clients x {args.jobs} request(s)")
    print(f"{'':<22}{'images/s':>10}{'p50 s':>9}{'p99 s':>9}")
    for name, r in rows.items():
        print(f"{name:<22}{r['rate']:>10.3f}{r['p50']:>9.2f}{r['p99']:>9.2f}")
    base, batched = rows["server, unbatched"], rows[f"server, batch <= {args.batch}"]
    diff = max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(base["images"], batched["images"]))
    print(f"batched / unbatched images/s: {batched['rate'] / base['rate']:.2f}x; largest pixel difference batched vs unbatched: {diff}")


if __name__ == "__main__":
    main()
