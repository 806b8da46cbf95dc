"""Outbox and dispatcher over SQLite and PostgreSQL, against a real local receiver."""

from __future__ import annotations

import random
import threading

import pytest
import sqlalchemy as sa

from pixelmill.accounts.keys import authenticate
from pixelmill.engine.service import Submission
from pixelmill.store.tables import accounts, executions, webhook_attempts, webhook_events
from pixelmill.webhooks.dispatcher import Dispatcher
from pixelmill.webhooks.signing import new_secret
from tests.conftest import FakeBackend, create_key, wait_for
from tests.webhooks.receiver import Receiver, verify


class FakeClock:
    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.down()


def setup(make_runtime, db_url, backend=None, account_url=None, secrets=None):
    rt = make_runtime(db_url, backend=backend or FakeBackend(steps=2), webhook_dispatcher=False, url_allow_networks=["127.0.0.0/8"])
    key = create_key(rt)
    with rt.db.transaction() as conn:
        who = authenticate(conn, key)
        conn.execute(
            sa.update(accounts).where(accounts.c.id == who.account_id).values(webhook_url=account_url, webhook_secrets=secrets or [new_secret()])
        )
        secrets = conn.execute(sa.select(accounts.c.webhook_secrets).where(accounts.c.id == who.account_id)).scalar()
    return rt, who, secrets


def submit(rt, who, url=None, events=None, dialect="workflow", secret=None):
    node = {"type": "text_to_image", "params": {"model": "fake", "prompt": "p", "width": 64, "height": 64, "steps": 2, "seed": 1, "output_format": "png"}}
    view = rt.executions.submit(
        Submission(principal=who, graph={"nodes": {"gen": node}}, dialect=dialect, label="t", request={"inputs": {}},
                   webhook_url=url, webhook_secret=secret, webhook_events=events)
    )
    wait_for(lambda: rt.executions.get(who.account_id, view.id).status.is_terminal())
    return view.id


def drain(dispatcher, limit=50):
    total = 0
    for _ in range(limit):
        n = dispatcher.run_once()
        if not n:
            return total
        total += n
    raise AssertionError("dispatcher never ran dry")


def events_of(rt, eid):
    with rt.db.engine.connect() as conn:
        return conn.execute(sa.select(webhook_events).where(webhook_events.c.execution_id == eid).order_by(webhook_events.c.created_at)).all()


def test_events_arrive_signed_and_in_order(make_runtime, db_url, receiver):
    rt, who, secrets = setup(make_runtime, db_url)
    receiver.up()
    eid = submit(rt, who, url=receiver.url)
    drain(rt.dispatcher)
    types = receiver.types()
    assert types[0] == "execution.started"
    assert types[-2:] == ["node.completed", "execution.completed"]
    assert set(types[1:-2]) <= {"execution.progress"}
    for r in receiver.received:
        assert verify(secrets[0], r)["data"]["executionId"] == eid
    final = receiver.received[-1].json
    assert final["data"]["status"] == "COMPLETED"
    assert final["data"]["outputs"][0].startswith("http://127.0.0.1:8000/files/")
    assert all(e.state == "delivered" and e.attempts == 1 for e in events_of(rt, eid))


def test_receiver_down_then_up_gets_every_event_exactly_once(make_runtime, db_url, receiver):
    rt, who, secrets = setup(make_runtime, db_url)
    eid = submit(rt, who, url=receiver.url)  # receiver not listening yet
    clock = FakeClock(rt.dispatcher.clock())
    d = Dispatcher(rt.db, rt.http, clock=clock, rng=random.Random(0))
    queued = events_of(rt, eid)
    assert len(queued) >= 3
    assert d.run_once() == 1  # only the first event of the execution is tried: order is kept
    assert d.run_once() == 0  # the retry is 5 s ± 10 % away
    clock.advance(6)
    assert d.run_once() == 1  # second failure: next try in 5 min
    clock.advance(60)
    assert d.run_once() == 0
    receiver.up()
    clock.advance(300)
    drain(d)
    assert sorted(receiver.ids()) == sorted(e.id for e in queued)
    assert len(set(receiver.ids())) == len(receiver.ids())  # exactly once each
    assert receiver.ids() == [e.id for e in queued]  # in creation order
    rows = events_of(rt, eid)
    assert all(e.state == "delivered" for e in rows)
    first = next(e for e in rows if e.id == queued[0].id)
    assert first.attempts == 3
    with rt.db.engine.connect() as conn:
        tries = conn.execute(sa.select(webhook_attempts).where(webhook_attempts.c.event_id == first.id).order_by(webhook_attempts.c.id)).all()
    assert [t.status_code for t in tries] == [None, None, 200]
    assert tries[0].error.startswith("connect_failed") and tries[2].latency_ms > 0
    for r in receiver.received:
        verify(secrets[0], r)


