"""Background work on a timer: one daemon thread that calls a function every few seconds.

The janitor, the re-publish sweeper, the expiry sweeper, the idle-model sweeper and
the worker's model advertiser all run this way.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

_log = logging.getLogger("pixelmill.periodic")


class Periodic:
    """Calls ``work()`` every ``every_s`` seconds on a daemon thread named ``name``, from
    :meth:`start` until :meth:`stop`.

    ``every_s`` is a number or a function read before each wait, so a changed setting
    applies from the next interval.  A call that raises is logged on ``log`` at ``level``
    with its traceback, and the next call comes on time: a busy database or a bug never
    stops the loop for good.  ``first_now`` makes the first call at once instead of after
    one interval.  :attr:`stopping` is set from :meth:`stop` on, for work that goes
    through a backlog in batches.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], object],
        every_s: float | Callable[[], float],
        *,
        what: str,
        log: logging.Logger = _log,
        level: int = logging.ERROR,
        first_now: bool = False,
    ):
        self.name = name
        self.work = work
        self.every_s = every_s
        self.what = what
        self.log = log
        self.level = level
        self.first_now = first_now
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def interval(self) -> float:
        return self.every_s() if callable(self.every_s) else self.every_s

    def start(self) -> "Periodic":
        """Start the thread (nothing when it runs already)."""
        if self._thread is None:
            self.stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout`` seconds for a call in progress to end."""
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        if self.first_now:
            self._call()
        while not self.stopping.wait(self.interval()):
            self._call()

    def _call(self) -> None:
        try:
            self.work()
        except Exception:
            self.log.log(self.level, "%s failed; trying again in %.1f s", self.what, self.interval(), exc_info=True)
