"""A scale-out API node runs without the model stack: torch, diffusers, mediapipe and onnxruntime
cannot even be imported in its process, and it still serves (and says how much memory it holds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pixelmill.store import migrate

LEAN_API_NODE = r"""
import importlib.abc, json, resource, sys

BLOCKED = ("torch", "diffusers", "mediapipe", "onnxruntime", "transformers")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on an API node")
        return None

sys.meta_path.insert(0, Block())

from fastapi.testclient import TestClient
from pixelmill.api.app import create_app
from pixelmill.config import Settings
from pixelmill.runtime import Runtime

rt = Runtime(Settings.load())
with TestClient(create_app(rt)) as client:
    health = client.get("/healthz").status_code
    metrics = client.get("/metrics").status_code
    models = client.get("/v1/models").status_code
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"health": health, "metrics": metrics, "models": models, "loaded": [m for m in BLOCKED if m in sys.modules], "rss_mb": round(rss_mb)}))
"""


def test_an_api_node_serves_with_the_model_stack_absent(tmp_path):
    url = f"sqlite:///{tmp_path / 'api.db'}"
    migrate.upgrade(url)
    env = {
        **os.environ,
        "PIXELMILL_DATA_DIR": str(tmp_path / "data"),
        "PIXELMILL_DATABASE_URL": url,
        "PIXELMILL_QUEUE": "celery",
        "PIXELMILL_BROKER_URL": "redis://127.0.0.1:6379/0",  # never contacted: nothing is submitted
        "PIXELMILL_WEBHOOK_DISPATCHER": "false",
    }
    out = subprocess.run([sys.executable, "-c", LEAN_API_NODE], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["health"] == 200 and result["metrics"] == 200 and result["loaded"] == [], result
    print(f"idle API node peak RSS: {result['rss_mb']} MB")  # shown with -s; the goal is <= 150 MB
