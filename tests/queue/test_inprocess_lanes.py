"""The embedded queue's lanes: tasks first in, first out; the most recently idle thread takes the next one."""

from __future__ import annotations

import threading

from pixelmill.engine.lifecycle import NodeTask
from pixelmill.queue.inprocess import InProcessQueue


def task(i: int) -> NodeTask:
    return NodeTask(node_run_id=f"run-{i}", execution_id="exe", queue="model.tiny")


def test_one_client_at_a_time_is_served_by_one_thread_not_each_in_turn():
    """A thread that just finished takes the next task: it keeps its torch thread team and caches warm."""
    seen: list[str] = []
    done = threading.Event()

    def handler(t: NodeTask) -> None:
        seen.append(threading.current_thread().name)
        done.set()

    q = InProcessQueue(handler, threads=3, light_threads=0)
    q.start()
    try:
        for i in range(8):
            done.clear()
            q.enqueue(task(i))
            assert done.wait(10)
            assert q.join(10)
    finally:
        q.stop()
    assert len(seen) == 8 and len(set(seen[1:])) == 1, seen


def test_every_thread_works_when_there_are_more_tasks_than_threads():
    release = threading.Event()
    order: list[str] = []
    names: set[str] = set()
    lock = threading.Lock()

    def handler(t: NodeTask) -> None:
        with lock:
            order.append(t.node_run_id)
            names.add(threading.current_thread().name)
        release.wait(10)

    q = InProcessQueue(handler, threads=2, light_threads=0)
    q.start()
    try:
        for i in range(6):
            q.enqueue(task(i))
        release.set()
        assert q.join(10)
    finally:
        q.stop()
    assert sorted(order) == [f"run-{i}" for i in range(6)]
    assert len(names) == 2
