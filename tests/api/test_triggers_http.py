"""Trigger URLs: publish a workflow, start it without an API key from JSON, forms and browsers."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from pixelmill.accounts.keys import authenticate
from pixelmill.api.app import create_app
from pixelmill.store.tables import executions
from tests.conftest import FakeBackend, create_key, wait_for

WORKFLOW = {
    "name": "poster",
    "inputs": {
        "prompt": {"type": "string", "required": True},
        "seed": {"type": "integer", "default": 1},
        "guidance": {"type": "number", "default": 3.5},
    },
    "nodes": {
        "gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": {"$input": "prompt"}, "seed": {"$input": "seed"},
                                                    "guidance": {"$input": "guidance"}, "steps": 1, "width": 64, "height": 64}},
    },
}


@pytest.fixture
def api(make_runtime, db_url):
    rt = make_runtime(db_url, backend=FakeBackend(steps=1), webhook_dispatcher=False)
    owner_key = create_key(rt, "owner")
    client = TestClient(create_app(rt, manage_runtime=False))
    owner = {"x-key": owner_key}
    wid = client.post("/api/v1/workflows", json=WORKFLOW, headers=owner).json()["id"]
    with rt.db.engine.connect() as conn:
        account = authenticate(conn, owner_key).account_id
    return rt, client, owner, wid, account


def publish(client, owner, wid):
    r = client.post(f"/api/v1/workflows/{wid}/publish", headers=owner)
    assert r.status_code == 201, r.text
    return r.json()["triggerUrl"]


def test_json_post_starts_an_execution_billed_to_the_owner(api):
    rt, client, owner, wid, account = api
    url = publish(client, owner, wid)
    assert url.startswith("/api/v1/hooks/trg_")
    r = client.post(url, json={"inputs": {"prompt": "a cat", "seed": "42"}})  # no API key; "42" coerced
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) >= {"executionId", "status"} and body["status"] in ("QUEUED", "RUNNING", "COMPLETED")
    done = wait_for(lambda: (b := client.get(f"/api/v1/executions/{body['executionId']}", headers=owner).json())["status"] == "COMPLETED" and b)
    assert done["inputs"] == {"prompt": "a cat", "seed": 42}
    assert done["nodeRuns"][0]["seed"] == 42
    with rt.db.engine.connect() as conn:
        row = conn.execute(sa.select(executions.c.account_id, executions.c.dialect).where(executions.c.id == body["executionId"])).first()
    assert row.account_id == account and row.dialect == "trigger"
    assert client.get("/v1/credits", headers=owner).json()["credits"] < 1000.0  # the owner paid


def test_form_post_coerces_fields_to_input_types(api):
    rt, client, owner, wid, _ = api
    url = publish(client, owner, wid)
    r = client.post(url, data={"prompt": "from a form", "seed": "7", "guidance": "2.5"})
    assert r.status_code == 202, r.text
    eid = r.json()["executionId"]
    done = wait_for(lambda: (b := client.get(f"/api/v1/executions/{eid}", headers=owner).json())["status"] == "COMPLETED" and b)
    assert done["inputs"] == {"prompt": "from a form", "seed": 7, "guidance": 2.5}
    r = client.post(url, files={"prompt": (None, "multipart"), "seed": (None, "8")})
    assert r.status_code == 202, r.text
    r = client.post(url, data={"prompt": "x", "seed": "not a number"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_inputs"
    r = client.post(url, json={"inputs": {}})
    assert r.status_code == 422  # prompt is required


def test_cors_preflight_and_headers(api):
    rt, client, owner, wid, _ = api
    url = publish(client, owner, wid)
    r = client.options(url, headers={"Origin": "https://forms.example", "Access-Control-Request-Method": "POST",
                                     "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"].lower()
    r = client.post(url, json={"prompt": "x"}, headers={"Origin": "https://forms.example"})
    assert r.status_code == 202 and r.headers["access-control-allow-origin"] == "*"
    r = client.post("/api/v1/hooks/trg_unknown", json={"prompt": "x"}, headers={"Origin": "https://forms.example"})
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == "*"  # a browser can read the error


def test_rotate_and_revoke(api):
    rt, client, owner, wid, _ = api
    first = publish(client, owner, wid)
    assert client.post(f"/api/v1/workflows/{wid}/publish", headers=owner).status_code == 409
    r = client.post(f"/api/v1/workflows/{wid}/trigger/rotate", headers=owner)
    assert r.status_code == 201
    second = r.json()["triggerUrl"]
    assert second != first
    assert client.post(first, json={"prompt": "x"}).status_code == 404
    assert client.post(second, json={"prompt": "x"}).status_code == 202
    assert client.get(f"/api/v1/workflows/{wid}/trigger", headers=owner).json()["published"] is True
    assert client.delete(f"/api/v1/workflows/{wid}/trigger", headers=owner).status_code == 204
    assert client.post(second, json={"prompt": "x"}).status_code == 404
    assert client.delete(f"/api/v1/workflows/{wid}/trigger", headers=owner).status_code == 404


def test_only_the_owner_publishes_and_deleted_workflows_stop(api):
    rt, client, owner, wid, _ = api
    stranger = {"x-key": create_key(rt, "stranger")}
    assert client.post(f"/api/v1/workflows/{wid}/publish", headers=stranger).status_code == 404
    url = publish(client, owner, wid)
    assert client.delete(f"/api/v1/workflows/{wid}", headers=owner).status_code == 204
    assert client.post(url, json={"prompt": "x"}).status_code == 404


def test_trigger_calls_are_rate_limited_by_the_owners_plan(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=1), webhook_dispatcher=False,
                      plans={"tiny": {"requests_per_minute": 2}}, default_plan="tiny")
    key = create_key(rt, "owner", plan="tiny")
    client = TestClient(create_app(rt, manage_runtime=False))
    wid = client.post("/api/v1/workflows", json=WORKFLOW, headers={"x-key": key}).json()["id"]  # request 1
    url = client.post(f"/api/v1/workflows/{wid}/publish", headers={"x-key": key}).json()["triggerUrl"]  # request 2
    r = client.post(url, json={"prompt": "x"})
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1 and r.headers["access-control-allow-origin"] == "*"
