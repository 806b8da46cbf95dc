"""Model affinity between scale-out workers: two simulated workers holding different models each
pick the waiting run of the model they hold, a run whose model another worker holds is left to it
for at most ``affinity_max_wait_s``, and a model held nowhere goes to the worker with room for it.

Each test runs on SQLite and PostgreSQL (the scheduler's queries are the ones a worker runs).
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from pixelmill.engine.lifecycle import NodeTask
from pixelmill.engine.scheduler import Deferred, FairDispatch, WorkerView
from pixelmill.store.tables import node_runs, worker_models
from tests.conftest import FakeBackend
from tests.engine.test_scheduler import PLANS, principal, run_picked

QUEUES = ("model.fake", "model.other", "model.third")
GB = 2**30


@pytest.fixture
def rt(make_runtime, db_url):
    extra = {name: ('path = "/nonexistent"\nprice_per_megapixel = 1.0', FakeBackend()) for name in ("other", "third")}
    rt = make_runtime(db_url, start=False, plans=PLANS, extra_models=extra)
    rt.scheduler.affinity_max_wait_s = 30.0
    return rt


def submit(rt, who, model: str, waited_s: float = 0.0):
    """Queue one run of ``model`` that has waited ``waited_s`` seconds; returns its node run id."""
    from pixelmill.engine.service import Submission

    graph = {"nodes": {"gen": {"type": "text_to_image", "params": {"model": model, "prompt": "x", "width": 64, "height": 64, "seed": 1}}}}
    view = rt.executions.submit(Submission(principal=who, graph=graph, dialect="workflow", label="t"))
    with rt.db.transaction() as conn:
        conn.execute(sa.update(node_runs).where(node_runs.c.execution_id == view.id).values(queued_at=time.time() - waited_s))
        return conn.execute(sa.select(node_runs.c.id).where(node_runs.c.execution_id == view.id)).scalar_one()


def advertise(rt, worker: str, holds: dict[str, str], free_bytes: int | None = None, age_s: float = 0.0, memory_bytes: int = 0) -> None:
    """``worker_models`` rows as a worker's advertiser writes them: {model: state}."""
    with rt.db.transaction() as conn:
        conn.execute(sa.delete(worker_models).where(worker_models.c.worker == worker))
        conn.execute(sa.insert(worker_models), [
            dict(worker=worker, model=m, state=state, memory_bytes=memory_bytes if state == "resident" else 0,
                 updated_at=time.time() - age_s, free_bytes=free_bytes)
            for m, state in holds.items()
        ])


def view(name: str, holds: set[str], free_bytes: int | None = None) -> WorkerView:
    return WorkerView(name, QUEUES, frozenset(holds), free_bytes)


def test_each_worker_picks_the_run_of_the_model_it_holds(rt):
    a, b = principal(rt, "a"), principal(rt, "b")
    other = submit(rt, a, "other", waited_s=5)  # older, and a's turn comes first
    fake = submit(rt, b, "fake", waited_s=1)
    advertise(rt, "w1", {"fake": "resident", "other": "cold"})
    advertise(rt, "w2", {"fake": "cold", "other": "resident"})
    # w1 holds fake: woken by other's message, it still takes the fake run
    picked = rt.scheduler.pick("model.other", view("w1", {"fake"}))
    assert isinstance(picked, NodeTask) and (picked.node_run_id, picked.queue) == (fake, "model.fake")
    picked = rt.scheduler.pick("model.fake", view("w2", {"other"}))
    assert isinstance(picked, NodeTask) and (picked.node_run_id, picked.queue) == (other, "model.other")


def test_without_affinity_the_fair_order_alone_decides(rt):
    a, b = principal(rt, "a"), principal(rt, "b")
    other = submit(rt, a, "other", waited_s=5)
    submit(rt, b, "fake", waited_s=1)
    advertise(rt, "w1", {"fake": "resident", "other": "cold"})
    rt.scheduler.affinity_max_wait_s = 0  # off: the delivered queue, fair order
    assert rt.scheduler.pick("model.other", view("w1", {"fake"})).node_run_id == other


