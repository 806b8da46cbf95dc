"""The notifier: waiters learn of completion by a notice, in one process and across processes."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from pixelmill.engine.hooks import LifecycleEvent
from pixelmill.engine.lifecycle import Lifecycle
from pixelmill.engine.notify import ENDED, Hub, Notice, Notifier, PostgresNotifier, RedisNotifier, make_notifier
from pixelmill.store.db import Database
from tests.conftest import FakeBackend, create_key

WORKFLOW = {
    "name": "one-image",
    "inputs": {"prompt": {"type": "string", "required": True}},
    "nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": {"$input": "prompt"}, "steps": 2,
                                                          "seed": 3, "width": 64, "height": 64}}},
}


@pytest.mark.parametrize("route", ["prefer-wait", "sse", "openai"])
def test_waiters_are_woken_by_the_notice_not_the_safety_net(make_runtime, sqlite_url, route):
    """With the safety-net re-read 60 s away, each waiting route still answers as soon as the node finishes."""
    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=3, step_delay=0.2), webhook_dispatcher=False, wait_poll_s=60.0)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    if route == "openai":
        r = client.post("/v1/images/generations", json={"model": "fake", "prompt": "a red circle", "size": "256x256"},
                        headers={"x-key": client.headers["x-key"]})
        assert r.status_code == 200, r.text
        assert r.json()["data"]
        return
    wid = client.post("/api/v1/workflows", json=WORKFLOW).json()["id"]
    if route == "prefer-wait":
        # wait=15 < the 60 s safety net: a COMPLETED answer can only come from the notice
        r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "p"}}, headers={"Prefer": "wait=15"})
        assert r.status_code == 201 and r.json()["status"] == "COMPLETED", r.text
        return
    eid = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "p"}}).json()["executionId"]
    with client.stream("GET", f"/api/v1/executions/{eid}/events") as resp:
        text = "".join(resp.iter_text())
    assert "event: execution.succeeded" in text


def test_a_subscriber_that_arrives_after_the_end_is_woken_at_once():
    hub = Hub()
    hub.dispatch(Notice("execution", "e1", "execution.succeeded"))

    async def main():
        with hub.subscribe(["e1"]) as sub:
            assert await sub.wait(5.0)
            assert [n.event for n in sub.drain()] == [ENDED]
            assert sub.finished

    asyncio.run(main())


def test_notices_are_sent_only_after_commit_and_never_for_a_rollback(sqlite_url):
    from pixelmill.store import migrate

    migrate.upgrade(sqlite_url)
    db = Database(sqlite_url)
    notifier = Notifier()
    lifecycle = Lifecycle(hooks=[notifier])
    sub = notifier.subscribe(["x"])
    with pytest.raises(RuntimeError):
        with db.transaction() as conn:
            lifecycle.event(conn, "x", "execution.progress", {})
            raise RuntimeError("rolled back")
    assert sub.drain() == []
    with db.transaction() as conn:
        lifecycle.event(conn, "x", "execution.succeeded", {})
        assert sub.drain() == []  # not yet committed
    assert [n.event for n in sub.drain()] == ["execution.succeeded"]
    db.dispose()


def _cross_process(sender: Notifier, receiver: Notifier, db: Database) -> None:
    """A notice sent by one notifier (one process) wakes a subscriber of another."""
    got = threading.Event()
    keys_seen: list[Notice] = []
    receiver.listen("keys", keys_seen.append)
    sub = receiver.subscribe(["exec-1"])
    assert receiver.connected.wait(10), "the receiving side never connected"
    lifecycle = Lifecycle(hooks=[sender])
    with db.transaction() as conn:
        lifecycle.event(conn, "exec-1", "execution.succeeded", {})
    assert sub.wait_sync(10), "the notice never arrived"
    assert any(n.event == "execution.succeeded" and n.id == "exec-1" for n in sub.drain())
    sender.publish(None, Notice("keys", ""))
    for _ in range(100):
        if keys_seen:
            got.set()
            break
        threading.Event().wait(0.05)
    assert got.is_set(), "the keys notice never arrived"
    sub.close()


def test_postgres_listen_notify_wakes_another_process(pg_database):
    db = Database(pg_database)
    sender, receiver = PostgresNotifier(pg_database), PostgresNotifier(pg_database)
    try:
        _cross_process(sender, receiver, db)
        # a rolled-back transaction sends nothing
        sub = receiver.subscribe(["exec-2"])
        with pytest.raises(RuntimeError):
            with db.transaction() as conn:
                Lifecycle(hooks=[sender]).event(conn, "exec-2", "execution.succeeded", {})
                raise RuntimeError("rolled back")
        assert not sub.wait_sync(0.5)
    finally:
        receiver.stop()
        sender.stop()
        db.dispose()


def test_redis_pubsub_wakes_another_process(broker_url, sqlite_url):
    from pixelmill.store import migrate

    migrate.upgrade(sqlite_url)
    db = Database(sqlite_url)
    sender, receiver = RedisNotifier(broker_url), RedisNotifier(broker_url)
    try:
        _cross_process(sender, receiver, db)
    finally:
        receiver.stop()
        sender.stop()
        db.dispose()


def test_auto_choice_of_notifier():
    assert type(make_notifier("auto", "inprocess", "sqlite:///x.db", "redis://h/0")) is Notifier
    assert isinstance(make_notifier("auto", "celery", "postgresql://u@h/db", "redis://h/0"), PostgresNotifier)
    assert isinstance(make_notifier("auto", "celery", "sqlite:///x.db", "redis://h/0"), RedisNotifier)


def test_lifecycle_event_reaches_the_notifier_as_a_hook():
    n = Notifier()
    sub = n.subscribe(["e"])
    n.after_commit(LifecycleEvent("e", "execution.failed", {}))
    assert [x.event for x in sub.drain()] == ["execution.failed"]
