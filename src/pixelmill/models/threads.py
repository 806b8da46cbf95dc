"""How many PyTorch CPU threads a generation gets, re-chosen while it runs.

A second torch thread makes one generation faster only while its core is free.  libgomp's
threads meet at the end of every operation, so when anything else wants one of their cores
(the event loop answering polls, the finisher encoding a PNG, another process) the pair
goes at the pace of the one that waits: on two cores a direct loop on two threads measured
3.40 img/s alone and 0.11 img/s beside one busy process, against 3.18 on one thread.

So a :class:`TorchThreads` with room for more threads than it needs to leave free
(``high`` > ``low``: an embedded server, which also serves the API, leaves one core to it)
watches the machine from the thread that generates, at the start of a run and after every
step (:meth:`TorchThreads.step`, called through :meth:`StepControl.report
<pixelmill.models.base.StepControl.report>`):

* on ``low`` threads, how many other threads are runnable (``/proc/loadavg``'s running
  count, less this one).  When that stays near zero, and this thread does not wait for a
  CPU, the spare core is idle and the run goes on ``high`` threads;
* on ``high`` threads, whether the pair is being held back: other threads runnable beyond
  its own, or this thread waiting for a CPU (``/proc/thread-self/schedstat``).  Either,
  once it lasts, sends it back to ``low``.  Each look weighs by the time since the one
  before: a burst of a few milliseconds (a poll answered, a PNG encoded) costs less than
  steps on fewer threads and is let be, while a single step slowed to many times its
  length by a busy core decides at once.

One client on a quiet machine gets every core, and so do 16 clients whose requests
leave the API mostly waiting; a process or machine kept busy by other work gets the safe
count.  Each decision is a few microseconds (two
small reads of ``/proc``), at most once per :data:`SAMPLE_EVERY_S`.  Where ``/proc`` cannot
tell (not Linux, or this process may use fewer CPUs than the machine has, so the machine's
counts are not about its CPUs), the count stays ``low``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

#: how often a running generation looks again (a step quicker than this skips the look)
SAMPLE_EVERY_S = 0.01
#: the moving averages forget with this time constant: a look weighs by the time since the
#: one before (a 15 ms step about 0.3, a step slowed to 200 ms by a busy core all of it)
MEMORY_S = 0.04
#: the weight of the look a run starts with (after an idle gap it stands for less than its span)
FIRST_LOOK = 0.25
#: on ``low``: go up once someone else is runnable less than this fraction of the time
UP_BELOW = 0.2
#: on ``high``: go down once this thread waits for a CPU this fraction of the time
DOWN_WAIT = 0.15
#: on ``high``: go down once someone else is runnable this fraction of the time (a burst of a
#: few milliseconds, a poll answered or a PNG encoded, costs less than a step on fewer threads)
DOWN_BUSY = 0.6


def _running() -> int | None:
    """Runnable threads on the machine now (``/proc/loadavg``), None where that cannot be read."""
    try:
        with open("/proc/loadavg", "rb") as f:
            field = f.read().split()[3]
        return int(field.split(b"/")[0])
    except (OSError, IndexError, ValueError):
        return None


def _waited_ns() -> int | None:
    """Nanoseconds this thread has spent runnable but waiting for a CPU, None where unknown."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _machine_is_ours() -> bool:
    """Whether this process may run on every CPU the machine has (so the machine's counts are about its CPUs)."""
    if not sys.platform.startswith("linux") or _running() is None or _waited_ns() is None:
        return False
    try:
        return len(os.sched_getaffinity(0)) == (os.cpu_count() or 0)
    except (AttributeError, OSError):
        return False


def _own_running() -> int | None:
    """This process's runnable threads now (``/proc/self/task/*/stat``), None where unknown."""
    try:
        entries = list(os.scandir("/proc/self/task"))
    except OSError:
        return None
    count = 0
    for entry in entries:
        try:
            with open(f"/proc/self/task/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        end = stat.rfind(b")")
        if stat[end + 2 : end + 3] == b"R":
            count += 1
    return count


