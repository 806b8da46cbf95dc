"""At-least-once across processes: a worker killed mid-run, its node run finished by another worker."""

from __future__ import annotations

import signal
import time

import pytest
import sqlalchemy as sa

from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.service import Submission
from pixelmill.engine.lifecycle import NodeTask
from pixelmill.store.tables import credit_ledger, execution_events
from tests.conftest import _truncate_pg, wait_for
from tests.queue.scaleout import scale_out_session, tiny_flux_node


@pytest.fixture
def scale_out_pg(tmp_path, pg_database, broker_url):
    _truncate_pg(pg_database)
    yield from scale_out_session(tmp_path, pg_database, broker_url)


def test_a_killed_workers_node_run_is_finished_by_another_worker(scale_out_pg):
    """At least once: SIGKILL mid-run leaves the message unacknowledged; the next worker runs it, billing stays single.

    Redeliveries of the same task (the broker's, and three more published by hand) reach a worker
    running two threads while the run is RUNNING for a dead worker: none starts it a second time
    and none multiplies itself; exactly one delivery takes the run over once its deadline passed.
    Every attempt writes one ``node.started``, the run completes once."""
    so = scale_out_pg
    # a RUNNING node run is taken over only once its deadline has passed (so a live duplicate never runs twice)
    so.env["PIXELMILL_NODE_TIMEOUT_S"] = "20"
    first = so.start_worker()
    principal = so.principal()
    view = so.api.executions.submit(
        Submission(principal=principal, graph={"nodes": {"gen": tiny_flux_node("a cat", 5, size=128, steps=10)}}, dialect="workflow", label="crash")
    )

    def running_in_first():
        if first.poll() is not None:
            raise AssertionError(f"first worker exited early\n{so.logs()}")
        [row] = so.node_rows(view.id)
        return row.status == NodeStatus.RUNNING and row.progress > 0 and row.worker.endswith(f":{first.pid}")

    wait_for(running_in_first, timeout=120, interval=0.1)
    first.send_signal(signal.SIGKILL)  # no warm shutdown, no acknowledgement
    first.wait(10)
    started = time.monotonic()
    [row] = so.node_rows(view.id)
    for _ in range(3):  # duplicates arriving while the dead worker's run is still within its deadline
        so.api.queue.enqueue(NodeTask.of(row))
    # the shortest visibility timeout a worker accepts with a 20 s node deadline
    second = so.start_worker("--visibility-timeout", "22", "--concurrency", "2")
    view = so.wait_terminal(principal, view.id)
    print(f"\nscale-out: killed worker's node run finished by another worker {time.monotonic() - started:.1f} s after the kill")
    assert view.status == ExecutionStatus.SUCCEEDED, (view.error_code, view.error_message, so.logs())
    [row] = so.node_rows(view.id)
    assert row.worker.endswith(f":{second.pid}")
    assert row.attempts == 2
    with so.api.db.engine.connect() as conn:
        settles = conn.execute(
            sa.select(credit_ledger.c.kind).where(credit_ledger.c.execution_id == view.id, credit_ledger.c.kind.in_(["capture", "release"]))
        ).scalars().all()
    assert settles == ["capture"]
    assert len(view.result_files()) == 1
    time.sleep(3)  # copies still due would show up as further starts

    def events(name):
        with so.api.db.engine.connect() as conn:
            return conn.execute(
                sa.select(execution_events.c.data).where(execution_events.c.execution_id == view.id, execution_events.c.event == name)
            ).scalars().all()

    assert sorted(d.get("attempt") for d in events("node.started")) == [1, 2], events("node.started")
    assert len(events("node.completed")) == 1
    [row] = so.node_rows(view.id)
    assert row.attempts == 2
