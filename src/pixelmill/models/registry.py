"""The model registry: loaded backends, one per catalog model, within a memory budget.

``ModelRegistry.use(name)`` hands out a model for one generation: it loads the
model if it is cold, marks it in use until the block ends, and records when it
was last used.  Loading is thread-safe: concurrent callers asking for the same
model wait for one load; different models load in parallel.  Room for a model
that does not fit the budget is made by unloading least recently used idle
models (see :mod:`pixelmill.models.residency`); a model in use is never
unloaded.  ``backend(name)`` returns the loaded backend without marking it in
use (loading, preloading).  ``register`` puts a ready-made backend under a
name (a fake in tests, a backend built elsewhere): such a model is pinned.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from enum import StrEnum
from typing import Callable, Iterable, Iterator

from pixelmill.models.base import TextToImageBackend
from pixelmill.models.catalog import ModelCatalog, ModelSpec
from pixelmill.models.residency import MemoryBudget, ModelState, Residence, Residency, estimate_bytes, measure_bytes
from pixelmill.models.threads import TorchThreads, running_on
from pixelmill.ops import heap
from pixelmill.periodic import Periodic

log = logging.getLogger("pixelmill.models")

BackendFactory = Callable[[ModelSpec], TextToImageBackend]
WAIT_FOR_ROOM_S = 600.0


def default_backend_factory(spec: ModelSpec) -> TextToImageBackend:
    """Build the backend a catalog entry names (only "diffusers" today)."""
    if spec.backend == "diffusers":
        from pixelmill.models.diffusers_backend import DiffusersBackend

        return DiffusersBackend(spec)
    raise ValueError(f"model {spec.name!r}: unknown backend {spec.backend!r}")


class Unloaded(StrEnum):
    """What :meth:`ModelRegistry.unload_idle` did."""

    UNLOADED = "unloaded"  # it was resident and idle: its memory is free now
    COLD = "cold"  # it was not loaded: nothing to do
    IN_USE = "in_use"  # a generation runs on it: left loaded
    LOADING = "loading"  # a load is under way: left alone
    PINNED = "pinned"  # registered from outside: never unloaded


class ModelRegistry:
    """Backends for the models of one catalog, loaded on demand and kept within a memory budget."""

    def __init__(
        self,
        catalog: ModelCatalog,
        factory: BackendFactory | None = None,
        budget: MemoryBudget | None = None,
        idle_unload_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._factory = factory or default_backend_factory
        self.residency = Residency(budget, idle_unload_s, clock)
        self._clock = clock
        self._backends: dict[str, TextToImageBackend] = {}
        self._models: dict[str, Residence] = {}
        self._cond = threading.Condition()
        #: PyTorch CPU threads for the threads that use a model (None: PyTorch's default)
        self.threads: TorchThreads | None = None
        self._sweeper = Periodic(
            "pixelmill-model-sweeper", self.sweep, lambda: max(0.05, min(30.0, (self.residency.idle_unload_s or 0) / 4)),
            what="idle model sweep", log=log,
        )

    @property
    def catalog(self) -> ModelCatalog:
        """The catalog this registry serves."""
        return self._catalog

    # --- handing models out ------------------------------------------------
    @contextmanager
    def use(self, name: str) -> Iterator[TextToImageBackend]:
        """The loaded backend of ``name``, marked in use (never unloaded) until the block ends."""
        if self.threads is not None:  # before a load too: it runs on this thread's count
            self.threads.begin()
        backend = self._acquire(name, mark_use=True)
        try:
            with running_on(self.threads):
                yield backend
        finally:
            with self._cond:
                residence = self._models[name]
                residence.in_use -= 1
                residence.last_used_at = self._clock()
                self._cond.notify_all()

    def backend(self, name: str) -> TextToImageBackend:
        """The loaded backend for model ``name``; loads it if it is cold.

        Raises KeyError for a name that is neither registered nor in the
        catalog, and whatever the backend raises when its weights cannot be
        loaded (nothing is kept then, so a later call tries again).
        """
        if self.threads is not None:  # before a load too: it runs on this thread's count
            self.threads.begin()
        return self._acquire(name, mark_use=False)

    def _acquire(self, name: str, mark_use: bool) -> TextToImageBackend:
        with self._cond:
            while True:
                residence = self._models.get(name)
                if residence is not None and residence.state == ModelState.RESIDENT:
                    residence.last_used_at = self._clock()
                    if mark_use:
                        residence.in_use += 1
                    return self._backends[name]
                if residence is not None and residence.state == ModelState.LOADING:
                    self._cond.wait()  # one load per model: wait for it
                    continue
                break
            spec = self._catalog.get(name)  # KeyError for an unknown model
            residence = self._models.setdefault(name, Residence(name))
            residence.state = ModelState.LOADING
            residence.device = _device_of(spec)
            residence.memory_bytes = estimate_bytes(spec.resolved_path() if spec.is_local else None)
            try:
                evict = self._make_room(residence)
            except BaseException:
                residence.state, residence.memory_bytes = ModelState.COLD, 0
                self._cond.notify_all()
                raise
        for other in evict:
            _unload(other)
        started = time.monotonic()
        try:
            # no collection scans the model's objects as they are made, and they are settled once made:
            # they live as long as the model stays loaded
            with heap.loading():
                backend = self._factory(spec)
                load = getattr(backend, "load", None)
                if callable(load):
                    load()
        except BaseException:
            with self._cond:
                residence.state, residence.memory_bytes = ModelState.COLD, 0
                self._cond.notify_all()
            raise
        took = time.monotonic() - started
        measured = measure_bytes(backend)
        with self._cond:
            if name in self._backends:  # a register() during the load wins over the freshly loaded backend
                backend = self._backends[name]
            else:
                self._backends[name] = backend
                residence.memory_bytes = measured if measured is not None else residence.memory_bytes
                residence.load_seconds = took
                residence.loaded_at = self._clock()
                residence.loads += 1
            if residence.device is None or getattr(backend, "device", None):
                residence.device = getattr(backend, "device", residence.device)
            residence.state = ModelState.RESIDENT
            residence.last_used_at = self._clock()
            if mark_use:
                residence.in_use += 1
            self._cond.notify_all()
            log.info("model %s resident on %s after %.2f s (%.1f MiB)", name, residence.device, took, residence.memory_bytes / 2**20)
        return backend

    def _make_room(self, loading: Residence) -> list[TextToImageBackend]:
        """With the lock held: mark the idle models to unload for ``loading`` (waits while only a release can help)."""
        deadline = time.monotonic() + WAIT_FOR_ROOM_S
        while True:
            plan = self.residency.plan_load(list(self._models.values()), loading, loading.memory_bytes)
            if not plan.wait or time.monotonic() > deadline:
                break
            log.info("model %s waits for a model in use to be released to fit the budget", loading.name)
            self._cond.wait(timeout=1.0)
        if plan.over_budget:
            log.warning(
                "model %s (%.1f MiB) does not fit the %s budget even after unloading every idle model; loading it anyway",
                loading.name, loading.memory_bytes / 2**20, loading.memory,
            )
        evicted = []
        for other in plan.evict:  # leave the table now, so no one hands them out while they unload
            log.info("unloading model %s (least recently used, idle) to make room for %s", other, loading.name)
            evicted.append(self._mark_cold(other))
        return evicted

    def _mark_cold(self, name: str) -> TextToImageBackend | None:
        """With the lock held: take ``name`` out of service; returns its backend, to unload outside the lock."""
        residence = self._models[name]
        residence.state = ModelState.COLD
        residence.memory_bytes = 0
        self._cond.notify_all()
        return self._backends.pop(name, None)

    # --- the rest of the registry ------------------------------------------
    def preload(self, names: Iterable[str] | None = None) -> None:
        """Load the given models now (all catalog models when ``names`` is None)."""
        for name in self._catalog.names() if names is None else names:
            self.backend(name)

    def loaded(self) -> list[str]:
        """Names of the models resident now (loaded or registered)."""
        with self._cond:
            return [n for n, r in self._models.items() if r.state == ModelState.RESIDENT]

    def is_loaded(self, name: str) -> bool:
        """True if ``name`` is resident."""
        with self._cond:
            r = self._models.get(name)
            return r is not None and r.state == ModelState.RESIDENT

    def register(self, name: str, backend: TextToImageBackend) -> None:
        """Serve ``backend`` for ``name`` from now on (replacing any loaded one); it is never unloaded."""
        with self._cond:
            self._backends[name] = backend
            residence = self._models.setdefault(name, Residence(name))
            residence.state = ModelState.RESIDENT
            residence.pinned = True
            residence.device = getattr(backend, "device", None) or residence.device or "cpu"
            residence.memory_bytes = measure_bytes(backend) or 0
            residence.loaded_at = residence.last_used_at = self._clock()
            self._cond.notify_all()

    def unload(self, name: str) -> bool:
        """Drop a resident model now (freeing its memory); False if it was not loaded.

        A model in use is unloaded once its last generation ends.
        """
        with self._cond:
            residence = self._models.get(name)
            if residence is None or residence.state != ModelState.RESIDENT:
                return False
            while residence.in_use > 0:
                self._cond.wait()
            if residence.state != ModelState.RESIDENT:
                return False
            backend = self._mark_cold(name)
        _unload(backend)
        return True

    def unload_idle(self, name: str) -> "Unloaded":
        """Drop ``name`` now if nothing uses it, never waiting: what happened (see :class:`Unloaded`)."""
        with self._cond:
            residence = self._models.get(name)
            if residence is None or residence.state == ModelState.COLD:
                return Unloaded.COLD
            if residence.pinned:
                return Unloaded.PINNED
            if residence.state == ModelState.LOADING:
                return Unloaded.LOADING
            if residence.in_use > 0:
                return Unloaded.IN_USE
            backend = self._mark_cold(name)
        _unload(backend)
        log.info("model %s unloaded on request", name)
        return Unloaded.UNLOADED

    def states(self) -> dict[str, dict]:
        """Every catalog (and registered) model's residency: state, device, memory, load time, use."""
        with self._cond:
            out = {}
            for name in list(self._catalog.names()) + [n for n in self._models if n not in self._catalog]:
                residence = self._models.get(name) or Residence(name)
                out[name] = residence.as_dict()
            return out

    def usage(self) -> dict[str, dict]:
        """Bytes used and the budget, per kind of memory."""
        with self._cond:
            models = list(self._models.values())
        return {
            kind: {"used_bytes": self.residency.used(models, kind), "budget_bytes": self.residency.budget.limit(kind)}
            for kind in ("ram", "vram")
        }

    # --- idle unloading ----------------------------------------------------
    def sweep(self) -> list[str]:
        """Unload the models idle for longer than ``idle_unload_s``; returns their names."""
        with self._cond:
            names = self.residency.idle_expired(self._models.values())
            backends = [self._mark_cold(name) for name in names]
        for name, backend in zip(names, backends):
            log.info("unloading model %s: idle for %.0f s", name, self.residency.idle_unload_s or 0)
            _unload(backend)
        return names

    def start(self) -> None:
        """Run :meth:`sweep` in a daemon thread (when ``idle_unload_s`` is set)."""
        if self.residency.idle_unload_s:
            self._sweeper.start()

    def stop(self) -> None:
        self._sweeper.stop()
        heap.thaw()  # what it loaded is no longer kept for the process's life


def _unload(backend: TextToImageBackend | None) -> None:
    release = getattr(backend, "unload", None)
    if callable(release):
        release()
    if backend is not None:  # the pipeline it dropped: any cycles in it are freed now, not kept frozen
        heap.release()


def _device_of(spec: ModelSpec) -> str:
    """Where a catalog model will load (resolving "auto" like the diffusers backend)."""
    if spec.device != "auto":
        return spec.device
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
    except ImportError:  # pragma: no cover - torch ships with the worker
        pass
    return "cpu"
