"""Outbox and dispatcher over SQLite and PostgreSQL, against a real local receiver."""

from __future__ import annotations

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
