"""Fair scheduling vs first-in-first-out: tenant A floods the queue, tenant B submits one job.

Tenant A submits ``--flood`` jobs (200) at once; once A's first job runs, tenant
B submits one.  With ``scheduler = "fifo"`` B waits behind all of A's jobs; with
the fair scheduler B should wait at most for the job that is running.  Both
modes run the same embedded server (SQLite, one worker thread) on a model that
spends ``--job-ms`` per job the way a GPU does (sleeping, so the scheduler's own
database work is what shows on the CPU), and the script prints B's wait (in
seconds and in jobs started before it), A's waits, and total throughput, with
the fair/FIFO throughput ratio (target: fairness costs at most 3 %).

    python bench/fairness.py [--flood 200] [--job-ms 100] [--steps 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from PIL import Image

from pixelmill.accounts import keys, ledger
from pixelmill.config import Settings
from pixelmill.engine.service import Submission
from pixelmill.models.base import StepControl, TextToImageRequest
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.registry import ModelRegistry
from pixelmill.runtime import Runtime
from pixelmill.store.tables import executions, node_runs

CATALOG = """
[[models]]
name = "sim"
path = "/nonexistent"
price_per_megapixel = 0.0
default_steps = 4
"""
PLANS = {"bench": {"max_active_tasks": 100_000, "executions_per_minute": None, "executions_per_day": None, "requests_per_minute": None}}


class GpuLikeBackend:
    """Spends ``job_s`` per generation in ``steps`` steps without using the CPU (like a GPU would)."""

    def __init__(self, job_s: float, steps: int):
        self.step_s = job_s / steps
        self.steps = steps

    def generate(self, request: TextToImageRequest, control: StepControl) -> list[Image.Image]:
        for i in range(self.steps):
            control.check()
            time.sleep(self.step_s)
            control.report((i + 1) / self.steps)
        return [Image.new("RGB", (request.width, request.height), (i * 40 % 255, 0, 0)) for i in range(request.num_images)]


def principal(rt: Runtime, name: str):
    with rt.db.transaction() as conn:
        aid = keys.create_account(conn, name, "bench")
        ledger.grant(conn, aid, 1_000_000, f"bench:{name}")
        key = keys.create_key(conn, aid).key
    with rt.db.engine.connect() as conn:
        return keys.authenticate(conn, key)


def job(who, i: int) -> Submission:
    graph = {"nodes": {"gen": {"type": "text_to_image", "params": {"model": "sim", "prompt": f"job {i}", "width": 64, "height": 64, "seed": i}}}}
    return Submission(principal=who, graph=graph, dialect="workflow", label="bench")


def run(mode: str, flood: int, job_s: float, steps: int) -> dict:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        catalog = ModelCatalog.from_toml(CATALOG)
        models = ModelRegistry(catalog)
        models.register("sim", GpuLikeBackend(job_s, steps))
        settings = Settings(
            data_dir=Path(tmp), secret_key="bench", scheduler=mode, plans=PLANS, default_plan="bench",
            webhook_dispatcher=False, worker_threads=1,
        )
        rt = Runtime(settings, catalog=catalog, models=models)
        pick_s: list[float] = []
        if mode == "fair":  # time the scheduler's own work: what fairness costs per job
            pick = rt.scheduler.pick

            def timed_pick(queue):
                t0 = time.perf_counter()
                try:
                    return pick(queue)
                finally:
                    pick_s.append(time.perf_counter() - t0)

            rt.scheduler.pick = timed_pick
        try:
            a, b = principal(rt, "tenant-a"), principal(rt, "tenant-b")
            flood_ids = [rt.executions.submit(job(a, i)).id for i in range(flood)]
            started = time.time()
            rt.start()
            while _started(rt) < 1:  # A's first job runs
                time.sleep(0.005)
            lone = rt.executions.submit(job(b, 10**6)).id
            submitted = time.time()
            position = rt.executions.get(None, lone).queue_position
            done = threading.Event()
            while not done.is_set():
                if _finished(rt) >= flood + 1:
                    done.set()
                else:
                    time.sleep(0.05)
            with rt.db.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(node_runs.c.execution_id, node_runs.c.started_at, node_runs.c.finished_at, executions.c.created_at)
                    .join(executions, executions.c.id == node_runs.c.execution_id)
                    .order_by(node_runs.c.started_at)
                ).all()
        finally:
            rt.stop()
    by_id = {r.execution_id: r for r in rows}
    b_row = by_id[lone]
    order = [r.execution_id for r in rows]
    # what B waited for: the job running when it was submitted, plus every job that started after it was
    running_at_submit = sum(1 for r in rows if r.started_at <= submitted < (r.finished_at or 0) and r.execution_id != lone)
    started_after = sum(1 for r in rows if submitted < r.started_at < b_row.started_at)
    jobs_before_b = running_at_submit + started_after
    a_waits = [by_id[e].started_at - by_id[e].created_at for e in flood_ids]
    first, last = min(r.started_at for r in rows), max(r.finished_at for r in rows)
    return {
        "mode": mode,
        "b_wait_s": b_row.started_at - b_row.created_at,
        "b_jobs_ahead": jobs_before_b,
        "b_overtaken": started_after,
        "b_position_at_submit": position,
        "b_start_index": order.index(lone),
        "a_wait_p50_s": statistics.median(a_waits),
        "a_wait_max_s": max(a_waits),
        "throughput": len(rows) / (last - first),
        "pick_ms": 1000 * statistics.mean(pick_s) if pick_s else 0.0,
        "elapsed_s": last - started,
    }


def _started(rt: Runtime) -> int:
    with rt.db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(node_runs).where(node_runs.c.started_at.is_not(None))).scalar_one()


def _finished(rt: Runtime) -> int:
    with rt.db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(node_runs).where(node_runs.c.finished_at.is_not(None))).scalar_one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--job-ms", type=float, default=100.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="alternate fifo/fair this many times; the best round of each counts")
    args = parser.parse_args()
    rounds = [[run(mode, args.flood, args.job_ms / 1000, args.steps) for mode in ("fifo", "fair")] for _ in range(args.rounds)]
    results = [max((r[i] for r in rounds), key=lambda x: x["throughput"]) for i in range(2)]
    print(f"tenant A floods {args.flood} jobs, tenant B submits 1 while A's first runs; {args.job_ms:.0f} ms per job, 1 worker")
    print(f"{'scheduler':<10}{'B wait s':>10}{'B jobs ahead':>14}{'B position':>12}{'A wait p50 s':>14}{'A wait max s':>14}{'jobs/s':>9}")
    for r in results:
        print(
            f"{r['mode']:<10}{r['b_wait_s']:>10.2f}{r['b_jobs_ahead']:>14d}{r['b_position_at_submit']!s:>12}"
            f"{r['a_wait_p50_s']:>14.2f}{r['a_wait_max_s']:>14.2f}{r['throughput']:>9.2f}"
        )
    fifo, fair = results
    cost = 1 - fair["throughput"] / fifo["throughput"]
    print(f"fair/fifo throughput (best of {args.rounds} rounds each): {fair['throughput'] / fifo['throughput']:.3f} "
          f"(fairness costs {cost * 100:.1f} %, target <= 3 %)")
    print(f"the fair pick takes {fair['pick_ms']:.1f} ms per job: {fair['pick_ms'] / args.job_ms * 100:.1f} % of a {args.job_ms:.0f} ms job")
    print(
        f"B waited for {fair['b_jobs_ahead']} job(s) with the fair scheduler ({fair['b_overtaken']} started after it; target: "
        f"only the running one) vs {fifo['b_jobs_ahead']} with FIFO"
    )


if __name__ == "__main__":
    main()
