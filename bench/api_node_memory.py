"""Memory of an API node: ``pixelmill[api]`` (no model runtime) against a full install and the embedded server.

Columns, each a real ``pixelmill serve`` process:

* **API node, pixelmill[api]**: ``PIXELMILL_QUEUE=celery`` in an environment holding only what
  ``pip install pixelmill[api]`` installs (tests/helpers/lean_env.py: torch, diffusers,
  transformers, mediapipe, onnxruntime, OpenCV are absent);
* **API node, full install**: the same command with everything installed;
* **embedded server**: ``pixelmill serve`` with its in-process worker and the default model loaded.

Each serves the same traffic once (``--jobs`` BFL submissions of pixelmill-tiny at 256x256, one
step, each polled once), then idles for a second; the bench prints the resident memory (VmRSS)
then and the peak (VmHWM).  The goal for an idle API node is 150 MB or less.  Needs Redis
(``PIXELMILL_BENCH_REDIS``) for the API nodes' broker::

    PYTHONPATH=src python bench/api_node_memory.py [--jobs 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from _harness import Command, bench_env, exit_on_sigterm, make_key, print_columns, redis_database, running, tiny_catalog  # noqa: E402
from tests.helpers import lean_env  # noqa: E402

JOB = {"width": 256, "height": 256, "steps": 1}


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def measure(command: Command, key: str, jobs: int) -> dict:
    with running(command):
        after_start = memory_mb(command.pid)
        with httpx.Client(base_url=command.base, headers={"x-key": key}, timeout=60) as http:
            for i in range(jobs):
                r = http.post("/v1/flux-dev", json={"prompt": f"a red circle {i}", **JOB})
                r.raise_for_status()
                http.get("/v1/get_result", params={"id": r.json()["id"]}).raise_for_status()
        time.sleep(1.0)
        return {"start": after_start, "served": memory_mb(command.pid)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    args = ap.parse_args()
    exit_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="pixelmill-memory-"))
    catalog = tiny_catalog(tmp / "models.toml")
    lean = lean_env.python(lean_env.build(tmp / "api-site-packages"), "import sys; from pixelmill.cli import main; raise SystemExit(main(sys.argv[1:]))")
    columns = {}
    with redis_database() as broker:
        for name, program in (("API node, pixelmill[api]", lean), ("API node, full install", None)):
            env = bench_env(tmp / name.split(",")[1].strip().replace("[", "-").replace("]", ""), models_catalog=str(catalog),
                            queue="celery", broker_url=broker)
            columns[name] = measure(Command.serve(name.replace(" ", "-").replace(",", ""), env, tmp, program), make_key(env), args.jobs)
    env = bench_env(tmp / "embedded", models_catalog=str(catalog))
    columns["embedded server"] = measure(Command.serve("embedded", env, tmp), make_key(env), args.jobs)

    print(f"memory: `pixelmill serve` after start (ready) and after serving {args.jobs} BFL submissions and polls, then 1 s idle "
          f"(goal for an idle API node: <= 150 MB; logs in {tmp})")
    mb = lambda v: f"{v:.0f} MB"  # noqa: E731
    print_columns(columns, [
        ("RSS when ready", lambda r: mb(r["start"]["VmRSS"])),
        ("RSS after serving, idle", lambda r: mb(r["served"]["VmRSS"])),
        ("peak RSS", lambda r: mb(r["served"]["VmHWM"])),
    ], 26)


if __name__ == "__main__":
    main()
