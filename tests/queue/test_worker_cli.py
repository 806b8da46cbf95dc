"""What an operator sees: API nodes in scale-out mode stay free of torch; a misnamed worker queue is refused."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.queue.scaleout import make_catalog

API_NODE = """
import sys
from pixelmill.api.app import create_app
from pixelmill.config import Settings
from pixelmill.runtime import Runtime
from pixelmill.store import migrate

settings = Settings.load()
settings.data_dir.mkdir(parents=True, exist_ok=True)
migrate.upgrade(settings.resolved_database_url())  # what `pixelmill migrate` does before API nodes start
rt = Runtime(settings)
create_app(rt)
rt.start()
print(type(rt.queue).__name__, "torch" in sys.modules, "diffusers" in sys.modules, rt.models.loaded())
rt.stop()
"""


def env_for(tmp_path, **extra) -> dict:
    return {
        **os.environ,
        "PIXELMILL_DATA_DIR": str(tmp_path / "data"),
        "PIXELMILL_QUEUE": "celery",
        "PIXELMILL_BROKER_URL": "redis://127.0.0.1:6379/0",  # never contacted: nothing is submitted
        **extra,
    }


def test_an_api_node_publishes_to_celery_without_loading_torch(tmp_path):
    env = env_for(tmp_path, PIXELMILL_PRELOAD_MODELS="true")  # preloading is for processes that run nodes
    out = subprocess.run([sys.executable, "-c", API_NODE], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "CeleryQueue False False []"


def test_a_worker_refuses_a_queue_for_a_model_it_does_not_know(tmp_path):
    env = env_for(tmp_path, PIXELMILL_MODELS_CATALOG=str(make_catalog(tmp_path, path=str(tmp_path))))
    subprocess.run([sys.executable, "-m", "pixelmill.cli", "migrate"], env=env, check=True, capture_output=True, timeout=120)
    out = subprocess.run(
        [sys.executable, "-m", "pixelmill.cli", "worker", "--queues", "model.tiny-flx,default"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "unknown model(s) tiny-flx; the catalog has tiny-flux" in out.stderr


def test_a_worker_refuses_a_visibility_timeout_shorter_than_the_node_deadline(tmp_path):
    """Shorter, Redis would hand a running node's task to a second worker: refused before anything loads."""
    env = env_for(tmp_path, PIXELMILL_MODELS_CATALOG=str(make_catalog(tmp_path, path=str(tmp_path))), PIXELMILL_NODE_TIMEOUT_S="60")
    out = subprocess.run(
        [sys.executable, "-m", "pixelmill.cli", "worker", "--visibility-timeout", "30"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "visibility timeout 30 s is shorter than the node deadline (node_timeout_s = 60 s)" in out.stderr
    assert "at least 66 s" in out.stderr