def test_a_run_is_left_to_the_worker_holding_its_model_until_the_bound(rt):
    a = principal(rt, "a")
    other = submit(rt, a, "other", waited_s=10)
    advertise(rt, "w2", {"other": "resident"})
    left = rt.scheduler.pick("model.other", view("w1", {"fake"}))
    assert isinstance(left, Deferred) and left.retry_in_s == pytest.approx(20, abs=1)  # 30 s bound, waited 10
    # the holder is gone (its rows stopped being refreshed): w1 takes it now
    advertise(rt, "w2", {"other": "resident"}, age_s=rt.scheduler.worker_stale_s + 5)
    assert rt.scheduler.pick("model.other", view("w1", {"fake"})).node_run_id == other


def test_the_bound_holds_under_a_flood_of_the_held_model(rt):
    a, b = principal(rt, "a"), principal(rt, "b", "double")
    flood = [submit(rt, b, "fake", waited_s=1) for _ in range(5)]
    starved = submit(rt, a, "other", waited_s=31)  # past the 30 s bound
    advertise(rt, "w2", {"other": "resident"})  # the holder is busy elsewhere, say
    picked = rt.scheduler.pick("model.fake", view("w1", {"fake"}))
    assert picked.node_run_id == starved  # overdue: whoever asks takes it, held model or not
    run_picked(rt, picked)
    assert rt.scheduler.pick("model.fake", view("w1", {"fake"})).node_run_id in flood  # then back to its own model


def test_plan_priority_is_never_traded_for_affinity(rt):
    plain, vip = principal(rt, "plain"), principal(rt, "vip", "vip")
    submit(rt, plain, "fake", waited_s=1)
    urgent = submit(rt, vip, "other", waited_s=1)
    # other is held nowhere: w1 loads it rather than run lower-priority work of its own model
    assert rt.scheduler.pick("model.fake", view("w1", {"fake"})).node_run_id == urgent


def test_a_model_held_nowhere_goes_to_the_worker_with_room_for_it(rt):
    a = principal(rt, "a")
    third = submit(rt, a, "third", waited_s=1)
    advertise(rt, "w1", {"fake": "resident", "third": "cold"}, free_bytes=0, memory_bytes=20 * GB)
    advertise(rt, "w3", {"third": "cold"}, free_bytes=40 * GB)
    # w1's budget is full (it would unload fake); w3 has room: w1 leaves it, w3 takes it
    assert isinstance(rt.scheduler.pick("model.third", view("w1", {"fake"}, free_bytes=0)), Deferred)
    assert rt.scheduler.pick("model.third", view("w3", set(), free_bytes=40 * GB)).node_run_id == third


def test_with_room_everywhere_whoever_asks_loads_a_cold_model(rt):
    a = principal(rt, "a")
    third = submit(rt, a, "third", waited_s=1)
    advertise(rt, "w3", {"third": "cold"})  # no budget there either
    assert rt.scheduler.pick("model.third", view("w1", {"fake"})).node_run_id == third


def test_dispatch_hands_deliveries_back_to_their_queue(rt):
    a, b = principal(rt, "a"), principal(rt, "b")
    other = submit(rt, a, "other", waited_s=5)
    advertise(rt, "w2", {"other": "resident"})
    ran, requeued, pauses = [], [], []
    dispatch = FairDispatch(rt.scheduler, ran.append, worker=lambda: view("w1", {"fake"}), requeue=requeued.append, sleep=pauses.append)
    delivered = NodeTask(other, "x", "model.other")
    dispatch(delivered)  # w2 holds other: not run here, the wake-up goes back after a short pause
    assert ran == [] and requeued == [delivered] and 0 < pauses[0] <= FairDispatch.MAX_DEFER_PAUSE_S
    fake = submit(rt, b, "fake", waited_s=1)
    requeued.clear()
    dispatch(delivered)  # woken by other's message, w1 runs its own model's run; other's queue keeps a wake-up
    assert [t.node_run_id for t in ran] == [fake] and requeued == [delivered]
