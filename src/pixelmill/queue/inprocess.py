"""The embedded queue: worker threads in the server process, FIFO per lane.

Two lanes: node runs of an image model's queue (``model.<name>``) on ``threads`` threads, and
every other node run (load, resize, crop, upscale, background removal…) on ``light_threads``
threads of its own, so a quick edit never waits behind a long generation, and the database
work of one lane overlaps the other's compute.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from pixelmill.engine.lifecycle import NodeTask
from pixelmill.engine.scheduler import model_of

log = logging.getLogger("pixelmill.queue")


class InProcessQueue:
    def __init__(self, handler: Callable[[NodeTask], None] | None = None, threads: int = 1, light_threads: int = 1):
        self.handler = handler
        self.threads = threads
        self.light_threads = light_threads
        self._model: "queue.Queue[NodeTask | None]" = queue.Queue()
        # no light threads: everything shares the model lane
        self._light: "queue.Queue[NodeTask | None]" = queue.Queue() if light_threads > 0 else self._model
        #: (thread name, lane, threads) of each lane that has threads of its own
        self._pools = [("worker", self._model, threads)] + ([("light-worker", self._light, light_threads)] if light_threads > 0 else [])
        self._workers: list[tuple[threading.Thread, queue.Queue]] = []
        self._idle = threading.Condition()
        #: waits for work the handler handed on (the runner's finisher); :meth:`join` calls it
        self.drain: Callable[[], None] | None = None

    def _lane(self, task: NodeTask) -> "queue.Queue[NodeTask | None]":
        return self._model if model_of(task.queue or "") is not None else self._light

    def enqueue(self, task: NodeTask) -> None:
        self._lane(task).put(task)

    def start(self) -> None:
        for name, lane, count in self._pools:
            for i in range(count):
                t = threading.Thread(target=self._loop, args=(lane,), name=f"pixelmill-{name}-{i}", daemon=True)
                t.start()
                self._workers.append((t, lane))

    def stop(self, timeout: float = 10.0) -> None:
        for _, lane in self._workers:
            lane.put(None)
        for t, _ in self._workers:
            t.join(timeout)
        self._workers.clear()

    def _lanes(self) -> list["queue.Queue[NodeTask | None]"]:
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

    def _loop(self, lane: "queue.Queue[NodeTask | None]") -> None:
        while True:
            task = lane.get()
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
