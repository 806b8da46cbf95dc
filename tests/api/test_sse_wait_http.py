"""Live progress over Server-Sent Events and synchronous waits (``Prefer: wait``) over HTTP."""

from __future__ import annotations

import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pixelmill.api.app import create_app
from pixelmill.api.wait import requested_wait
from tests.conftest import FakeBackend, create_key, wait_for

WORKFLOW = {
    "name": "one-image",
    "inputs": {"prompt": {"type": "string", "required": True}, "steps": {"type": "integer", "default": 2}},
    "nodes": {
        "gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": {"$input": "prompt"}, "steps": {"$input": "steps"},
                                                    "seed": 3, "width": 64, "height": 64, "output_format": "png"}},
    },
}


def make_client(make_runtime, url, backend, **settings):
    rt = make_runtime(url, backend=backend, webhook_dispatcher=False, **settings)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    return rt, client


@pytest.fixture
def slow(make_runtime, sqlite_url):
    return make_client(make_runtime, sqlite_url, FakeBackend(steps=6, step_delay=0.4))


@pytest.fixture
def fast(make_runtime, sqlite_url):
    return make_client(make_runtime, sqlite_url, FakeBackend(steps=2))


def read_sse(response) -> list[dict]:
    """Parse an SSE stream into messages: {"id", "event", "data"} (comments dropped)."""
    messages, current = [], {}
    for line in response.iter_lines():
        if line == "":
            if "data" in current:
                messages.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(": ")
        if field == "data":
            current["data"] = json.loads(value)
        elif field in ("id", "event"):
            current[field] = value
    return messages


def start_workflow(client, steps=6, headers=None, prompt="p"):
    wid = client.post("/api/v1/workflows", json=WORKFLOW).json()["id"]
    return client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": prompt, "steps": steps}}, headers=headers or {})


def test_signed_stream_url_opens_the_stream_without_a_key(fast):
    rt, client = fast
    body = start_workflow(client, steps=2).json()
    url = body["streamUrl"]
    assert url.startswith("http://testserver/api/v1/executions/") and "sig=" in url
    anonymous = TestClient(client.app)
    with anonymous.stream("GET", url, headers={"Origin": "https://app.example"}) as r:
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        names = [m["event"] for m in read_sse(r) if "id" in m]
    assert names[0] == "execution.created" and names[-1] == "execution.succeeded"
    # without the signature, or with another execution's, or expired: refused
    assert anonymous.get(url.split("?")[0]).status_code == 401
    other = start_workflow(client, steps=2).json()
    forged = other["streamUrl"].split("?")[0] + "?" + url.split("?")[1]
    r = anonymous.get(forged)
    assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature"
    expired = rt.signer.stream_url("http://testserver", body["executionId"], now=time.time() - 7200)
    r = anonymous.get(expired)
    assert r.status_code == 403 and r.json()["error"]["code"] == "url_expired"
    # a stream signature is not a file signature
    exp_sig = url.split("?")[1]
    assert anonymous.get(f"/files/{body['executionId']}/x.png?{exp_sig}").status_code == 403


def test_sse_streams_events_in_order_and_closes_after_terminal(slow):
    rt, client = slow
    eid = start_workflow(client).json()["executionId"]
    started = time.monotonic()
    with client.stream("GET", f"/api/v1/executions/{eid}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        messages = read_sse(r)
    took = time.monotonic() - started
    logged = [m for m in messages if "id" in m]
    names = [m["event"] for m in logged]
    assert names[0] == "execution.created"
    assert names[-1] == "execution.succeeded"
    assert names.index("execution.started") < names.index("node.completed") < names.index("execution.succeeded")
    assert "execution.progress" in names  # 6 steps × 0.4 s: at least one throttled progress event
    seqs = [int(m["id"]) for m in logged]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(m["data"]["executionId"] == eid for m in logged)
    snapshots = [m["data"] for m in messages if m.get("event") == "snapshot"]
    assert snapshots and {"status", "progress", "queuePosition"} <= set(snapshots[0])
    assert took < 10  # closed after the terminal event


def test_node_previews_stream_with_signed_urls_and_never_become_results(fast):
    rt, client = fast
    workflow = {"name": "previews", "nodes": {"gen": {"type": "text_to_image", "params": {
        "model": "fake", "prompt": "p", "steps": 6, "width": 96, "height": 64, "previews": 2, "output_format": "png"}}}}
    wid = client.post("/api/v1/workflows", json=workflow).json()["id"]
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {}})
    assert r.status_code in (200, 201, 202), r.text
    eid = r.json()["executionId"]
    with client.stream("GET", f"/api/v1/executions/{eid}/events") as r:
        previews = [m["data"] for m in read_sse(r) if m.get("event") == "node.preview"]
    assert [(p["node"], p["index"]) for p in previews] == [("gen", 0), ("gen", 1)]
    levels = []
    for p in previews:
        [image] = p["images"]
        assert (image["width"], image["height"]) == (96, 64) and p["files"] == [image["id"]]
        got = client.get(image["url"].replace(str(client.base_url), ""), headers={"x-key": ""})
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        levels.append(Image.open(io.BytesIO(got.content)).getpixel((0, 0)))
    assert levels == [(20, 20, 20), (40, 40, 40)]  # the fake backend's state after steps 2 and 4
    view = rt.executions.get(None, eid)
    assert len(view.result_files()) == 1 and view.result_files()[0].id not in {p["files"][0] for p in previews}


