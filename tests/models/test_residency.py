"""Model residency on real tiny pipelines: a memory budget that holds two of three models,
least-recently-used eviction of idle models, never a model in use, never a model loaded twice,
idle unloading, and the models report over HTTP.
"""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.diffusers_backend import DiffusersBackend
from pixelmill.models.registry import ModelRegistry
from pixelmill.models.residency import MemoryBudget, ModelState, estimate_bytes
from tests.conftest import create_key
from tests.helpers.tiny_pipelines import cached_tiny_flux, torch_threads

NAMES = ("red", "green", "blue")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def folder() -> str:
    return cached_tiny_flux()


@pytest.fixture(scope="module")
def catalog(folder) -> ModelCatalog:
    entries = "".join(f'\n[[models]]\nname = "{n}"\npath = "{folder}"\ndevice = "cpu"\ndefault_steps = 1\n' for n in NAMES)
    return ModelCatalog.from_toml(entries)


class CountingFactory:
    """Builds real diffusers backends and counts the loads per model."""

    def __init__(self) -> None:
        self.loads: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, spec):
        with self.lock:
            self.loads[spec.name] = self.loads.get(spec.name, 0) + 1
        return DiffusersBackend(spec)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds


def two_of_three(folder, catalog, **kw):
    size = estimate_bytes(folder)
    assert size > 0
    factory, clock = CountingFactory(), Clock()
    registry = ModelRegistry(catalog, factory=factory, budget=MemoryBudget(ram_bytes=int(size * 2.5)), clock=clock, **kw)
    return registry, factory, clock


def use_once(registry, clock, name):
    with registry.use(name):
        clock.tick()


def test_the_least_recently_used_idle_model_makes_room(folder, catalog):
    registry, factory, clock = two_of_three(folder, catalog)
    use_once(registry, clock, "red")
    use_once(registry, clock, "green")
    assert sorted(registry.loaded()) == ["green", "red"]
    use_once(registry, clock, "blue")  # red is the least recently used
    assert sorted(registry.loaded()) == ["blue", "green"]
    use_once(registry, clock, "green")  # now blue is
    use_once(registry, clock, "red")
    assert sorted(registry.loaded()) == ["green", "red"]
    assert factory.loads == {"red": 2, "green": 1, "blue": 1}
    states = registry.states()
    assert states["blue"]["state"] == "cold" and states["blue"]["memory_bytes"] == 0
    assert states["red"]["state"] == "resident" and states["red"]["device"] == "cpu"
    assert states["red"]["memory_bytes"] > 0.5 * estimate_bytes(folder)  # measured from the loaded tensors
    assert states["red"]["load_seconds"] > 0
    assert registry.usage()["ram"]["used_bytes"] <= registry.usage()["ram"]["budget_bytes"]


def test_a_model_in_use_is_never_unloaded(folder, catalog):
    registry, factory, clock = two_of_three(folder, catalog)
    got: list = []
    with registry.use("red"):
        clock.tick()
        with registry.use("green") as green:
            clock.tick()
            loader = threading.Thread(target=lambda: got.append(registry.backend("blue")))
            loader.start()
            time.sleep(0.5)
            assert got == []  # both others are busy: blue waits rather than unload one of them
            assert registry.states()["blue"]["state"] == "loading"
            assert sorted(registry.loaded()) == ["green", "red"]
            assert green.loaded
        # green was released: it is the idle one that makes room
        loader.join(timeout=60)
        assert got and sorted(registry.loaded()) == ["blue", "red"]
    assert factory.loads == {"red": 1, "green": 1, "blue": 1}