def spare_cores() -> int:
    """CPUs free for short work started now on the calling thread (the output classifier after a
    generation): the machine's CPUs less the caller's, less those the generations running in this
    process are using, less one per thread of another process that is runnable.  0 where that
    cannot be told (see :func:`_machine_is_ours`).

    This process's other threads are not counted from ``/proc``: a finished generation's
    OpenMP threads spin for some milliseconds before they sleep, and an image encoded beside the
    check takes a few; what is running here for longer is a generation, and those are known.
    One look, no history: about a millisecond with a hundred threads."""
    if not _machine_is_ours():
        return 0
    running = _running()
    if running is None:
        return 0
    others = 0
    if running > 1:
        own = _own_running()
        if own is None:
            return 0
        others = max(0, running - own)
    with _lock:
        generating = sum(state.actual for state in _generating.values())
    return max(0, (os.cpu_count() or 1) - 1 - others - generating)


@dataclass
class _State:
    """One generating thread's view (each worker thread has its own)."""

    threads: int  # the count the policy chose
    actual: int = 1  # the count PyTorch was given (at most the CPUs)
    busy: float = 0.5  # moving average of "someone else was runnable" (0 or 1 per look)
    wait: float = 0.0  # moving average of the fraction of time this thread waited for a CPU
    at: float = 0.0  # time.monotonic() of the last look
    waited: int = 0  # _waited_ns() at the last look


class TorchThreads:
    """PyTorch's CPU thread count for the threads that run models: ``low``, or ``high`` while the machine lets it."""

    def __init__(self, low: int, high: int | None = None, adaptive: bool | None = None):
        self.low = max(1, int(low))
        self.high = max(self.low, int(high or self.low))
        if adaptive is None:
            adaptive = _machine_is_ours()
        self.adaptive = adaptive and self.high > self.low
        self._local = threading.local()

    @classmethod
    def fixed(cls, count: int) -> "TorchThreads":
        """Always ``count`` threads."""
        return cls(count, count, adaptive=False)

    def __repr__(self) -> str:
        return f"TorchThreads(low={self.low}, high={self.high}, adaptive={self.adaptive})"

    # --- the generating thread's calls ----------------------------------------------------------
    def begin(self) -> int:
        """A run starts on this thread: choose its count and give it to PyTorch; returns the count."""
        state = self._state()
        if self.adaptive:
            self._look(state, time.monotonic(), FIRST_LOOK)
        state.actual = _set_threads(state.threads)
        return state.actual

    def step(self) -> None:
        """A step of this thread's run ended: look again (at most every :data:`SAMPLE_EVERY_S`)."""
        if not self.adaptive:
            return
        state = getattr(self._local, "state", None)
        if state is None:
            return
        now = time.monotonic()
        if now - state.at >= SAMPLE_EVERY_S:
            before = state.threads
            self._look(state, now)
            if state.threads != before:
                state.actual = _set_threads(state.threads)

    def current(self) -> int:
        """The count this thread runs on now (``low`` before its first run)."""
        state = getattr(self._local, "state", None)
        return self.low if state is None else state.actual

    # --- deciding ------------------------------------------------------------------------------------
    def _state(self) -> _State:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _State(threads=self.low, at=time.monotonic(), waited=_waited_ns() or 0)
        return state

    def _look(self, state: _State, now: float, weight: float | None = None) -> None:
        running, waited = _running(), _waited_ns()
        if running is None or waited is None:
            state.threads = self.low
            return
        span = now - state.at
        waited_fraction = (waited - state.waited) / 1e9 / span if span > 0 else 0.0
        state.at, state.waited = now, waited
        # this thread is running; on ``high`` threads its peers are either computing (counted) or
        # asleep between operations (not counted): what is left is someone else's
        others = max(0, running - state.actual)
        if weight is None:
            weight = 1.0 - math.exp(-span / MEMORY_S) if span > 0 else 0.0
        state.busy += weight * (min(1, others) - state.busy)
        state.wait += weight * (min(1.0, waited_fraction) - state.wait)
        if state.threads == self.high:
            if state.wait >= DOWN_WAIT or state.busy >= DOWN_BUSY:
                state.threads = self.low
                state.busy = max(state.busy, DOWN_BUSY)  # quiet for a while before going up again
        elif state.busy < UP_BELOW and state.wait < DOWN_WAIT:
            state.threads = self.high


_active = threading.local()
#: the threads running a generation in this process now, with their views (for spare_cores())
_generating: dict[int, _State] = {}
_lock = threading.Lock()


