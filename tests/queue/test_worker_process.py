"""Scale-out for real: an API-side runtime publishes, a `pixelmill worker` process runs a tiny FLUX.

The API side and the worker share one database, one data folder and one Redis; nothing else connects them.
"""

from __future__ import annotations

import io
import json
import time

import pytest
import sqlalchemy as sa
from PIL import Image

from pixelmill.domain.status import ExecutionStatus
from pixelmill.engine.service import Submission
from pixelmill.store.tables import files
from tests.conftest import _truncate_pg
from tests.queue.scaleout import scale_out_session, tiny_flux_node


@pytest.fixture(params=["postgres", "sqlite"])
def shared_db(request, tmp_path):
    if request.param == "sqlite":
        from pixelmill.store import migrate

        url = f"sqlite:///{tmp_path / 'shared.db'}"
        migrate.upgrade(url)  # `pixelmill migrate`, before API nodes and workers start
        return url
    url = request.getfixturevalue("pg_database")
    _truncate_pg(url)
    return url


@pytest.fixture
def scale_out(tmp_path, shared_db, broker_url):
    yield from scale_out_session(tmp_path, shared_db, broker_url)


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

    worker.terminate()  # warm shutdown: its last lines are written before it exits
    worker.wait(30)
    lines = [line for line in scale_out.logs_of(worker).splitlines() if line.strip()]
    plain = [line for line in lines if not line.startswith("{")]
    assert plain == [], "a worker writes JSON lines only off a terminal (no Celery banner, no bare warnings)"
    logged = [json.loads(line) for line in lines]
    assert any(x["logger"] == "celery.apps.worker" and x["message"].endswith(" ready.") for x in logged)
