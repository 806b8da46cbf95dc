"""The BFL API as BFL's official Python SDK (``blackforest``) and plain HTTP clients see it:
error bodies with a top-level ``message``, ``X-Request-Id`` on every answer and in the log."""

from __future__ import annotations

import logging

import pytest
from blackforest import BFLClient
from blackforest.client import BFLError
from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from tests.helpers.servers import serve
from tests.conftest import create_key


@pytest.fixture
def server(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    app = create_app(rt, manage_runtime=False)
    with serve(app) as base:
        yield rt, app, base


def test_sdk_shows_the_servers_message_for_a_bad_key(server):
    _, _, base = server
    client = BFLClient(api_key="sk-not-a-key", base_url=base)
    with pytest.raises(BFLError) as info:
        client.generate("flux-pro-1.1", {"prompt": "a red circle"})
    text = str(info.value)
    assert "Client Error" not in text  # the SDK read our top-level message, not requests' status line
    assert "key" in text.lower(), text


def test_every_error_body_has_a_top_level_message(server):
    rt, app, _ = server
    client = TestClient(app)
    key = create_key(rt)
    cases = [
        client.post("/v1/flux-pro-1.1", json={"prompt": "x"}),  # 401 no key
        client.post("/v1/flux-pro-1.1", json={"prompt": "x"}, headers={"x-key": "sk-nope"}),  # 403
        client.post("/v1/flux-pro-1.1", json={"prompt": "x", "width": 250}, headers={"x-key": key}),  # BFL 422
        client.post("/v1/no-such-endpoint", json={}, headers={"x-key": key}),  # 404
        client.get("/v1/credits", params={"x": 1}, headers={"x-key": key}),  # fine: no error
        client.post("/v2/images/generate", json={"prompt": ""}, headers={"x-key": key}),  # apiframe 422
        client.get("/api/v1/executions/nope", headers={"x-key": key}),  # 404
        client.delete("/v1/credits", headers={"x-key": key}),  # 405
    ]
    for r in cases:
        if r.status_code < 400:
            continue
        body = r.json()
        assert isinstance(body.get("message"), str) and body["message"], (r.status_code, body)
        assert "detail" in body, body
    bfl_422 = cases[2].json()
    assert bfl_422["detail"][0]["loc"] == ["body", "width"]  # BFL's own shape kept beside it
    assert "body.width" in bfl_422["message"]


def test_request_id_is_answered_and_logged(server, caplog):
    rt, app, _ = server
    client = TestClient(app)
    key = create_key(rt)
    with caplog.at_level(logging.INFO, logger="pixelmill.access"):
        r = client.post("/v1/flux-pro-1.1", json={"prompt": "x", "width": 250}, headers={"x-key": key})
        mine = client.get("/v1/credits", headers={"x-key": key, "X-Request-Id": "trace-42"})
        odd = client.get("/v1/credits", headers={"x-key": key, "X-Request-Id": "bad id\nwith newline"})
    rid = r.headers["x-request-id"]
    assert rid and mine.headers["x-request-id"] == "trace-42"
    assert odd.headers["x-request-id"] != "bad id\nwith newline"  # never echoed into headers or logs
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "pixelmill.access"]
    assert any(rid in line and "422" in line and "/v1/flux-pro-1.1" in line for line in lines), lines
    assert any("trace-42" in line for line in lines), lines
