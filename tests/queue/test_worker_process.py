"""Scale-out for real: an API-side runtime publishes, `pixelmill worker` processes run a tiny FLUX.

The API side and the workers share one database, one data folder and one
Redis; nothing else connects them.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from pixelmill.config import Settings
from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.service import Submission
from pixelmill.runtime import Runtime
from pixelmill.store.tables import credit_ledger, files, node_runs
from tests.conftest import _truncate_pg, create_key, wait_for
from tests.helpers.tiny_pipelines import cached_tiny_flux

PIXELMILL = [sys.executable, "-m", "pixelmill.cli"]


@pytest.fixture(params=["postgres", "sqlite"])
def shared_db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url = request.getfixturevalue("pg_database")
    _truncate_pg(url)
    return url


@dataclass
class ScaleOut:
    """An API-side runtime (Celery queue, no models loaded) and the worker processes started for it."""

    api: Runtime
    env: dict
    tmp: Path
    workers: list = field(default_factory=list)

    def start_worker(self, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"worker{len(self.workers)}.log", "w+b")
        proc = subprocess.Popen(
            PIXELMILL + ["worker", "--queues", "model.tiny-flux,default", "--hostname", f"w{len(self.workers)}-{os.getpid()}@localhost", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append((proc, log))
        return proc

    def logs(self) -> str:
        out = []
        for proc, log in self.workers:
            log.seek(0)
            out.append(f"--- worker pid {proc.pid} (exit {proc.poll()}):\n" + log.read().decode(errors="replace")[-3000:])
        return "\n".join(out)

    def principal(self):
        from pixelmill.accounts import keys

        key = create_key(self.api, account="scale")
        with self.api.db.engine.connect() as conn:
            return keys.authenticate(conn, key)

    def wait_terminal(self, principal, execution_id: str, timeout: float = 180.0):
        def done():
            v = self.api.executions.get(principal.account_id, execution_id)
            return v if v.status.is_terminal() else None

        try:
            return wait_for(done, timeout=timeout, interval=0.2)
        except AssertionError:
            raise AssertionError(f"execution not finished in {timeout} s\n{self.logs()}") from None

    def node_rows(self, execution_id: str) -> list:
        with self.api.db.engine.connect() as conn:
            return conn.execute(sa.select(node_runs).where(node_runs.c.execution_id == execution_id)).all()


def make_catalog(tmp_path: Path) -> Path:
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        f"""
[[models]]
name = "tiny-flux"
path = "{cached_tiny_flux()}"
device = "cpu"
default_steps = 2
price_per_megapixel = 1.5
supports_image_input = true
"""
    )
    return catalog


def _scale_out(tmp_path: Path, db_url: str, broker_url: str):
    catalog = make_catalog(tmp_path)
    data_dir = tmp_path / "data"
    api = Runtime(Settings(data_dir=data_dir, database_url=db_url, models_catalog=catalog, queue="celery", broker_url=broker_url, secret_key="s"))
    api.start()
    env = {
        **os.environ,
        "PIXELMILL_DATA_DIR": str(data_dir),
        "PIXELMILL_DATABASE_URL": db_url,
        "PIXELMILL_MODELS_CATALOG": str(catalog),
        "PIXELMILL_QUEUE": "celery",
        "PIXELMILL_BROKER_URL": broker_url,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    so = ScaleOut(api, env, tmp_path)
    try:
        yield so
    finally:
        for proc, log in so.workers:
            if proc.poll() is None:
                proc.terminate()  # warm shutdown: finishes the task at hand, then exits
        for proc, log in so.workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        api.stop()


@pytest.fixture
def scale_out(tmp_path, shared_db, broker_url):
    yield from _scale_out(tmp_path, shared_db, broker_url)


@pytest.fixture
def scale_out_pg(tmp_path, pg_database, broker_url):
    _truncate_pg(pg_database)
    yield from _scale_out(tmp_path, pg_database, broker_url)


def tiny_flux_node(prompt: str, seed: int, size: int = 64, steps: int = 2, **extra) -> dict:
    return {"type": "text_to_image", "params": {"model": "tiny-flux", "prompt": prompt, "width": size, "height": size, "seed": seed, "steps": steps}, **extra}


def test_a_worker_process_runs_what_the_api_publishes(scale_out):
    worker = scale_out.start_worker("--concurrency", "1")
    principal = scale_out.principal()
    graph = {"nodes": {"gen": tiny_flux_node("a red fox", 3), "again": tiny_flux_node("a blue fox", 4, inputs={"image": ["gen", "images"]})}}
    started = time.monotonic()
    view = scale_out.api.executions.submit(Submission(principal=principal, graph=graph, dialect="workflow", label="scale-out"))
    view = scale_out.wait_terminal(principal, view.id)
    print(f"\nscale-out: two-node execution finished {time.monotonic() - started:.1f} s after submit (worker start included)")
    assert view.status == ExecutionStatus.SUCCEEDED, (view.error_code, view.error_message, scale_out.logs())
    rows = scale_out.node_rows(view.id)
    assert {r.worker.rsplit(":", 1)[1] for r in rows} == {str(worker.pid)}  # both nodes ran in the worker process
    [result] = view.result_files()
    with scale_out.api.db.engine.connect() as conn:
        key = conn.execute(sa.select(files.c.storage_key).where(files.c.id == result.id)).scalar_one()
    assert Image.open(io.BytesIO(scale_out.api.storage.get(key))).size == (64, 64)  # written by the worker, read by the API side
    assert scale_out.api.models.loaded() == []  # the API side never loaded a model


def test_a_killed_workers_node_run_is_finished_by_another_worker(scale_out_pg):
    """At least once: SIGKILL mid-run leaves the message unacknowledged; the next worker runs it, billing stays single."""
    so = scale_out_pg
    first = so.start_worker()
    principal = so.principal()
    view = so.api.executions.submit(
        Submission(principal=principal, graph={"nodes": {"gen": tiny_flux_node("a cat", 5, size=128, steps=40)}}, dialect="workflow", label="crash")
    )

    def running_in_first():
        if first.poll() is not None:
            raise AssertionError(f"first worker exited early\n{so.logs()}")
        [row] = so.node_rows(view.id)
        return row.status == NodeStatus.RUNNING and row.progress > 0 and row.worker.endswith(f":{first.pid}")

    wait_for(running_in_first, timeout=120, interval=0.1)
    first.send_signal(signal.SIGKILL)  # no warm shutdown, no acknowledgement
    first.wait(10)
    started = time.monotonic()
    second = so.start_worker("--visibility-timeout", "3")
    view = so.wait_terminal(principal, view.id)
    print(f"\nscale-out: killed worker's node run finished by another worker {time.monotonic() - started:.1f} s after the kill")
    assert view.status == ExecutionStatus.SUCCEEDED, (view.error_code, view.error_message, so.logs())
    [row] = so.node_rows(view.id)
    assert row.worker.endswith(f":{second.pid}")
    assert row.attempts == 2
    with so.api.db.engine.connect() as conn:
        settles = conn.execute(
            sa.select(credit_ledger.c.kind).where(credit_ledger.c.execution_id == view.id, credit_ledger.c.kind.in_(["capture", "release"]))
        ).scalars().all()
    assert settles == ["capture"]
    assert len(view.result_files()) == 1
