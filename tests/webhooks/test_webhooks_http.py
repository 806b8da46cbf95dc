"""The webhook API: endpoint config, secrets and rotation, the delivery log and redelivery."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from tests.conftest import FakeBackend, create_key, wait_for
from tests.webhooks.receiver import Receiver, verify

WORKFLOW = {
    "name": "w",
    "inputs": {"prompt": {"type": "string", "default": "p"}},
    "nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": {"$input": "prompt"}, "steps": 1, "width": 64, "height": 64}}},
}


@pytest.fixture
def api(make_runtime, db_url):
    rt = make_runtime(db_url, backend=FakeBackend(steps=1), webhook_dispatcher=False, url_allow_networks=["127.0.0.0/8"])
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    receiver = Receiver().up()
    yield rt, client, receiver
    receiver.down()


def run_workflow(client, **extra):
    wid = client.post("/api/v1/workflows", json=WORKFLOW).json()["id"]
    eid = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {}, **extra}).json()["executionId"]
    wait_for(lambda: client.get(f"/api/v1/executions/{eid}").json()["status"] == "COMPLETED")
    return eid


def drain(rt):
    while rt.dispatcher.run_once():
        pass


def test_config_and_secret(api):
    rt, client, receiver = api
    assert client.get("/api/v1/webhooks/config").json() == {"url": None}
    r = client.put("/api/v1/webhooks/config", json={"url": receiver.url})
    assert r.status_code == 200 and r.json() == {"url": receiver.url}
    assert client.get("/api/v1/webhooks/config").json() == {"url": receiver.url}
    key = client.get("/api/v1/webhooks/secret").json()["key"]
    assert key.startswith("whsec_") and client.get("/api/v1/webhooks/secret").json()["key"] == key
    run_workflow(client, webhook_events=["completed"])
    drain(rt)
    (got,) = receiver.received
    verify(key, got)
    assert client.put("/api/v1/webhooks/config", json={"url": None}).json() == {"url": None}


def test_internal_webhook_url_is_refused_at_config(api):
    rt, client, _ = api
    r = client.put("/api/v1/webhooks/config", json={"url": "http://169.254.169.254/hook"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_webhook_url"
    r = client.put("/api/v1/webhooks/config", json={"url": "ftp://example.com/x"})
    assert r.status_code == 422


def test_rotation_keeps_the_previous_secret_signing(api):
    rt, client, receiver = api
    old = client.get("/api/v1/webhooks/secret").json()["key"]
    r = client.post("/api/v1/webhooks/secret/rotate")
    new = r.json()["key"]
    assert new != old and r.json()["previousKeyActive"] is True
    assert client.get("/api/v1/webhooks/secret").json() == {"key": new}
    run_workflow(client, webhook_url=receiver.url, webhook_events=["completed"])
    drain(rt)
    (got,) = receiver.received
    verify(new, got)
    verify(old, got)
    newest = client.post("/api/v1/webhooks/secret/rotate").json()["key"]
    run_workflow(client, webhook_url=receiver.url, webhook_events=["completed"])
    drain(rt)
    last = receiver.received[-1]
    assert len(last.headers["webhook-signature"].split()) == 2
    verify(newest, last)
    verify(new, last)
    with pytest.raises(Exception):
        verify(old, last)  # two rotations ago: no longer signs


def test_delivery_log_and_redelivery(api):
    rt, client, receiver = api
    receiver.answers = [(500, {})]
    eid = run_workflow(client, webhook_url=receiver.url, webhook_events=["completed"])
    drain(rt)  # first attempt fails: 500
    log = client.get("/api/v1/webhooks/events", params={"execution_id": eid}).json()["data"]
    (event,) = log
    assert event["type"] == "execution.completed" and event["state"] == "pending" and event["attempts"] == 1
    (attempt,) = event["deliveries"]
    assert attempt["statusCode"] == 500 and attempt["latencyMs"] > 0
    r = client.post(f"/api/v1/webhooks/events/{event['id']}/redeliver")
    assert r.status_code == 202 and r.json()["state"] == "pending"
    drain(rt)
    (event,) = client.get("/api/v1/webhooks/events", params={"execution_id": eid}).json()["data"]
    assert event["state"] == "delivered" and [d["statusCode"] for d in event["deliveries"]] == [500, 200]
    # a delivered event can be sent again on request: same webhook-id, receivers dedupe
    client.post(f"/api/v1/webhooks/events/{event['id']}/redeliver")
    drain(rt)
    assert receiver.ids() == [event["id"], event["id"]]
    other = {"x-key": create_key(rt, "other")}
    assert client.get("/api/v1/webhooks/events", params={"execution_id": eid}, headers=other).json()["data"] == []
    assert client.post(f"/api/v1/webhooks/events/{event['id']}/redeliver", headers=other).status_code == 404
