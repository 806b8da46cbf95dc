"""PyTorch's thread count for a generation: every core while nothing else wants one, the safe count otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from pixelmill.models import threads as threads_module
from pixelmill.models.base import StepControl
from pixelmill.models.threads import TorchThreads, running_on


class Machine:
    """What ``/proc`` tells the policy (runnable threads now, the nanoseconds this thread has waited
    for a CPU) and its clock, moved on by each step."""

    def __init__(self, monkeypatch):
        self.running = 1
        self.waited = 0
        self.now = 1000.0
        monkeypatch.setattr(threads_module, "_running", lambda: self.running)
        monkeypatch.setattr(threads_module, "_waited_ns", lambda: self.waited)
        monkeypatch.setattr(threads_module, "time", SimpleNamespace(monotonic=lambda: self.now))

    def quiet_start(self, policy: TorchThreads) -> int:
        """A run starts on a quiet machine and goes ten steps; PyTorch's count after them."""
        policy.begin()
        return self.steps(policy, 10)

    def steps(self, policy: TorchThreads, count: int, seconds: float = 0.015, waiting: float = 0.0) -> int:
        """``count`` steps of ``seconds`` each (this thread waiting for a CPU ``waiting`` of each); PyTorch's count after them."""
        for _ in range(count):
            self.now += seconds
            self.waited += int(waiting * seconds * 1e9)
            policy.step()
        return torch.get_num_threads()


def on_a_thread(fn):
    """Run ``fn`` on a fresh thread (libgomp keeps the count per thread) and return what it returned."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


@pytest.fixture
def machine(monkeypatch):
    return Machine(monkeypatch)


def test_a_quiet_machine_gives_a_generation_every_core(machine):
    policy = TorchThreads(1, 2, adaptive=True)

    def run():
        torch.set_num_threads(1)
        return machine.quiet_start(policy)

    assert on_a_thread(run) == 2


def test_a_generation_goes_back_to_the_safe_count_when_something_else_keeps_a_core_and_up_again_after(machine):
    policy = TorchThreads(1, 2, adaptive=True)

    def run():
        counts = []
        counts.append(machine.quiet_start(policy))  # quiet: up
        machine.running = 2 + 1  # its two threads and someone else's
        counts.append(machine.steps(policy, 1))  # one step's burst (a poll answered): stays up
        counts.append(machine.steps(policy, 3))  # still there: down
        machine.running = 1 + 1  # on one thread now, the other one still busy: stays down
        counts.append(machine.steps(policy, 20))
        machine.running = 1  # quiet again: up
        counts.append(machine.steps(policy, 10))
        return counts

    assert on_a_thread(run) == [2, 2, 1, 1, 2]


def test_a_step_slowed_down_by_a_busy_core_is_enough_to_go_back(machine):
    """Two torch threads beside a busy core take many times as long per step: one such step decides."""
    policy = TorchThreads(1, 2, adaptive=True)

    def run():
        before = machine.quiet_start(policy)
        machine.running = 2 + 1
        return before, machine.steps(policy, 1, seconds=0.2)

    assert on_a_thread(run) == (2, 1)


def test_a_generation_that_waits_for_a_cpu_on_every_core_goes_back_to_the_safe_count(machine):
    policy = TorchThreads(1, 2, adaptive=True)

    def run():
        before = machine.quiet_start(policy)
        # no one else is counted runnable, but this thread waits for a CPU half the time
        return before, machine.steps(policy, 5, waiting=0.5)

    assert on_a_thread(run) == (2, 1)


def test_the_count_is_chosen_per_generating_thread(machine):
    policy = TorchThreads(1, 2, adaptive=True)

    def quiet():
        machine.quiet_start(policy)
        return policy.current()

    assert on_a_thread(quiet) == 2
    assert on_a_thread(policy.current) == 1  # a thread that has not run a model yet


def test_a_step_reported_inside_a_models_use_is_what_the_policy_looks_at(machine):
    policy = TorchThreads(1, 2, adaptive=True)

    def run():
        policy.begin()
        machine.now += 0.015
        StepControl().report(0.5)  # outside: nothing looks
        outside = policy.current()
        with running_on(policy):
            for i in range(10):
                machine.now += 0.015
                StepControl().report(i / 10)
        return outside, policy.current()

    assert on_a_thread(run) == (1, 2)


def test_a_fixed_count_or_a_process_held_to_fewer_cpus_never_changes_the_count(machine, monkeypatch):
    assert TorchThreads.fixed(2).adaptive is False
    assert TorchThreads(2, 2).adaptive is False  # no room to change
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
        monkeypatch.setattr(os, "cpu_count", lambda: 8)
        assert TorchThreads(1, 2).adaptive is False  # the machine's counts are not about this process's CPUs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_beside_busy_processes_a_real_generation_keeps_to_the_safe_count():
    """On the machine as it is: with a spinning process per core, no step ever runs on every core
    (two torch threads beside a busy core measured 30x slower than one)."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one CPU: there is no second thread to give or keep")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        policy = TorchThreads(1, cores, adaptive=True)
        x = torch.randn(256, 256)

        def run():
            seen = set()
            policy.begin()
            seen.add(torch.get_num_threads())
            for _ in range(30):
                for _ in range(5):
                    x @ x
                time.sleep(0.002)
                policy.step()
                seen.add(torch.get_num_threads())
            return seen

        assert on_a_thread(run) == {1}
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def test_a_seed_gives_the_same_pixels_whatever_the_thread_count_and_wherever_it_changes():
    """The count may change between any two steps: a seed still means one image."""
    import numpy as np

    from pixelmill.models.base import TextToImageRequest
    from pixelmill.models.catalog import ModelCatalog
    from pixelmill.models.registry import ModelRegistry

    backend = ModelRegistry(ModelCatalog.load(None)).backend("pixelmill-tiny")
    request = TextToImageRequest(prompt="a red circle on a blue background", width=128, height=128, steps=6, seed=7)

    def image(counts: list[int]):
        """Generate with ``counts[i]`` threads from step i on (the last one for the rest)."""
        done = [0]

        def on_progress(_fraction: float) -> None:
            done[0] += 1
            torch.set_num_threads(counts[min(done[0], len(counts) - 1)])

        torch.set_num_threads(counts[0])
        return np.asarray(backend.generate(request, StepControl(on_progress=on_progress))[0])

    def run():
        one, two, changing = image([1]), image([2]), image([1, 2, 2, 1, 2, 1])
        return bool((one == two).all()), bool((one == changing).all())

    assert on_a_thread(run) == (True, True)


