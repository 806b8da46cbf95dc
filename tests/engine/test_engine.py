"""The engine end to end with the fake backend, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import sqlalchemy as sa
import pytest

from pixelmill.accounts import ledger
from pixelmill.accounts.keys import authenticate
from pixelmill.domain.status import ExecutionStatus, IllegalTransition, NodeStatus
from pixelmill.engine.lifecycle import NodeTask
from pixelmill.engine.service import Submission
from pixelmill.store.tables import credit_ledger, execution_events, node_runs
from tests.conftest import FakeBackend, create_key, wait_for


def principal(rt, account="acme", credits=100.0):
    key = create_key(rt, account=account, credits=credits)
    with rt.db.engine.connect() as conn:
        return authenticate(conn, key)


def one_node(prompt="p", **params):
    return {"nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": prompt, "width": 64, "height": 64, "seed": 1, **params}}}}


def chain():
    g = one_node()
    g["nodes"]["small"] = {"type": "resize", "params": {"width": 32}, "inputs": {"image": ["gen", "images"]}}
    g["nodes"]["jpeg"] = {"type": "convert", "params": {"output_format": "jpeg"}, "inputs": {"image": ["small", "images"]}}
    return g


def finished(rt, p, eid):
    return wait_for(lambda: (v := rt.executions.get(p.account_id, eid)).status.is_terminal() and v)


def test_statuses_have_named_transitions():
    assert ExecutionStatus.QUEUED.start() == ExecutionStatus.RUNNING
    assert ExecutionStatus.SUCCEEDED.is_terminal() and not ExecutionStatus.RUNNING.is_terminal()
    with pytest.raises(IllegalTransition):
        ExecutionStatus.SUCCEEDED.start()
    with pytest.raises(IllegalTransition):
        NodeStatus.SUCCEEDED.cancel()


def test_chain_runs_in_order_with_timings_and_outputs(make_runtime, db_url):
    rt = make_runtime(db_url)
    p = principal(rt)
    view = finished(rt, p, rt.executions.submit(Submission(p, chain(), "workflow", "chain")).id)
    assert view.status == ExecutionStatus.SUCCEEDED
    assert [n.node_id for n in view.nodes] == ["gen", "small", "jpeg"]
    gen, small, jpeg = view.nodes
    assert gen.finished_at <= small.started_at and small.finished_at <= jpeg.started_at
    assert (small.files[0].width, small.files[0].height) == (32, 32)
    assert jpeg.files[0].content_type == "image/jpeg"
    assert view.result_files() == jpeg.files
    with rt.db.engine.connect() as conn:
        assert ledger.balance(conn, p.account_id) == pytest.approx(100 - view.cost_actual)


def test_cancel_running_stops_at_next_step_and_refunds(make_runtime, db_url):
    backend = FakeBackend(steps=50, step_delay=0.05)
    rt = make_runtime(db_url, backend=backend)
    p = principal(rt)
    eid = rt.executions.submit(Submission(p, one_node(steps=50), "workflow", "slow")).id
    assert backend.started.wait(10)
    wait_for(lambda: rt.executions.get(p.account_id, eid).nodes[0].progress > 0.05)
    rt.executions.cancel(p.account_id, eid)
    view = finished(rt, p, eid)
    assert view.status == ExecutionStatus.CANCELLED
    assert view.nodes[0].status == NodeStatus.CANCELLED
    assert view.nodes[0].progress < 0.9  # stopped early, not at the end
    with rt.db.engine.connect() as conn:
        assert ledger.balance(conn, p.account_id) == 100.0


def test_cancel_queued_execution_never_runs(make_runtime, sqlite_url):
    backend = FakeBackend(steps=50, step_delay=0.05)
    rt = make_runtime(sqlite_url, backend=backend)
    p = principal(rt)
    first = rt.executions.submit(Submission(p, one_node("a", steps=50), "workflow", "a")).id
    second = rt.executions.submit(Submission(p, one_node("b"), "workflow", "b")).id
    third = rt.executions.submit(Submission(p, one_node("c"), "workflow", "c")).id
    assert backend.started.wait(10)
    assert rt.executions.get(p.account_id, second).queue_position == 0  # next in line
    assert rt.executions.get(p.account_id, third).queue_position == 1
    rt.executions.cancel(p.account_id, third)
    view = rt.executions.cancel(p.account_id, second)
    assert view.status == ExecutionStatus.CANCELLED
    rt.executions.cancel(p.account_id, first)
    finished(rt, p, first)
    rt.queue.join(10)
    assert backend.calls == 1


def test_work_left_running_by_a_crash_is_picked_up_on_restart(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, start=False)  # API accepted work, then the process died
    p = principal(rt)
    eid = rt.executions.submit(Submission(p, chain(), "workflow", "chain")).id
    with rt.db.transaction() as conn:  # the crash happened mid-node
        conn.execute(sa.update(node_runs).where(node_runs.c.node_id == "gen").values(status="running", progress=0.5))
    rt.stop()
    rt2 = make_runtime(sqlite_url)
    view = finished(rt2, p, eid)
    assert view.status == ExecutionStatus.SUCCEEDED
    assert len(view.result_files()) == 1


def test_duplicate_delivery_runs_and_bills_once(make_runtime, db_url):
    backend = FakeBackend()
    rt = make_runtime(db_url, backend=backend, start=False)
    p = principal(rt)
    view = rt.executions.submit(Submission(p, one_node(), "workflow", "x"))
    task = NodeTask(view.nodes[0].id, view.id)
    rt.runner.run(task)
    rt.runner.run(task)  # at-least-once queues deliver twice
    assert backend.calls == 1
    with rt.db.engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(sa.select(credit_ledger.c.kind).where(credit_ledger.c.execution_id == view.id))]
    assert sorted(kinds) == ["capture", "hold"]


def test_unchanged_prefix_is_cached_and_free(make_runtime, db_url):
    backend = FakeBackend()
    rt = make_runtime(db_url, backend=backend)
    p = principal(rt)
    a = finished(rt, p, rt.executions.submit(Submission(p, chain(), "workflow", "a")).id)
    g = chain()
    g["nodes"]["jpeg"]["params"]["output_format"] = "webp"  # only the last node changed
    b = finished(rt, p, rt.executions.submit(Submission(p, g, "workflow", "b")).id)
    assert backend.calls == 1
    assert [n.cached for n in b.nodes] == [True, True, False]
    assert b.nodes[0].files[0].id == a.nodes[0].files[0].id
    assert b.cost_actual == pytest.approx(b.nodes[2].cost)


def test_failure_skips_downstream_and_refunds(make_runtime, db_url):
    rt = make_runtime(db_url, backend=FakeBackend(fail_with=RuntimeError("boom")))
    p = principal(rt)
    view = finished(rt, p, rt.executions.submit(Submission(p, chain(), "workflow", "x")).id)
    assert view.status == ExecutionStatus.FAILED
    assert [n.status for n in view.nodes] == [NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.SKIPPED]
    assert "boom" in view.error_message
    with rt.db.engine.connect() as conn:
        assert ledger.balance(conn, p.account_id) == 100.0


def test_deadline_fails_a_node_that_runs_too_long(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=200, step_delay=0.01), node_timeout_s=0.3)
    p = principal(rt)
    view = finished(rt, p, rt.executions.submit(Submission(p, one_node(), "workflow", "x")).id)
    assert view.status == ExecutionStatus.FAILED and view.error_code == "deadline_exceeded"


def test_image_urls_to_internal_addresses_are_refused(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    p = principal(rt)
    graph = {
        "nodes": {
            "in": {"type": "load_image", "params": {"url": "http://169.254.169.254/latest/meta-data/x.png"}},
            "small": {"type": "resize", "params": {"width": 8}, "inputs": {"image": ["in", "images"]}},
        }
    }
    view = finished(rt, p, rt.executions.submit(Submission(p, graph, "workflow", "ssrf")).id)
    assert view.status == ExecutionStatus.FAILED
    assert view.nodes[0].error_code == "url_resolves_to_blocked_address", view.nodes[0].error_message


def test_a_node_running_elsewhere_is_not_run_again_until_its_deadline(make_runtime, sqlite_url):
    backend = FakeBackend()
    rt = make_runtime(sqlite_url, backend=backend, start=False)
    p = principal(rt)
    view = rt.executions.submit(Submission(p, one_node(), "workflow", "x"))
    with rt.db.transaction() as conn:  # another worker claimed it just now
        conn.execute(sa.update(node_runs).where(node_runs.c.id == view.nodes[0].id).values(status="running", started_at=__import__("time").time()))
    from pixelmill.engine.runner import NodeBusy

    with pytest.raises(NodeBusy) as busy:  # the queue delivers it again later instead of dropping it
        rt.runner.run(NodeTask(view.nodes[0].id, view.id))
    assert 0 < busy.value.retry_after_s <= rt.settings.node_timeout_s
    assert backend.calls == 0
    with rt.db.transaction() as conn:  # that worker died: its deadline passed
        conn.execute(sa.update(node_runs).where(node_runs.c.id == view.nodes[0].id).values(started_at=0.0))
    rt.runner.run(NodeTask(view.nodes[0].id, view.id))
    assert backend.calls == 1
    assert rt.executions.get(p.account_id, view.id).status == ExecutionStatus.SUCCEEDED


def _publishing_fails_after(rt, n_ok: int) -> dict:
    """Make the runtime's broker refuse every publish after the first ``n_ok``; returns a switch to heal it."""
    real = rt.publisher.enqueue
    state = {"calls": 0, "down": True}

    def flaky(task):
        state["calls"] += 1
        if state["down"] and state["calls"] > n_ok:
            raise ConnectionError("broker unreachable")
        real(task)

    rt.publisher.enqueue = flaky
    return state


