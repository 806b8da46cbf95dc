"""Idempotency-Key tied to the execution its request created, over HTTP on SQLite and PostgreSQL:
a retry whose first request is still waiting, or whose server died, is answered from that
execution; answers that say "retry" (5xx, 409, 429) are never replayed."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from pixelmill.store.tables import credit_ledger, idempotency_keys
from tests.conftest import FakeBackend, create_key, wait_for
from tests.queue.conftest import broker_db, broker_url  # noqa: F401  (Redis fixtures)

BFL = ("/v1/flux-dev", {"prompt": "a red circle", "width": 256, "height": 256, "seed": 1}, {"Prefer": "wait=30"})
OPENAI = ("/v1/images/generations", {"model": "fake", "prompt": "a red circle", "size": "256x256", "seed": 1}, {})


def _ledger_kinds(rt) -> list[str]:
    with rt.db.engine.connect() as conn:
        return sorted(conn.execute(sa.select(credit_ledger.c.kind).where(credit_ledger.c.kind != "grant")).scalars())


def _account_executions(rt, key):
    from pixelmill.accounts import keys

    with rt.db.engine.connect() as conn:
        account = keys.authenticate(conn, key).account_id
    return rt.executions.list(account, limit=100)


@pytest.mark.parametrize("route", [BFL, OPENAI], ids=["bfl-wait", "openai-sync"])
def test_a_retry_while_the_first_request_waits_is_answered_from_its_execution(make_runtime, db_url, route):
    path, body, wait = route
    backend = FakeBackend(steps=10, step_delay=0.1)
    rt = make_runtime(db_url, backend=backend)
    client = TestClient(create_app(rt, manage_runtime=False))
    key = create_key(rt)
    headers = {"x-key": key, "Idempotency-Key": "k-wait", **wait}
    first: list = []
    thread = threading.Thread(target=lambda: first.append(client.post(path, json=body, headers=headers)))
    thread.start()
    assert backend.started.wait(20)
    retry = client.post(path, json=body, headers=headers)  # the first request has not answered yet
    thread.join(30)
    assert first[0].status_code == 200, first[0].text
    assert retry.status_code == 200, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    [execution] = _account_executions(rt, key)
    assert execution.status.value == "succeeded"
    if path == BFL[0]:
        assert retry.json()["id"] == first[0].json()["id"] == execution.id
        assert retry.json()["status"] == "Ready"  # it waited for the execution, as the request asked
    else:
        assert retry.headers["X-Execution-Id"] == first[0].headers["X-Execution-Id"] == execution.id
        assert len(retry.json()["data"]) == 1
    assert backend.calls == 1
    assert _ledger_kinds(rt) == ["capture", "hold"]


@pytest.mark.parametrize("route", [BFL, OPENAI], ids=["bfl-wait", "openai-sync"])
def test_a_retry_after_the_server_died_mid_request_is_answered_from_its_execution(make_runtime, db_url, route):
    """The state a crash leaves: the key's record still "processing", bound to an execution that runs on
    (another API node, or the restarted server, finishes it).  Before this change the retry got 409, then
    after the abandonment period a second execution, charged again."""
    path, body, wait = route
    backend = FakeBackend(steps=10, step_delay=0.05)
    rt = make_runtime(db_url, backend=backend)
    client = TestClient(create_app(rt, manage_runtime=False))
    key = create_key(rt)
    headers = {"x-key": key, "Idempotency-Key": "k-crash", **wait}
    first = client.post(path, json=body, headers=headers)
    assert first.status_code == 200
    with rt.db.transaction() as conn:  # the response never got saved: the process died while waiting
        conn.execute(sa.update(idempotency_keys).values(state="processing", response_status=None, response_body=None, response_headers=None))
    retry = client.post(path, json=body, headers=headers)
    assert retry.status_code == 200, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert len(_account_executions(rt, key)) == 1 and backend.calls == 1
    assert _ledger_kinds(rt) == ["capture", "hold"]
    if path == BFL[0]:
        assert retry.json()["id"] == first.json()["id"] and retry.json()["status"] == "Ready"
    else:
        assert retry.headers["X-Execution-Id"] == first.headers["X-Execution-Id"]
    with rt.db.engine.connect() as conn:  # the answer is now saved for later replays
        assert conn.execute(sa.select(idempotency_keys.c.state)).scalar_one() == "done"


class _Proxy:
    """A TCP forwarder in front of Redis that can be taken down and brought back on the same port."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_a_503_while_the_broker_is_down_is_not_replayed_once_it_is_back(make_runtime, db_url, broker_url):
    from urllib.parse import urlsplit

    from celery.contrib.testing.worker import start_worker

    parts = urlsplit(broker_url)
    proxy = _Proxy((parts.hostname, parts.port or 6379))
    backend = FakeBackend()
    rt = make_runtime(db_url, backend=backend, queue="celery", broker_url=f"redis://127.0.0.1:{proxy.port}{parts.path}", republish_after_s=0)
    client = TestClient(create_app(rt, manage_runtime=False))
    key = create_key(rt)
    client.headers["x-key"] = key
    headers = {"Idempotency-Key": "broker-flap"}
    path, body, _ = BFL

    r = client.post(path, json=body, headers=headers)  # the proxy is down: nothing listens
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_unavailable"
    assert client.post(path, json=body, headers=headers).status_code == 503  # still down: still 503, not a replay of it

    proxy.up()
    try:
        r = client.post(path, json=body, headers=headers)
        assert r.status_code == 200, r.text
        assert "Idempotent-Replayed" not in r.headers
        job = r.json()["id"]
        worker_app = rt.queue.app  # a worker on the same broker
        with start_worker(worker_app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING",
                          queues=["model.fake", "default"], shutdown_timeout=20):
            wait_for(lambda: client.get(f"/v1/get_result?id={job}").json()["status"] == "Ready", timeout=30)
        again = client.post(path, json=body, headers=headers)
        assert again.headers["Idempotent-Replayed"] == "true" and again.json()["id"] == job
        statuses = sorted((v.status.value, v.error_code or "") for v in _account_executions(rt, key))
        assert statuses == [("failed", "queue_unavailable"), ("failed", "queue_unavailable"), ("succeeded", "")]
        assert backend.calls == 1
    finally:
        proxy.down()
