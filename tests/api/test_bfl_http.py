"""The BFL dialect over real HTTP semantics (TestClient) on SQLite and PostgreSQL."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pixelmill.api.app import create_app
from tests.conftest import FakeBackend, create_key, wait_for


@pytest.fixture
def bfl(make_runtime, db_url):
    rt = make_runtime(db_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    key = create_key(rt)
    client.headers["x-key"] = key
    return rt, client


def poll_ready(client, polling_url, timeout=20.0):
    def done():
        body = client.get(polling_url).json()
        return body if body["status"] not in ("Pending",) else None

    return wait_for(done, timeout)


def test_round_trip_returns_image_at_signed_url(bfl):
    rt, client = bfl
    r = client.post("/v1/flux-pro-1.1", json={"prompt": "a red circle", "width": 512, "height": 256, "seed": 7, "output_format": "png"})
    assert r.status_code == 200, r.text
    sub = r.json()
    assert set(sub) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert sub["polling_url"].endswith(f"/v1/get_result?id={sub['id']}")
    assert sub["cost"] == pytest.approx(2.0 * 512 * 256 / 1e6, abs=0.01)
    body = poll_ready(client, sub["polling_url"])
    assert body["status"] == "Ready", body
    assert body["progress"] == 1.0
    assert body["result"]["seed"] == 7
    assert body["result"]["prompt"] == "a red circle"
    img = client.get(body["result"]["sample"])
    assert img.status_code == 200
    assert img.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(img.content))
    assert im.size == (512, 256)
    assert im.info.get("seed") == "7" or "7" in str(im.info)


def test_defaults_and_formats(bfl):
    rt, client = bfl
    sub = client.post("/v1/flux-dev", json={"prompt": "x"}).json()
    body = poll_ready(client, sub["polling_url"])
    assert body["status"] == "Ready"
    img = client.get(body["result"]["sample"])
    assert img.headers["content-type"] == "image/jpeg"  # BFL's default output_format
    assert Image.open(io.BytesIO(img.content)).size == (1024, 768)
    assert isinstance(body["result"]["seed"], int)  # a seed was chosen and reported


def test_same_seed_same_image(bfl):
    rt, client = bfl
    samples = []
    for _ in range(2):
        sub = client.post("/v1/flux-pro-1.1", json={"prompt": "p", "width": 256, "height": 256, "seed": 3, "output_format": "png"}).json()
        samples.append(client.get(poll_ready(client, sub["polling_url"])["result"]["sample"]).content)
    a, b = (Image.open(io.BytesIO(s)).tobytes() for s in samples)
    assert a == b


def test_validation_errors_in_fastapi_shape(bfl):
    _, client = bfl
    cases = [
        ({"prompt": "x", "width": 250}, ["body", "width"]),
        ({"prompt": "x", "width": 1000}, ["body", "width"]),
        ({"prompt": "x", "height": 1441}, ["body", "height"]),
        ({"prompt": "x", "output_format": "gif"}, ["body", "output_format"]),
        ({"prompt": "x", "safety_tolerance": 7}, ["body", "safety_tolerance"]),
        ({"prompt": "x", "seed": "abc"}, ["body", "seed"]),
        ({"prompt": "x", "webhook_url": "http://a.example/" + "a" * 2100}, ["body", "webhook_url"]),
    ]
    for body, loc in cases:
        r = client.post("/v1/flux-pro-1.1", json=body)
        assert r.status_code == 422, (body, r.text)
        detail = r.json()["detail"]
        assert any(d["loc"] == loc for d in detail), (body, detail)
        assert all({"loc", "msg", "type"} <= set(d) for d in detail)
    r = client.post("/v1/flux-dev", json={"prompt": "x", "steps": 51})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "steps"]
    r = client.post("/v1/flux-dev", json={"prompt": "x", "guidance": 1.4})
    assert r.status_code == 422
    r = client.post("/v1/flux-pro-1.1-ultra", json={"prompt": "x", "aspect_ratio": "3:1"})
    assert r.status_code == 422


def test_bad_bodies_get_clear_errors_and_write_nothing(bfl):
    rt, client = bfl
    r = client.post("/v1/flux-dev", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = client.post("/v1/flux-dev", content=b"x" * (rt.settings.max_body_bytes + 10), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = client.post("/v1/flux-dev", json=["a list"])
    assert r.status_code == 422
    r = client.post("/v1/flux-pro-1.1", json={"prompt": "x", "image_prompt": "@@@not base64@@@"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "image_prompt"
    assert rt.executions.list(_account(rt, client)) == []


def _account(rt, client):
    from pixelmill.accounts.keys import authenticate

    with rt.db.engine.connect() as conn:
        return authenticate(conn, client.headers["x-key"]).account_id


def test_auth(bfl):
    rt, client = bfl
    r = client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"x-key": ""})
    assert r.status_code in (401, 403) and r.json()["error"]["code"] == "missing_api_key"
    r = client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"x-key": "sk-unknown"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_api_key"
    r = client.get("/v1/credits", headers={"Authorization": f"Bearer {client.headers['x-key']}"})
    assert r.status_code == 200 and r.json() == {"credits": 1000.0}


def test_revoked_key_is_refused(bfl):
    from pixelmill.accounts import keys

    rt, client = bfl
    with rt.db.transaction() as conn:
        key_id = keys.list_keys(conn)[0]["id"]
        keys.revoke_key(conn, key_id)
    r = client.get("/v1/credits")
    assert r.status_code == 403 and r.json()["error"]["code"] == "revoked_api_key"


def test_unknown_foreign_and_missing_ids_are_task_not_found(bfl):
    rt, client = bfl
    sub = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()
    poll_ready(client, sub["polling_url"])
    other = create_key(rt, account="other")
    r = client.get(f"/v1/get_result?id={sub['id']}", headers={"x-key": other})
    assert r.status_code == 200 and r.json()["status"] == "Task not found"
    for bad in ("nope", "", "'; drop table executions; --"):
        r = client.get(f"/v1/get_result", params={"id": bad})
        assert r.status_code == 200 and r.json()["status"] == "Task not found"


def test_expired_url_and_tampered_signature(bfl):
    rt, client = bfl
    sub = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()
    sample = poll_ready(client, sub["polling_url"])["result"]["sample"]
    r = client.get(sample.replace("sig=", "sig=0"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature"
    file_id = sample.split("/files/")[1].split("/")[0]
    expired = rt.signer.url("http://testserver", file_id, "x.jpg", now=0)
    r = client.get(expired)
    assert r.status_code == 403 and r.json()["error"]["code"] == "url_expired"


def test_unconfigured_endpoint_is_404(bfl):
    _, client = bfl
    r = client.post("/v1/flux-kontext-max", json={"prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "endpoint_not_configured"
    r = client.post("/v1/flux-imaginary", json={"prompt": "x"})
    assert r.status_code == 404


def test_failure_is_error_and_refunds(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=FakeBackend(fail_with=RuntimeError("CUDA out of memory")))
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt, credits=10)
    sub = client.post("/v1/flux-dev", json={"prompt": "x", "width": 512, "height": 512}).json()
    body = poll_ready(client, sub["polling_url"])
    assert body["status"] == "Error" and "out of memory" in body["details"]["message"]
    assert client.get("/v1/credits").json() == {"credits": 10.0}


def test_unreachable_queue_is_503_and_charges_nothing(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt, credits=10)

    def broker_down(task):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    rt.executions.enqueue = broker_down
    r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 512, "height": 512})
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_unavailable"
    assert r.headers["Retry-After"] == "5"
    assert client.get("/v1/credits").json() == {"credits": 10.0}
    account = rt.executions.list(_account(rt, client), limit=10)
    assert [(v.status.value, v.error_code) for v in account] == [("failed", "queue_unavailable")]


def _account(rt, client):
    from pixelmill.accounts import keys

    with rt.db.engine.connect() as conn:
        return keys.authenticate(conn, client.headers["x-key"]).account_id


def test_success_charges_the_cost(bfl):
    rt, client = bfl
    sub = client.post("/v1/flux-dev", json={"prompt": "x", "width": 1024, "height": 1024}).json()
    poll_ready(client, sub["polling_url"])
    assert client.get("/v1/credits").json()["credits"] == pytest.approx(1000 - sub["cost"])


def test_insufficient_credits_is_402_with_breakdown(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt, credits=1)
    r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 1024, "height": 1024})
    assert r.status_code == 402
    body = r.json()
    assert body["error"]["code"] == "insufficient_credits"
    assert body["requiredCredits"] > body["availableCredits"] == 1.0
    assert body["breakdown"][0]["nodeId"] == "generate"


def test_image_input_goes_through_a_load_image_node(make_runtime, sqlite_url):
    """A model that takes images gets the request's input image (base64) as its init image."""
    import base64

    from pixelmill.models.catalog import ModelCatalog

    seen = {}

    class Recording(FakeBackend):
        def generate(self, request, control):
            seen["init"] = request.init_image
            return super().generate(request, control)

    rt = make_runtime(sqlite_url, backend=Recording())
    rt.catalog.models[0].supports_image_input = True
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, "PNG")
    r = client.post("/v1/flux-2-klein-4b", json={"prompt": "make it blue", "input_image": base64.b64encode(buf.getvalue()).decode(), "width": 256, "height": 256})
    assert r.status_code == 200, r.text
    body = poll_ready(client, r.json()["polling_url"])
    assert body["status"] == "Ready", body
    assert seen["init"].size == (40, 30) and seen["init"].getpixel((0, 0))[:3] == (255, 0, 0)


