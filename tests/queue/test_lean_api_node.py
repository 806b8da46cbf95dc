"""A scale-out API node (``pip install pixelmill[api]``) runs without the model stack.

`pixelmill serve` with ``PIXELMILL_QUEUE=celery`` starts in an environment where torch, diffusers,
transformers, mediapipe, onnxruntime, OpenCV and ncnn are not installed (tests/helpers/lean_env.py),
and serves over real HTTP: a BFL submission lands on the model's Celery queue in Redis and polls as
pending, the workflow API queues a graph, and the operational and Studio routes answer.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from pixelmill.config import Settings
from pixelmill.runtime import Runtime
from pixelmill.store import migrate
from tests.conftest import create_key
from tests.e2e.test_serve_subprocess import free_port, stop, wait_until_serving
from tests.helpers import lean_env

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def lean_site(tmp_path_factory) -> Path:
    return lean_env.build(tmp_path_factory.mktemp("lean") / "site-packages")


def test_the_lean_environment_lacks_the_model_stack(lean_site):
    code = (
        "import importlib.util, json; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in "
        "('torch', 'diffusers', 'transformers', 'mediapipe', 'onnxruntime', 'cv2', 'ncnn', 'fastapi', 'sqlalchemy', 'celery', 'PIL')}))"
    )
    found = json.loads(subprocess.check_output(lean_env.python(lean_site, code), text=True))
    assert found == {"torch": False, "diffusers": False, "transformers": False, "mediapipe": False, "onnxruntime": False,
                     "cv2": False, "ncnn": False, "fastapi": True, "sqlalchemy": True, "celery": True, "PIL": True}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_an_api_node_serves_with_the_model_stack_absent(tmp_path, lean_site, broker_url, broker_db):
    url = f"sqlite:///{tmp_path / 'api.db'}"
    migrate.upgrade(url)
    env = {
        **os.environ,
        "PIXELMILL_DATA_DIR": str(tmp_path / "data"),
        "PIXELMILL_DATABASE_URL": url,
        "PIXELMILL_QUEUE": "celery",
        "PIXELMILL_BROKER_URL": broker_url,
        "PIXELMILL_WEBHOOK_DISPATCHER": "false",
    }
    rt = Runtime(Settings(data_dir=tmp_path / "data", database_url=url, queue="celery", broker_url=broker_url))
    key = create_key(rt, credits=100)
    rt.db.engine.dispose()

    port = free_port()
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            lean_env.python(lean_site, f"from pixelmill.cli import main; raise SystemExit(main(['serve', '--port', '{port}']))"),
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc, timeout=90, log=log)
        with httpx.Client(base_url=base, headers={"x-key": key}, timeout=30) as http:
            ready = http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["ready"] is True

            r = http.post("/v1/flux-dev", json={"prompt": "a red circle on a blue background", "width": 256, "height": 256})
            assert r.status_code == 200, r.text + log.read_text(errors="replace")[-3000:]
            job = r.json()["id"]
            polled = http.get("/v1/get_result", params={"id": job})
            assert polled.status_code == 200 and polled.json()["status"] == "Pending", polled.text
            # the node run waits for a worker on its model's queue in Redis
            assert broker_db.llen("model.pixelmill-tiny") == 1

            graph = {"gen": {"type": "text_to_image", "params": {"model": "pixelmill-tiny", "prompt": "a green square", "width": 256, "height": 256}}}
            queued = http.post("/api/v1/executions", json={"nodes": graph})
            assert queued.status_code in (200, 201, 202), queued.text
            assert queued.json()["status"] == "QUEUED"
            assert broker_db.llen("model.pixelmill-tiny") == 2

            assert http.get("/v1/models").status_code == 200
            assert http.get("/metrics").status_code == 200
            assert http.get("/").status_code == 200  # Studio
        print(f"API node RSS after serving: {_rss_mb(proc.pid):.0f} MB (goal <= 150 MB; bench/api_node_memory.py)")
        assert proc.poll() is None
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]


@pytest.mark.parametrize(("command", "install"), [(["serve"], "pixelmill[all]"), (["worker"], "pixelmill[worker]")])
def test_what_runs_models_refuses_to_start_without_the_model_runtime(tmp_path, lean_site, command, install):
    env = {**os.environ, "PIXELMILL_DATA_DIR": str(tmp_path / "data"), "PIXELMILL_QUEUE": "inprocess"}
    out = subprocess.run(lean_env.python(lean_site, f"from pixelmill.cli import main; raise SystemExit(main({command!r}))"),
                         env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "torch, diffusers are not installed" in out.stderr and f"pip install '{install}'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
