"""Prometheus metrics (``prometheus-client``), exposed at ``/metrics`` by API nodes and workers.

Counters and histograms live in this module; what is read at scrape time (queue
depth from the database, resident models, GPU memory) comes from a collector
bound to one runtime (:func:`runtime_collector`).  With ``PROMETHEUS_MULTIPROC_DIR``
set (a process pool, e.g. several Celery worker processes on one host) every
process writes its samples there and :func:`exposition` merges them.

Executions, node timings and credits are counted by :class:`MetricsHook`, a
lifecycle hook: it observes after the state change committed, never for one
that rolled back.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from pixelmill.engine.hooks import Hooks, LifecycleEvent

_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

HTTP_REQUESTS = Counter("pixelmill_http_requests_total", "HTTP requests answered, by route template, method and status", ["route", "method", "status"])
HTTP_DURATION = Histogram("pixelmill_http_request_duration_seconds", "Time to answer an HTTP request, by route template", ["route", "method"], buckets=_TIME_BUCKETS)
NODE_QUEUED = Histogram("pixelmill_node_queued_seconds", "Time a node run waited in its queue before it started", ["node_type", "model"], buckets=_TIME_BUCKETS)
NODE_RUNNING = Histogram("pixelmill_node_running_seconds", "Time a node run ran, by node type, model and outcome", ["node_type", "model", "outcome"], buckets=_TIME_BUCKETS)
EXECUTIONS_FINISHED = Counter("pixelmill_executions_finished_total", "Executions that reached a final status", ["dialect", "status"])
CREDITS_CHARGED = Counter("pixelmill_credits_charged_total", "Credits captured from accounts by finished executions")
MODEL_LOADS = Histogram("pixelmill_model_load_seconds", "Time to load a model into memory", ["model"], buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300))
WEBHOOK_ATTEMPTS = Counter("pixelmill_webhook_attempts_total", "Webhook delivery attempts, by outcome (delivered, retry, give_up, disable)", ["outcome"])


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_DURATION.labels(route, method).observe(seconds)


def observe_webhook(outcome: str) -> None:
    WEBHOOK_ATTEMPTS.labels(outcome).inc()


def observe_model_load(model: str, seconds: float) -> None:
    MODEL_LOADS.labels(model).observe(seconds)


class MetricsHook(Hooks):
    """Node queue/run times, finished executions and charged credits, from the lifecycle events."""

    def after_commit(self, event: LifecycleEvent) -> None:
        # node events and terminal events carry what they are about (LifecycleEvent.facts): nothing is read back
        row = event.facts
        if not row:
            return
        if event.type.startswith("node."):
            model = str((row.get("params") or {}).get("model") or "")
            if event.type == "node.started":
                if row.get("queued_at") and row.get("started_at"):
                    NODE_QUEUED.labels(row["node_type"], model).observe(max(0.0, row["started_at"] - row["queued_at"]))
            elif row.get("started_at"):
                outcome = event.type.split(".", 1)[1]
                end = row.get("finished_at") or time.time()
                NODE_RUNNING.labels(row["node_type"], model, outcome).observe(max(0.0, end - row["started_at"]))
            return
        EXECUTIONS_FINISHED.labels(row.get("dialect") or "", event.type.split(".", 1)[1]).inc()
        if event.type == "execution.succeeded" and row.get("cost_actual_micro"):
            CREDITS_CHARGED.inc(row["cost_actual_micro"] / 1_000_000)


class RuntimeCollector:
    """Gauges read when scraped: queue depth per queue (from the database), resident models, GPU memory."""

    def __init__(self, runtime, cache_s: float = 1.0) -> None:
        self.runtime = runtime
        self.cache_s = cache_s
        self._cached: tuple[float, dict[str, int]] | None = None

    def _depths(self) -> dict[str, int]:
        now = time.monotonic()
        if self._cached and now - self._cached[0] < self.cache_s:
            return self._cached[1]
        from pixelmill.domain.status import NodeStatus
        from pixelmill.store.tables import node_runs

        with self.runtime.db.read() as conn:
            rows = conn.execute(
                sa.select(node_runs.c.queue, sa.func.count()).where(node_runs.c.status == NodeStatus.QUEUED).group_by(node_runs.c.queue)
            ).all()
        depths = {str(q or "default"): int(n) for q, n in rows}
        for name in self.runtime.catalog.names():
            depths.setdefault(f"model.{name}", 0)
        self._cached = (now, depths)
        return depths

    def collect(self):
        depth = GaugeMetricFamily("pixelmill_queue_depth", "Node runs waiting in each queue (model.<name> or default)", labels=["queue"])
        try:
            for queue, n in sorted(self._depths().items()):
                depth.add_metric([queue], n)
        except Exception:  # a scrape never fails on a busy database; the gauge is just absent
            pass
        yield depth
        resident = GaugeMetricFamily("pixelmill_model_resident", "1 for each model held in this process's memory", labels=["model"])
        for name in self.runtime.models.loaded():
            resident.add_metric([name], 1)
        yield resident
        ready = GaugeMetricFamily("pixelmill_ready", "1 when this process is ready for traffic (see /readyz)")
        readiness = getattr(self.runtime, "readiness", None)
        if readiness is not None:
            ready.add_metric([], 1 if readiness.cached_ready() else 0)
            yield ready
        torch = __import__("sys").modules.get("torch")  # only where torch is already in use
        if torch is not None and torch.cuda.is_available():
            gpu = GaugeMetricFamily("pixelmill_gpu_memory_bytes", "GPU memory allocated and reserved by this process", labels=["device", "kind"])
            for i in range(torch.cuda.device_count()):
                gpu.add_metric([str(i), "allocated"], torch.cuda.memory_allocated(i))
                gpu.add_metric([str(i), "reserved"], torch.cuda.memory_reserved(i))
            yield gpu


def exposition(runtime=None) -> tuple[bytes, str]:
    """The Prometheus text exposition of this process (or of every process sharing ``PROMETHEUS_MULTIPROC_DIR``)."""
    from prometheus_client import REGISTRY

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    if runtime is not None:
        collector = getattr(runtime, "_metrics_collector", None)
        if collector is None:
            collector = runtime._metrics_collector = RuntimeCollector(runtime)
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Forward:
    """The default registry's metrics inside a per-scrape registry."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()
