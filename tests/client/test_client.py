"""pixelmill.client (sync and async) against a real server on a local port."""

from __future__ import annotations

import asyncio
import io
import json
import time
from datetime import datetime, timezone

import httpx
import pytest
from PIL import Image

from pixelmill.api.app import create_app
from pixelmill.client import AsyncClient, Client, PixelmillError, verify_webhook
from tests.helpers.servers import serve
from tests.conftest import FakeBackend, create_key


@pytest.fixture
def server(make_runtime, db_url):
    rt = make_runtime(db_url, backend=FakeBackend(steps=4, step_delay=0.05))
    with serve(create_app(rt, manage_runtime=False)) as base:
        yield rt, base, create_key(rt, credits=50.0)


def test_generate_stream_wait_and_download(server):
    rt, base, key = server
    with Client(base, key) as px:
        job = px.generate("a red circle", model="fake", width=64, height=64, seed=7)
        assert job.status in ("QUEUED", "RUNNING", "COMPLETED")
        events = list(px.events(job.id))
        types = [e.type for e in events]
        assert types[-1] == "execution.succeeded" and "node.started" in types and "node.completed" in types
        assert [e.id for e in events if e.id is not None] == sorted(e.id for e in events if e.id is not None)
        done = px.wait(job.id)
        assert done.status == "COMPLETED" and done.done and len(done.outputs) == 1
        image = Image.open(io.BytesIO(px.download(done.outputs[0])))
        assert image.size == (64, 64)
        assert done.credits["charged"] > 0 and px.credits() == pytest.approx(50.0 - done.credits["charged"])
        # resuming after the last event gives nothing more
        assert list(px.events(job.id, last_event_id=events[-1].id)) == []


def test_async_client_does_the_same(server):
    rt, base, key = server

    async def main():
        async with AsyncClient(base, key) as px:
            job = await px.generate("a blue square", model="fake", width=64, height=64, seed=3)
            seen = [e.type async for e in px.events(job.id)]
            done = await px.wait(job.id)
            data = await px.download(done.outputs[0])
            return seen, done, data

    seen, done, data = asyncio.run(main())
    assert seen[-1] == "execution.succeeded" and done.status == "COMPLETED"
    assert Image.open(io.BytesIO(data)).size == (64, 64)


def test_workflows_execute_and_cancel(server):
    rt, base, key = server
    spec = {
        "name": "gen",
        "inputs": {"prompt": {"type": "string", "required": True}},
        "nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": {"$input": "prompt"}, "width": 64, "height": 64, "steps": 40}}},
    }
    with Client(base, key) as px:
        wf = px.create_workflow(spec)
        assert wf.name == "gen" and px.get_workflow(wf.id).id == wf.id
        running = px.execute(wf.id, {"prompt": "a cat"})
        cancelled = px.cancel(running.id)
        final = px.wait(cancelled.id, timeout=20)
        assert final.status == "CANCELLED"
        spec["nodes"]["gen"]["params"]["steps"] = 2
        px.update_workflow(wf.id, spec)
        assert px.execute(wf.id, {"prompt": "a dog"}, wait=True).status == "COMPLETED"
        with pytest.raises(PixelmillError) as err:
            px.execute(wf.id, {})
        assert err.value.status in (400, 422) and err.value.code


def test_errors_carry_status_and_stable_code(server):
    rt, base, key = server
    with Client(base, "sk-not-a-key", max_retries=0) as px:
        with pytest.raises(PixelmillError) as err:
            px.credits()
    assert err.value.status in (401, 403) and err.value.code
    with Client(base, key, max_retries=0) as px:
        with pytest.raises(PixelmillError) as err:
            px.generate("a red circle", model="fake", width=2048, height=2048, n=10)
    assert err.value.status == 402 and err.value.code


