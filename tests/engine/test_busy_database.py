"""A worker whose database is locked by someone else when its node finishes keeps the result:
it writes the completion once the lock goes, and the execution is charged once."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from pixelmill.accounts import ledger
from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.service import Submission
from pixelmill.store.db import retry_when_busy
from pixelmill.store.tables import credit_ledger, node_runs
from tests.conftest import FakeBackend
from tests.engine.test_engine import one_node, principal


class HeldBackend(FakeBackend):
    """Generates once ``release`` is set, reporting progress then (while the test holds the lock)."""

    def __init__(self):
        super().__init__(steps=2)
        self.release = threading.Event()

    def generate(self, request, control):
        self.started.set()
        assert self.release.wait(30)
        control.report(0.5)  # a progress write into a locked database: skipped, not fatal
        return super().generate(request, control)


def test_a_node_that_finishes_while_the_database_is_locked_completes_once_the_lock_goes(make_runtime, sqlite_url):
    backend = HeldBackend()
    rt = make_runtime(sqlite_url, backend=backend, db_busy_timeout_s=0.2)  # each try gives up on the lock quickly
    p = principal(rt, credits=100.0)
    eid = rt.executions.submit(Submission(p, one_node(), "workflow", "locked")).id
    assert backend.started.wait(20)

    holder = sqlite3.connect(sqlite_url.split("///", 1)[1], timeout=10, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a long writer in another process would hold it
    try:
        backend.release.set()
        time.sleep(3.0)  # the node has finished and its writes keep failing on the lock
        with rt.db.engine.connect() as conn:  # WAL readers still see the last committed state
            status = conn.execute(sa.select(node_runs.c.status).where(node_runs.c.execution_id == eid)).scalar()
        assert status == NodeStatus.RUNNING
        assert rt.executions.get(p.account_id, eid).status == ExecutionStatus.RUNNING
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    view = rt.executions.get(p.account_id, eid)
    deadline = time.monotonic() + 30
    while not view.status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.05)
        view = rt.executions.get(p.account_id, eid)
    assert view.status == ExecutionStatus.SUCCEEDED, (view.error_code, view.error_message)
    assert len(view.result_files()) == 1
    assert backend.calls == 1  # the result was kept, not made again
    with rt.db.engine.connect() as conn:
        kinds = conn.execute(sa.select(credit_ledger.c.kind).where(credit_ledger.c.execution_id == eid)).scalars().all()
        assert sorted(kinds) == ["capture", "hold"]
        assert ledger.balance(conn, p.account_id) == pytest.approx(100 - view.cost_actual)
        assert conn.execute(sa.select(node_runs.c.attempts).where(node_runs.c.execution_id == eid)).scalar() == 1


def test_retrying_gives_up_after_its_bound_and_never_retries_other_errors():
    from sqlalchemy.exc import OperationalError

    calls = []

    def locked():
        calls.append(1)
        raise OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))

    with pytest.raises(OperationalError):
        retry_when_busy(locked, give_up_after_s=0.3, sleep=lambda s: time.sleep(min(s, 0.05)))
    assert len(calls) > 1

    def broken():
        calls.append(2)
        raise ValueError("not a lock")

    with pytest.raises(ValueError):
        retry_when_busy(broken, give_up_after_s=10)
    assert calls.count(2) == 1
