"""Load bar: N submissions from C concurrent clients over real HTTP, embedded and scale-out side by side.

Columns:

* **embedded**: one ``pixelmill serve`` (SQLite, two in-process worker threads);
* **scale-out**: one ``pixelmill serve`` API node with ``PIXELMILL_QUEUE=celery`` and two
  ``pixelmill worker`` processes, on a PostgreSQL database created for the run (and dropped)
  and a Redis database of their own (15, or 7..5 when taken).

Every job is a BFL ``POST /v1/flux-dev`` served by the shipped pixelmill-tiny at 256x256 and one
step (a real model, small enough that the figures are mostly the server's: HTTP, accounts,
database, queue), then ``GET /v1/get_result`` every 0.5 s until it is finished.

Prints, per column: lost jobs (accepted but never finished: the database is watched after the
clients stop until every job finished or none finished for a minute), 5xx answers, double
charges (an execution with more than one hold or settle entry in the credit ledger), executions
charged exactly once, node runs completed twice (``node.completed`` events), whether every
balance reconciles with the ledger, submit and poll latency (p50/p99), and the slowest
``/healthz`` seen while the load ran (probed every 50 ms from a process of its own; target < 100 ms).

The scale-out workers run at the API node's priority unless ``--worker-nice`` says otherwise: in
production each is a machine of its own (one per GPU), and ``--worker-nice 10`` shows what the API
node does when its cores are not also generating images.

The client processes run at nice 10 (``--client-nice``; 0 for the server's own priority): in
production they are other machines, and on a small machine at equal priority they take the CPU
time the server needs, so that latency would be the load generator's, not the server's.

Needs PostgreSQL (``PIXELMILL_BENCH_PG``, default postgres@127.0.0.1:5432) and Redis
(``PIXELMILL_BENCH_REDIS``, default 127.0.0.1:6379) for the scale-out column.  Takes a few
minutes on a 2-core CPU::

    PYTHONPATH=src python bench/load.py [--n 500] [--clients 50] [--only embedded|scale-out]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Command, audit, bench_env, drain, exit_on_sigterm, make_key, percentile, postgres_database, print_columns, redis_database, running, tiny_catalog  # noqa: E402

JOB = {"width": 256, "height": 256, "steps": 1}
TERMINAL = {"succeeded", "failed", "cancelled"}
FINISHED = {"Ready", "Error", "Request Moderated", "Content Moderated", "Task not found"}


def _transport() -> httpx.HTTPTransport:
    return httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


def client_group(base: str, key: str, counts: list[int], first: int, wait_s: float, poll_every_s: float) -> dict:
    """Clients (one thread each) that submit ``count`` jobs one after the other, then poll them until
    finished (each every ``poll_every_s``, for at most ``wait_s`` seconds)."""
    out = {"statuses": Counter(), "submit_s": [], "poll_s": [], "ids": [], "final": {}}
    lock = threading.Lock()

    def client(count: int, start: int) -> None:
        mine = []
        with httpx.Client(base_url=base, headers={"x-key": key}, transport=_transport(), timeout=120) as c:
            for i in range(count):
                t0 = time.perf_counter()
                r = c.post("/v1/flux-dev", json={"prompt": f"a red circle on a blue background {start + i}", **JOB})
                with lock:
                    out["statuses"][r.status_code] += 1
                    out["submit_s"].append(time.perf_counter() - t0)
                if r.status_code == 200:
                    mine.append(r.json()["id"])
            pending = list(mine)
            deadline = time.monotonic() + wait_s
            while pending and time.monotonic() < deadline:
                for eid in list(pending):
                    t0 = time.perf_counter()
                    r = c.get("/v1/get_result", params={"id": eid})
                    with lock:
                        out["statuses"][r.status_code] += 1
                        out["poll_s"].append(time.perf_counter() - t0)
                    if r.status_code == 200 and r.json()["status"] in FINISHED:
                        pending.remove(eid)
                        with lock:
                            out["final"][eid] = r.json()["status"]
                time.sleep(poll_every_s)
        with lock:
            out["ids"].extend(mine)

    starts = [first + sum(counts[:i]) for i in range(len(counts))]
    threads = [threading.Thread(target=client, args=(k, s)) for k, s in zip(counts, starts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def watch_health(base: str, stop, results) -> None:
    """Probe ``/healthz`` every 50 ms until ``stop`` is set; send back (seconds since start, latency) pairs.

    It runs in a process of its own, as a load balancer's health check would, with its cycle
    collector off: in the bench's own process, a full collection over the clients' gathered
    figures (0.1-0.25 s late in a run) counted as the server's slowness."""
    import gc

    gc.disable()
    seen: list[tuple[float, float]] = []
    t_start = time.perf_counter()
    with httpx.Client(base_url=base, transport=_transport(), timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                c.get("/healthz")
            except httpx.HTTPError:  # no answer: counted with the time it took to fail
                pass
            seen.append((t0 - t_start, time.perf_counter() - t0))
            time.sleep(0.05)
    results.put(seen)


def run_load(base: str, key: str, args) -> dict:
    """The load on one server: the client figures, plus /healthz probed every 50 ms meanwhile."""
    spawn = multiprocessing.get_context("spawn")
    stop, health_results = spawn.Event(), spawn.Queue()
    watcher = spawn.Process(target=watch_health, args=(base, stop, health_results), daemon=True)
    watcher.start()
    n, clients, procs = args.n, args.clients, args.procs
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    groups = [per[i::procs] for i in range(procs)]
    firsts = [sum(sum(g) for g in groups[:i]) for i in range(procs)]
    t0 = time.perf_counter()
    # the clients run in processes of their own: they do not share a GIL with the health probe
    # at a lower CPU priority (``--client-nice``): in production the clients are other machines, here
    # they share the server's two cores, and at equal priority they take what the server needs
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"), initializer=os.nice, initargs=(args.client_nice,)) as pool:
        results = list(pool.map(client_group, [base] * procs, [key] * procs, groups, firsts, [args.wait] * procs, [args.poll_every] * procs))
    wall = time.perf_counter() - t0
    stop.set()
    probes = health_results.get(timeout=60)
    watcher.join(10)
    health = [latency for _, latency in probes]
    slowest = sorted(probes, key=lambda p: p[1], reverse=True)[:3]
    out = {"wall": wall, "statuses": Counter(), "submit_s": [], "poll_s": [], "ids": [], "final": {}, "health": health, "slowest": slowest}
    for r in results:
        out["statuses"].update(r["statuses"])
        out["submit_s"] += r["submit_s"]
        out["poll_s"] += r["poll_s"]
        out["ids"] += r["ids"]
        out["final"].update(r["final"])
    return out


def embedded(tmp: Path, catalog: Path, args) -> dict:
    data = tmp / "embedded"
    env = bench_env(data, models_catalog=str(catalog), worker_threads=2, torch_threads=1)
    key = make_key(env)
    serve = Command.serve("embedded-serve", env, tmp)
    with running(serve):
        res = run_load(serve.base, key, args)
        res["drain"] = drain(f"sqlite:///{data / 'pixelmill.db'}", res["ids"])
    res["audit"] = audit(f"sqlite:///{data / 'pixelmill.db'}", res["ids"])
    return res


def scale_out(tmp: Path, catalog: Path, args) -> dict:
    with postgres_database() as db_url, redis_database() as broker:
        env = bench_env(tmp / "scale-out", models_catalog=str(catalog), database_url=db_url, queue="celery", broker_url=broker,
                        rate_limit_storage=broker, torch_threads=1)
        key = make_key(env)  # migrates the fresh database first, as `pixelmill migrate` would
        api = Command.serve("api", env, tmp)
        workers = [Command.worker(f"worker{i}", env, tmp, "--queues", "model.pixelmill-tiny,default", nice=args.worker_nice)
                   for i in range(args.workers)]
        with running(api, *workers):
            res = run_load(api.base, key, args)
            res["drain"] = drain(db_url, res["ids"])
        res["audit"] = audit(db_url, res["ids"])
    return res


def report(columns: dict[str, dict]) -> None:
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    rows = [
        ("accepted", lambda r: str(len(r["ids"]))),
        ("lost (accepted, never finished)", lambda r: str(len(r["ids"]) - sum(n for s, n in r["audit"]["status"].items() if s in TERMINAL))),
        ("succeeded", lambda r: str(r["audit"]["status"].get("succeeded", 0))),
        ("not Ready within the clients' wait", lambda r: str(sum(1 for e in r["ids"] if r["final"].get(e) != "Ready"))),
        ("5xx answers", lambda r: str(sum(n for s, n in r["statuses"].items() if s >= 500))),
        ("other non-200 answers", lambda r: str(sum(n for s, n in r["statuses"].items() if s != 200 and s < 500))),
        ("double charges", lambda r: str(r["audit"]["double_charged"])),
        ("charged exactly once", lambda r: str(r["audit"]["charged_once"])),
        ("node runs completed twice", lambda r: str(r["audit"]["completed_twice"])),
        ("balances reconcile", lambda r: "yes" if not r["audit"]["unreconciled"] else f"NO ({r['audit']['unreconciled']})"),
        ("submit p50 / p99", lambda r: f"{ms(percentile(r['submit_s'], 0.5))} / {ms(percentile(r['submit_s'], 0.99))}"),
        ("poll p50 / p99", lambda r: f"{ms(percentile(r['poll_s'], 0.5))} / {ms(percentile(r['poll_s'], 0.99))}"),
        ("polls", lambda r: str(len(r["poll_s"]))),
        ("/healthz median / max", lambda r: f"{statistics.median(r['health']) * 1000:.1f} / {max(r['health']) * 1000:.1f} ms"),
        ("/healthz probes", lambda r: str(len(r["health"]))),
        ("3 slowest /healthz: ms@s into the run", lambda r: " ".join(f"{lat * 1000:.0f}@{at:.0f}" for at, lat in r["slowest"])),
        ("node run p50 / p99", lambda r: f"{ms(percentile(r['audit']['node_seconds'], 0.5))} / {ms(percentile(r['audit']['node_seconds'], 0.99))}"),
        ("wall (clients)", lambda r: f"{r['wall']:.1f} s"),
        ("drained after the clients", lambda r: f"{r['drain']:.1f} s"),
        ("completed / s", lambda r: f"{sum(1 for s in r['final'].values() if s == 'Ready') / r['wall']:.1f}"),
    ]
    print_columns(columns, rows, 18)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="worker threads (embedded) and worker processes (scale-out)")
    ap.add_argument("--procs", type=int, default=5, help="client processes the clients are spread over")
    ap.add_argument("--only", choices=["embedded", "scale-out"])
    ap.add_argument("--client-nice", type=int, default=10, help="niceness of the client processes (0: the server's priority)")
    ap.add_argument("--worker-nice", type=int, default=0,
                    help="niceness of the scale-out workers (10: as if on machines of their own, like the clients; 0: sharing the API node's cores)")
    ap.add_argument("--poll-every", type=float, default=0.5, help="seconds between a client's rounds of polls")
    ap.add_argument("--wait", type=float, default=300.0, help="seconds a client polls its jobs after its last submit before counting the rest lost")
    args = ap.parse_args()
    exit_on_sigterm()

    tmp = Path(tempfile.mkdtemp(prefix="pixelmill-load-"))
    catalog = tiny_catalog(tmp / "models.toml")
    columns = {}
    if args.only != "scale-out":
        columns["embedded"] = embedded(tmp, catalog, args)
    if args.only != "embedded":
        columns["scale-out"] = scale_out(tmp, catalog, args)
    print(f"load: {args.n} submissions (BFL flux-dev, pixelmill-tiny 256x256, 1 step) from {args.clients} clients in "
          f"{args.procs} processes at nice {args.client_nice}; embedded: `pixelmill serve`, SQLite, {args.workers} worker threads; "
          f"scale-out: API node + {args.workers} `pixelmill worker` at nice {args.worker_nice}, PostgreSQL + Redis (logs in {tmp})")
    report(columns)


if __name__ == "__main__":
    main()
