"""Scale-out test helpers: an API-side runtime plus `pixelmill worker` subprocesses on a shared DB, data folder and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from pixelmill.config import Settings
from pixelmill.runtime import Runtime
from pixelmill.store.tables import node_runs
from tests.conftest import create_key, wait_for
from tests.helpers.tiny_pipelines import cached_tiny_flux

PIXELMILL = [sys.executable, "-m", "pixelmill.cli"]


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
            PIXELMILL + ["worker", "--queues", "model.tiny-flux,default", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append((proc, log))
        return proc

    def consuming(self, proc: subprocess.Popen) -> bool:
        """Whether worker ``proc`` consumes its queues yet (Celery logs "<name> ready."): from then on
        it answers broadcasts; it advertises itself to the API nodes a little before."""
        for worker, log in self.workers:
            if worker is proc:
                log.seek(0)
                return b" ready." in log.read()
        return False

    def logs_of(self, proc: subprocess.Popen) -> str:
        """Everything worker ``proc`` has written so far."""
        for worker, log in self.workers:
            if worker is proc:
                log.seek(0)
                return log.read().decode(errors="replace")
        raise KeyError(proc.pid)

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


def make_catalog(tmp_path: Path, path: str | None = None) -> Path:
    """A catalog with one model, ``tiny-flux`` (a tiny FLUX built on first use unless ``path`` is given)."""
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        f"""
[[models]]
name = "tiny-flux"
path = "{path or cached_tiny_flux()}"
device = "cpu"
default_steps = 2
price_per_megapixel = 1.5
supports_image_input = true
"""
    )
    return catalog


def scale_out_session(tmp_path: Path, db_url: str, broker_url: str):
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


def tiny_flux_node(prompt: str, seed: int, size: int = 64, steps: int = 2, **extra) -> dict:
    return {"type": "text_to_image", "params": {"model": "tiny-flux", "prompt": prompt, "width": size, "height": size, "seed": seed, "steps": steps}, **extra}
