"""Retention: expired result files leave the disk, old executions leave the database (with their node runs,
events and outbox rows), a request may ask to be kept for less, a client may delete its outputs now;
the ledger is never touched and still reconciles."""

from __future__ import annotations

import time

import sqlalchemy as sa
from fastapi.testclient import TestClient

from pixelmill.accounts import ledger
from pixelmill.api.app import create_app
from pixelmill.engine.janitor import Janitor
from pixelmill.store.tables import execution_events, executions, files, node_runs
from tests.conftest import create_key, wait_for

BODY = {"prompt": "x", "width": 256, "height": 256}


def _count(rt, table, **where):
    with rt.db.engine.connect() as conn:
        q = sa.select(sa.func.count()).select_from(table)
        for k, v in where.items():
            q = q.where(table.c[k] == v)
        return conn.execute(q).scalar_one()


def _done(client, eid):
    return wait_for(lambda: (b := client.get(f"/v1/get_result?id={eid}").json())["status"] == "Ready" and b)


def _stored(rt, eid) -> list:
    with rt.db.engine.connect() as conn:
        keys = conn.execute(sa.select(files.c.storage_key).where(files.c.execution_id == eid)).scalars().all()
    return [rt.storage.root / k if hasattr(rt.storage, "root") else k for k in keys]


def test_the_janitor_deletes_expired_files_then_old_executions_and_keeps_the_ledger(make_runtime, db_url):
    rt = make_runtime(db_url, result_ttl_s=3600, retention_executions_s=100)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    short = client.post("/v1/flux-dev", json=BODY, headers={"Pixelmill-Retention": "60"}).json()["id"]
    kept = client.post("/v1/flux-dev", json=BODY).json()["id"]
    _done(client, short), _done(client, kept)
    with rt.db.engine.connect() as conn:
        expiry = dict(conn.execute(sa.select(executions.c.id, executions.c.expires_at)).all())
    assert expiry[short] < time.time() + 61 < expiry[kept]
    assert _count(rt, files, execution_id=short) >= 1
    now = time.time()

    def janitor(at: float) -> Janitor:
        return Janitor(rt.db, rt.storage, executions_s=100, events_s=10**9, interval_s=0, clock=lambda: at)

    swept = janitor(now + 61).sweep()  # the short one expired: its files go, its record stays a while
    assert swept.files >= 1 and swept.executions == 0
    assert _count(rt, files, execution_id=short) == 0 and _count(rt, files, execution_id=kept) >= 1
    assert client.get(_done(client, kept)["result"]["sample"]).status_code == 200

    swept = janitor(now + 3600 + 101).sweep()  # both past expiry + retention: every row goes
    assert swept.executions == 2
    for table in (executions, node_runs, execution_events, files):
        assert _count(rt, table) == 0, table.name
    with rt.db.engine.connect() as conn:
        assert ledger.reconcile(conn) == []
        assert conn.execute(sa.text("SELECT count(*) FROM credit_ledger")).scalar_one() >= 5  # grants, holds, settles stay


def test_a_client_deletes_its_outputs_now(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    eid = client.post("/v1/flux-dev", json=BODY).json()["id"]
    sample = _done(client, eid)["result"]["sample"]
    assert client.get(sample).status_code == 200
    other = TestClient(create_app(rt, manage_runtime=False))
    other.headers["x-key"] = create_key(rt, account="someone-else")
    assert other.delete(f"/api/v1/executions/{eid}/outputs").status_code == 404
    r = client.delete(f"/api/v1/executions/{eid}/outputs")
    assert r.status_code == 204, r.text
    assert client.get(sample).status_code == 404
    assert _count(rt, files, execution_id=eid) == 0
    assert client.get(f"/api/v1/executions/{eid}").json()["status"] == "COMPLETED"  # the record stays


def test_a_retention_header_must_be_a_number_of_seconds(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    r = client.post("/v1/flux-dev", json=BODY, headers={"Pixelmill-Retention": "soon"})
    assert r.status_code == 422 and "pixelmill-retention" in r.text
