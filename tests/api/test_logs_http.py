"""Logs: JSON lines carrying the request id (the client's x-request-id, or a made one), and one line per state change."""

from __future__ import annotations

import io
import json
import logging
import threading

from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from pixelmill.ops.logs import BackgroundHandler, JsonFormatter, configure_logging
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
        root.handlers[0].flush()  # lines are written by a thread of their own
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert "INFO pixelmill.t: hello" in tty.getvalue()
    assert json.loads(pipe.getvalue().splitlines()[-1])["message"] == "hello"


class _StalledStream(io.StringIO):
    """A log reader that stops reading (a paused collector, a full pipe): every write waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.entered = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        self.released.wait()
        return super().write(s)


def test_a_stalled_log_reader_holds_up_no_request(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    stream = _StalledStream()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    answers: list[int] = []
    try:
        configure_logging(stream=stream)

        def requests() -> None:
            for i in range(20):
                answers.append(client.get("/healthz").status_code)
                answers.append(client.get("/v1/get_result", params={"id": f"missing-{i}"}).status_code)

        t = threading.Thread(target=requests, daemon=True)
        t.start()
        t.join(timeout=20)
        assert stream.entered.is_set(), "the access lines were logged"
        assert not t.is_alive() and len(answers) == 40, f"requests waited for the log reader ({len(answers)} of 40 answered)"
        assert set(answers) == {200}  # an unknown id is BFL's "Task not found"
        stream.released.set()
        root.handlers[0].flush()
    finally:
        stream.released.set()
        for h in root.handlers:
            h.close()
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    access = [json.loads(line) for line in stream.getvalue().splitlines() if '"pixelmill.access"' in line]
    assert sum("GET /healthz 200" in x["message"] for x in access) == 20
    assert sum("GET /v1/get_result 200" in x["message"] for x in access) == 20
    assert all(x.get("request_id") for x in access)  # the request's id, captured where it was logged


def test_lines_a_stalled_reader_cannot_take_are_dropped_and_counted():
    stream = _StalledStream()
    handler = BackgroundHandler(stream, JsonFormatter(), capacity=5)
    log = logging.getLogger("pixelmill.t.dropped")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("line 0")
        assert stream.entered.wait(5)  # the writer holds line 0, waiting for the reader
        for i in range(1, 20):
            log.warning("line %d", i)  # 5 wait in the queue, 14 are dropped; none of these calls waits
        stream.released.set()
        handler.flush()
        log.warning("line 20")  # the first line after the gap: the count is written before it
        handler.flush()
    finally:
        stream.released.set()
        log.removeHandler(handler)
        log.propagate = True
        handler.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [x["message"] for x in lines] == [f"line {i}" for i in range(6)] + ["14 log lines dropped while the log stream was not read", "line 20"]
    assert lines[6]["level"] == "warning"


def test_an_exceptions_traceback_is_in_its_line_in_json_and_in_plain_text():
    json_out, plain_out = io.StringIO(), io.StringIO()
    handlers = [BackgroundHandler(json_out, JsonFormatter()), BackgroundHandler(plain_out, logging.Formatter("%(levelname)s %(message)s"))]
    log = logging.getLogger("pixelmill.t.exc")
    log.propagate = False
    for h in handlers:
        log.addHandler(h)
    try:
        try:
            {}["missing"]
        except KeyError:
            log.exception("lookup failed")
        for h in handlers:
            h.flush()
    finally:
        log.propagate = True
        for h in handlers:
            log.removeHandler(h)
            h.close()
    line = json.loads(json_out.getvalue())
    assert line["message"] == "lookup failed" and line["level"] == "error"
    assert "Traceback" in line["exception"] and "KeyError: 'missing'" in line["exception"]
    assert plain_out.getvalue().startswith("ERROR lookup failed\nTraceback") and "KeyError: 'missing'" in plain_out.getvalue()


def test_lines_are_still_written_after_uvicorn_configures_its_own_loggers():
    """uvicorn's start runs ``logging.config.dictConfig``, which closes every existing handler and
    leaves the root's attached: the server's lines must go on being written."""
    import logging.config

    from uvicorn.config import LOGGING_CONFIG

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    try:
        configure_logging(stream=out)
        logging.config.dictConfig(LOGGING_CONFIG)
        logging.getLogger("pixelmill.access").info("GET /healthz 200")
        root.handlers[0].flush()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert json.loads(out.getvalue().splitlines()[-1])["message"] == "GET /healthz 200"
