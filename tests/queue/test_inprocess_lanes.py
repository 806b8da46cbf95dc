"""The embedded queue's lanes: tasks first in, first out; the most recently idle thread takes the next one."""

from __future__ import annotations

import threading
import time

from pixelmill.engine.lifecycle import NodeTask
from pixelmill.queue.inprocess import InProcessQueue


def task(i: int) -> NodeTask:
    return NodeTask(node_run_id=f"run-{i}", execution_id="exe", queue="model.tiny")


class Burst:
    """Tasks named ``burst-…`` that all start, then stay running until :attr:`release` is set."""

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self.release = threading.Event()

    def start(self, q: InProcessQueue, count: int) -> None:
        """Enqueue ``count`` burst tasks and wait until each has started."""
        for i in range(count):
            q.enqueue(NodeTask(node_run_id=f"burst-{i}", execution_id="exe", queue="model.tiny"))
        for _ in range(count):
            assert self.started.acquire(timeout=10)

    def hold(self, t: NodeTask) -> None:
        """Called by a handler: a burst task says it started and waits for the release."""
        if t.node_run_id.startswith("burst"):
            self.started.release()
            assert self.release.wait(10)


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


def test_a_lone_task_goes_to_the_idle_thread_that_may_run_on_every_core(monkeypatch):
    """After a burst, the one client's runs go to the thread holding the PyTorch thread team left
    (see the renewal below), not to whichever thread finished last."""
    import pixelmill.queue.inprocess as inprocess

    wide: dict[str, int] = {}
    monkeypatch.setattr(inprocess, "team_of", lambda ident: wide.get(ident, 1))
    seen: list[str] = []
    b = Burst()

    def handler(t: NodeTask) -> None:
        seen.append(threading.current_thread().name)
        b.hold(t)

    q = InProcessQueue(handler, threads=3, light_threads=0)
    q.start()
    try:
        b.start(q, 3)  # every thread busy
        by_name = {th.name: th.ident for th in threading.enumerate()}
        holder = seen[1]  # not the first thread to start, nor necessarily the last to finish
        wide[by_name[holder]] = 2
        b.release.set()
        assert q.join(10)
        seen.clear()
        for i in range(4):
            q.enqueue(task(i))
            assert q.join(10)
    finally:
        q.stop()
    assert seen == [holder] * 4, seen


def test_after_a_burst_an_idle_thread_holding_a_second_torch_team_is_renewed(monkeypatch):
    """Two threads that each ran on every core keep an OpenMP team each, and two teams slow every
    later image down; once the burst is over, the idle one is replaced by a fresh thread."""
    import pixelmill.models.threads as threads_module
    import pixelmill.queue.inprocess as inprocess

    monkeypatch.setattr(threads_module, "_cpus", lambda: 2)
    monkeypatch.setattr(threads_module, "_teams", threads_module._Teams())  # this process's other tests' threads aside
    monkeypatch.setattr(inprocess, "RENEW_IDLE_S", 0.2)
    b = Burst()
    seen: list[int] = []

    def handler(t: NodeTask) -> None:
        threads_module._set_threads(2)  # a run on both cores: this thread now holds a team
        seen.append(threading.get_ident())
        b.hold(t)

    q = InProcessQueue(handler, threads=2, light_threads=0)
    q.start()
    try:
        b.start(q, 2)
        busy = set(seen)
        assert len(busy) == 2 and all(threads_module.team_beside(i) for i in busy)
        b.release.set()
        assert q.join(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(t.is_alive() for t in threading.enumerate() if t.ident in busy) > 1:
            time.sleep(0.05)
        kept = [i for i in busy if any(t.ident == i and t.is_alive() for t in threading.enumerate())]
        assert len(kept) == 1  # one of the two ended, its team with it
        assert not threads_module.team_beside(kept[0])
        seen.clear()
        for i in range(3):  # the lone client's runs go to the thread that kept its team
            q.enqueue(task(i))
            assert q.join(10)
        assert seen == kept * 3
        assert len([t for t in threading.enumerate() if t.name.startswith("pixelmill-worker-")]) == 2  # the pool is whole
    finally:
        q.stop()
