"""Operating the server: warm start with readiness, /readyz naming what is missing, Prometheus /metrics,
and the same endpoints on a worker's health port."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from pixelmill.config import Settings
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.registry import ModelRegistry
from pixelmill.runtime import Runtime
from tests.conftest import FAKE_CATALOG, FakeBackend, create_key, wait_for

SLOW_CATALOG = FAKE_CATALOG.replace('name = "fake"', 'name = "slow"\ndevice = "cpu"') + '\n[[models]]\nname = "broken"\npath = "/nonexistent"\ndevice = "cpu"\n'


@pytest.fixture
def slow_start(tmp_path, sqlite_url):
    """An embedded runtime whose default model takes a while to load (and one that cannot load)."""
    release = threading.Event()
    loads: list[str] = []

    def factory(spec):
        loads.append(spec.name)
        if spec.name == "broken":
            raise FileNotFoundError("no weights at /nonexistent")
        release.wait(30)
        return FakeBackend()

    catalog = ModelCatalog.from_toml(SLOW_CATALOG)
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, secret_key="s", warm_models=["slow"])
    rt = Runtime(settings, catalog=catalog, models=ModelRegistry(catalog, factory=factory))
    rt.start()
    yield rt, release, loads
    release.set()
    rt.stop()


def test_the_default_models_load_at_start_and_requests_meanwhile_wait_their_turn(slow_start):
    rt, release, loads = slow_start
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    wait_for(lambda: loads == ["slow"], timeout=10)  # loading began at start, before any request
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["not_ready"] == ["models"] and body["checks"]["database"]["ok"]
    assert body["checks"]["models"]["loading"] == "slow"
    assert client.get("/healthz").status_code == 200  # alive while not ready
    sub = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()
    pending = client.get(f"/v1/get_result?id={sub['id']}").json()
    assert pending["status"] == "Pending"
    release.set()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=20)
    done = wait_for(lambda: (b := client.get(f"/v1/get_result?id={sub['id']}").json())["status"] != "Pending" and b, timeout=30)
    assert done["status"] == "Ready", done
    assert loads == ["slow"]  # loaded once: the request waited for the warm start's load


def test_readyz_names_a_model_that_could_not_load(tmp_path, sqlite_url):
    catalog = ModelCatalog.from_toml(SLOW_CATALOG)

    def factory(spec):
        raise FileNotFoundError(f"no weights for {spec.name}")

    rt = Runtime(Settings(data_dir=tmp_path / "d", database_url=sqlite_url, secret_key="s", warm_models=["broken"]), catalog=catalog,
                 models=ModelRegistry(catalog, factory=factory))
    rt.start()
    try:
        client = TestClient(create_app(rt, manage_runtime=False))
        body = wait_for(lambda: (r := client.get("/readyz")).json()["checks"]["models"].get("failed") and r.json())
        assert body["ready"] is False and "broken" in body["checks"]["models"]["detail"]
        assert "no weights for broken" in body["checks"]["models"]["failed"]["broken"]
    finally:
        rt.stop()


def test_metrics_count_requests_executions_credits_and_queue_depth(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    sub = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()
    wait_for(lambda: client.get(f"/v1/get_result?id={sub['id']}").json()["status"] == "Ready")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'pixelmill_http_requests_total{method="POST",route="/v1/flux-dev",status="200"}' in text
    assert 'pixelmill_executions_finished_total{dialect="bfl",status="succeeded"}' in text
    assert 'pixelmill_queue_depth{queue="model.fake"} 0.0' in text
    assert 'pixelmill_model_resident{model="fake"} 1.0' in text
    assert 'pixelmill_node_queued_seconds_count{model="fake",node_type="text_to_image"}' in text
    assert 'pixelmill_node_running_seconds_count{model="fake",node_type="text_to_image",outcome="completed"}' in text
    charged = [line for line in text.splitlines() if line.startswith("pixelmill_credits_charged_total ")]
    assert charged and float(charged[0].split()[-1]) >= sub["cost"] > 0


def test_a_worker_health_port_serves_health_readiness_and_metrics(make_runtime, sqlite_url):
    from pixelmill.ops.server import serve_health

    rt = make_runtime(sqlite_url)
    server = serve_health(rt, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        ready = wait_for(lambda: (r := httpx.get(f"{base}/readyz")).status_code == 200 and r)  # once the warm start is done
        assert ready.json()["ready"] is True and ready.json()["checks"]["models"]["loaded"].keys() == {"fake"}
        assert "pixelmill_queue_depth" in httpx.get(f"{base}/metrics").text
    finally:
        server.shutdown()


def test_a_stopped_server_keeps_nothing_of_its_runtime(tmp_path, sqlite_url):
    """Once a server (its app and runtime) is stopped and let go, its runtime is freed, with its
    database engine and models: nothing process-wide (FastAPI's cache of the endpoints it has
    looked at, the statements compiled per database engine) holds on to it."""
    import gc
    import weakref

    def serve_once() -> weakref.ref:
        catalog = ModelCatalog.from_toml(FAKE_CATALOG)
        registry = ModelRegistry(catalog)
        registry.register("fake", FakeBackend())
        rt = Runtime(Settings(data_dir=tmp_path / "data", database_url=sqlite_url, secret_key="s", worker_threads=1), catalog=catalog, models=registry)
        with TestClient(create_app(rt)) as client:
            client.headers["x-key"] = create_key(rt)
            sub = client.post("/v1/flux-dev", json={"prompt": "a red circle", "width": 256, "height": 256}).json()
            wait_for(lambda: client.get("/v1/get_result", params={"id": sub["id"]}).json()["status"] == "Ready")
            wait_for(lambda: client.get("/readyz").status_code == 200)
            assert [client.get(path).status_code for path in ("/healthz", "/metrics")] == [200, 200]
        return weakref.ref(rt)

    runtime = serve_once()
    gc.collect()
    assert runtime() is None, [type(r).__qualname__ for r in gc.get_referrers(runtime())]