@pytest.fixture
def fill_server(make_runtime, sqlite_url):
    """A server whose image model also serves /v1/flux-pro-1.0-fill and Kontext; records what the model got."""
    from tests.api.test_openai_http import EDIT_MODEL
    from tests.conftest import RecordingBackend

    backend = RecordingBackend()
    entry = EDIT_MODEL + '\nbfl_endpoints = ["flux-pro-1.0-fill", "flux-pro-1.0-expand", "flux-kontext-pro"]'
    rt = make_runtime(sqlite_url, extra_models={"fake-edit": (entry, backend)})
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    return client, backend


def _b64_png(image: Image.Image) -> str:
    import base64

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_fill_inpaints_with_the_mask_in_the_image_shape(fill_server):
    client, backend = fill_server
    image = Image.new("RGB", (300, 200), (0, 0, 255))
    mask = Image.new("L", (300, 200), 0)
    mask.paste(255, (100, 50, 200, 150))
    r = client.post("/v1/flux-pro-1.0-fill", json={"prompt": "a cat", "image": _b64_png(image), "mask": _b64_png(mask), "output_format": "png"})
    assert r.status_code == 200, r.text
    assert r.json()["output_mp"] == pytest.approx(384 * 256 / 1e6, abs=1e-4)  # 300x200 scaled to sides >= 256, multiples of 32
    body = poll_ready(client, r.json()["polling_url"])
    assert body["status"] == "Ready", body
    assert Image.open(io.BytesIO(client.get(body["result"]["sample"]).content)).size == (384, 256)
    [req] = backend.requests
    assert req.strength == 1.0 and req.init_image.size == (300, 200)
    m = req.mask_image.convert("L")
    assert m.getpixel((150, 100)) == 255 and m.getpixel((10, 10)) == 0


