"""The fair pick over both queues: with the embedded threads and with a Celery worker on Redis,
one account's flood does not hold back another account's single job."""

from __future__ import annotations

import sqlalchemy as sa

from pixelmill.engine.service import Submission
from pixelmill.store.tables import node_runs
from tests.conftest import wait_for
from tests.queue.test_queue_contract import gen


def test_a_single_job_overtakes_a_flood_on_either_queue(engine):
    engine.backend.step_delay = 0.03  # 4 steps: about 0.12 s a job
    flooder, single = engine.principal("flooder"), engine.principal("single")
    # one run first, so that loading what a first run loads (the fake model, the output classifier)
    # does not hold this thread back while the flood starts
    warm = engine.rt.executions.submit(Submission(flooder, {"nodes": {"gen": gen("warm", seed=100)}}, "workflow", "warm")).id
    wait_for(lambda: engine.rt.executions.get(None, warm).status.is_terminal(), timeout=60)
    # the flood in one transaction: submitted one by one, the first runs would start while the rest are written
    flood = [(Submission(flooder, {"nodes": {"gen": gen(f"a {i}", seed=i)}}, "workflow", "flood"), None) for i in range(8)]
    ids = [view.id for view in engine.rt.executions.submit_many(flood)]
    wait_for(lambda: engine.backend.calls >= 2)  # the flood has started
    lone = engine.rt.executions.submit(Submission(single, {"nodes": {"gen": gen("b", seed=99)}}, "workflow", "single")).id
    wait_for(lambda: all(engine.rt.executions.get(None, e).status.is_terminal() for e in ids + [lone]), timeout=60)
    with engine.rt.db.engine.connect() as conn:
        order = conn.execute(sa.select(node_runs.c.execution_id).where(node_runs.c.execution_id != warm).order_by(node_runs.c.started_at)).scalars().all()
    assert order.index(lone) <= 2, order.index(lone)  # behind the running job (and one just picked), not all 8
