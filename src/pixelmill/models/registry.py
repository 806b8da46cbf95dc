"""The model registry: loaded backends, one per catalog model, kept resident.

``ModelRegistry.backend(name)`` loads a model the first time it is asked for
and returns the same backend afterwards.  Loading is thread-safe: concurrent
callers asking for the same model wait for one load; different models load in
parallel.  ``register`` puts a ready-made backend under a name (for example a
fake in tests, or a backend built elsewhere).
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

from pixelmill.models.base import TextToImageBackend
from pixelmill.models.catalog import ModelCatalog, ModelSpec

BackendFactory = Callable[[ModelSpec], TextToImageBackend]


def default_backend_factory(spec: ModelSpec) -> TextToImageBackend:
    """Build the backend a catalog entry names (only "diffusers" today)."""
    if spec.backend == "diffusers":
        from pixelmill.models.diffusers_backend import DiffusersBackend

        return DiffusersBackend(spec)
    raise ValueError(f"model {spec.name!r}: unknown backend {spec.backend!r}")


class ModelRegistry:
    """Backends for the models of one catalog, loaded lazily and kept in memory."""

    def __init__(self, catalog: ModelCatalog, factory: BackendFactory | None = None) -> None:
        self._catalog = catalog
        self._factory = factory or default_backend_factory
        self._backends: dict[str, TextToImageBackend] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def catalog(self) -> ModelCatalog:
        """The catalog this registry serves."""
        return self._catalog

    def backend(self, name: str) -> TextToImageBackend:
        """The loaded backend for model ``name``; loads it on first use.

        Raises KeyError for a name that is neither registered nor in the
        catalog, and whatever the backend raises when its weights cannot be
        loaded (nothing is cached then, so a later call tries again).
        """
        with self._lock:
            backend = self._backends.get(name)
            if backend is not None:
                return backend
            spec = self._catalog.get(name)
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:
            with self._lock:
                backend = self._backends.get(name)
            if backend is not None:
                return backend
            backend = self._factory(spec)
            load = getattr(backend, "load", None)
            if callable(load):
                load()
            with self._lock:
                # A register() during the load wins over the freshly loaded backend.
                return self._backends.setdefault(name, backend)

    def preload(self, names: Iterable[str] | None = None) -> None:
        """Load the given models now (all catalog models when ``names`` is None)."""
        for name in self._catalog.names() if names is None else names:
            self.backend(name)

    def loaded(self) -> list[str]:
        """Names of the models resident now (loaded or registered)."""
        with self._lock:
            return list(self._backends)

    def is_loaded(self, name: str) -> bool:
        """True if ``name`` is resident."""
        with self._lock:
            return name in self._backends

    def register(self, name: str, backend: TextToImageBackend) -> None:
        """Serve ``backend`` for ``name`` from now on (replacing any loaded one)."""
        with self._lock:
            self._backends[name] = backend

    def unload(self, name: str) -> bool:
        """Drop a resident model (freeing its memory); False if it was not loaded."""
        with self._lock:
            backend = self._backends.pop(name, None)
        if backend is None:
            return False
        release = getattr(backend, "unload", None)
        if callable(release):
            release()
        return True