def test_posts_carry_one_idempotency_key_across_retries_and_honour_retry_after():
    seen: list[str | None] = []
    clock: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("idempotency-key"))
        clock.append(time.monotonic())
        if len(seen) < 3:
            return httpx.Response(503, headers={"Retry-After": "0.2"}, json={"error": {"code": "queue_unavailable", "message": "later"}})
        return httpx.Response(200, json={"jobId": "x"})

    with Client("http://pixelmill.test", "sk-x", transport=httpx.MockTransport(handler)) as px:
        assert px.request("POST", "/v2/images/generate", json_body={}) == {"jobId": "x"}
    keys = set(seen)
    assert len(seen) == 3 and len(keys) == 1 and None not in keys
    assert clock[1] - clock[0] >= 0.19 and clock[2] - clock[1] >= 0.19


def test_a_replayed_post_is_answered_from_the_first(server):
    rt, base, key = server
    body = {"prompt": "a red circle", "model": "fake", "params": {"width": 64, "height": 64}}
    with Client(base, key) as px:
        first = px.request("POST", "/v2/images/generate", json_body=body, idempotency_key="same-key")
        again = px.request("POST", "/v2/images/generate", json_body=body, idempotency_key="same-key")
    assert first["jobId"] == again["jobId"]


def test_verify_webhook_accepts_signed_and_refuses_forged():
    from standardwebhooks import Webhook

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    payload = json.dumps({"type": "execution.succeeded", "data": {"executionId": "e1"}})
    sent = datetime.now(timezone.utc).replace(microsecond=0)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(sent.timestamp()))}
    headers["webhook-signature"] = Webhook(secret).sign("msg_1", sent, payload)
    assert verify_webhook(payload, headers, secret)["data"]["executionId"] == "e1"
    with pytest.raises(Exception):
        verify_webhook(payload.replace("e1", "e2"), headers, secret)


def test_both_clients_retry_lost_connections_and_give_up_after_max_retries():
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(503, json={"error": {"code": "queue_unavailable", "message": "later"}}, headers={"Retry-After": "0"})

    with Client("http://pixelmill.test", "sk-x", max_retries=2, transport=httpx.MockTransport(handler)) as px:
        with pytest.raises(PixelmillError) as err:
            px.credits()
    assert err.value.status == 503 and err.value.code == "queue_unavailable" and len(calls) == 3
    assert all("idempotency-key" not in r.headers for r in calls)  # a GET needs none

    async def main():
        async with AsyncClient("http://pixelmill.test", "sk-x", max_retries=2, transport=httpx.MockTransport(handler)) as px:
            return await px.request("POST", "/api/v1/executions", json_body={"nodes": {}})

    calls.clear()
    with pytest.raises(PixelmillError) as err:
        asyncio.run(main())
    assert err.value.status == 503 and len(calls) == 3
    assert len({r.headers["idempotency-key"] for r in calls}) == 1

    calls.clear()
    with Client("http://pixelmill.test", "sk-x", max_retries=0, transport=httpx.MockTransport(handler)) as px:
        with pytest.raises(httpx.ConnectError):
            px.credits()
    assert len(calls) == 1


def test_an_executions_graph_runs_again(server):
    rt, base, key = server
    with Client(base, key) as px:
        first = px.generate("a red circle", model="fake", width=64, height=64, seed=7, wait=True)
        graph = px.execution_graph(first.id)
        node = next(iter(graph.nodes.values()))
        assert node["type"] == "text_to_image" and node["params"]["seed"] == 7
        again = px.run_graph(graph, label="again", wait=True, timeout=30)
        assert again.id != first.id and again.status == "COMPLETED" and len(again.outputs) == 1
        assert px.execution_graph(again.id) == graph
        with pytest.raises(PixelmillError) as err:
            px.run_graph({"nodes": {"x": {"type": "no_such_node", "params": {}}}})
        assert err.value.status in (400, 422) and err.value.code == "invalid_graph"

    async def main():
        async with AsyncClient(base, key) as px:
            graph = await px.execution_graph(first.id)
            started = await px.run_graph(graph.to_dict())
            return graph, started, await px.wait(started.id, timeout=30)

    graph_async, started, done = asyncio.run(main())
    assert graph_async == graph and started.status in ("QUEUED", "RUNNING", "COMPLETED")
    assert done.status == "COMPLETED" and len(done.outputs) == 1
