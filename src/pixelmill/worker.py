"""The scale-out worker process: runs node tasks from Celery against the shared database and files.

A worker is built from the same settings as the API nodes (same database URL,
same data folder or file store, same broker) and consumes the queues of the
models it holds warm: ``model.<name>`` for each such model, plus ``default``
for nodes that need no model.  One worker per GPU.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable, Sequence

from pixelmill.config import Settings
from pixelmill.engine.scheduler import MODEL_QUEUE_PREFIX, model_of
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.registry import ModelRegistry
from pixelmill.queue.base import DEFAULT_QUEUE
from pixelmill.runtime import Runtime

log = logging.getLogger("pixelmill.worker")


def model_queue(model: str) -> str:
    """The queue that carries the node runs of ``model``."""
    return f"{MODEL_QUEUE_PREFIX}{model}"


def default_queues(catalog: ModelCatalog) -> list[str]:
    """Every queue a worker can serve with this catalog: one per model, then ``default``."""
    return [model_queue(name) for name in catalog.names()] + [DEFAULT_QUEUE]


def models_of(queues: Sequence[str]) -> list[str]:
    """The model names behind the ``model.<name>`` queues among ``queues``."""
    return [model for q in queues if (model := model_of(q)) is not None]


def parse_queues(text: str | None) -> list[str]:
    """``"model.a, default"`` -> ``["model.a", "default"]`` (duplicates and blanks dropped)."""
    out: list[str] = []
    for part in (text or "").split(","):
        name = part.strip()
        if name and name not in out:
            out.append(name)
    return out


class ModelControl:
    """Loads or unloads this worker's models when an operator asks (``POST /api/v1/models/{model}/load|unload``
    on an API node, broadcast to every worker).  Only models of queues the worker consumes are touched; a
    load runs in the background (the answer says ``loading``), and what the worker holds is advertised again
    once it changed."""

    def __init__(self, models: ModelRegistry, served: Sequence[str], advertise: Callable[[], None]):
        self.models = models
        self.served = set(served)
        self.advertise = advertise

    def __call__(self, model: str, action: str) -> dict[str, Any]:
        if model not in self.served:
            return {"outcome": "not_served"}
        if action == "load":
            if self.models.is_loaded(model):
                return {"outcome": "resident"}
            threading.Thread(target=self._load, args=(model,), name=f"pixelmill-load-{model}", daemon=True).start()
            return {"outcome": "loading"}
        if action == "unload":
            outcome = self.models.unload_idle(model)
            self._advertise_soon()
            return {"outcome": outcome.value}
        return {"outcome": "failed", "error": f"unknown action {action!r}"}

    def _load(self, model: str) -> None:
        try:
            self.models.backend(model)
        except Exception:
            log.exception("loading model %s on request failed", model)
        self._advertise()

    def _advertise(self) -> None:
        try:
            self.advertise()
        except Exception:  # the periodic advertisement reports it later
            log.warning("could not advertise the models after a change", exc_info=True)

    def _advertise_soon(self) -> None:
        threading.Thread(target=self._advertise, name="pixelmill-advertise-now", daemon=True).start()


def build_worker_runtime(settings: Settings, catalog: ModelCatalog | None = None, models: ModelRegistry | None = None) -> Runtime:
    """A Runtime whose queue is Celery: it runs what it receives and publishes the follow-up nodes."""
    if settings.queue != "celery":
        settings = settings.model_copy(update={"queue": "celery"})
    runtime = Runtime(settings, catalog=catalog, models=models)
    runtime.readiness.runs_nodes = True
    return runtime


def run_worker(
    settings: Settings,
    queues: Sequence[str] | None = None,
    concurrency: int = 1,
    pool: str = "threads",
    preload: bool = True,
    hostname: str | None = None,
    loglevel: str = "INFO",
    visibility_timeout_s: float | None = None,
    health_port: int | None = None,
    health_host: str = "0.0.0.0",
) -> int:
    """Build the worker runtime, load its models, consume until stopped; returns the exit code.

    With ``preload`` (default) the models of the ``model.<name>`` queues are
    loaded before the first task is taken, so a model that cannot load stops
    the worker at once instead of failing every task sent to it.
    """
    if visibility_timeout_s is not None:  # refused before anything loads
        from pixelmill.queue.celery_queue import check_visibility_timeout

        check_visibility_timeout(visibility_timeout_s, settings.node_timeout_s)
    runtime = build_worker_runtime(settings)
    from pixelmill.runtime import torch_threads

    runtime.models.threads = torch_threads(settings.torch_threads, serves_api=False, node_threads=concurrency)
    try:
        queues = list(queues) if queues else default_queues(runtime.catalog)
        unknown = [m for m in models_of(queues) if m not in runtime.catalog]
        if unknown:
            raise ValueError(
                f"queue for unknown model(s) {', '.join(unknown)}; the catalog has {', '.join(runtime.catalog.names())}"
            )
        runtime.consume(queues)  # model affinity between the workers
        runtime.start()
        from pixelmill.engine.placement import Advertiser

        advertiser = Advertiser(runtime.db, runtime.models, runtime.runner.worker_name, serves=models_of(queues))
        advertiser.start()  # API nodes show what this worker holds (GET /api/v1/models)
        runtime.queue.serve_model_control(ModelControl(runtime.models, models_of(queues), advertiser.advertise))
        if health_port is not None:
            from pixelmill.ops.server import serve_health

            server = serve_health(runtime, health_host, health_port)
            log.info("health and metrics on http://%s:%d (/healthz, /readyz, /metrics)", health_host, server.server_address[1])
        if preload:  # before consuming: a model that cannot load stops the worker at once
            runtime.warm_start(models_of(queues))
            runtime.warm.wait()
            failed = runtime.warm.status().failed
            if failed:
                name, error = next(iter(failed.items()))
                raise RuntimeError(f"model {name} could not be loaded: {error}")
        hostname = hostname or f"pixelmill-{os.getpid()}@{socket.gethostname()}"  # unique per process: one worker per GPU
        log.info("worker %s consuming %s (pool=%s, concurrency=%d)", hostname, ", ".join(queues), pool, concurrency)
        try:
            return runtime.queue.worker(
                queues, concurrency=concurrency, pool=pool, hostname=hostname, loglevel=loglevel, visibility_timeout_s=visibility_timeout_s
            )
        finally:
            advertiser.stop()
    finally:
        runtime.stop()