def test_fill_without_a_mask_uses_the_images_transparency(fill_server):
    client, backend = fill_server
    image = Image.new("RGBA", (256, 256), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 128, 256))
    r = client.post("/v1/flux-pro-1.0-fill", json={"prompt": "grass", "image": _b64_png(image)})
    assert r.status_code == 200, r.text
    assert poll_ready(client, r.json()["polling_url"])["status"] == "Ready"
    [req] = backend.requests
    assert req.mask_image.getpixel((10, 10)) == 255 and req.mask_image.getpixel((200, 10)) == 0


def test_fill_refuses_a_missing_or_mismatched_mask_and_unreadable_images(fill_server):
    client, backend = fill_server
    opaque = _b64_png(Image.new("RGB", (256, 256), "red"))
    r = client.post("/v1/flux-pro-1.0-fill", json={"prompt": "x", "image": opaque})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "mask" and "transparent" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/flux-pro-1.0-fill", json={"prompt": "x", "image": opaque, "mask": _b64_png(Image.new("L", (128, 256)))})
    assert r.status_code == 422 and "128x256" in r.json()["detail"][0]["msg"]
    import base64

    r = client.post("/v1/flux-pro-1.0-fill", json={"prompt": "x", "image": base64.b64encode(b"not a picture").decode()})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "image"
    assert backend.requests == []


def test_kontext_without_aspect_ratio_answers_in_the_input_shape(fill_server):
    client, backend = fill_server
    r = client.post("/v1/flux-kontext-pro", json={"prompt": "make it blue", "input_image": _b64_png(Image.new("RGB", (640, 320), "red"))})
    assert r.status_code == 200, r.text
    assert poll_ready(client, r.json()["polling_url"])["status"] == "Ready"
    [req] = backend.requests
    assert (req.width, req.height) == (640, 320) and req.mask_image is None


def test_expand_outpaints_the_margins_only(fill_server):
    client, backend = fill_server
    image = Image.new("RGB", (200, 100), (200, 20, 20))
    r = client.post("/v1/flux-pro-1.0-expand", json={"prompt": "a meadow", "image": _b64_png(image), "left": 56, "top": 28, "output_format": "png"})
    assert r.status_code == 200, r.text
    body = poll_ready(client, r.json()["polling_url"])
    assert body["status"] == "Ready", body
    # 256x128 after the margins, scaled so the short side is 256
    assert Image.open(io.BytesIO(client.get(body["result"]["sample"]).content)).size == (512, 256)
    [req] = backend.requests
    assert req.init_image.size == (256, 128) and req.init_image.getpixel((0, 0)) == (200, 20, 20)  # edges stretched
    m = req.mask_image.convert("L")
    assert m.size == (256, 128) and m.getpixel((10, 64)) == 255 and m.getpixel((128, 10)) == 255
    assert m.getpixel((56, 28)) == 0 and m.getpixel((255, 127)) == 0
    assert req.strength == 1.0
