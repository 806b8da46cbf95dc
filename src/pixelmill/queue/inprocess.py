"""The embedded queue: worker threads in the server process, FIFO."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from pixelmill.engine.lifecycle import NodeTask

log = logging.getLogger("pixelmill.queue")


class InProcessQueue:
    def __init__(self, handler: Callable[[NodeTask], None] | None = None, threads: int = 1):
        self.handler = handler
        self.threads = threads
        self._q: "queue.Queue[NodeTask | None]" = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._idle = threading.Condition()
        self._busy = 0
        #: waits for work the handler handed on (the runner's finisher); :meth:`join` calls it
        self.drain: Callable[[], None] | None = None

    def enqueue(self, task: NodeTask) -> None:
        self._q.put(task)

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"pixelmill-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        for _ in self._workers:
            self._q.put(None)
        for t in self._workers:
            t.join(timeout)
        self._workers.clear()

    def pending(self) -> int:
        return self._q.qsize()

    def join(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty and no task runs (tests); a handler that hands work on
        (:attr:`drain`) is waited for too."""
        with self._idle:
            done = self._idle.wait_for(lambda: self._q.unfinished_tasks == 0, timeout)
        if done and self.drain is not None:
            self.drain()
        return done

    def _loop(self) -> None:
        while True:
            task = self._q.get()
            try:
                if task is None:
                    return
                self.handler(task)
            except Exception:
                log.exception("task %s crashed", task)
            finally:
                self._q.task_done()
                with self._idle:
                    self._idle.notify_all()
