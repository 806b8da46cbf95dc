"""The same engine behaviour over the embedded thread queue and over Celery + Redis.

Each test runs on SQLite and PostgreSQL, with the in-process queue and with a
real Celery worker (in a thread of the test process) on a real Redis.
"""

from __future__ import annotations

import sqlalchemy as sa

from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.lifecycle import NodeTask
from pixelmill.engine.service import Submission
from pixelmill.store.tables import credit_ledger, node_runs
from tests.conftest import wait_for


def gen(prompt: str = "a red fox", **extra) -> dict:
    return {"type": "text_to_image", "params": {"model": "fake", "prompt": prompt, "width": 64, "height": 64, "steps": 2, "seed": 7, **extra}}


def submit(engine, nodes: dict):
    principal = engine.principal()
    view = engine.rt.executions.submit(Submission(principal=principal, graph={"nodes": nodes}, dialect="workflow", label="contract"))
    return principal, view


def finished(engine, principal, execution_id: str, timeout: float = 30.0):
    def done():
        view = engine.rt.executions.get(principal.account_id, execution_id)
        return view if view.status.is_terminal() else None

    return wait_for(done, timeout=timeout)


def settle_entries(engine, execution_id: str) -> list:
    with engine.rt.db.engine.connect() as conn:
        return conn.execute(
            sa.select(credit_ledger.c.kind, credit_ledger.c.amount_micro).where(
                credit_ledger.c.execution_id == execution_id, credit_ledger.c.kind.in_(["capture", "release"])
            )
        ).all()


def test_a_one_node_execution_completes(engine):
    principal, view = submit(engine, {"gen": gen()})
    view = finished(engine, principal, view.id)
    assert view.status == ExecutionStatus.SUCCEEDED, (view.error_code, view.error_message)
    assert engine.backend.calls == 1
    [image] = view.result_files()
    assert (image.width, image.height) == (64, 64)
    assert len(settle_entries(engine, view.id)) == 1
    if engine.kind == "celery":  # the node went through the model's queue
        wait_for(lambda: engine.deliveries)  # the handler returns just after the commit the poll saw
        assert [t.queue for t in engine.deliveries] == ["model.fake"]


def test_a_two_node_graph_runs_in_order(engine):
    engine.rt.catalog.models[0].supports_image_input = True  # the second node takes the first one's image
    nodes = {"first": gen("a cat"), "second": {**gen("a dog"), "inputs": {"image": ["first", "images"]}}}
    principal, view = submit(engine, nodes)
    view = finished(engine, principal, view.id)
    assert view.status == ExecutionStatus.SUCCEEDED, (view.error_code, view.error_message)
    by_id = {n.node_id: n for n in view.nodes}
    assert all(n.status == NodeStatus.SUCCEEDED for n in by_id.values())
    assert by_id["second"].started_at >= by_id["first"].finished_at
    assert engine.backend.calls == 2
    assert [view.result_files()[0].id] == [f.id for f in by_id["second"].files]
    wait_for(lambda: len(engine.deliveries) >= 2)  # the handler returns just after the commit the poll saw
    assert len(engine.deliveries) == 2  # the follow-up node was published by the runner, once


def test_a_repeated_delivery_runs_and_bills_once(engine):
    principal, view = submit(engine, {"gen": gen()})
    with engine.rt.db.engine.connect() as conn:
        run_id = conn.execute(sa.select(node_runs.c.id).where(node_runs.c.execution_id == view.id)).scalar_one()
    again = NodeTask(run_id, view.id, "model.fake")
    engine.rt.queue.enqueue(again)  # as a broker does after a lost acknowledgement
    view = finished(engine, principal, view.id)
    assert view.status == ExecutionStatus.SUCCEEDED, (view.error_code, view.error_message)
    wait_for(lambda: len(engine.deliveries) >= 2)
    engine.rt.queue.enqueue(again)  # and once more after the run finished
    wait_for(lambda: len(engine.deliveries) >= 3)
    assert {t.node_run_id for t in engine.deliveries} == {run_id}
    assert engine.backend.calls == 1
    [entry] = settle_entries(engine, view.id)
    assert entry.kind == "capture"
    with engine.rt.db.engine.connect() as conn:
        attempts = conn.execute(sa.select(node_runs.c.attempts).where(node_runs.c.id == run_id)).scalar_one()
    assert attempts == 1
