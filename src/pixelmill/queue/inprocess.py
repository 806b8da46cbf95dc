"""The embedded queue: worker threads in the server process, FIFO per lane.

Two lanes: node runs of an image model's queue (``model.<name>``) on ``threads`` threads, and
every other node run (load, resize, crop, upscale, background removal…) on ``light_threads``
threads of its own, so a quick edit never waits behind a long generation, and the database
work of one lane overlaps the other's compute.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable, Generic, TypeVar

from pixelmill.engine.lifecycle import NodeTask
from pixelmill.engine.scheduler import model_of
from pixelmill.models.threads import give_up_team_beside, team_of

log = logging.getLogger("pixelmill.queue")

T = TypeVar("T")


class _Idle:
    """What :meth:`_Lane.get` returns when no task came in time."""


IDLE = _Idle()
#: a worker thread idle this long while it holds a PyTorch thread team beside another thread's is
#: replaced by a fresh one (its team ends with it; see :class:`pixelmill.models.threads._Teams`)
RENEW_IDLE_S = 1.0


class _Lane(Generic[T]):
    """Tasks first in, first out; of the idle threads, the one with the largest PyTorch thread
    team is woken first, then the one idle the shortest time.

    With fewer tasks than threads (one client), one thread does the work instead of each in
    turn, and it is the thread that holds the OpenMP team left after a burst (an idle thread
    holding a second one is renewed, see :data:`RENEW_IDLE_S`: two teams put libgomp in a mode
    that made every generation about 45 % slower; :class:`pixelmill.models.threads._Teams`).
    ``queue.Queue`` wakes the thread that waited longest.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: deque[T] = deque()
        self._idle: list[list] = []  # waiting threads, most recent last: [event, task, thread ident]
        self.unfinished_tasks = 0  # put and not yet done (as queue.Queue counts them)

    def put(self, task: T) -> None:
        with self._lock:
            self.unfinished_tasks += 1
            if self._idle:
                # the last with the largest team (max keeps the first of equals: look from the end)
                at = max(range(len(self._idle) - 1, -1, -1), key=lambda i: team_of(self._idle[i][2]))
                waiter = self._idle.pop(at)
                waiter[1] = task
                waiter[0].set()
            else:
                self._tasks.append(task)

    def get(self, idle_s: float | None = None) -> T | _Idle:
        """The next task; :data:`IDLE` when none came within ``idle_s`` (None: wait for one)."""
        with self._lock:
            if self._tasks:
                return self._tasks.popleft()
            waiter = [threading.Event(), None, threading.get_ident()]
            self._idle.append(waiter)
        if not waiter[0].wait(idle_s):
            with self._lock:
                if not waiter[0].is_set():  # not handed a task meanwhile
                    self._idle.remove(waiter)
                    return IDLE
        return waiter[1]

    def task_done(self) -> None:
        with self._lock:
            self.unfinished_tasks -= 1

    def qsize(self) -> int:
        with self._lock:
            return len(self._tasks)


class InProcessQueue:
    def __init__(self, handler: Callable[[NodeTask], None] | None = None, threads: int = 1, light_threads: int = 1):
        self.handler = handler
        self.threads = threads
        self.light_threads = light_threads
        self._model: _Lane[NodeTask | None] = _Lane()
        # no light threads: everything shares the model lane
        self._light: _Lane[NodeTask | None] = _Lane() if light_threads > 0 else self._model
        #: (thread name, lane, threads) of each lane that has threads of its own
        self._pools = [("worker", self._model, threads)] + ([("light-worker", self._light, light_threads)] if light_threads > 0 else [])
        self._workers: list[tuple[threading.Thread, _Lane]] = []
        self._workers_lock = threading.Lock()
        self._stopping = False
        self._idle = threading.Condition()
        #: waits for work the handler handed on (the runner's finisher); :meth:`join` calls it
        self.drain: Callable[[], None] | None = None

    def _lane(self, task: NodeTask) -> _Lane[NodeTask | None]:
        return self._model if model_of(task.queue or "") is not None else self._light

    def enqueue(self, task: NodeTask) -> None:
        self._lane(task).put(task)

    def start(self) -> None:
        for name, lane, count in self._pools:
            for i in range(count):
                self._spawn(lane, f"pixelmill-{name}-{i}")

    def _spawn(self, lane: _Lane[NodeTask | None], name: str) -> None:
        with self._workers_lock:
            if self._stopping:
                return
            t = threading.Thread(target=self._loop, args=(lane,), name=name, daemon=True)
            self._workers.append((t, lane))
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._workers_lock:
            self._stopping = True
            workers = list(self._workers)
        for _, lane in workers:
            lane.put(None)
        for t, _ in workers:
            t.join(timeout)
        with self._workers_lock:
            self._workers.clear()
            self._stopping = False

    def _lanes(self) -> list[_Lane[NodeTask | None]]:
        return [lane for _, lane, _ in self._pools]

    def pending(self) -> int:
        return sum(lane.qsize() for lane in self._lanes())

    def join(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty and no task runs (tests); a handler that hands work on
        (:attr:`drain`) is waited for too."""
        with self._idle:
            done = self._idle.wait_for(lambda: all(lane.unfinished_tasks == 0 for lane in self._lanes()), timeout)
        if done and self.drain is not None:
            self.drain()
        return done

    def _loop(self, lane: _Lane[NodeTask | None]) -> None:
        me = threading.current_thread()
        while True:
            task = lane.get(RENEW_IDLE_S if team_of(me.ident) > 1 else None)
            if task is IDLE:
                if not give_up_team_beside(me.ident):
                    continue  # the only team: kept for the next lone run
                # two teams slow every run down: this thread gives its team up by ending, and a fresh
                # thread (no team) takes its place
                with self._workers_lock:
                    self._workers = [(t, ln) for t, ln in self._workers if t is not me]
                self._spawn(lane, me.name)
                return
            try:
                if task is None:
                    return
                self.handler(task)
            except Exception:
                log.exception("task %s crashed", task)
            finally:
                lane.task_done()
                with self._idle:
                    self._idle.notify_all()
