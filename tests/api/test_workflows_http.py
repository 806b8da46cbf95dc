"""The workflow API over HTTP: CRUD, validation, dry run, execute, poll, cancel, batch, caching."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pixelmill.api.app import create_app
from tests.conftest import FakeBackend, create_key, wait_for

PIPELINE = {
    "name": "generate-upscale-cutout",
    "inputs": {"prompt": {"type": "string", "required": True}, "seed": {"type": "integer", "default": 5}},
    "nodes": {
        "gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": {"$input": "prompt"}, "seed": {"$input": "seed"}, "width": 64, "height": 64}},
        "up": {"type": "upscale", "params": {"factor": 2}, "inputs": {"image": ["gen", "images"]}},
        "cut": {"type": "remove_background", "inputs": {"image": ["up", "images"]}},
    },
}


@pytest.fixture
def api(make_runtime, db_url):
    rt = make_runtime(db_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["Authorization"] = f"Bearer {create_key(rt)}"
    return rt, client


def poll(client, eid, timeout=60):
    return wait_for(lambda: (b := client.get(f"/api/v1/executions/{eid}/poll").json())["status"] not in ("QUEUED", "RUNNING") and b, timeout)


def test_three_node_workflow_end_to_end(api):
    rt, client = api
    r = client.post("/api/v1/workflows", json=PIPELINE)
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    assert r.headers["location"] == f"/api/v1/workflows/{wid}"
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "a person"}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] in ("QUEUED", "RUNNING") and r.headers["location"] == f"/api/v1/executions/{body['executionId']}"
    done = poll(client, body["executionId"])
    assert done["status"] == "COMPLETED", done
    runs = {n["nodeId"]: n for n in done["nodeRuns"]}
    assert [n["status"] for n in done["nodeRuns"]] == ["COMPLETED"] * 3
    assert all(n["durationMs"] is not None and n["credits"] >= 0 for n in done["nodeRuns"])
    assert runs["gen"]["seed"] == 5
    assert done["credits"]["charged"] == pytest.approx(sum(n["credits"] for n in done["nodeRuns"]))
    img = Image.open(io.BytesIO(client.get(done["outputs"][0]).content))
    assert img.size == (128, 128) and img.mode == "RGBA"
    up = Image.open(io.BytesIO(client.get(runs["up"]["outputs"][0]["url"]).content))
    assert up.size == (128, 128)


def test_crud_and_listing(api):
    _, client = api
    ids = [client.post("/api/v1/workflows", json={**PIPELINE, "name": f"wf{i}"}).json()["id"] for i in range(3)]
    page = client.get("/api/v1/workflows?limit=2").json()
    assert page["total"] == 3 and len(page["data"]) == 2
    changed = {**PIPELINE, "name": "renamed"}
    r = client.put(f"/api/v1/workflows/{ids[0]}", json=changed)
    assert r.status_code == 200 and r.json()["name"] == "renamed" and r.json()["version"] == 2
    assert client.delete(f"/api/v1/workflows/{ids[0]}").status_code == 204
    assert client.get(f"/api/v1/workflows/{ids[0]}").status_code == 404
    assert client.get("/api/v1/workflows?limit=0").status_code == 422


def test_validation_lists_every_problem(api):
    _, client = api
    bad = {
        "name": "bad",
        "nodes": {
            "gen": {"type": "text_to_image", "params": {"model": "fake", "width": 99999}},
            "x": {"type": "nope"},
            "up": {"type": "upscale", "params": {"factor": 2}, "inputs": {"image": ["x", "images"]}},
            "loop1": {"type": "resize", "params": {"width": 8}, "inputs": {"image": ["loop2", "images"]}},
            "loop2": {"type": "resize", "params": {"width": 8}, "inputs": {"image": ["loop1", "images"]}},
        },
    }
    r = client.post("/api/v1/workflows", json=bad)
    assert r.status_code == 422
    problems = r.json()["problems"]
    nodes = {p["node"] for p in problems}
    assert {"gen", "x"} <= nodes
    assert any("cycle" in p["msg"] for p in problems)
    assert r.json()["error"]["code"] == "invalid_graph"


def test_dry_run_prices_without_running(api):
    rt, client = api
    wid = client.post("/api/v1/workflows", json=PIPELINE).json()["id"]
    r = client.post(f"/api/v1/workflows/{wid}/execute?dry_run=true", json={"inputs": {"prompt": "x"}})
    assert r.status_code == 200
    est = r.json()
    assert [b["nodeId"] for b in est["runs"][0]["breakdown"]] == ["gen", "up", "cut"]
    assert est["estimatedCredits"] > 0
    assert client.get("/api/v1/executions").json()["data"] == []


def test_missing_and_wrong_inputs(api):
    _, client = api
    wid = client.post("/api/v1/workflows", json=PIPELINE).json()["id"]
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {}})
    assert r.status_code == 422 and "required" in r.json()["problems"][0]["msg"]
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "x", "seed": "five"}})
    assert r.status_code == 422
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "x", "colour": "red"}})
    assert r.status_code == 422


def test_batch_and_pagination(api):
    _, client = api
    wid = client.post("/api/v1/workflows", json=PIPELINE).json()["id"]
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"batch": [{"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2}, {"prompt": "c", "seed": 3}]})
    assert r.status_code == 201
    batch = r.json()
    assert batch["batchId"] and len(batch["executionRuns"]) == 3
    for run in batch["executionRuns"]:
        poll(client, run["executionId"])
    b = client.get(f"/api/v1/batches/{batch['batchId']}").json()
    assert b["status"] == "COMPLETED" and len(b["executionRuns"]) == 3
    page1 = client.get("/api/v1/executions?limit=2").json()
    assert len(page1["data"]) == 2 and page1["hasMore"]
    page2 = client.get(f"/api/v1/executions?limit=2&before={page1['nextCursor']}").json()
    assert len(page2["data"]) == 1 and not page2["hasMore"]
    seen = {e["id"] for e in page1["data"] + page2["data"]}
    assert seen == {r["executionId"] for r in batch["executionRuns"]}


def test_rerun_uses_cache_and_costs_nothing(api):
    rt, client = api
    wid = client.post("/api/v1/workflows", json=PIPELINE).json()["id"]
    first = poll(client, client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "x"}}).json()["executionId"])
    credits = client.get("/v1/credits").json()["credits"]
    second = poll(client, client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "x"}}).json()["executionId"])
    assert [n["cached"] for n in second["nodeRuns"]] == [True, True, True]
    assert second["credits"]["charged"] == 0
    assert client.get("/v1/credits").json()["credits"] == credits


def test_cancel_running_execution(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=FakeBackend(step_delay=0.05))
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    wid = client.post("/api/v1/workflows", json=PIPELINE).json()["id"]
    eid = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "x"}, }).json()["executionId"]
    # ask for many steps so it is still running
    r = client.post(f"/api/v1/executions/{eid}/cancel")
    assert r.status_code == 200
    done = poll(client, eid)
    assert done["status"] == "CANCELLED"
    assert client.get("/v1/credits").json()["credits"] == 1000.0


def test_other_accounts_cannot_see_executions(api):
    rt, client = api
    wid = client.post("/api/v1/workflows", json=PIPELINE).json()["id"]
    eid = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "x"}}).json()["executionId"]
    other = {"Authorization": f"Bearer {create_key(rt, account='other')}"}
    assert client.get(f"/api/v1/executions/{eid}", headers=other).status_code == 404
    assert client.get(f"/api/v1/workflows/{wid}", headers=other).status_code == 404
    assert client.post(f"/api/v1/executions/{eid}/cancel", headers=other).status_code == 404


def test_node_types_are_described(api):
    _, client = api
    types = {t["type"]: t for t in client.get("/api/v1/nodes").json()["data"]}
    assert {"text_to_image", "upscale", "remove_background", "resize", "crop", "convert"} <= set(types)
    assert types["upscale"]["params"]["properties"]["factor"]["maximum"] == 4


ONE_NODE = {
    "name": "one",
    "inputs": {"prompt": {"type": "string", "default": "x"}},
    "nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": {"$input": "prompt"}, "width": 256, "height": 256}}},
}


@pytest.mark.parametrize("shortfall", ["credits", "active_tasks"])
def test_a_batch_is_all_or_nothing(make_runtime, db_url, shortfall):
    """A 3-run batch the account can afford (or hold active) only once: refused whole, nothing created or charged."""
    from pixelmill.accounts import ledger
    from pixelmill.accounts.keys import authenticate

    plans = {"free": {"max_active_tasks": 2}} if shortfall == "active_tasks" else {}
    rt = make_runtime(db_url, start=False, plans=plans)  # not started: nothing runs, so active runs stay active
    key = create_key(rt, credits=0)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = key
    wid = client.post("/api/v1/workflows", json=ONE_NODE).json()["id"]
    one_run = client.post(f"/api/v1/workflows/{wid}/execute?dry_run=true", json={"inputs": {}}).json()["estimatedCredits"]
    with rt.db.transaction() as conn:
        account = authenticate(conn, key).account_id
        ledger.grant(conn, account, one_run * 1.5 if shortfall == "credits" else 1000, "top-up")
        before = ledger.balance_micro(conn, account)
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"batch": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]})
    if shortfall == "credits":
        assert r.status_code == 402, r.text
        body = r.json()
        assert body["error"]["requiredCredits"] == pytest.approx(3 * one_run)
        assert [run["batchIndex"] for run in body["error"]["runs"]] == [0, 1, 2]
    else:
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "active_task_limit"
    assert rt.executions.list(account) == []
    with rt.db.engine.connect() as conn:
        assert ledger.balance_micro(conn, account) == before
        assert [e for e in ledger.entries(conn, account) if e["kind"] == "hold"] == []
    # one run fits: it goes through
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "a"}})
    assert r.status_code == 201, r.text