@contextmanager
def running_on(threads: "TorchThreads | None") -> Iterator[None]:
    """While the block runs, this thread's steps (:func:`step`) are ``threads``'s to look at, and
    it counts as generating (:func:`spare_cores`)."""
    before = getattr(_active, "threads", None)
    ident = threading.get_ident()
    _active.threads = threads
    with _lock:
        outer = _generating.get(ident)
        if threads is not None:
            _generating[ident] = threads._state()
    try:
        yield
    finally:
        _active.threads = before
        with _lock:
            if outer is not None:
                _generating[ident] = outer
            else:
                _generating.pop(ident, None)


def step() -> None:
    """A step of the calling thread's generation ended (backends report every step; see :meth:`TorchThreads.step`)."""
    threads = getattr(_active, "threads", None)
    if threads is not None:
        threads.step()


class _Teams:
    """The OpenMP thread teams of this process's threads.

    libgomp (PyTorch's OpenMP) gives every thread that runs an operation on more than one
    thread a team of its own, keeps it until that thread ends, and never shrinks it.  Once
    the teams hold more threads than there are CPUs, libgomp stops spinning between
    operations altogether (its "throttled" mode) and every operation wakes its team from
    sleep: on two cores, with two threads that had each run on two torch threads, one
    generation took 417-452 ms against 289 ms with one team and 353 ms on one thread
    (pixelmill-tiny, 256x256, 16 steps), whichever thread ran it.  While both threads are
    busy that costs little (each runs on one torch thread then), and letting either take
    the cores when it is briefly alone gave 16 clients 10-15 % more images/s than keeping
    one team; once the burst is over it slows every image.  So the embedded queue renews
    a worker thread that holds a team beside another one once it has been idle a moment
    (:func:`pixelmill.queue.inprocess`), and hands a lone client's runs to the thread with
    the largest team (:func:`team_of`).  No thread runs on more threads than there are CPUs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._teams: dict[int, tuple[threading.Thread, int]] = {}  # ident -> (thread, largest count it ran on)

    def allow(self, count: int) -> int:
        """``count``, at most the CPUs; recorded as the calling thread's team when above 1."""
        count = max(1, min(count, _cpus()))
        if count > 1:
            me = threading.current_thread()
            with self._lock:
                thread, held = self._teams.get(me.ident, (me, 1))
                if thread is not me:  # an ended thread's ident, given again
                    held = 1
                if count > held:
                    self._teams[me.ident] = (me, count)
        return count

    def of(self, ident: int | None) -> int:
        with self._lock:
            entry = self._teams.get(ident) if ident is not None else None
            return entry[1] if entry is not None and entry[0].is_alive() and entry[0].ident == ident else 1

    def beside(self, ident: int) -> bool:
        """Whether a live thread other than ``ident`` holds a team."""
        with self._lock:
            self._forget_ended()
            return any(i != ident for i in self._teams)

    def give_up_beside(self, ident: int) -> bool:
        """When another live thread holds a team too: forget ``ident``'s and return True (its thread is to
        end now, and its team with it); else False.  Of two threads asking at once, one gives up."""
        with self._lock:
            self._forget_ended()
            if ident in self._teams and any(i != ident for i in self._teams):
                del self._teams[ident]
                return True
            return False

    def _forget_ended(self) -> None:
        for other in [i for i, (t, _) in self._teams.items() if not t.is_alive()]:
            del self._teams[other]  # its team ended with it


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_teams = _Teams()


def team_of(ident: int | None) -> int:
    """The largest torch thread count the thread ``ident`` has run on (its OpenMP team; 1: none)."""
    return _teams.of(ident)


def team_beside(ident: int) -> bool:
    """Whether a live thread other than ``ident`` has run on more than one torch thread (holds an OpenMP team)."""
    return _teams.beside(ident)


def give_up_team_beside(ident: int) -> bool:
    """For a thread about to end when another thread holds an OpenMP team too (see :class:`_Teams`):
    True, and its own team is no longer counted; False when it holds the only one."""
    return _teams.give_up_beside(ident)


def _set_threads(count: int) -> int:
    """Give PyTorch ``count`` threads in the calling thread, at most the CPUs (:class:`_Teams`);
    returns the count given.

    Always set, never compared first: libgomp keeps the count per thread, while
    ``torch.get_num_threads()`` reports the last count any thread set, so with two worker
    threads it can say 2 to a thread whose own operations still run on 1."""
    count = _teams.allow(count)
    torch = sys.modules.get("torch")  # loaded by the backend; never imported here
    # another thread may be importing it still (a warm start): a module without its functions yet is not in use
    set_ = getattr(torch, "set_num_threads", None)
    if set_ is not None:
        set_(count)
    return count