def test_sse_resume_with_last_event_id_yields_only_later_events(fast):
    rt, client = fast
    eid = start_workflow(client, steps=2).json()["executionId"]
    with client.stream("GET", f"/api/v1/executions/{eid}/events") as r:
        full = [m for m in read_sse(r) if "id" in m]
    middle = full[len(full) // 2]
    with client.stream("GET", f"/api/v1/executions/{eid}/events", headers={"Last-Event-ID": middle["id"]}) as r:
        rest = [m for m in read_sse(r) if "id" in m]
    assert [m["id"] for m in rest] == [m["id"] for m in full if int(m["id"]) > int(middle["id"])]
    assert rest[-1]["event"] == "execution.succeeded"
    with client.stream("GET", f"/api/v1/executions/{eid}/events", headers={"Last-Event-ID": full[-1]["id"]}) as r:
        assert [m for m in read_sse(r) if "id" in m] == []  # finished: closes at once


def test_sse_unknown_execution_is_404(fast):
    _, client = fast
    assert client.get("/api/v1/executions/nope/events").status_code == 404


def test_prefer_wait_returns_finished_workflow_execution(fast):
    rt, client = fast
    r = start_workflow(client, steps=2, headers={"Prefer": "wait"})
    assert r.status_code == 201, r.text
    assert r.headers["preference-applied"] == "wait=60"
    body = r.json()
    assert body["status"] == "COMPLETED"
    assert body["outputs"] and body["nodeRuns"][0]["status"] == "COMPLETED"
    assert client.get(body["outputs"][0]).status_code == 200


def test_prefer_wait_times_out_with_current_state(slow):
    rt, client = slow
    started = time.monotonic()
    r = start_workflow(client, headers={"Prefer": "wait=1"})
    took = time.monotonic() - started
    assert r.headers["preference-applied"] == "wait=1"
    body = r.json()
    assert body["status"] in ("QUEUED", "RUNNING")
    assert 0.9 <= took < 2.5
    assert r.headers["location"] == f"/api/v1/executions/{body['executionId']}"


def test_prefer_wait_is_capped_by_the_setting(make_runtime, sqlite_url):
    rt, client = make_client(make_runtime, sqlite_url, FakeBackend(steps=2), max_wait_s=5)
    r = start_workflow(client, steps=2, headers={"Prefer": "respond-async, wait=600"})
    assert r.headers["preference-applied"] == "wait=5"
    assert r.json()["status"] == "COMPLETED"


def test_bfl_prefer_wait_answers_like_get_result(fast):
    rt, client = fast
    r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256, "output_format": "png"}, headers={"Prefer": "wait=20"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "Ready" and body["result"]["sample"]
    assert body["polling_url"].endswith(f"/v1/get_result?id={body['id']}")
    assert r.headers["preference-applied"] == "wait=20"
    polled = client.get(body["polling_url"]).json()
    assert {k: v for k, v in polled.items() if k != "result"} == {k: v for k, v in body.items() if k not in ("result", "polling_url")}


def test_bfl_prefer_wait_unfinished_is_pending(slow):
    rt, client = slow
    r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256, "steps": 6}, headers={"Prefer": "wait=1"})
    body = r.json()
    assert body["status"] == "Pending" and body["result"] is None
    assert "polling_url" in body


def test_queued_execution_reports_position_and_estimated_start(make_runtime, sqlite_url):
    rt, client = make_client(make_runtime, sqlite_url, FakeBackend(steps=2, step_delay=0.3))
    assert start_workflow(client, steps=2, headers={"Prefer": "wait=10"}).json()["status"] == "COMPLETED"  # a timing sample
    for i in range(2):
        start_workflow(client, steps=2, prompt=f"busy {i}")  # distinct prompts: no cached results
    before = time.time()
    r = start_workflow(client, steps=2, headers={"Prefer": "wait=0"}, prompt="last")
    body = r.json()
    assert body["status"] == "QUEUED" and body["queuePosition"] >= 1
    assert body["estimatedStartAt"] > before + 0.3 * body["queuePosition"]  # about queue position × 0.6 s
    assert body["estimatedStartAt"] < before + 5 * body["queuePosition"]
    bfl = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256, "steps": 2}, headers={"Prefer": "wait=0"}).json()
    assert bfl["status"] == "Pending" and bfl["queue_position"] >= 1 and bfl["estimated_start_time"] > before


def test_prefer_header_parsing():
    assert requested_wait(None, 60) is None
    assert requested_wait("respond-async", 60) is None
    assert requested_wait("wait", 60) == 60
    assert requested_wait("wait=5", 60) == 5
    assert requested_wait("respond-async, wait=600", 60) == 60
    assert requested_wait('wait="3"', 60) == 3
    assert requested_wait("wait=soon", 60) is None
