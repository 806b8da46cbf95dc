"""The rest of BFL's current surface: price quotes, FLUX.2 with eight reference images,
finetune endpoints on a catalog without LoRAs, the synchronous mount."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pixelmill.api.app import create_app
from tests.conftest import FakeBackend, RecordingBackend, create_key, wait_for

REFS = 'path = "/nonexistent"\nsupports_image_input = true\nprice_per_megapixel = 3.0\nbfl_endpoints = ["flux-2-pro", "flux-2-klein-9b"]'


@pytest.fixture
def recorder():
    return RecordingBackend()


@pytest.fixture
def client(make_runtime, sqlite_url, recorder):
    rt = make_runtime(sqlite_url, extra_models={"refs": (REFS, recorder)})
    c = TestClient(create_app(rt, manage_runtime=False))
    c.headers["x-key"] = create_key(rt, credits=500)
    return rt, c


def _png_b64(w: int, h: int, colour=(10, 200, 10)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_pricing_quotes_what_the_submit_holds(client):
    _, c = client
    body = {"prompt": "x", "width": 1024, "height": 768}
    quote = c.post("/v1/pricing", json={"endpoint": "flux-pro-1.1", **body})
    assert quote.status_code == 200, quote.text
    q = quote.json()
    assert (q["width"], q["height"]) == (1024, 768) and q["currency"] == "credits"
    before = c.get("/v1/credits").json()["credits"]
    submitted = c.post("/v1/flux-pro-1.1", json=body).json()
    assert submitted["cost"] == q["cost"] == pytest.approx(2.0 * 1024 * 768 / 1e6, abs=0.01)
    assert q["credits"] == before
    # the endpoint's fields may also come under "inputs"; a quote runs nothing and charges nothing
    again = c.post("/v1/pricing", json={"endpoint": "flux-2-pro", "inputs": {"prompt": "x", "width": 2048, "height": 2048}}).json()
    assert again["cost"] == pytest.approx(3.0 * 2048 * 2048 / 1e6, abs=0.01)
    bad = c.post("/v1/pricing", json={"endpoint": "flux-pro-1.1", "prompt": "x", "width": 250})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "width"]
    assert c.post("/v1/pricing", json={"prompt": "x"}).status_code == 422


def test_flux2_takes_eight_reference_images(client, recorder):
    rt, c = client
    refs = {("input_image" if i == 1 else f"input_image_{i}"): _png_b64(64 * i, 64, (30 * i, 0, 0)) for i in range(1, 9)}
    r = c.post("/v1/flux-2-pro", json={"prompt": "x", "width": 1008, "height": 1008, **refs})
    assert r.status_code == 200, r.text
    assert r.json()["input_mp"] == pytest.approx(sum(64 * i * 64 for i in range(1, 9)) / 1e6, abs=1e-3)
    assert r.json()["output_mp"] == pytest.approx(1008 * 1008 / 1e6, abs=1e-3)
    recorded = wait_for(lambda: [q for q in recorder.requests if q.reference_images], timeout=20)
    request = recorded[-1]
    assert request.init_image.size == (64, 64)  # input_image starts the generation
    assert [im.size for im in request.reference_images] == [(64 * i, 64) for i in range(2, 9)]  # the other seven, in order
    bad = dict(refs, input_image_5="not an image")
    r = c.post("/v1/flux-2-pro", json={"prompt": "x", **bad})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input_image_5"]
    # sizes: multiples of 16 (rounded down, as BFL does), at most 4 MP
    r = c.post("/v1/flux-2-pro", json={"prompt": "x", "width": 1000, "height": 1000})
    assert r.status_code == 200 and r.json()["output_mp"] == pytest.approx(992 * 992 / 1e6, abs=1e-3)
    r = c.post("/v1/flux-2-pro", json={"prompt": "x", "width": 2064, "height": 2048})
    assert r.status_code == 422


@pytest.mark.parametrize("path,body", [("/v1/finetune", {"file_data": "..."}), ("/v1/delete_finetune", {"finetune_id": "ft-1"})])
def test_finetunes_are_not_created_or_deleted_through_the_api(client, path, body):
    _, c = client
    r = c.post(path, json=body)
    assert r.status_code == 501, r.text
    b = r.json()
    assert b["error"]["code"] == "finetuning_not_offered"
    assert "catalog" in b["message"] and b["detail"] == b["message"]


def test_a_catalog_without_loras_has_no_finetunes(client):
    _, c = client
    assert c.get("/v1/my_finetunes").json() == {"finetunes": []}
    r = c.get("/v1/finetune_details?finetune_id=ft-1")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "finetune_id"]
    r = c.post("/v1/flux-pro-1.1-ultra-finetuned", json={"finetune_id": "ft-1", "prompt": "x"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "finetune_id"] and "Finetune not found" in r.json()["message"]
    r = c.post("/v1/flux-pro-1.0-fill-finetuned", json={"finetune_id": "ft-1", "image": "aGk="})
    assert r.status_code == 404 and r.json()["error"]["code"] == "endpoint_not_configured"  # no model serves fill here


def test_sync_mount_answers_the_image(client):
    _, c = client
    r = c.post("/sync/v1/flux-pro-1.1", json={"prompt": "x", "width": 512, "height": 256, "seed": 3}, headers={"Authorization": f"Bearer {c.headers['x-key']}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "Ready" and body["images"][0]["url"] == body["result"]["sample"]
    assert (body["images"][0]["width"], body["images"][0]["height"]) == (512, 256)
    assert c.get(body["images"][0]["url"]).status_code == 200


def test_sync_mount_reports_failures_in_error_message(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=FakeBackend(fail_with=RuntimeError("the GPU caught fire")))
    c = TestClient(create_app(rt, manage_runtime=False))
    c.headers["x-key"] = create_key(rt)
    r = c.post("/sync/v1/flux-pro-1.1", json={"prompt": "x", "width": 256, "height": 256})
    assert r.status_code == 500
    body = r.json()
    assert body["status"] == "Error" and body["error"]["message"] and body["message"] == body["error"]["message"]
