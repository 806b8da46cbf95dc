"""The Apiframe-style job API (/v2) over HTTP (TestClient) on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pixelmill.api.app import create_app
from tests.conftest import FakeBackend, create_key, wait_for


@pytest.fixture
def start(make_runtime, db_url):
    """start(backend=None, credits=1000) -> (runtime, client with an X-API-Key)."""

    def _start(backend=None, credits=1000.0, **kw):
        rt = make_runtime(db_url, backend=backend, **kw)
        client = TestClient(create_app(rt, manage_runtime=False))
        client.headers["X-API-Key"] = create_key(rt, credits=credits, plan="enterprise")
        return rt, client

    return _start


def poll(client, job_id, timeout=20.0):
    def done():
        body = client.get(f"/v2/jobs/{job_id}").json()
        return body if body["status"] in ("COMPLETED", "FAILED") else None

    return wait_for(done, timeout)


def test_generate_poll_complete_and_download(start):
    rt, client = start()
    r = client.post(
        "/v2/images/generate",
        json={"prompt": "a lighthouse", "model": "fake", "n": 2, "fluxParams": {"width": 512, "height": 256, "seed": 11, "output_format": "png"}},
    )
    assert r.status_code == 202, r.text
    sub = r.json()
    assert sub == {"jobId": sub["jobId"], "status": "QUEUED"}
    assert r.headers["location"] == f"/v2/jobs/{sub['jobId']}"
    job = poll(client, sub["jobId"])
    assert job["status"] == "COMPLETED" and job["progress"] == 100 and job["error"] is None
    assert job["jobId"] == sub["jobId"] and job["model"] == "fake" and job["result"]["seed"] == 11
    assert len(job["result"]["images"]) == 2
    for url in job["result"]["images"]:
        img = client.get(url)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(img.content)).size == (512, 256)
    created, completed = (datetime.fromisoformat(job[k].replace("Z", "+00:00")) for k in ("createdAt", "completedAt"))
    assert created <= completed
    cost = 2.0 * 512 * 256 * 2 / 1e6
    assert job["cost"] == pytest.approx(cost, abs=0.01)
    assert client.get("/v1/credits").json()["credits"] == pytest.approx(1000 - job["cost"])


def test_generic_params_aspect_ratio_default_format_and_webhook(start):
    rt, client = start()
    body = {"prompt": "x", "model": "fake", "params": {"aspect_ratio": "16:9", "steps": 2}, "webhook_url": "https://hooks.example.com/done"}
    r = client.post("/v2/images/generate", json=body)
    assert r.status_code == 202, r.text
    assert rt.executions.get(None, r.json()["jobId"]).webhook_url == "https://hooks.example.com/done"
    job = poll(client, r.json()["jobId"])
    img = client.get(job["result"]["images"][0])
    assert img.headers["content-type"] == "image/jpeg"  # "jpg" is the default, as Apiframe's
    assert Image.open(io.BytesIO(img.content)).size == (1360, 768)
    import json

    import sqlalchemy as sa

    from pixelmill.store.tables import webhook_events

    with rt.db.engine.connect() as conn:
        rows = conn.execute(sa.select(webhook_events).where(webhook_events.c.execution_id == job["jobId"])).all()
    completed = [json.loads(r.payload) for r in rows if r.event_type.endswith("completed") or r.event_type.endswith("succeeded")]
    assert completed and completed[-1]["data"]["jobId"] == job["jobId"]  # webhook bodies carry the job shape
    assert completed[-1]["data"]["status"] == "COMPLETED"


def test_validation_errors_name_the_field_and_submit_nothing(start):
    rt, client = start()
    cases = [
        ({"model": "fake"}, "prompt"),
        ({"prompt": "   ", "model": "fake"}, "prompt"),
        ({"prompt": "x"}, "model"),
        ({"prompt": "x", "model": "fake", "fluxParams": {"width": 250, "height": 256}}, "params.width"),
        ({"prompt": "x", "model": "fake", "fluxParams": {"width": 512}}, "params"),
        ({"prompt": "x", "model": "fake", "fluxParams": {"output_format": "gif"}}, "params.output_format"),
        ({"prompt": "x", "model": "fake", "fluxParams": {"aspect_ratio": "5:1"}}, "params.aspect_ratio"),
        ({"prompt": "x", "model": "fake", "fluxParams": {"colour": "red"}}, "params.colour"),
        ({"prompt": "x", "model": "fake", "fluxParams": {"image_prompt": "https://example.com/a.jpg"}}, "params.image_prompt"),
        ({"prompt": "x", "model": "fake", "fluxParams": {"image_prompt": "@@not an image@@"}}, "params.image_prompt"),
        ({"prompt": "x", "model": "fake", "fluxParams": {"image_prompt_strength": 0.5}}, "params"),
        ({"prompt": "x", "model": "fake", "fluxParams": {"steps": 51}}, "params.steps"),  # the model's max_steps
        ({"prompt": "x", "model": "fake", "fluxParams": {}, "params": {}}, None),
        ({"prompt": "x", "model": "fake", "n": 11}, "num_images"),
        ({"prompt": "x", "model": "fake", "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"prompt": "x", "model": "fake", "colour": "red"}, "colour"),
    ]
    for body, param in cases:
        r = client.post("/v2/images/generate", json=body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["message"], (body, err)
    r = client.post("/v2/images/generate", json=["not", "an", "object"])
    assert r.status_code == 422
    r = client.post("/v2/images/generate", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    assert client.get("/v1/credits").json()["credits"] == 1000.0
    from pixelmill.accounts.keys import authenticate

    with rt.db.engine.connect() as conn:
        account = authenticate(conn, client.headers["X-API-Key"]).account_id
    assert rt.executions.list(account) == []


def test_unknown_model_is_422_listing_the_models(start):
    _, client = start()
    r = client.post("/v2/images/generate", json={"prompt": "x", "model": "flux-1.1-pro"})
    assert r.status_code == 422
    body = r.json()
    assert body["error"]["code"] == "unknown_model" and body["models"] == ["fake"]
    assert "fake" in body["error"]["message"]


def test_other_accounts_and_unknown_jobs_are_404(start):
    rt, client = start()
    job_id = client.post("/v2/images/generate", json={"prompt": "x", "model": "fake", "fluxParams": {"width": 256, "height": 256}}).json()["jobId"]
    poll(client, job_id)
    other = {"X-API-Key": create_key(rt, account="other", plan="enterprise")}
    for method, path in (("get", f"/v2/jobs/{job_id}"), ("post", f"/v2/jobs/{job_id}/cancel"), ("get", "/v2/jobs/nope")):
        r = getattr(client, method)(path, headers=other)
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", (path, r.text)
    assert client.get(f"/v2/jobs/{job_id}").status_code == 200
    r = client.get(f"/v2/jobs/{job_id}", headers={"X-API-Key": ""})
    assert r.status_code == 401


def test_cancel_a_running_job_refunds_its_credits(start):
    backend = FakeBackend(step_delay=0.05, steps=100)
    rt, client = start(backend=backend)
    job_id = client.post("/v2/images/generate", json={"prompt": "slow", "model": "fake", "fluxParams": {"width": 1024, "height": 1024}}).json()["jobId"]
    assert backend.started.wait(10)
    running = wait_for(lambda: (b := client.get(f"/v2/jobs/{job_id}").json())["progress"] > 0 and b)
    assert running["status"] == "PROCESSING" and running["completedAt"] is None
    assert client.get("/v1/credits").json()["credits"] < 1000.0  # held while it runs
    r = client.post(f"/v2/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["jobId"] == job_id
    job = poll(client, job_id)
    assert job["status"] == "FAILED" and job["error"]["code"] == "cancelled" and job["result"] is None
    assert job["cost"] == 0 and job["completedAt"] is not None
    assert client.get("/v1/credits").json()["credits"] == 1000.0
    again = client.post(f"/v2/jobs/{job_id}/cancel")  # a finished job is returned unchanged
    assert again.status_code == 200 and again.json()["status"] == "FAILED"


def test_failed_generation_reports_the_error_and_charges_nothing(start):
    _, client = start(backend=FakeBackend(fail_with=RuntimeError("CUDA out of memory")))
    job_id = client.post("/v2/images/generate", json={"prompt": "x", "model": "fake", "fluxParams": {"width": 256, "height": 256}}).json()["jobId"]
    job = poll(client, job_id)
    assert job["status"] == "FAILED" and "out of memory" in job["error"]["message"] and job["result"] is None
    assert client.get("/v1/credits").json()["credits"] == 1000.0


def test_image_prompt_makes_an_image_to_image_job(start):
    import base64

    from tests.api.test_openai_http import EDIT_MODEL
    from tests.conftest import RecordingBackend

    backend = RecordingBackend()
    rt, client = start(extra_models={"fake-edit": (EDIT_MODEL, backend)})
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (0, 128, 255)).save(buf, "PNG")
    reference = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = client.post("/v2/images/generate", json={
        "prompt": "a car", "model": "fake-edit",
        "fluxParams": {"image_prompt": reference, "image_prompt_strength": 0.8, "width": 256, "height": 256},
    })
    assert r.status_code == 202, r.text
    assert poll(client, r.json()["jobId"])["status"] == "COMPLETED"
    [req] = backend.requests
    assert req.init_image.size == (48, 32) and req.init_image.getpixel((1, 1))[:3] == (0, 128, 255)
    assert req.strength == pytest.approx(0.2)  # follow the reference closely: little noise
    job = client.get(f"/v2/jobs/{r.json()['jobId']}").json()
    assert "base64" not in str(job)  # the reference image is not echoed back
