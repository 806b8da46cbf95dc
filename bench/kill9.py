"""kill -9 bench: a process SIGKILLed in the middle of a generation, then recovery, in both modes.

* **scale-out**: an API node (``pixelmill serve``, ``PIXELMILL_QUEUE=celery``) and two
  ``pixelmill worker`` processes on a fresh PostgreSQL database and a Redis database of their own.
  Jobs are submitted; once the first worker is generating one (its node run RUNNING with progress),
  that worker gets SIGKILL and a replacement worker is started.  The node deadline is 20 s and the
  visibility timeout 22 s (the shortest a worker accepts), so the killed run is taken over soon.
  The jobs outlast that timeout: the message handed out again then finds other work waiting,
  which is when a dead worker's run used to be stranded.
* **embedded**: one ``pixelmill serve`` (SQLite); once it is generating, it gets SIGKILL and is
  started again on the same data folder (it re-queues the interrupted run at start).

Every job is a BFL ``POST /v1/flux-dev`` served by the shipped pixelmill-tiny at 256x256 with
enough steps that a generation takes a second or two.  Afterwards the database is watched until
every job finished (or none finished for 90 s), and the bench prints, per mode: jobs finished
after the recovery, executions charged exactly once (one hold, one capture in the credit ledger)
and double charges, node runs with more than one ``node.completed`` event (a run executed twice
to completion), node runs attempted more than once (the killed ones), whether balances reconcile,
and how long the recovery took.

Needs PostgreSQL and Redis for the scale-out mode (see bench/load.py).  Takes a few minutes::

    PYTHONPATH=src python bench/kill9.py [--n 40] [--steps 48] [--only embedded|scale-out]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Command, audit, bench_env, drain, exit_on_sigterm, make_key, postgres_database, print_columns, redis_database, tiny_catalog  # noqa: E402

from pixelmill.domain.status import NodeStatus  # noqa: E402
from pixelmill.store.tables import node_runs  # noqa: E402

NODE_TIMEOUT_S = 20


def submit(base: str, key: str, n: int, steps: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=base, headers={"x-key": key}, timeout=60) as c:
        for i in range(n):
            r = c.post("/v1/flux-dev", json={"prompt": f"a red circle on a blue background {i}", "width": 256, "height": 256, "steps": steps})
            r.raise_for_status()
            ids.append(r.json()["id"])
    return ids


def generating_in(db_url: str, pid: int, timeout: float = 120.0) -> None:
    """Wait until process ``pid`` is in the middle of a generation (a node run RUNNING with progress)."""
    engine = sa.create_engine(db_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(node_runs.c.worker, node_runs.c.progress).where(node_runs.c.status == NodeStatus.RUNNING)).all()
            if any((r.worker or "").endswith(f":{pid}") and 0 < r.progress < 1 for r in rows):
                return
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise RuntimeError(f"process {pid} did not start generating in {timeout:.0f} s")


def scale_out(tmp: Path, catalog: Path, args) -> dict:
    with postgres_database() as db_url, redis_database() as broker:
        env = bench_env(tmp / "scale-out", models_catalog=str(catalog), database_url=db_url, queue="celery", broker_url=broker,
                        rate_limit_storage=broker, torch_threads=1, node_timeout_s=NODE_TIMEOUT_S)
        key = make_key(env)
        vt = ("--visibility-timeout", str(NODE_TIMEOUT_S + 2))
        queues = ("--queues", "model.pixelmill-tiny,default")
        api = Command.serve("api", env, tmp)
        workers = [Command.worker(f"worker{i}", env, tmp, *queues, *vt) for i in range(2)]
        replacement = Command.worker("worker0-replacement", env, tmp, *queues, *vt)
        started = []
        try:
            for c in (api, *workers):
                c.start()
                started.append(c)
            ids = submit(api.base, key, args.n, args.steps)
            generating_in(db_url, workers[0].pid)
            killed_at = time.monotonic()
            workers[0].kill9()
            started.append(replacement)
            replacement.start()
            waited = drain(db_url, ids, stall_s=90)
            recovery = time.monotonic() - killed_at
        finally:
            for c in started:
                c.stop()
        return {"ids": ids, "recovery": recovery, "drain": waited, "audit": audit(db_url, ids), "killed": "a worker (SIGKILL), replacement started"}


def embedded(tmp: Path, catalog: Path, args) -> dict:
    data = tmp / "embedded"
    db_url = f"sqlite:///{data / 'pixelmill.db'}"
    env = bench_env(data, models_catalog=str(catalog), torch_threads=1, node_timeout_s=NODE_TIMEOUT_S)
    key = make_key(env)
    serve = Command.serve("embedded-serve", env, tmp)
    try:
        serve.start()
        ids = submit(serve.base, key, args.n, args.steps)
        generating_in(db_url, serve.pid)
        killed_at = time.monotonic()
        serve.kill9()
        serve.start()
        waited = drain(db_url, ids, stall_s=90)
        recovery = time.monotonic() - killed_at
    finally:
        serve.stop()
    return {"ids": ids, "recovery": recovery, "drain": waited, "audit": audit(db_url, ids), "killed": "`pixelmill serve` (SIGKILL), restarted"}


def report(columns: dict[str, dict]) -> None:
    rows = [
        ("killed", lambda r: r["killed"]),
        ("jobs", lambda r: str(len(r["ids"]))),
        ("finished after recovery", lambda r: str(sum(r["audit"]["status"].get(s, 0) for s in ("succeeded", "failed", "cancelled")))),
        ("succeeded", lambda r: str(r["audit"]["status"].get("succeeded", 0))),
        ("charged exactly once", lambda r: str(r["audit"]["charged_once"])),
        ("double charges", lambda r: str(r["audit"]["double_charged"])),
        ("node runs completed twice", lambda r: str(r["audit"]["completed_twice"])),
        ("node runs never completed", lambda r: str(r["audit"]["never_completed"])),
        ("node runs attempted again", lambda r: str(r["audit"]["rerun"])),
        ("balances reconcile", lambda r: "yes" if not r["audit"]["unreconciled"] else f"NO ({r['audit']['unreconciled']})"),
        ("kill to all finished", lambda r: f"{r['recovery']:.1f} s"),
    ]
    print_columns(columns, rows, 40)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40, help="jobs submitted before the kill (enough to outlast the visibility timeout)")
    ap.add_argument("--steps", type=int, default=48, help="diffusion steps per job (48: a second or two each on a CPU)")
    ap.add_argument("--only", choices=["embedded", "scale-out"])
    args = ap.parse_args()
    exit_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="pixelmill-kill9-"))
    catalog = tiny_catalog(tmp / "models.toml")
    columns = {}
    if args.only != "scale-out":
        columns["embedded"] = embedded(tmp, catalog, args)
    if args.only != "embedded":
        columns["scale-out"] = scale_out(tmp, catalog, args)
    print(f"kill9: {args.n} jobs (BFL flux-dev, pixelmill-tiny 256x256, {args.steps} steps) each; node deadline {NODE_TIMEOUT_S} s "
          f"(logs in {tmp})")
    report(columns)


if __name__ == "__main__":
    main()