def test_retry_after_and_give_up_after_the_schedule(make_runtime, db_url, receiver):
    rt, who, _ = setup(make_runtime, db_url)
    receiver.answers = [(503, {"Retry-After": "120"})] + [(500, {})] * 20
    receiver.up()
    eid = submit(rt, who, url=receiver.url, events=["completed"])
    clock = FakeClock(rt.dispatcher.clock())
    d = Dispatcher(rt.db, rt.http, clock=clock)
    assert d.run_once() == 1
    (row,) = events_of(rt, eid)
    assert row.next_attempt_at - clock.now == pytest.approx(120, abs=1)  # Retry-After beats the 5 s step
    for _ in range(20):
        clock.advance(25 * 3600)
        d.run_once()
    (row,) = events_of(rt, eid)
    assert row.state == "failed" and row.attempts == 10 and row.next_attempt_at is None
    assert receiver.received == []


def test_filter_selects_events(make_runtime, db_url, receiver):
    rt, who, _ = setup(make_runtime, db_url)
    receiver.up()
    eid = submit(rt, who, url=receiver.url, events=["start", "completed"])
    drain(rt.dispatcher)
    assert receiver.types() == ["execution.started", "execution.completed"]
    assert [e.event_type for e in events_of(rt, eid)] == ["execution.started", "execution.completed"]


def test_failed_execution_sends_failed_event(make_runtime, db_url, receiver):
    rt, who, _ = setup(make_runtime, db_url, backend=FakeBackend(steps=1, fail_with=RuntimeError("boom")))
    receiver.up()
    submit(rt, who, url=receiver.url, events=["completed"])
    drain(rt.dispatcher)
    (got,) = receiver.received
    assert got.json["type"] == "execution.failed" and got.json["data"]["status"] == "FAILED"
    assert "boom" in got.json["data"]["error"]["message"]


def test_account_url_and_execution_url_each_get_their_own_webhook_id(make_runtime, db_url, receiver):
    other = Receiver().up()
    try:
        rt, who, secrets = setup(make_runtime, db_url, account_url=other.url)
        receiver.up()
        submit(rt, who, url=receiver.url, events=["completed"])
        submit(rt, who, events=["completed"])  # no per-request URL: the account's only
        drain(rt.dispatcher)
        assert len(receiver.received) == 1 and len(other.received) == 2
        assert not set(receiver.ids()) & set(other.ids())
        for r in other.received:
            verify(secrets[0], r)
    finally:
        other.down()


def test_410_disables_the_endpoint(make_runtime, db_url, receiver):
    rt, who, _ = setup(make_runtime, db_url, account_url=None)
    with rt.db.transaction() as conn:
        conn.execute(sa.update(accounts).where(accounts.c.id == who.account_id).values(webhook_url=receiver.url))
    receiver.answers = [(410, {})]
    receiver.up()
    eid = submit(rt, who)  # account URL: started, progress…, node.completed, completed queued
    assert len(events_of(rt, eid)) >= 3
    drain(rt.dispatcher)
    assert receiver.received == []
    assert {e.state for e in events_of(rt, eid)} == {"disabled"}
    with rt.db.engine.connect() as conn:
        assert conn.execute(sa.select(accounts.c.webhook_url).where(accounts.c.id == who.account_id)).scalar() is None
    eid2 = submit(rt, who)
    assert events_of(rt, eid2) == []  # nothing more is queued for it


def test_rotation_sends_two_signatures_each_verifying(make_runtime, db_url, receiver):
    old, new = new_secret(), new_secret()
    rt, who, _ = setup(make_runtime, db_url, secrets=[new, old])
    receiver.up()
    submit(rt, who, url=receiver.url, events=["completed"])
    drain(rt.dispatcher)
    (got,) = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    verify(new, got)
    verify(old, got)
    assert "x-webhook-secret" not in got.headers  # only a BFL request's own secret is ever echoed


def test_bfl_webhook_is_get_result_shape_with_bfl_signature(make_runtime, db_url, receiver):
    from fastapi.testclient import TestClient

    from pixelmill.api.app import create_app
    from pixelmill.webhooks.signing import verify_bfl_signature

    rt, who, secrets = setup(make_runtime, db_url)
    key = create_key(rt)
    client = TestClient(create_app(rt, manage_runtime=False))
    receiver.up()
    r = client.post("/v1/flux-dev", headers={"x-key": key},
                    json={"prompt": "a fox", "width": 256, "height": 256, "seed": 9, "output_format": "png",
                          "webhook_url": receiver.url, "webhook_secret": "my-bfl-secret"})
    assert r.status_code == 200, r.text
    sub = r.json()
    assert sub["status"] == "Pending" and sub["webhook_url"] == receiver.url
    wait_for(lambda: client.get(sub["polling_url"], headers={"x-key": key}).json()["status"] != "Pending")
    drain(rt.dispatcher)
    (got,) = receiver.received  # BFL sends the final result only
    body = got.json
    polled = client.get(sub["polling_url"], headers={"x-key": key}).json()
    assert set(body) == set(polled) and body["id"] == sub["id"] and body["status"] == "Ready"
    assert body["result"]["seed"] == 9 and body["result"]["prompt"] == "a fox"
    assert client.get(body["result"]["sample"]).status_code == 200
    assert verify_bfl_signature("my-bfl-secret", got.body, got.headers["x-bfl-signature"])
    assert got.headers["x-webhook-secret"] == "my-bfl-secret"  # the official SDK's form, beside the signatures
    from standardwebhooks import Webhook

    Webhook(__import__("pixelmill.webhooks.signing", fromlist=["x"]).standard_secret("my-bfl-secret")).verify(
        got.body, {k: v for k, v in got.headers.items() if k.startswith("webhook-")})
    verify(secrets[0], got)  # and the account's own secret