def _node(rt, eid, node_id):
    with rt.db.engine.connect() as conn:
        return conn.execute(sa.select(node_runs).where(node_runs.c.execution_id == eid, node_runs.c.node_id == node_id)).first()


def test_a_follow_up_node_whose_publish_failed_is_published_again(make_runtime, db_url):
    rt = make_runtime(db_url)
    rt.publisher.stamp = True  # as with a broker (an in-process queue's publish cannot fail on the way)
    p = principal(rt)
    switch = _publishing_fails_after(rt, 1)  # the submit publishes "gen"; publishing "small" fails on the worker
    eid = rt.executions.submit(Submission(p, chain(), "workflow", "chain")).id
    wait_for(lambda: _node(rt, eid, "gen").status == NodeStatus.SUCCEEDED)
    small = _node(rt, eid, "small")
    assert small.status == NodeStatus.QUEUED and small.published_at is None
    assert rt.executions.get(p.account_id, eid).status == ExecutionStatus.RUNNING  # stuck without a sweep
    assert rt.publisher.republish(older_than_s=0) == 0  # broker still down: nothing went out, nothing lost
    assert _node(rt, eid, "small").published_at is None
    switch["down"] = False
    assert rt.publisher.republish(older_than_s=0) == 1
    view = finished(rt, p, eid)
    assert view.status == ExecutionStatus.SUCCEEDED and [n.status for n in view.nodes] == [NodeStatus.SUCCEEDED] * 3
    assert rt.publisher.republish(older_than_s=0) == 0  # every run is stamped: nothing is sent twice
    with rt.db.engine.connect() as conn:
        assert ledger.balance(conn, p.account_id) == pytest.approx(100 - view.cost_actual)


