"""Warm start: load the default models in the background as soon as a process that runs nodes starts.

The process answers at once; work submitted meanwhile queues as usual (it has
a queue position and an estimate) and starts when its model is in memory: the
node runner asks the model registry for the model, which waits for the load
already under way instead of starting a second one.  :meth:`WarmStart.status`
is what readiness reports.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pixelmill.ops import heap

log = logging.getLogger("pixelmill.warm")


@dataclass
class WarmStatus:
    models: list[str]
    loaded: dict[str, float] = field(default_factory=dict)  # name -> seconds it took
    failed: dict[str, str] = field(default_factory=dict)
    loading: str | None = None

    @property
    def done(self) -> bool:
        return len(self.loaded) + len(self.failed) == len(self.models)

    @property
    def ready(self) -> bool:
        return not self.failed and len(self.loaded) == len(self.models)

    def to_dict(self) -> dict:
        pending = [m for m in self.models if m not in self.loaded and m not in self.failed and m != self.loading]
        return {"models": self.models, "loaded": self.loaded, "loading": self.loading, "pending": pending, "failed": self.failed}


class WarmStart:
    """Loads ``names`` one after another on a daemon thread (a model that fails is reported, not retried)."""

    def __init__(self, models, names: list[str], also: list | None = None):
        self.models = models
        #: loaders run after the models (the output classifier): a failure is logged, not reported
        self.also = list(also or [])
        self._status = WarmStatus(list(names))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "WarmStart":
        if self._thread is None and (self._status.models or self.also):
            self._thread = threading.Thread(target=self._run, name="pixelmill-warm-start", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        from pixelmill.ops import metrics

        for name in self._status.models:
            with self._lock:
                self._status.loading = name
            t0 = time.monotonic()
            already = self.models.is_loaded(name)
            try:
                # resolve the device first, outside the registry's lock: for "auto" that imports
                # torch, which can take many seconds, and requests must not queue behind it; what an
                # import makes lives as long as the process, so the collector stays off it (heap.loading)
                from pixelmill.models.registry import _device_of

                spec = self.models.catalog.get(name)
                if spec is not None:
                    with heap.loading():
                        _device_of(spec)
                self.models.backend(name)
            except Exception as e:  # reported by readiness; a request for it fails with the load error
                log.error("warm start: model %s could not be loaded: %s", name, e)
                with self._lock:
                    self._status.failed[name] = f"{type(e).__name__}: {e}"
                    self._status.loading = None
                continue
            took = time.monotonic() - t0
            if not already:
                metrics.observe_model_load(name, took)
                log.info("warm start: model %s loaded in %.1f s", name, took)
            with self._lock:
                self._status.loaded[name] = round(took, 3)
                self._status.loading = None
        for load in self.also:
            try:
                load()
            except Exception:
                log.exception("warm start: %s failed", getattr(load, "__qualname__", load))

    def status(self) -> WarmStatus:
        with self._lock:
            s = self._status
            return WarmStatus(list(s.models), dict(s.loaded), dict(s.failed), s.loading)

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status().done
