"""Capacity of one embedded server on a no-model workflow, side by side with its anchors.

The server runs in a subprocess (uvicorn, SQLite, in-process worker) as
``pixelmill serve`` would.  Printed in one run:

* **accepted/s**: ``--jobs`` executions of a no-model workflow (``load_image`` of
  an 8x8 PNG, then ``resize``) submitted by ``--clients`` concurrent clients;
  against ComfyUI's ``/prompt`` figure on the same 2-core machine (311/s, from
  the issue; this bench fetches no ComfyUI) and against the floor, a bare
  FastAPI endpoint doing one insert in the same kind of database;
* **completed/s** and end-to-end p50 (created → finished, read from the store),
  against ComfyUI's 206/s and 0.58 s;
* the time from an execution's stored finish to its ``Prefer: wait`` answer
  (the notifier's wake-up plus one re-read and the answer);
* **polls/s** of a finished execution over 32 keep-alive connections, on
  ``GET /v1/get_result`` and ``GET /api/v1/executions/{id}``, against ComfyUI's
  ``/history/{id}`` (7,774/s) and the 5,000/s target.

    python bench/capacity.py [--jobs 500] [--clients 16] [--poll-seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from PIL import Image

from _harness import Http, bench_env, free_port, hammer, make_key, p50, percentile, server

COMFY = {"accepted": 311.0, "completed": 206.0, "e2e_p50": 0.58, "polls": 7774.0}
POLL_TARGET = 5000.0


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


WORKFLOW = {
    "name": "no-model",
    "inputs": {"width": {"type": "integer", "default": 16}},
    "nodes": {
        "input": {"type": "load_image", "params": {"data": _png()}},
        "small": {"type": "resize", "params": {"width": {"$input": "width"}, "height": 16}, "inputs": {"image": ["input", "images"]}},
    },
}


async def submit_all(port: int, key: str, path: str, bodies: list[dict], clients: int) -> tuple[float, list[str]]:
    queue = list(enumerate(bodies))
    ids: list[str] = [""] * len(bodies)
    failures: list[int] = []

    async def client() -> None:
        http = Http(port, {"x-key": key})
        try:
            while queue:
                i, body = queue.pop()
                status, raw = await http.request("POST", path, body)
                if status not in (200, 201):
                    failures.append(status)
                    continue
                data = json.loads(raw)
                ids[i] = data.get("executionId") or data.get("id", "")
        finally:
            http.close()

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - start
    if failures:
        print(f"  {len(failures)} submits refused: {sorted(set(failures))}")
    return len(bodies) / elapsed, ids


def completion(db_url: str, ids: list[str], timeout: float = 300.0) -> tuple[float, float]:
    """completed/s (first created → last finished) and the end-to-end p50, once all finished."""
    from pixelmill.store.tables import executions

    engine = sa.create_engine(db_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(executions.c.created_at, executions.c.finished_at, executions.c.status).where(executions.c.id.in_(ids))
                ).all()
            if all(r.finished_at is not None for r in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        engine.dispose()
    done = [r for r in rows if r.finished_at is not None]
    bad = [r for r in done if r.status != "succeeded"]
    if bad or len(done) < len(ids):
        print(f"  {len(ids) - len(done)} unfinished, {len(bad)} not succeeded")
    span = max(r.finished_at for r in done) - min(r.created_at for r in done)
    return len(done) / span, p50([r.finished_at - r.created_at for r in done])


async def wake_latency(port: int, key: str, path: str, jobs: int = 40) -> list[float]:
    """Seconds from an execution's finish (as stored) to its ``Prefer: wait`` answer arriving, one job at a time."""
    http = Http(port, {"x-key": key})
    out = []
    try:
        for i in range(jobs):
            status, raw = await http.request("POST", path, {"inputs": {"width": 100 + i % 100}}, {"Prefer": "wait=30"})
            arrived = time.time()
            body = json.loads(raw)
            if status == 201 and body.get("finishedAt"):
                out.append(arrived - body["finishedAt"])
    finally:
        http.close()
    return out


def run(jobs: int, clients: int, poll_seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        env = bench_env(data)
        key = make_key(env)
        db_url = f"sqlite:///{data / 'pixelmill.db'}"
        port = free_port()
        with server(env, port, log=data / "server.log"):
            http_headers = {"x-key": key}

            async def setup() -> str:
                http = Http(port, http_headers)
                status, raw = await http.request("POST", "/api/v1/workflows", WORKFLOW)
                http.close()
                assert status == 201, raw
                return json.loads(raw)["id"]

            wid = asyncio.run(setup())
            bodies = [{"inputs": {"width": 8 + i % 48}} for i in range(jobs)]
            asyncio.run(submit_all(port, key, f"/api/v1/workflows/{wid}/execute", bodies[:20], 4))  # warm-up
            accepted, ids = asyncio.run(submit_all(port, key, f"/api/v1/workflows/{wid}/execute", bodies, clients))
            completed, e2e = completion(db_url, [i for i in ids if i])
            wake = asyncio.run(wake_latency(port, key, f"/api/v1/workflows/{wid}/execute"))
            finished = next(i for i in ids if i)
            polls_bfl = asyncio.run(hammer(port, http_headers, f"/v1/get_result?id={finished}", 32, poll_seconds))
            polls_wf = asyncio.run(hammer(port, http_headers, f"/api/v1/executions/{finished}", 32, poll_seconds))
        floor_port = free_port()
        with server(env, floor_port, target="floor", log=data / "floor.log"):
            floor, _ = asyncio.run(submit_all(floor_port, key, "/submit", bodies, clients))

    print(f"\nno-model workflow, {jobs} jobs from {clients} clients; polls over 32 connections for {poll_seconds:g} s each")
    print(f"{'':34} {'pixelmill':>10} {'anchor':>10} {'ratio':>7}")
    rows = [
        ("accepted/s vs ComfyUI /prompt", accepted, COMFY["accepted"]),
        ("accepted/s vs bare FastAPI insert", accepted, floor),
        ("completed/s vs ComfyUI", completed, COMFY["completed"]),
        ("end-to-end p50 s vs ComfyUI", e2e, COMFY["e2e_p50"]),
        ("polls/s get_result vs ComfyUI", polls_bfl, COMFY["polls"]),
        ("polls/s executions/{id} vs ComfyUI", polls_wf, COMFY["polls"]),
        ("polls/s get_result vs target", polls_bfl, POLL_TARGET),
        ("polls/s executions/{id} vs target", polls_wf, POLL_TARGET),
    ]
    for name, ours, anchor in rows:
        print(f"{name:34} {ours:10.2f} {anchor:10.2f} {ours / anchor:6.2f}x")
    if wake:
        print(f"\nPrefer: wait, finish -> answer received (notifier wake-up, re-read, render, HTTP): "
              f"p50 {p50(wake) * 1000:.1f} ms, p99 {percentile(wake, 0.99) * 1000:.1f} ms over {len(wake)} jobs "
              f"(the re-check it replaces ran every 100 ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--poll-seconds", type=float, default=4.0)
    a = ap.parse_args()
    run(a.jobs, a.clients, a.poll_seconds)


if __name__ == "__main__":
    main()