def test_the_sweeper_thread_publishes_lost_runs_once_each(make_runtime, db_url):
    rt = make_runtime(db_url)
    rt.publisher.stamp = True  # as with a broker
    p = principal(rt)
    switch = _publishing_fails_after(rt, 1)
    eid = rt.executions.submit(Submission(p, chain(), "workflow", "chain")).id
    wait_for(lambda: _node(rt, eid, "small").status == NodeStatus.QUEUED)
    run = _node(rt, eid, "small")
    assert rt.publisher._claim(run.id, run.queued_at) and not rt.publisher._claim(run.id, run.queued_at)  # one claimant wins
    switch["down"] = False
    calls_before = switch["calls"]
    rt.publisher.republish_after_s = 0.2
    rt.publisher.start()
    try:
        assert finished(rt, p, eid).status == ExecutionStatus.SUCCEEDED
    finally:
        rt.publisher.stop()
    assert switch["calls"] - calls_before == 2  # "small" once by the sweeper, then "jpeg" by the worker


def test_a_run_left_running_by_a_dead_worker_goes_back_on_the_queue_once(make_runtime, db_url):
    """Scale-out: a worker died mid-run and the message the broker hands out again started other
    work, so nothing would ever run the dead worker's run.  The sweep queues it again once it is
    older than the node deadline plus a margin; it then runs (attempt 2) and completes once."""
    rt = make_runtime(db_url, start=False)
    rt.publisher.abandoned_after_s = 30.0  # as a scale-out runtime sets it from the node deadline
    rt.publisher.stamp = True  # and, with a broker, stamps what it publishes
    published = []
    rt.publisher.enqueue = published.append
    p = principal(rt)
    dead = rt.executions.submit(Submission(p, one_node("dead"), "workflow", "t")).id
    alive = rt.executions.submit(Submission(p, one_node("alive"), "workflow", "t")).id
    published.clear()
    for eid, started in ((dead, time.time() - 100), (alive, time.time() - 1)):  # one dead worker's, one still running
        with rt.db.transaction() as conn:
            conn.execute(
                sa.update(node_runs).where(node_runs.c.execution_id == eid)
                .values(status=NodeStatus.RUNNING, started_at=started, attempts=1, worker="gone:1", progress=0.4)
            )
    assert rt.publisher.sweep() == 1
    assert [t.execution_id for t in published] == [dead]
    row = _node(rt, dead, "gen")
    assert row.status == NodeStatus.QUEUED and row.published_at is not None
    assert _node(rt, alive, "gen").status == NodeStatus.RUNNING  # within its deadline: left alone
    assert rt.publisher.sweep() == 0  # moved once
    rt.runner.run(published[0])
    view = finished(rt, p, dead)
    assert view.status == ExecutionStatus.SUCCEEDED
    assert _node(rt, dead, "gen").attempts == 2
    with rt.db.engine.connect() as conn:
        completed = conn.execute(
            sa.select(sa.func.count()).select_from(execution_events).where(execution_events.c.execution_id == dead, execution_events.c.event == "node.completed")
        ).scalar()
    assert completed == 1


