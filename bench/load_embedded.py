"""Load bar on the embedded server: N submissions from C concurrent clients over real HTTP.

Prints: lost jobs (submitted but never Ready), 5xx answers, double charges (an
execution with other than one hold and one settle entry, or a stored balance
that does not reconcile with the ledger), submit and poll latency (p50/p99),
and the slowest /healthz seen while the load ran (polled every 50 ms).

The model is a stand-in that returns a small image at once, so the figures are
the server's (HTTP, accounts, database, queue), not a model's.

    PYTHONPATH=src python bench/load_embedded.py [--n 500] [--clients 50] [--postgres URL]
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa
import uvicorn
from PIL import Image

from pixelmill.accounts import keys, ledger
from pixelmill.api.app import create_app
from pixelmill.config import Settings
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.registry import ModelRegistry
from pixelmill.runtime import Runtime
from pixelmill.store.tables import credit_ledger

CATALOG = """
[[models]]
name = "instant"
path = "/nonexistent"
device = "cpu"
price_per_megapixel = 1.0
default_steps = 1
bfl_endpoints = ["flux-dev"]
"""


class Instant:
    def generate(self, request, control):
        control.report(1.0)
        return [Image.fromarray(np.full((request.height, request.width, 3), 128, np.uint8))] * request.num_images


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def _transport() -> httpx.HTTPTransport:
    return httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


def client_group(base: str, key: str, counts: list[int]) -> dict:
    """Clients (one thread each) that submit ``count`` jobs then poll them until Ready."""
    out = {"statuses": Counter(), "submit_s": [], "poll_s": [], "ids": [], "ready": []}
    lock = threading.Lock()

    def client(count: int) -> None:
        mine = []
        with httpx.Client(base_url=base, headers={"x-key": key}, transport=_transport(), timeout=120) as c:
            for _ in range(count):
                t0 = time.perf_counter()
                r = c.post("/v1/flux-dev", json={"prompt": "load", "width": 256, "height": 256})
                with lock:
                    out["statuses"][r.status_code] += 1
                    out["submit_s"].append(time.perf_counter() - t0)
                if r.status_code == 200:
                    mine.append(r.json()["id"])
            pending = list(mine)
            deadline = time.monotonic() + 300
            while pending and time.monotonic() < deadline:
                for eid in list(pending):
                    t0 = time.perf_counter()
                    r = c.get("/v1/get_result", params={"id": eid})
                    with lock:
                        out["statuses"][r.status_code] += 1
                        out["poll_s"].append(time.perf_counter() - t0)
                    if r.status_code == 200 and r.json()["status"] == "Ready":
                        pending.remove(eid)
                        with lock:
                            out["ready"].append(eid)
                time.sleep(0.2)
        with lock:
            out["ids"].extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="in-process worker threads")
    ap.add_argument("--procs", type=int, default=5, help="client processes the clients are spread over")
    ap.add_argument("--postgres", help="a PostgreSQL URL instead of the embedded SQLite file")
    args = ap.parse_args()

    data = Path(tempfile.mkdtemp(prefix="pixelmill-load-"))
    catalog = ModelCatalog.from_toml(CATALOG)
    models = ModelRegistry(catalog)
    models.register("instant", Instant())
    settings = Settings(data_dir=data, database_url=args.postgres, secret_key="bench", worker_threads=args.workers,
                        plans={"free": {"max_active_tasks": 10_000, "requests_per_minute": 1_000_000, "executions_per_minute": 1_000_000, "executions_per_day": 1_000_000}})
    rt = Runtime(settings, catalog=catalog, models=models)
    rt.start()
    with rt.db.transaction() as conn:
        aid = keys.create_account(conn, "load", "free")
        ledger.grant(conn, aid, 1_000_000, "bench")
        key = keys.create_key(conn, aid).key

    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(rt, manage_runtime=False), lifespan="off", log_level="error", backlog=1024))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"

    stop = threading.Event()
    health: list[float] = []

    def watch_health():
        with httpx.Client(base_url=base, transport=_transport(), timeout=30) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                c.get("/healthz")
                health.append(time.perf_counter() - t0)
                time.sleep(0.05)

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    per = [args.n // args.clients + (1 if i < args.n % args.clients else 0) for i in range(args.clients)]
    groups = [per[i :: args.procs] for i in range(args.procs)]
    t0 = time.perf_counter()
    # the clients run in their own processes: they do not compete with the server for its GIL
    with ProcessPoolExecutor(args.procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(client_group, [base] * len(groups), [key] * len(groups), groups))
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    statuses: Counter = Counter()
    submit_s, poll_s, ids, ready = [], [], [], set()
    for r in results:
        statuses.update(r["statuses"])
        submit_s += r["submit_s"]
        poll_s += r["poll_s"]
        ids += r["ids"]
        ready |= set(r["ready"])

    with rt.db.engine.connect() as conn:
        per_exec = Counter()
        for eid, kind in conn.execute(sa.select(credit_ledger.c.execution_id, credit_ledger.c.kind).where(credit_ledger.c.execution_id.is_not(None))):
            per_exec[(eid, "hold" if kind == "hold" else "settle")] += 1
        double = sum(1 for eid in ids if per_exec[(eid, "hold")] > 1 or per_exec[(eid, "settle")] > 1)
        unsettled = sum(1 for eid in ids if per_exec[(eid, "settle")] == 0)
        unreconciled = ledger.reconcile(conn)
    server.should_exit = True
    rt.stop()

    five = sum(n for s, n in statuses.items() if s >= 500)
    print(f"load_embedded: {args.n} submissions from {args.clients} clients in {args.procs} processes, {args.workers} worker threads, "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}, {wall:.1f} s wall")
    print(f"  accepted {len(ids)}, lost {len(ids) - len(ready)}, 5xx {five}, statuses {dict(statuses)}")
    print(f"  double charges {double}, unsettled (still holding) {unsettled}, balance reconciles: {not unreconciled}")
    print(f"  submit p50 {pct(submit_s, 50) * 1000:.0f} ms, p99 {pct(submit_s, 99) * 1000:.0f} ms; "
          f"poll p50 {pct(poll_s, 50) * 1000:.0f} ms, p99 {pct(poll_s, 99) * 1000:.0f} ms ({len(poll_s)} polls)")
    print(f"  /healthz during the run: {len(health)} probes, median {statistics.median(health) * 1000:.1f} ms, "
          f"max {max(health) * 1000:.1f} ms (target <= 100 ms)")
    print(f"  throughput {len(ready) / wall:.1f} completed/s")


if __name__ == "__main__":
    main()
