"""Logs: JSON lines carrying the request id (the client's x-request-id, or a made one), and one line per state change."""

from __future__ import annotations

import io
import json
import logging

from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from pixelmill.ops.logs import JsonFormatter, configure_logging
from tests.conftest import create_key, wait_for


def test_request_and_state_change_lines_carry_the_request_and_execution_ids(make_runtime, sqlite_url):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    pixelmill_log = logging.getLogger("pixelmill")
    before = pixelmill_log.level
    pixelmill_log.addHandler(handler)
    pixelmill_log.setLevel(logging.INFO)
    try:
        rt = make_runtime(sqlite_url)
        client = TestClient(create_app(rt, manage_runtime=False))
        client.headers["x-key"] = create_key(rt)
        r = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}, headers={"x-request-id": "req-42"})
        eid = r.json()["id"]
        assert r.headers["x-request-id"] == "req-42"
        wait_for(lambda: '"execution.succeeded"' in stream.getvalue())
    finally:
        pixelmill_log.removeHandler(handler)
        pixelmill_log.setLevel(before)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [x for x in lines if x["logger"] == "pixelmill.access" and x.get("request_id") == "req-42"]
    assert access and "POST /v1/flux-dev 200" in access[0]["message"]
    created = [x for x in lines if x.get("event") == "execution.created"]
    assert created and created[0]["execution_id"] == eid and created[0]["request_id"] == "req-42"
    events = {x["event"] for x in lines if x.get("execution_id") == eid}
    assert {"execution.created", "node.started", "node.completed", "execution.succeeded"} <= events
    assert any(x.get("node_id") == "generate" for x in lines if x.get("event") == "node.completed")


def test_plain_text_on_a_terminal_and_json_elsewhere():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        tty, pipe = Tty(), io.StringIO()
        configure_logging(stream=tty)
        logging.getLogger("pixelmill.t").info("hello")
        configure_logging(stream=pipe)
        logging.getLogger("pixelmill.t").info("hello")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert "INFO pixelmill.t: hello" in tty.getvalue()
    assert json.loads(pipe.getvalue().splitlines()[-1])["message"] == "hello"
