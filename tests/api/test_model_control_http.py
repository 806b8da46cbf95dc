"""Loading and unloading a model with the admin key, on a real server: over HTTP and with
``pixelmill models load|unload``; refused while the model is in use, for an unknown model
and without the admin key.  (Scale-out: tests/queue/test_model_control_scaleout.py.)"""

from __future__ import annotations

import json

import httpx
import pytest

from pixelmill import cli
from pixelmill.api.app import create_app
from pixelmill.models.catalog import ModelSpec
from tests.conftest import create_key
from tests.helpers.servers import serve
from tests.helpers.tiny_pipelines import cached_tiny_flux, torch_threads

ADMIN = "model-admin-key"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture
def server(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, admin_key=ADMIN)
    rt.catalog.models.append(ModelSpec(name="tiny", path=cached_tiny_flux(), device="cpu", default_steps=1))
    with serve(create_app(rt, manage_runtime=False)) as base:
        yield rt, base


def _post(base, path, key=ADMIN):
    return httpx.post(base + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=120)


def _state(base, key, name):
    models = httpx.get(base + "/api/v1/models", headers={"x-key": key}).json()["data"]
    return next(m for m in models if m["name"] == name)["state"]


def test_an_admin_loads_and_unloads_a_model(server):
    rt, base = server
    user = create_key(rt)
    assert _state(base, user, "tiny") == "cold"
    r = _post(base, "/api/v1/models/tiny/load")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "tiny" and body["state"] == "resident" and body["memory_bytes"] > 0
    assert body["workers"][0]["device"] == "cpu"
    assert _state(base, user, "tiny") == "resident"
    assert _post(base, "/api/v1/models/tiny/load").json()["state"] == "resident"  # loading a resident model changes nothing
    assert rt.models.states()["tiny"]["loads"] == 1

    with rt.models.use("tiny"):  # a generation runs on it
        r = _post(base, "/api/v1/models/tiny/unload")
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_in_use"
        assert "in use" in r.json()["error"]["message"]
    assert _state(base, user, "tiny") == "resident"

    r = _post(base, "/api/v1/models/tiny/unload")
    assert r.status_code == 200 and r.json()["state"] == "cold"
    assert _state(base, user, "tiny") == "cold"
    assert _post(base, "/api/v1/models/tiny/unload").json()["state"] == "cold"


def test_refusals_carry_stable_codes(server):
    rt, base = server
    user = create_key(rt)
    r = _post(base, "/api/v1/models/no-such-model/load")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "tiny" in r.json()["error"]["message"]  # says which models there are
    assert _post(base, "/api/v1/models/no-such-model/unload").status_code == 404
    r = _post(base, "/api/v1/models/tiny/load", key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_admin_key"
    r = _post(base, "/api/v1/models/tiny/load", key=user)  # an API key is not the admin key
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_admin_key"
    r = _post(base, "/api/v1/models/fake/unload")  # registered by the embedding process
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_pinned"
    assert _state(base, user, "tiny") == "cold"


def test_the_command_line_loads_and_unloads(server, monkeypatch, capsys):
    rt, base = server
    monkeypatch.delenv("PIXELMILL_ADMIN_KEY", raising=False)
    assert cli.main(["models", "load", "tiny", "--server", base]) == 2
    assert "PIXELMILL_ADMIN_KEY" in capsys.readouterr().err

    monkeypatch.setenv("PIXELMILL_ADMIN_KEY", ADMIN)
    assert cli.main(["models", "load", "tiny", "--server", base]) == 0
    assert capsys.readouterr().out.startswith("tiny: resident")
    assert rt.models.is_loaded("tiny")
    assert cli.main(["models", "unload", "tiny", "--server", base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "cold"
    assert not rt.models.is_loaded("tiny")

    assert cli.main(["models", "load", "nope", "--server", base]) == 1
    assert "404 model_not_found" in capsys.readouterr().err
    monkeypatch.setenv("PIXELMILL_ADMIN_KEY", "wrong")
    assert cli.main(["models", "unload", "tiny", "--server", base]) == 1
    assert "invalid_admin_key" in capsys.readouterr().err
