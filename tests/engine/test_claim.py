"""Claiming a node run is a compare-and-set: among simultaneous deliveries exactly one starts it,
the attempt is counted once and ``node.started`` written once (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from pixelmill.engine.runner import NodeBusy
from pixelmill.engine.service import Submission
from pixelmill.store.tables import execution_events, node_runs
from tests.conftest import create_key

CONTENDERS = 8


def _queued_run(make_runtime, db_url):
    from pixelmill.accounts import keys

    rt = make_runtime(db_url, start=False)
    published = []
    rt.executions.enqueue = published.append  # nothing consumes: the test delivers by hand
    with rt.db.engine.connect() as conn:
        principal = keys.authenticate(conn, create_key(rt))
    node = {"type": "text_to_image", "params": {"model": "fake", "prompt": "x", "width": 64, "height": 64, "seed": 1}}
    view = rt.executions.submit(Submission(principal=principal, graph={"nodes": {"gen": node}}, dialect="workflow", label="claim"))
    [row] = [r for r in _rows(rt, view.id)]
    return rt, view.id, row.id


def _rows(rt, execution_id):
    with rt.db.engine.connect() as conn:
        return conn.execute(sa.select(node_runs).where(node_runs.c.execution_id == execution_id)).all()


def _started(rt, execution_id) -> list[dict]:
    with rt.db.engine.connect() as conn:
        return conn.execute(
            sa.select(execution_events.c.data).where(execution_events.c.execution_id == execution_id, execution_events.c.event == "node.started")
        ).scalars().all()


def _contend(rt, run_id) -> list:
    barrier = threading.Barrier(CONTENDERS)
    results: list = []

    def claim():
        barrier.wait()
        try:
            results.append(rt.runner._claim(run_id))
        except NodeBusy as busy:
            results.append(busy)

    threads = [threading.Thread(target=claim) for _ in range(CONTENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_one_of_many_simultaneous_deliveries_starts_a_queued_run(make_runtime, db_url):
    rt, eid, run_id = _queued_run(make_runtime, db_url)
    results = _contend(rt, run_id)
    winners = [r for r in results if r is not None and not isinstance(r, NodeBusy)]
    assert len(winners) == 1, results
    assert all(r is None or isinstance(r, NodeBusy) for r in results if r is not winners[0])
    [row] = _rows(rt, eid)
    assert row.status == "running" and row.attempts == 1
    assert [d["attempt"] for d in _started(rt, eid)] == [1]


def test_one_delivery_takes_over_a_run_whose_worker_died(make_runtime, db_url):
    rt, eid, run_id = _queued_run(make_runtime, db_url)
    assert rt.runner._claim(run_id) is not None  # a worker started it, then died
    with rt.db.transaction() as conn:  # ... long enough ago that its deadline passed
        conn.execute(sa.update(node_runs).where(node_runs.c.id == run_id).values(started_at=node_runs.c.started_at - rt.runner.node_timeout_s - 1))
    results = _contend(rt, run_id)
    assert len([r for r in results if r is not None and not isinstance(r, NodeBusy)]) == 1, results
    [row] = _rows(rt, eid)
    assert row.attempts == 2
    assert sorted(d["attempt"] for d in _started(rt, eid)) == [1, 2]


def test_a_delivery_for_a_run_live_elsewhere_is_busy_not_started(make_runtime, db_url):
    rt, eid, run_id = _queued_run(make_runtime, db_url)
    assert rt.runner._claim(run_id) is not None
    with pytest.raises(NodeBusy):
        rt.runner._claim(run_id)
    assert _rows(rt, eid)[0].attempts == 1 and len(_started(rt, eid)) == 1
