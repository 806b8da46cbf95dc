"""Lifecycle hooks: typed, do nothing by default, in-transaction and after-commit calls."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from pixelmill.engine.hooks import Hooks, LifecycleEvent
from pixelmill.engine.service import Submission
from pixelmill.store.db import after_commit
from pixelmill.store.tables import execution_events
from tests.conftest import wait_for
from tests.engine.test_engine import chain, finished, one_node, principal


class Recorder(Hooks):
    """Records what it sees, and what was committed when ``after_commit`` ran."""

    def __init__(self, db):
        self.db = db
        self.inside: list[LifecycleEvent] = []
        self.committed: list[tuple[LifecycleEvent, int]] = []
        self.lock = threading.Lock()

    def on_event(self, conn, event):
        with self.lock:
            self.inside.append(event)

    def after_commit(self, event):
        with self.db.engine.connect() as conn:  # a fresh connection sees the row only once committed
            seen = conn.execute(
                sa.select(sa.func.count()).select_from(execution_events).where(
                    execution_events.c.execution_id == event.execution_id, execution_events.c.event == event.type
                )
            ).scalar()
        with self.lock:
            self.committed.append((event, seen))


def test_base_hooks_do_nothing_and_plain_callables_are_refused(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    rt.lifecycle.add_hook(Hooks())
    p = principal(rt)
    assert finished(rt, p, rt.executions.submit(Submission(p, one_node(), "workflow", "x")).id).status.value == "succeeded"
    with pytest.raises(TypeError):
        rt.lifecycle.add_hook(lambda *a: None)


def test_hooks_see_every_event_inside_and_after_commit(make_runtime, db_url):
    rt = make_runtime(db_url)
    rec = Recorder(rt.db)
    rt.lifecycle.add_hook(rec)
    p = principal(rt)
    eid = rt.executions.submit(Submission(p, chain(), "workflow", "chain")).id
    finished(rt, p, eid)
    types = [e.type for e in rec.inside if e.execution_id == eid]
    assert types[0] == "execution.created" and types[-1] == "execution.succeeded"
    assert types.count("node.completed") == 3
    wait_for(lambda: len(rec.committed) == len(rec.inside))  # the last after_commit may run just after the change is visible
    assert [e.type for e, _ in rec.committed] == types  # same events, same order
    assert all(seen >= 1 for _, seen in rec.committed)  # after_commit ran after the rows were visible
    assert rec.committed[-1][0].is_terminal and not rec.committed[0][0].is_terminal


def test_after_commit_is_dropped_on_rollback(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    ran: list[str] = []
    with pytest.raises(RuntimeError):
        with rt.db.transaction() as conn:
            after_commit(conn, lambda: ran.append("rolled back"))
            raise RuntimeError("boom")
    with rt.db.transaction() as conn:
        after_commit(conn, lambda: ran.append("committed"))
        assert ran == []
    assert ran == ["committed"]


def test_a_failing_after_commit_hook_does_not_undo_the_change(make_runtime, sqlite_url):
    class Broken(Hooks):
        def after_commit(self, event):
            raise RuntimeError("metrics backend down")

    rt = make_runtime(sqlite_url)
    rt.lifecycle.add_hook(Broken())
    p = principal(rt)
    assert finished(rt, p, rt.executions.submit(Submission(p, one_node(), "workflow", "x")).id).status.value == "succeeded"
