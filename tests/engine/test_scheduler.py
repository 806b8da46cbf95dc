"""The fair scheduler: accounts share the workers by weight, plan and request priority order the
work, start-by and run deadlines end work that came too late, queue positions follow the order.

Each test runs on SQLite and PostgreSQL with the embedded queue.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from pixelmill.accounts import keys, ledger
from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.scheduler import RequestScheduling
from pixelmill.engine.service import Submission
from pixelmill.errors import InvalidInput
from pixelmill.store.tables import executions, node_runs
from tests.conftest import FakeBackend, create_key, wait_for

PLANS = {
    "bulk": {"weight": 1.0, "max_active_tasks": 500},
    "double": {"weight": 2.0, "max_active_tasks": 500},
    "vip": {"priority": 1, "max_active_tasks": 500},
    "free": {"max_active_tasks": 500},
}
QUEUE = "model.fake"


def principal(rt, account: str, plan: str = "bulk"):
    key = create_key(rt, account=account, plan=plan)
    with rt.db.engine.connect() as conn:
        return keys.authenticate(conn, key)


def submit(rt, who, prompt: str = "a cat", scheduling: RequestScheduling | None = None, steps: int = 2):
    graph = {"nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": prompt, "width": 64, "height": 64, "steps": steps, "seed": 1}}}}
    return rt.executions.submit(Submission(principal=who, graph=graph, dialect="workflow", label="t", scheduling=scheduling))


def account_of(rt, execution_id: str) -> str:
    with rt.db.engine.connect() as conn:
        return conn.execute(sa.select(executions.c.account_id).where(executions.c.id == execution_id)).scalar_one()


def run_picked(rt, task, seconds: float = 1.0) -> None:
    """Finish a picked node run as if it had run for ``seconds`` just now (no model needed)."""
    now = time.time()
    with rt.db.transaction() as conn:
        conn.execute(
            sa.update(node_runs)
            .where(node_runs.c.id == task.node_run_id)
            .values(status=NodeStatus.SUCCEEDED, started_at=now - seconds, finished_at=now, progress=1.0)
        )
        conn.execute(sa.update(executions).where(executions.c.id == task.execution_id).values(status=ExecutionStatus.SUCCEEDED, finished_at=now))


@pytest.fixture
def idle(make_runtime, db_url):
    """A runtime whose workers are not started: work waits until a test picks it."""
    return make_runtime(db_url, start=False, plans=PLANS)


def test_a_flood_does_not_hold_back_another_accounts_single_job(make_runtime, db_url):
    backend = FakeBackend(steps=2, step_delay=0.01)
    rt = make_runtime(db_url, backend=backend, start=False, plans=PLANS)
    a, b = principal(rt, "flooder"), principal(rt, "single")
    flood = [submit(rt, a, f"a {i}") for i in range(12)]
    lone = submit(rt, b, "b")
    assert rt.executions.get(b.account_id, lone.id).queue_position == 1  # after A's oldest, not after all 12
    rt.start()
    wait_for(lambda: rt.executions.get(b.account_id, lone.id).status.is_terminal(), timeout=60)
    wait_for(lambda: all(rt.executions.get(a.account_id, v.id).status.is_terminal() for v in flood), timeout=60)
    with rt.db.engine.connect() as conn:
        order = conn.execute(sa.select(node_runs.c.execution_id).order_by(node_runs.c.started_at)).scalars().all()
    assert order.index(lone.id) <= 1, order.index(lone.id)


def test_weights_share_the_workers(idle):
    rt = idle
    heavy, light = principal(rt, "heavy", "double"), principal(rt, "light", "bulk")
    for i in range(9):
        submit(rt, heavy, f"h{i}")
        submit(rt, light, f"l{i}")
    picked = []
    for _ in range(9):
        task = rt.scheduler.pick(QUEUE)
        picked.append(account_of(rt, task.execution_id))
        run_picked(rt, task, seconds=1.0)
    assert picked.count(heavy.account_id) == 6, picked  # weight 2 : 1
    assert picked.count(light.account_id) == 3


def test_plan_priority_goes_first_and_request_priority_orders_an_accounts_own_work(idle):
    rt = idle
    a, vip = principal(rt, "plain"), principal(rt, "important", "vip")
    low = submit(rt, a, "low", RequestScheduling(priority=-5))
    normal = submit(rt, a, "normal")
    high = submit(rt, a, "high", RequestScheduling(priority=7))
    first = submit(rt, vip, "vip")  # submitted last
    order = []
    while (task := rt.scheduler.pick(QUEUE)) is not None:
        order.append(task.execution_id)
        run_picked(rt, task)
    assert order == [first.id, high.id, normal.id, low.id]


def test_a_priority_outside_the_plans_range_is_refused(idle):
    who = principal(idle, "freebie", "free")
    with pytest.raises(InvalidInput) as err:
        submit(idle, who, scheduling=RequestScheduling(priority=1))  # free allows -10..0
    assert err.value.code == "priority_out_of_range"
    assert err.value.status == 422
    assert err.value.details == {"min_priority": -10, "max_priority": 0}


def test_queue_positions_follow_the_pick_order(idle):
    rt = idle
    a, b, c = principal(rt, "a"), principal(rt, "b", "double"), principal(rt, "c")
    # some earlier use: a ran 3 s, b 1 s, c nothing
    for who, seconds in ((a, 3.0), (b, 1.0)):
        submit(rt, who, "earlier")
        run_picked(rt, rt.scheduler.pick(QUEUE), seconds)
    views = [submit(rt, a, f"a{i}") for i in range(4)] + [submit(rt, b, f"b{i}") for i in range(4)] + [submit(rt, c, f"c{i}") for i in range(3)]
    rt.scheduler._typical = (time.monotonic() + 3600, 1.0)  # every pick adds 1 s of use
    positions = {v.id: rt.executions.get(None, v.id).queue_position for v in views}
    order = []
    while (task := rt.scheduler.pick(QUEUE)) is not None:
        order.append(task.execution_id)
        run_picked(rt, task, seconds=1.0)
    assert [positions[e] for e in order] == list(range(len(views))), (order, positions)


def test_a_job_not_started_by_its_start_by_time_expires_and_is_refunded(make_runtime, db_url):
    rt = make_runtime(db_url, start=False, plans=PLANS)
    who = principal(rt, "late")
    with rt.db.engine.connect() as conn:
        before = ledger.balance(conn, who.account_id)
    view = submit(rt, who, scheduling=RequestScheduling(start_within_s=0.2))
    time.sleep(0.3)
    rt.start()
    view = wait_for(lambda: (v := rt.executions.get(who.account_id, view.id)).status.is_terminal() and v)
    assert view.status == ExecutionStatus.FAILED
    assert view.error_code == "expired"
    assert all(n.started_at is None for n in view.nodes)
    with rt.db.engine.connect() as conn:
        assert ledger.balance(conn, who.account_id) == pytest.approx(before)


def test_a_run_deadline_stops_the_job_at_a_step_boundary_and_refunds(make_runtime, db_url):
    backend = FakeBackend(steps=50, step_delay=0.2)  # a 10 s job
    rt = make_runtime(db_url, backend=backend, plans=PLANS)
    who = principal(rt, "slow")
    with rt.db.engine.connect() as conn:
        before = ledger.balance(conn, who.account_id)
    view = submit(rt, who, steps=50, scheduling=RequestScheduling(cancel_after_s=3.0))
    view = wait_for(lambda: (v := rt.executions.get(who.account_id, view.id)).status.is_terminal() and v, timeout=30)
    assert view.status == ExecutionStatus.FAILED
    assert view.error_code == "deadline_exceeded"
    [node] = view.nodes
    assert node.started_at is not None and backend.calls == 1  # it had started ...
    assert node.finished_at - view.created_at < 8.0  # ... and stopped at a step long before its 10 s were done
    with rt.db.engine.connect() as conn:
        assert ledger.balance(conn, who.account_id) == pytest.approx(before)


def test_scheduling_headers_on_any_dialect(make_runtime, db_url):
    from pixelmill.api.app import create_app

    rt = make_runtime(db_url, start=False, plans=PLANS)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt, account="web", plan="free")
    r = client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"Pixelmill-Priority": "5"})
    assert r.status_code == 422, r.text
    assert "priority" in r.text
    r = client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"Pixelmill-Start-Within": "soon"})
    assert r.status_code == 422, r.text
    r = client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"Pixelmill-Priority": "-3", "Pixelmill-Start-Within": "30", "Pixelmill-Cancel-After": "90"})
    assert r.status_code == 200, r.text
    with rt.db.engine.connect() as conn:
        row = conn.execute(sa.select(executions).where(executions.c.id == r.json()["id"])).one()
    assert row.priority == -3
    assert row.start_by - row.created_at == pytest.approx(30)
    assert row.deadline_at - row.created_at == pytest.approx(90)


def test_late_work_expires_while_the_worker_is_busy(make_runtime, db_url):
    backend = FakeBackend(steps=50, step_delay=0.2)  # a 10 s job holds the only worker
    rt = make_runtime(db_url, backend=backend, plans=PLANS)
    busy, late = principal(rt, "busy"), principal(rt, "late")
    long_job = submit(rt, busy, steps=50)
    wait_for(lambda: backend.calls >= 1)
    view = submit(rt, late, scheduling=RequestScheduling(start_within_s=0.2))
    view = wait_for(lambda: (v := rt.executions.get(late.account_id, view.id)).status.is_terminal() and v, timeout=10)
    assert view.error_code == "expired"
    assert rt.executions.get(busy.account_id, long_job.id).status == ExecutionStatus.RUNNING  # it did not wait for a pick
    rt.executions.cancel(busy.account_id, long_job.id)
    wait_for(lambda: rt.executions.get(busy.account_id, long_job.id).status.is_terminal())


def test_a_worker_that_loses_the_head_to_another_worker_picks_the_next_waiting_run(idle):
    """Two workers (schedulers leasing in the database, as in scale-out) pick at the same moment: the
    one whose lease of the account's oldest run loses still gets the next run, not nothing. (With
    nothing, its delivery ran no node, and the last waiting run had no delivery left to start it.)"""
    from pixelmill.engine.scheduler import Scheduler

    rt = idle
    a = principal(rt, "racer")
    first, second = submit(rt, a, "one"), submit(rt, a, "two")
    worker_a = Scheduler(rt.db, rt.lifecycle, rt.plans, local_leases=False)
    worker_b = Scheduler(rt.db, rt.lifecycle, rt.plans, local_leases=False)
    read_heads = worker_a._heads
    b_picked = []

    def heads_then_b_picks(conn, queues, now, **kw):  # b leases the head between a's read and a's lease
        heads = read_heads(conn, queues, now, **kw)
        if not b_picked:
            b_picked.append(worker_b.pick(QUEUE))
        return heads

    worker_a._heads = heads_then_b_picks
    a_picked = worker_a.pick(QUEUE)
    assert b_picked[0].execution_id == first.id
    assert a_picked is not None and a_picked.execution_id == second.id
    assert worker_a.pick(QUEUE) is None and worker_b.pick(QUEUE) is None  # both leased: nothing waits


def test_a_run_another_thread_claimed_is_not_picked_from_an_older_read(idle):
    """Embedded workers lease in memory and drop the lease once the run is claimed: a pick whose read
    began before that claim committed must not take the run again (its delivery would run nothing)."""
    rt = idle
    assert rt.scheduler.local_leases
    a = principal(rt, "a")
    submit(rt, a, "one")
    second = submit(rt, a, "two")
    with rt.db.engine.connect() as conn:  # another thread's pick read the queue...
        stale = rt.scheduler._heads(conn, [QUEUE], time.time())
    task = rt.scheduler.pick(QUEUE)  # ...while this one picked, claimed and let go of the same run
    assert rt.runner._claim(task.node_run_id) is not None
    rt.scheduler.release(task.node_run_id)
    assert [h.run_id for h in stale] == [task.node_run_id]
    assert not rt.scheduler._lease(stale[0].run_id, time.time())
    assert rt.scheduler.pick(QUEUE).execution_id == second.id


def test_a_submits_answer_shows_the_queue_position_a_later_read_shows(idle):
    """The submit answer's position is worked out from the runs it just queued (no read back): the
    same as a poll's, for requests of several priorities and accounts and for two runs queued at once."""
    rt = idle
    a, b = principal(rt, "a"), principal(rt, "b", "vip")
    two = {"nodes": {n: {"type": "text_to_image", "params": {"model": "fake", "prompt": n, "width": 64, "height": 64, "steps": 2, "seed": 1}}
                     for n in ("left", "right")}}
    steps = [
        lambda: submit(rt, a, "first"),
        lambda: submit(rt, b, "vip"),
        lambda: submit(rt, a, "urgent", scheduling=RequestScheduling(priority=5)),
        lambda: rt.executions.submit(Submission(principal=a, graph=two, dialect="workflow", label="two")),
        lambda: submit(rt, a, "last"),
    ]
    answered = []
    for step in steps:
        view = step()
        rt.scheduler.changed()
        rt.executions.changed(view.id)  # the next read goes to the database
        assert view.queue_position == rt.executions.get(None, view.id).queue_position
        answered.append(view.queue_position)
    assert answered == [0, 0, 1, 3, 5]  # the vip plan first, then a's urgent request, then a's by age


def test_a_bfl_submit_answers_without_reading_the_queue(idle):
    """A dialect whose submit answer shows no queue position does not compute one; its polls do."""
    rt = idle
    a = principal(rt, "a")
    submit(rt, a, "ahead")
    graph = {"nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": "p", "width": 64, "height": 64, "steps": 2, "seed": 1}}}}
    view = rt.executions.submit(Submission(principal=a, graph=graph, dialect="bfl", label="flux-dev"), queue_state=False)
    assert view.queue_position is None
    assert rt.executions.get(a.account_id, view.id).queue_position == 1
