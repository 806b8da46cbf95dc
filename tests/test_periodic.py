"""The periodic background thread every sweeper runs on."""

from __future__ import annotations

import logging
import threading
import time

from pixelmill.periodic import Periodic
from tests.conftest import wait_for


def test_it_calls_on_time_survives_failures_and_stops(caplog):
    calls: list[float] = []

    def work() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("database away")

    timer = Periodic("test-periodic", work, 0.02, what="test sweep", log=logging.getLogger("test.periodic"))
    with caplog.at_level(logging.ERROR, "test.periodic"):
        timer.start()
        assert timer.start() is timer  # starting twice runs one thread
        wait_for(lambda: len(calls) >= 4, timeout=5)
        timer.stop()
    assert not timer.running and [t.name for t in threading.enumerate()].count("test-periodic") == 0
    stopped_at = len(calls)
    time.sleep(0.1)
    assert len(calls) == stopped_at
    assert all(b - a >= 0.015 for a, b in zip(calls, calls[1:]))
    failures = [r for r in caplog.records if r.name == "test.periodic"]
    assert len(failures) == 1 and "test sweep failed" in failures[0].getMessage() and failures[0].exc_info


def test_first_now_a_changed_interval_and_a_restart():
    calls: list[float] = []
    every = [10.0]
    timer = Periodic("test-periodic", lambda: calls.append(time.monotonic()), lambda: every[0], what="x", first_now=True)
    started = time.monotonic()
    timer.start()
    wait_for(lambda: len(calls) == 1, timeout=5)
    assert calls[0] - started < 1  # at once, not after ten seconds
    timer.stop(timeout=5)
    every[0] = 0.01
    timer.start()
    wait_for(lambda: len(calls) >= 3, timeout=5)
    assert timer.running and not timer.stopping.is_set()
    timer.stop()
    assert timer.stopping.is_set() and not timer.running