def test_concurrent_users_of_a_cold_model_share_one_load(folder, catalog):
    registry, factory, clock = two_of_three(folder, catalog)
    backends = []

    def user():
        with registry.use("red") as backend:
            backends.append(backend)

    threads = [threading.Thread(target=user) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert factory.loads == {"red": 1}
    assert len({id(b) for b in backends}) == 1
    assert registry.states()["red"]["in_use"] == 0


def test_idle_models_unload_after_the_idle_time(folder, catalog):
    registry, factory, clock = two_of_three(folder, catalog, idle_unload_s=30)
    use_once(registry, clock, "red")
    clock.tick(10)
    use_once(registry, clock, "green")
    clock.tick(25)  # red idle 36 s, green 25 s
    assert registry.sweep() == ["red"]
    assert registry.loaded() == ["green"]
    with registry.use("green"):
        clock.tick(100)
        assert registry.sweep() == []  # in use: kept however long it runs
    assert registry.states()["red"]["state"] == ModelState.COLD


def test_generation_through_the_registry_matches_a_direct_pipeline(folder, catalog):
    from pixelmill.models.base import StepControl, TextToImageRequest

    registry, factory, clock = two_of_three(folder, catalog)
    request = TextToImageRequest(prompt="a red cat", width=32, height=32, steps=1, seed=3)
    with registry.use("red") as backend:
        a = backend.generate(request, StepControl())[0]
    use_once(registry, clock, "green")
    use_once(registry, clock, "blue")  # red unloaded
    with registry.use("red") as backend:  # and loaded again: same pixels
        b = backend.generate(request, StepControl())[0]
    assert a.tobytes() == b.tobytes()
    assert factory.loads["red"] == 2


def test_models_endpoint_shows_state_device_memory_and_load_time(make_runtime, sqlite_url, folder):
    rt = make_runtime(sqlite_url)
    from pixelmill.models.catalog import ModelSpec

    rt.catalog.models.append(ModelSpec(name="tiny", path=folder, device="cpu", default_steps=1))
    from pixelmill.api.app import create_app

    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    body = client.get("/api/v1/models").json()
    by_name = {m["name"]: m for m in body["data"]}
    assert by_name["tiny"]["state"] == "cold" and by_name["tiny"]["workers"] == []
    assert by_name["fake"]["state"] == "resident"
    assert by_name["tiny"]["max_batch"] == 1 and by_name["tiny"]["loras"] == []
    assert by_name["tiny"]["speed"] == {"compile": False, "quantize": "none", "cache": "none"}
    rt.models.backend("tiny")
    body = client.get("/api/v1/models").json()
    tiny = {m["name"]: m for m in body["data"]}["tiny"]
    assert tiny["state"] == "resident"
    assert tiny["memory_bytes"] > 0 and tiny["load_seconds"] > 0
    assert tiny["workers"][0]["device"] == "cpu"
    assert body["memory"]["ram"]["used_bytes"] >= tiny["memory_bytes"]
    assert client.get("/api/v1/models", headers={"x-key": "nope"}).status_code in (401, 403)


def test_a_thread_that_uses_a_model_runs_torch_on_the_registrys_thread_count(folder, catalog):
    """Node runs give PyTorch the thread count the runtime chose (one per core at most, one core
    left to the API in an embedded server and the other runs' cores left to them in a worker
    while anything else wants them), set in the thread that
    runs the model, and never more than the CPUs."""
    import torch

    from pixelmill.models.threads import TorchThreads
    from pixelmill.runtime import torch_threads

    configured = torch_threads(3, serves_api=True, node_threads=1)
    assert (configured.low, configured.high, configured.adaptive) == (3, 3, False)  # configured wins
    cores = len(__import__("os").sched_getaffinity(0))
    embedded = torch_threads(0, serves_api=True, node_threads=1)
    assert (embedded.low, embedded.high) == (max(1, cores - 1), cores)
    worker = torch_threads(0, serves_api=False, node_threads=1)
    assert (worker.low, worker.high, worker.adaptive) == (cores, cores, False)
    crowded = torch_threads(0, serves_api=False, node_threads=4 * cores)  # a worker's lone run may take every core too
    assert (crowded.low, crowded.high) == (1, cores)
    shared = torch_threads(0, serves_api=True, node_threads=2)  # a lone run may still take every core
    assert (shared.low, shared.high) == (max(1, (cores - 1) // 2), cores)

    registry = ModelRegistry(catalog)
    count = 2 if cores >= 2 else 1
    registry.threads = TorchThreads.fixed(count)
    seen: dict[str, int] = {}

    def node_run(name: str, how: str) -> None:
        torch.set_num_threads(1)  # whatever the thread had before
        if how == "use":
            with registry.use(name):
                seen[how] = torch.get_num_threads()
        else:
            registry.backend(name)
            seen[how] = torch.get_num_threads()

    for how in ("use", "backend"):
        t = threading.Thread(target=node_run, args=("red", how))
        t.start()
        t.join()
    assert seen == {"use": count, "backend": count}

    # never more than the CPUs: OpenMP threads beyond them only wait for one another
    registry.threads = TorchThreads.fixed(cores + 2)
    t = threading.Thread(target=node_run, args=("red", "use"))
    t.start()
    t.join()
    assert seen["use"] == cores


def test_a_loaded_model_is_kept_out_of_the_cycle_collectors_scans_and_freed_whole_on_unload(folder, catalog):
    """A full collection over a model's objects holds the GIL for a long time (every request of the
    process waits): once loaded they are outside the collector, and an unload hands them back, so a
    reference cycle in the dropped pipeline is freed, not kept for good."""
    import gc
    import weakref

    registry, _, clock = two_of_three(folder, catalog)
    use_once(registry, clock, "red")
    pipe = registry.backend("red")._pipe
    assert pipe is not None
    tracked = {id(o) for o in gc.get_objects()}  # what the collector scans (not what it was told to leave)
    assert id(pipe) not in tracked and id(pipe.transformer) not in tracked
    pipe.cycle = pipe  # a reference cycle: reference counting alone never frees it
    gone = weakref.ref(pipe)
    del pipe, tracked
    assert registry.unload("red")
    assert gone() is None


def test_the_cycle_collector_does_not_run_while_a_model_loads(folder, catalog):
    """A load makes hundreds of thousands of objects that live as long as the model: the collector
    scanning them as they come (each full collection over everything made so far, three of
    0.14-0.21 s in the shipped model's load at a server's start) stalled every request the process
    answered meanwhile, ``/healthz`` included. While a model loads the collector does not run; it is
    on again after the load, as before it (and after a failed load too)."""
    import gc

    loading = [False]
    during: list[int] = []  # collections while the model was built and loaded
    after: list[int] = []

    def count(phase, info):
        if phase == "start":
            (during if loading[0] else after).append(info["generation"])

    def factory(spec):
        loading[0] = True
        backend = DiffusersBackend(spec)
        load = backend.load

        def load_and_say():
            try:
                load()
            finally:
                loading[0] = False

        backend.load = load_and_say
        return backend

    registry = ModelRegistry(catalog, factory=factory)
    gc.callbacks.append(count)
    try:
        assert gc.isenabled()
        with registry.use("red"):  # a first load of this model: a real diffusers pipeline
            pass
        assert gc.isenabled()
        junk = [[] for _ in range(5000)]  # the collector runs again once allocations call for it
        del junk
    finally:
        gc.callbacks.remove(count)
    assert during == []
    assert after

    def broken(spec):
        raise RuntimeError("weights missing")

    with pytest.raises(RuntimeError):
        ModelRegistry(catalog, factory=broken).backend("red")
    assert gc.isenabled()
