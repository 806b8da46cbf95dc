"""Sizes belong to the model; vendor model ids resolve to the operator's models;
/v2 validation lists every problem at once, honours ``Prefer: wait``; BFL ``input_mp``."""

from __future__ import annotations

import base64
import io

import pytest
from blackforest import BFLClient
from fastapi.testclient import TestClient
from PIL import Image

from pixelmill.api.app import create_app
from pixelmill.models.catalog import CatalogError, ModelCatalog, SizeLimits
from tests.helpers.servers import serve
from tests.conftest import FakeBackend, create_key

SMALL = (
    'path = "/nonexistent"\nmax_side = 1440\nmax_megapixels = 1.5\nsize_multiple = 32\nmin_side = 256\n'
    'supports_image_input = true\nbfl_endpoints = ["flux-2-pro", "flux-kontext-pro", "flux-pro-1.0-fill"]\n'
    'aliases = ["flux-1.1-pro", "gpt-image-1"]'
)


@pytest.fixture
def app(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, extra_models={"small": (SMALL, FakeBackend())})
    app = create_app(rt, manage_runtime=False)
    client = TestClient(app)
    client.headers["x-key"] = create_key(rt)
    return rt, app, client


def _png_b64(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_official_sdk_default_ultra_request_is_served(app):
    """The SDK sends aspect_ratio 16:9 by default: BFL's 2752x1536 on a model that makes 4 MP."""
    rt, application, _ = app
    with serve(application) as base:
        sdk = BFLClient(api_key=create_key(rt, "sdk"), base_url=base)
        sub = sdk.generate("flux-pro-1.1-ultra", {"prompt": "a red circle on a blue background"})
    assert sub.id and sub.polling_url
    view = rt.executions.get(_account(rt, "sdk"), sub.id)
    params = view.request  # what the client asked
    assert params["aspect_ratio"] == "16:9"
    node = _graph_params(rt, sub.id)
    assert (node["width"], node["height"]) == (2752, 1536)


def _account(rt, name):
    from pixelmill.accounts.keys import find_account_by_name

    with rt.db.engine.connect() as conn:
        return find_account_by_name(conn, name)


def _graph_params(rt, execution_id):
    import sqlalchemy as sa

    from pixelmill.store.tables import node_runs

    with rt.db.engine.connect() as conn:
        rows = conn.execute(sa.select(node_runs.c.params).where(node_runs.c.execution_id == execution_id)).all()
    found = [r.params for r in rows if isinstance(r.params, dict) and "width" in r.params]
    return found[0]


@pytest.mark.parametrize("ratio", ["16:9", "9:16", "21:9", "1:1", "4:3"])
def test_every_ultra_aspect_ratio_is_served(app, ratio):
    _, _, client = app
    r = client.post("/v1/flux-pro-1.1-ultra", json={"prompt": "x", "aspect_ratio": ratio})
    assert r.status_code == 200, r.text
    assert 3.9 < r.json()["output_mp"] < 4.5


@pytest.mark.parametrize("size", [(2560, 1600), (2048, 2048), (1920, 1088)])
def test_flux2_sizes_up_to_4mp_are_served(app, size):
    _, _, client = app
    w, h = size
    r = client.post("/v1/flux-2-klein-4b", json={"prompt": "x", "width": w, "height": h})
    assert r.status_code == 200, r.text
    assert r.json()["output_mp"] == pytest.approx(w * h / 1e6, abs=1e-3)


def test_aspect_ratio_requests_fit_a_smaller_model(app):
    rt, _, client = app
    r = client.post("/v1/flux-kontext-pro", json={"prompt": "x", "aspect_ratio": "21:9"})
    assert r.status_code == 200, r.text
    p = _graph_params(rt, r.json()["id"])
    assert p["width"] <= 1440 and p["width"] % 32 == 0 and p["height"] % 32 == 0
    assert p["width"] * p["height"] <= 1.5 * (1 << 20)
    assert 2.2 < p["width"] / p["height"] < 2.45  # still 21:9


def test_a_size_the_model_cannot_make_is_a_bfl_422_naming_the_field(app):
    _, _, client = app
    r = client.post("/v1/flux-2-pro", json={"prompt": "x", "width": 1600, "height": 512})
    assert r.status_code == 422, r.text
    body = r.json()
    assert [d["loc"] for d in body["detail"]] == [["body", "width"]]
    assert "1440" in body["detail"][0]["msg"]
    assert "generate" not in r.text and "text_to_image" not in r.text  # no internal node names
    r = client.post("/v1/flux-2-pro", json={"prompt": "x", "width": 1408, "height": 1408})  # 1.9 MP > 1.5
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body"] and "megapixels" in r.json()["detail"][0]["msg"]


def test_size_limits_fit_keeps_shape_and_bounds():
    limits = SizeLimits(min_side=256, max_side=1440, max_pixels=int(1.5 * (1 << 20)), multiple=32)
    for w, h in [(2752, 1536), (1536, 2752), (2048, 2048), (4000, 400)]:
        fw, fh = limits.fit(w, h)
        assert limits.fits(fw, fh), (w, h, fw, fh)
    assert limits.fit(512, 512) == (512, 512)


def test_weights_folder_metadata_sets_the_limits(tmp_path):
    (tmp_path / "pixelmill.json").write_text('{"min_size": 256, "max_size": 1440, "size_multiple": 32, "max_megapixels": 2}')
    spec = ModelCatalog.from_toml(f'[[models]]\nname = "m"\npath = "{tmp_path}"\n').get("m")
    assert spec.size_limits() == SizeLimits(min_side=256, max_side=1440, max_pixels=2 * (1 << 20), multiple=32)
    builtin = ModelCatalog.load().get("pixelmill-tiny").size_limits()
    assert (builtin.min_side, builtin.max_side, builtin.multiple) == (256, 1440, 32)


# --- aliases -------------------------------------------------------------------


def test_apiframe_published_body_resolves_vendor_model_id(app):
    rt, _, client = app
    r = client.post("/v2/images/generate", json={"prompt": "a car", "model": "flux-1.1-pro", "fluxParams": {"output_format": "jpg"}})
    assert r.status_code == 202, r.text
    assert _graph_params(rt, r.json()["jobId"])["model"] == "small"
    r = client.post("/v2/images/generate", json={"prompt": "a car", "model": "flux-dev"})  # a BFL endpoint name
    assert r.status_code == 202, r.text
    assert _graph_params(rt, r.json()["jobId"])["model"] == "fake"


def test_default_catalog_knows_the_vendor_ids():
    catalog = ModelCatalog.load()
    for vendor_id in ["flux-1.1-pro", "flux-dev", "flux-schnell", "flux-kontext-pro", "flux-pro-1.1-ultra", "gpt-image-1", "dall-e-3"]:
        assert catalog.resolve(vendor_id) is not None and catalog.resolve(vendor_id).name == "pixelmill-tiny", vendor_id
    assert catalog.resolve("no-such-model") is None


def test_an_alias_is_given_to_one_model_only():
    toml = '[[models]]\nname = "a"\npath = "/x"\naliases = ["v"]\n[[models]]\nname = "b"\npath = "/y"\naliases = ["v"]\n'
    with pytest.raises(CatalogError, match="alias 'v'"):
        ModelCatalog.from_toml(toml)


def test_openai_size_the_model_cannot_make_names_size(app):
    _, _, client = app
    r = client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "x", "size": "1536x1024"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "size" and "1440" in r.json()["error"]["message"]


def test_openai_alias_runs_the_operators_model(app):
    from pixelmill.api.dialects.openai_images import resolve_model

    rt, _, _ = app
    assert resolve_model("gpt-image-1", rt.catalog) == ("small", "gpt-image")
    assert resolve_model("dall-e-3", rt.catalog) == ("fake", "dall-e")  # no alias: the first model, as before


# --- /v2: every problem at once, Prefer: wait -----------------------------------


def test_v2_validation_lists_every_problem_at_once(app):
    _, _, client = app
    r = client.post("/v2/images/generate", json={"prompt": "x", "model": "nope", "fluxParams": {"width": 1000, "height": 1000, "steps": 0}})
    assert r.status_code == 422
    params = {p["param"] for p in r.json()["error"]["problems"]}
    assert {"model", "params.width", "params.height", "params.steps"} <= params, r.json()
    assert "model" in r.json()["message"] and "params.width" in r.json()["message"]
    # past pydantic: the model's own limits and the unknown... all together
    r = client.post("/v2/images/generate", json={"prompt": "x", "model": "small", "fluxParams": {"width": 1600, "height": 1600, "steps": 99}})
    assert r.status_code == 422
    params = {p["param"] for p in r.json()["error"]["problems"]}
    assert {"params.width", "params.height", "params.steps"} <= params, r.json()


def test_v2_prefer_wait_answers_the_finished_job(app):
    _, _, client = app
    r = client.post("/v2/images/generate", json={"prompt": "x", "model": "fake", "fluxParams": {"width": 256, "height": 256}}, headers={"Prefer": "wait=20"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "COMPLETED" and body["result"]["images"], body
    assert r.headers["preference-applied"] == "wait=20"
    assert r.headers["location"] == f"/v2/jobs/{body['jobId']}"


# --- BFL input_mp ----------------------------------------------------------------


def test_bfl_input_mp_counts_the_input_images(app):
    _, _, client = app
    r = client.post("/v1/flux-kontext-pro", json={"prompt": "x", "input_image": _png_b64(512, 256), "aspect_ratio": "1:1"})
    assert r.status_code == 200, r.text
    assert r.json()["input_mp"] == pytest.approx(512 * 256 / 1e6, abs=1e-3)
    r = client.post("/v1/flux-pro-1.1", json={"prompt": "x", "width": 256, "height": 256})
    assert r.json()["input_mp"] == 0.0
