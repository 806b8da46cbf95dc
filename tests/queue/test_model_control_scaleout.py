"""Loading and unloading a model in scale-out: an API node broadcasts the admin's request, the
`pixelmill worker` process that consumes the model's queue loads or unloads it, and the models
report shows it."""

from __future__ import annotations

import httpx
import pytest

from pixelmill.api.app import create_app
from pixelmill.engine.placement import live_workers
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.registry import ModelRegistry
from pixelmill.worker import ModelControl
from tests.conftest import FakeBackend, create_key, wait_for
from tests.helpers.servers import serve
from tests.queue.scaleout import scale_out_session

ADMIN = "scale-admin-key"


@pytest.fixture
def scale_out(tmp_path, broker_url):
    from pixelmill.store import migrate

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    migrate.upgrade(url)
    yield from scale_out_session(tmp_path, url, broker_url)


def _model(base, key, name="tiny-flux") -> dict:
    return next(m for m in httpx.get(base + "/api/v1/models", headers={"x-key": key}).json()["data"] if m["name"] == name)


def test_an_admin_loads_and_unloads_a_model_on_the_workers(scale_out, monkeypatch):
    monkeypatch.setattr(scale_out.api.settings, "admin_key", ADMIN)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    key = create_key(scale_out.api)
    with serve(create_app(scale_out.api, manage_runtime=False)) as base:
        r = httpx.post(base + "/api/v1/models/tiny-flux/load", headers=admin, timeout=30)
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_not_served"  # no worker runs yet

        worker = scale_out.start_worker("--no-preload")
        wait_for(lambda: live_workers(scale_out.api.db) and scale_out.consuming(worker), timeout=120)
        assert _model(base, key)["state"] == "cold"

        r = httpx.post(base + "/api/v1/models/tiny-flux/load", headers=admin, timeout=30)
        assert r.status_code == 202, (r.text, scale_out.logs())
        body = r.json()
        assert body["state"] == "loading" and [w["outcome"] for w in body["workers"]] == ["loading"]
        assert str(worker.pid) in body["workers"][0]["worker"]
        resident = wait_for(lambda: (m := _model(base, key))["state"] == "resident" and m, timeout=120)
        assert resident["memory_bytes"] > 0 and len(resident["workers"]) == 1
        r = httpx.post(base + "/api/v1/models/tiny-flux/load", headers=admin, timeout=30)
        assert r.status_code == 200 and r.json()["workers"][0]["outcome"] == "resident"

        r = httpx.post(base + "/api/v1/models/tiny-flux/unload", headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "cold" and r.json()["workers"][0]["outcome"] == "unloaded"
        wait_for(lambda: _model(base, key)["state"] == "cold", timeout=30)
        assert httpx.post(base + "/api/v1/models/nope/load", headers=admin).status_code == 404
    assert scale_out.api.models.loaded() == []  # the API node itself never loads a model


def test_a_worker_answers_for_the_models_of_its_queues_only():
    catalog = ModelCatalog.from_toml('[[models]]\nname = "a"\npath = "/nonexistent"\n\n[[models]]\nname = "b"\npath = "/nonexistent"\n')
    registry = ModelRegistry(catalog, factory=lambda spec: FakeBackend())
    advertised = []
    control = ModelControl(registry, ["a"], lambda: advertised.append(1))
    assert control("b", "load") == {"outcome": "not_served"}
    assert control("a", "load") == {"outcome": "loading"}
    wait_for(lambda: registry.is_loaded("a") and advertised)
    assert control("a", "load") == {"outcome": "resident"}
    with registry.use("a"):
        assert control("a", "unload") == {"outcome": "in_use"}
    assert control("a", "unload") == {"outcome": "unloaded"}
    assert not registry.is_loaded("a") and control("a", "unload") == {"outcome": "cold"}