def test_the_embedded_server_never_takes_a_run_from_its_own_workers(make_runtime, db_url):
    rt = make_runtime(db_url, start=False)  # one process: a RUNNING run is its own thread's (re-queued at start after a crash)
    assert rt.publisher.abandoned_after_s is None and rt.publisher.requeue_abandoned() == 0


def test_an_edit_does_not_wait_behind_a_long_generation(make_runtime, sqlite_url):
    """Embedded mode: node runs that use no image model have worker threads of their own."""
    backend = FakeBackend(steps=40, step_delay=0.1)  # a 4 s generation
    rt = make_runtime(sqlite_url, backend=backend)
    p = principal(rt)
    slow = rt.executions.submit(Submission(p, one_node(steps=40), "workflow", "slow"))
    assert backend.started.wait(10)
    quick = finished(rt, p, rt.executions.submit(Submission(p, _edit_graph(), "workflow", "edit")).id)
    assert quick.status == ExecutionStatus.SUCCEEDED
    assert not rt.executions.get(p.account_id, slow.id).status.is_terminal()  # the generation still runs
    assert finished(rt, p, slow.id).status == ExecutionStatus.SUCCEEDED


def _edit_graph() -> dict:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, "PNG")
    return {"nodes": {
        "in": {"type": "load_image", "params": {"data": base64.b64encode(buf.getvalue()).decode()}},
        "small": {"type": "resize", "params": {"width": 4, "height": 4}, "inputs": {"image": ["in", "images"]}},
    }}