def test_spare_cores_leave_out_other_processes_runnable_threads_and_this_processs_generations(machine, monkeypatch):
    monkeypatch.setattr(threads_module, "_machine_is_ours", lambda: True)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    own = [1]
    monkeypatch.setattr(threads_module, "_own_running", lambda: own[0])
    machine.running = 1  # the caller alone
    assert threads_module.spare_cores() == 3
    machine.running, own[0] = 3, 3  # this process's own threads (a finished run's OpenMP threads still spinning, an encoder)
    assert threads_module.spare_cores() == 3
    machine.running = 5  # and two threads of another process
    assert threads_module.spare_cores() == 1
    machine.running = 9
    assert threads_module.spare_cores() == 0

    machine.running, own[0] = 1, 1
    policy = TorchThreads(1, 2, adaptive=True)
    seen = []

    def generation():
        with running_on(policy):
            seen.append(machine.quiet_start(policy))  # a quiet machine: two threads
            started.set()
            finish.wait(10)

    started, finish = threading.Event(), threading.Event()
    thread = threading.Thread(target=generation)
    thread.start()
    try:
        assert started.wait(10)
        assert seen == [2]
        assert threads_module.spare_cores() == 1  # four cores, less the caller's, less the generation's two
    finally:
        finish.set()
        thread.join()
    assert threads_module.spare_cores() == 3  # it ended

    monkeypatch.setattr(threads_module, "_machine_is_ours", lambda: False)
    assert threads_module.spare_cores() == 0  # the machine's counts are not about this process's CPUs


def test_this_processs_runnable_threads_are_read_from_proc():
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc (Linux)")
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        # the caller and the spinner (the GIL hands over every few ms, so one of them may be waiting for it: still R)
        assert max(threads_module._own_running() for _ in range(20)) >= 2
    finally:
        stop.set()
        spinner.join()


def test_a_threads_team_is_known_until_the_thread_ends_and_no_thread_runs_on_more_than_the_cpus(monkeypatch):
    """libgomp keeps a team per thread that ran on more than one torch thread, until the thread ends:
    what the embedded queue looks at to renew an idle thread holding a second team."""
    monkeypatch.setattr(threads_module, "_cpus", lambda: 2)
    monkeypatch.setattr(threads_module, "_teams", threads_module._Teams())  # this process's other tests' threads aside
    policy = TorchThreads.fixed(3)
    started, may_end = threading.Event(), threading.Event()
    seen = {}

    def first():
        seen["first"] = policy.begin()  # 3 asked, 2 CPUs
        seen["its team"] = threads_module.team_of(threading.get_ident())
        started.set()
        may_end.wait(10)

    holder = threading.Thread(target=first)
    holder.start()
    try:
        assert started.wait(10)
        seen["a team beside a thread that has none"] = threads_module.team_beside(threading.get_ident())
        seen["beside its own"] = threads_module.team_beside(holder.ident)
    finally:
        may_end.set()
        holder.join()
    seen["after it ended"] = threads_module.team_beside(threading.get_ident())
    seen["its team after it ended"] = threads_module.team_of(holder.ident)
    assert seen == {
        "first": 2, "its team": 2, "a team beside a thread that has none": True, "beside its own": False,
        "after it ended": False, "its team after it ended": 1,
    }