def test_internal_address_is_refused_at_delivery(make_runtime, db_url):
    rt, who, _ = setup(make_runtime, db_url)
    eid = submit(rt, who, url="http://169.254.169.254/latest/meta-data", events=["completed"])
    assert rt.dispatcher.run_once() == 1
    (row,) = events_of(rt, eid)
    assert row.state == "failed" and row.attempts == 1
    with rt.db.engine.connect() as conn:
        (attempt,) = conn.execute(sa.select(webhook_attempts).where(webhook_attempts.c.event_id == row.id)).all()
    assert attempt.status_code is None and attempt.error.startswith("url_resolves_to_blocked_address")


def test_two_dispatchers_never_send_the_same_event_twice(make_runtime, db_url, receiver):
    rt, who, _ = setup(make_runtime, db_url)
    receiver.up()
    eids = [submit(rt, who, url=receiver.url, events=["completed"]) for _ in range(4)]
    a, b = Dispatcher(rt.db, rt.http), Dispatcher(rt.db, rt.http)
    barrier = threading.Barrier(2)

    def run(d):
        barrier.wait()
        drain(d)

    threads = [threading.Thread(target=run, args=(d,)) for d in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(receiver.ids()) == sorted(e.id for eid in eids for e in events_of(rt, eid))
    assert len(set(receiver.ids())) == len(receiver.ids()) == 4


def test_background_thread_delivers_and_restart_loses_nothing(make_runtime, db_url, receiver):
    rt, who, _ = setup(make_runtime, db_url)
    eid = submit(rt, who, url=receiver.url, events=["completed"])  # queued while no dispatcher runs
    rt.stop()  # the process goes away with the row pending
    receiver.up()
    rt2 = make_runtime(db_url, url_allow_networks=["127.0.0.0/8"])  # dispatcher thread on
    wait_for(lambda: receiver.received, timeout=10)
    assert receiver.received[0].json["data"]["executionId"] == eid
    wait_for(lambda: events_of(rt2, eid)[0].state == "delivered", timeout=5)


def test_cancelled_execution_sends_cancelled_event(make_runtime, db_url, receiver):
    backend = FakeBackend(steps=40, step_delay=0.05)
    rt, who, _ = setup(make_runtime, db_url, backend=backend)
    receiver.up()
    node = {"type": "text_to_image", "params": {"model": "fake", "prompt": "c", "width": 64, "height": 64, "steps": 40, "seed": 2}}
    view = rt.executions.submit(Submission(principal=who, graph={"nodes": {"gen": node}}, dialect="workflow", label="t",
                                           request={"inputs": {}}, webhook_url=receiver.url, webhook_events=["start", "completed"]))
    assert backend.started.wait(10)
    rt.executions.cancel(who.account_id, view.id)
    wait_for(lambda: rt.executions.get(who.account_id, view.id).status.is_terminal())
    drain(rt.dispatcher)
    assert receiver.types() == ["execution.started", "execution.cancelled"]
    assert receiver.received[-1].json["data"]["status"] == "CANCELLED"


def test_filter_names():
    from pixelmill.webhooks.outbox import wanted_types

    assert wanted_types(None, "bfl") == {"execution.completed", "execution.failed", "execution.cancelled"}
    assert "execution.progress" in wanted_types(None, "workflow")
    assert wanted_types(["output", "failed"], "workflow") == {"node.completed", "execution.failed"}
    assert wanted_types("start,succeeded", "workflow") == {"execution.started", "execution.completed"}
    assert wanted_types(["no-such-event"], "workflow") == frozenset()



def test_finished_events_are_purged_after_the_retention_and_pending_ones_kept(make_runtime, db_url, receiver):
    rt, who, _ = setup(make_runtime, db_url)
    receiver.up()
    delivered = submit(rt, who, url=receiver.url)
    drain(rt.dispatcher)
    receiver.down()
    waiting = submit(rt, who, url=receiver.url)  # its events stay pending: the receiver is gone
    assert events_of(rt, delivered) and events_of(rt, waiting)
    dispatcher = Dispatcher(rt.db, rt.http, retention_s=7 * 86400)
    assert dispatcher.purge() == 0  # nothing is old yet
    n = dispatcher.purge(now=__import__("time").time() + 8 * 86400)
    assert n == len(receiver.received) and n > 0
    assert events_of(rt, delivered) == []
    assert events_of(rt, waiting) and all(e.state == "pending" for e in events_of(rt, waiting))
    with rt.db.engine.connect() as conn:  # the attempt log of purged events went with them
        left = conn.execute(sa.select(sa.func.count()).select_from(webhook_attempts).join(webhook_events)).scalar()
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_attempts)).scalar() == left
