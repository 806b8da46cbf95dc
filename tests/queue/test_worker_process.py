"""Scale-out for real: an API-side runtime publishes, a `pixelmill worker` process runs a tiny FLUX."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from PIL import Image

from pixelmill.config import Settings
from pixelmill.domain.status import ExecutionStatus
from pixelmill.engine.service import Submission
from pixelmill.runtime import Runtime
from pixelmill.store.tables import node_runs
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


@pytest.fixture
def scale_out(tmp_path, shared_db, broker_url):
    """API-side runtime (Celery queue, no models loaded) plus a worker subprocess on the same DB, files and broker."""
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
    data_dir = tmp_path / "data"
    settings = dict(data_dir=data_dir, database_url=shared_db, models_catalog=catalog, queue="celery", broker_url=broker_url, secret_key="s")
    api = Runtime(Settings(**settings))
    api.start()
    env = {
        **os.environ,
        "PIXELMILL_DATA_DIR": str(data_dir),
        "PIXELMILL_DATABASE_URL": shared_db,
        "PIXELMILL_MODELS_CATALOG": str(catalog),
        "PIXELMILL_QUEUE": "celery",
        "PIXELMILL_BROKER_URL": broker_url,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = open(tmp_path / "worker.log", "w+b")
    proc = subprocess.Popen(
        PIXELMILL + ["worker", "--queues", "model.tiny-flux,default", "--concurrency", "1", "--hostname", f"test-{os.getpid()}@localhost"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield api, proc, log
    finally:
        proc.terminate()  # warm shutdown: finishes the task at hand, then exits
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        api.stop()
        log.close()


def worker_output(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


def test_a_worker_process_runs_what_the_api_publishes(scale_out):
    api, proc, log = scale_out
    from pixelmill.accounts import keys

    key = create_key(api, account="scale")
    with api.db.engine.connect() as conn:
        principal = keys.authenticate(conn, key)
    graph = {
        "nodes": {
            "gen": {"type": "text_to_image", "params": {"model": "tiny-flux", "prompt": "a red fox", "width": 64, "height": 64, "seed": 3}},
            "again": {
                "type": "text_to_image",
                "params": {"model": "tiny-flux", "prompt": "a blue fox", "width": 64, "height": 64, "seed": 4},
                "inputs": {"image": ["gen", "images"]},
            },
        }
    }
    view = api.executions.submit(Submission(principal=principal, graph=graph, dialect="workflow", label="scale-out"))

    def done():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{worker_output(log)}")
        v = api.executions.get(principal.account_id, view.id)
        return v if v.status.is_terminal() else None

    started = time.monotonic()
    try:
        view = wait_for(done, timeout=180, interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}\nworker log:\n{worker_output(log)}") from None
    elapsed = time.monotonic() - started
    assert view.status == ExecutionStatus.SUCCEEDED, (view.error_code, view.error_message, worker_output(log))
    [result] = view.result_files()
    with api.db.engine.connect() as conn:
        workers = conn.execute(sa.select(node_runs.c.worker).where(node_runs.c.execution_id == view.id)).scalars().all()
        key_ = conn.execute(sa.text("SELECT storage_key FROM files WHERE id = :i"), {"i": result.id}).scalar_one()
    assert {w.rsplit(":", 1)[1] for w in workers} == {str(proc.pid)}  # both nodes ran in the worker process
    assert Image.open(io.BytesIO(api.storage.get(key_))).size == (64, 64)  # written by the worker, read by the API side
    assert api.models.loaded() == []  # the API side never loaded a model
    print(f"scale-out execution finished in {elapsed:.1f} s after submit (worker start included)")