def test_with_no_light_threads_an_edit_waits_for_the_model_thread(make_runtime, sqlite_url):
    backend = FakeBackend(steps=10, step_delay=0.1)
    rt = make_runtime(sqlite_url, backend=backend, light_worker_threads=0)
    p = principal(rt)
    slow = rt.executions.submit(Submission(p, one_node(steps=10), "workflow", "slow"))
    assert backend.started.wait(10)
    edit = finished(rt, p, rt.executions.submit(Submission(p, _edit_graph(), "workflow", "edit")).id)
    assert edit.status == ExecutionStatus.SUCCEEDED
    generation = finished(rt, p, slow.id).nodes[0]
    assert edit.nodes[0].started_at >= generation.started_at + 10 * 0.1  # after the generation's steps


def _resize_graph(width: int) -> dict:
    g = _edit_graph()
    g["nodes"]["small"]["params"]["width"] = width
    return g


def test_a_chain_of_cache_hits_finishes_in_the_claim_of_its_first_run(make_runtime, db_url):
    """An unchanged workflow run again finishes from the cache at once: the run its first cached node
    makes runnable is cached too, so it is finished in the same transaction and never waits in the queue."""
    rt = make_runtime(db_url)
    p = principal(rt)
    first = finished(rt, p, rt.executions.submit(Submission(p, _edit_graph(), "workflow", "a")).id)
    rt.stop()  # no worker takes the next one: this test claims it
    again = rt.executions.submit(Submission(p, _edit_graph(), "workflow", "b"))
    head = next(n for n in again.nodes if n.node_id == "in")
    assert rt.runner._claim(head.id) is None  # nothing left to run: both nodes were finished in this claim
    view = rt.executions.get(p.account_id, again.id)
    assert view.status == ExecutionStatus.SUCCEEDED
    assert [n.cached for n in view.nodes] == [True, True]
    assert view.nodes[1].files[0].id == first.nodes[1].files[0].id
    with rt.db.engine.connect() as conn:
        published = conn.execute(sa.select(node_runs.c.published_at).where(node_runs.c.execution_id == again.id, node_runs.c.node_id == "small")).scalar()
    assert published is None  # the cached successor never reached a queue


def test_an_execution_whose_first_node_is_cached_runs_its_next_node_before_later_executions_start(make_runtime, sqlite_url):
    """Embedded: a run finished from the cache is followed at once by the run it made runnable on its
    queue, so an execution goes on instead of queueing its next node behind every later execution."""
    rt = make_runtime(sqlite_url)
    p = principal(rt)
    finished(rt, p, rt.executions.submit(Submission(p, _resize_graph(3), "workflow", "warm")).id)  # load_image is cached now
    rt.stop()
    views = [rt.executions.submit(Submission(p, _resize_graph(4 + i), "workflow", f"e{i}")) for i in range(4)]
    rt.start()  # every first node waits when the worker starts
    done = [finished(rt, p, v.id) for v in views]
    assert all(v.status == ExecutionStatus.SUCCEEDED for v in done)
    for earlier, later in zip(done, done[1:]):
        e_in, e_small = earlier.nodes
        l_in, _ = later.nodes
        assert e_in.cached and not e_small.cached
        assert e_small.started_at <= l_in.started_at, "the earlier execution's resize waited behind a later execution"
