"""What the scheduler asks the database on every pick and every queue position reads by index,
in time that does not grow with the runs waiting (SQLite's ``EXPLAIN QUERY PLAN``, on a queue
hundreds deep)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from pixelmill.engine.service import Submission
from tests.engine.test_scheduler import PLANS, principal

GRAPH = {"nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 1}}}}


@pytest.fixture
def deep(make_runtime, sqlite_url):
    from pixelmill.store import migrate

    migrate.upgrade(sqlite_url)
    rt = make_runtime(sqlite_url, start=False, plans=PLANS)
    flood, single = principal(rt, "flood"), principal(rt, "single")
    rt.executions.submit_many([(Submission(principal=flood, graph=GRAPH, dialect="workflow", label="t"), None) for _ in range(300)])
    view = rt.executions.submit(Submission(principal=single, graph=GRAPH, dialect="workflow", label="t"))
    return rt, view


def plans_of(rt, run) -> dict[str, list[str]]:
    """Each SELECT that ``run()`` sends, with its query plan (and its parameters, as the plan's last step)."""
    sent: list[tuple[str, tuple]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))

    sa.event.listen(rt.db.engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        sa.event.remove(rt.db.engine, "before_cursor_execute", record)
    out = {}
    with rt.db.engine.connect() as conn:
        for statement, parameters in sent:
            plan = [str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            out[statement] = plan + [f"parameters {parameters!r}"]
    return out


def test_a_pick_reads_each_waiting_accounts_first_run_by_index(deep):
    rt, _ = deep
    plans = plans_of(rt, lambda: rt.scheduler.pick("model.fake"))
    heads = [plan for statement, plan in plans.items() if "waiting_accounts" in statement]
    assert heads, "the pick did not read the waiting accounts"
    plan = heads[0]
    assert any("ix_node_runs_waiting (queue=? AND status=? AND account_id=?)" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan  # nothing sorted: the index is the pick order


def test_a_queue_position_reads_its_run_and_its_accounts_runs_ahead_by_index(deep):
    rt, view = deep
    rt.scheduler.changed()
    plans = plans_of(rt, lambda: rt.executions.get(None, view.id))  # the run it starts from is the view's own
    steps = [step for plan in plans.values() for step in plan]
    assert any("COVERING INDEX ix_node_runs_waiting (queue=? AND status=? AND account_id=?" in s for s in steps), plans
    with rt.db.engine.connect() as conn:  # asked for an execution alone, it reads its next waiting run by index
        alone = plans_of(rt, lambda: rt.scheduler.position(conn, view.id))
    assert any("ix_node_runs_execution_status (execution_id=? AND status=?)" in s for plan in alone.values() for s in plan), alone
    plans.update(alone)
    # no position read walks every queued run (what the status indexes would do for status 'queued')
    walking = {
        st[:200]: plan for st, plan in plans.items()
        if "'queued'" in plan[-1] and any(s.startswith(("SEARCH node_runs USING INDEX ix_node_runs_status", "SCAN node_runs")) for s in plan)
    }
    assert not walking, walking


def test_positions_on_a_deep_queue_count_every_run_ahead(deep):
    rt, view = deep
    assert rt.executions.get(None, view.id).queue_position == 1  # the single job goes second, after the flood's first
    late = rt.executions.submit(Submission(principal=principal(rt, "flood"), graph=GRAPH, dialect="workflow", label="t"))
    assert rt.executions.get(None, late.id).queue_position == 301


def _heads_work(rt) -> int:
    """SQLite virtual-machine steps of one read of the queue's heads (what a pick reads first)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    with rt.db.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        raw = conn.connection.dbapi_connection
        raw.set_progress_handler(count, 1)
        try:
            heads = rt.scheduler._heads(conn, ["model.fake"], time.time())
        finally:
            raw.set_progress_handler(None, 1)
    assert len(heads) == 2
    return steps[0]


def test_a_picks_read_does_not_grow_with_the_runs_an_account_has_waiting(make_runtime, sqlite_url):
    """The accounts waiting are found one index seek each, not by walking every waiting run: ten
    times the runs waiting costs the read about what it cost before."""
    from pixelmill.store import migrate

    migrate.upgrade(sqlite_url)
    rt = make_runtime(sqlite_url, start=False, plans={"deep": {"max_active_tasks": 10_000}})
    flood, single = principal(rt, "flood", plan="deep"), principal(rt, "single", plan="deep")

    def queue(who, n):
        rt.executions.submit_many([(Submission(principal=who, graph=GRAPH, dialect="workflow", label="t"), None) for _ in range(n)])

    queue(flood, 100)
    queue(single, 1)
    before = _heads_work(rt)
    queue(flood, 900)
    after = _heads_work(rt)
    assert after < 1.2 * before, (before, after)
