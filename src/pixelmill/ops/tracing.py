"""OpenTelemetry traces, off by default: a span per HTTP request and a span per node run, in one trace.

Turned on by ``PIXELMILL_TRACING=1`` or by ``OTEL_TRACES_EXPORTER`` set to an
exporter (``otlp``, ``console``); ``OTEL_SDK_DISABLED=true`` turns it off.
Off, nothing here is imported by the server: no middleware, no hook, no SDK.

On, the standard ``OTEL_*`` variables configure the SDK: ``OTEL_SERVICE_NAME``
(default ``pixelmill``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``…_PROTOCOL``, ``OTEL_BSP_*``, ``OTEL_PROPAGATORS``.
The OTLP exporter is used when its package is installed
(``opentelemetry-exporter-otlp-proto-http`` or ``…-grpc``); otherwise spans are
written to the console.

* The API's request span (``pixelmill.api.tracing``) is the current span while a
  route runs.  :class:`TracingHook` stores its trace context with each execution
  the request creates (``executions.trace_context``, in the submitting transaction).
* The process that runs a node (the embedded worker thread, or ``pixelmill worker``)
  records the node run as a child span of that request span, from the run's row:
  node type, model, execution, attempt, queued time, outcome.  The context travels
  in the database, so it joins the trace in both modes, whatever the broker.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Mapping

import sqlalchemy as sa

from pixelmill.engine.hooks import Hooks, LifecycleEvent

log = logging.getLogger("pixelmill.tracing")

TRACER_NAME = "pixelmill"
_NODE_END_EVENTS = ("node.completed", "node.failed", "node.cancelled")


def tracing_wanted(flag: bool, env: Mapping[str, str] | None = None) -> bool:
    """Whether a process with ``PIXELMILL_TRACING=flag`` and this environment traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    return flag or any(e != "none" for e in exporters)


class Tracing:
    """One process's tracer: its provider, and what the API middleware and the hook use."""

    def __init__(self, provider: Any) -> None:
        from pixelmill import __version__

        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME, __version__)

    @classmethod
    def from_settings(cls, settings: Any, env: Mapping[str, str] | None = None) -> "Tracing | None":
        """The process's tracing as ``settings.tracing`` and the ``OTEL_*`` environment ask; None when off."""
        env = os.environ if env is None else env
        if not tracing_wanted(bool(getattr(settings, "tracing", False)), env):
            return None
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({})  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "pixelmill"}))
        provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
        names = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()] or ["otlp"]
        for name in names:
            exporter = _exporter(name, env)
            if exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(exporter))
        # the process-wide provider too (when none was set), so other instrumentation joins the same traces
        if type(trace.get_tracer_provider()).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
            trace.set_tracer_provider(provider)
        log.info("tracing on: %s", ", ".join(names))
        return cls(provider)

    def shutdown(self) -> None:
        """Send what is buffered, then stop the exporters."""
        try:
            self.provider.shutdown()
        except Exception:  # never fails a shutdown
            log.warning("tracing shutdown failed", exc_info=True)


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "none":
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none); spans go to the console", name)
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    modules = ["opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"]
    if protocol == "grpc":
        modules.reverse()
    for module in modules:
        try:
            return __import__(module, fromlist=["OTLPSpanExporter"]).OTLPSpanExporter()
        except ImportError:
            continue
    log.warning("no OTLP exporter is installed (pip install opentelemetry-exporter-otlp-proto-http); spans go to the console")
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter()


class TracingHook(Hooks):
    """Stores the submitting request's trace context with each execution; records each node run as a span."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self._pending: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def on_event(self, conn, event: LifecycleEvent) -> None:
        from pixelmill.store.tables import executions, node_runs

        if event.type == "execution.created":
            from opentelemetry import propagate, trace

            span = trace.get_current_span()
            if not span.get_span_context().is_valid:
                return  # not submitted inside a traced request
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            conn.execute(sa.update(executions).where(executions.c.id == event.execution_id).values(trace_context=carrier))
            if span.is_recording():
                span.set_attribute("pixelmill.execution_id", event.execution_id)
        elif event.type in _NODE_END_EVENTS:
            row = conn.execute(
                sa.select(
                    node_runs.c.id, node_runs.c.node_id, node_runs.c.node_type, node_runs.c.params, node_runs.c.queue,
                    node_runs.c.queued_at, node_runs.c.started_at, node_runs.c.finished_at, node_runs.c.attempts,
                    node_runs.c.cached, node_runs.c.error_code, node_runs.c.worker, executions.c.dialect, executions.c.trace_context,
                )
                .join(executions, executions.c.id == node_runs.c.execution_id)
                .where(node_runs.c.execution_id == event.execution_id, node_runs.c.node_id == event.data.get("node"))
            ).first()
            if row is not None:
                with self._lock:
                    self._pending[(event.execution_id, event.type, str(event.data.get("node")))] = dict(row._mapping)

    def after_commit(self, event: LifecycleEvent) -> None:
        if event.type not in _NODE_END_EVENTS:
            return
        with self._lock:
            row = self._pending.pop((event.execution_id, event.type, str(event.data.get("node"))), None)
        if row is not None:
            self._node_span(event, row)

    def _node_span(self, event: LifecycleEvent, row: dict[str, Any]) -> None:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode

        parent = propagate.extract(row["trace_context"]) if row.get("trace_context") else None
        finished = row.get("finished_at") or event.created_at
        started = row.get("started_at") or finished
        attributes: dict[str, Any] = {
            "pixelmill.execution_id": event.execution_id,
            "pixelmill.node_id": row["node_id"],
            "pixelmill.node_run_id": row["id"],
            "pixelmill.node_type": row["node_type"],
            "pixelmill.model": str((row.get("params") or {}).get("model") or ""),
            "pixelmill.queue": row.get("queue") or "default",
            "pixelmill.attempt": int(row.get("attempts") or 0),
            "pixelmill.cached": bool(row.get("cached")),
            "pixelmill.outcome": event.type.split(".", 1)[1],
            "pixelmill.dialect": row.get("dialect") or "",
        }
        if row.get("queued_at") is not None:
            attributes["pixelmill.queued_seconds"] = round(max(0.0, started - row["queued_at"]), 6)
        if row.get("worker"):
            attributes["pixelmill.worker"] = row["worker"]
        if row.get("error_code"):
            attributes["pixelmill.error_code"] = row["error_code"]
        span = self.tracing.tracer.start_span(
            f"node {row['node_type']}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes, start_time=int(started * 1e9),
        )
        if event.type == "node.failed":
            span.set_status(Status(StatusCode.ERROR, row.get("error_code") or "node_failed"))
        span.end(end_time=int(max(finished, started) * 1e9))
