"""OpenTelemetry traces: the request that submits a job and the node run that does it are one trace,
in the embedded server and across an API node and a separate worker."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pixelmill.api.app import create_app
from pixelmill.config import Settings
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.registry import ModelRegistry
from pixelmill.ops.tracing import Tracing, tracing_wanted
from pixelmill.runtime import Runtime
from pixelmill.store import migrate
from tests.conftest import FAKE_CATALOG, FakeBackend, create_key, wait_for
from tests.queue.conftest import broker_db, broker_url  # noqa: F401  (fixtures: a reserved Redis database)


def _tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def _runtime(tmp_path, url: str, name: str, tracing: Tracing | None, **settings) -> Runtime:
    catalog = ModelCatalog.from_toml(FAKE_CATALOG)
    registry = ModelRegistry(catalog)
    registry.register("fake", FakeBackend())
    s = Settings(data_dir=tmp_path / name, database_url=url, secret_key="s", preload_models=False, **settings)
    return Runtime(s, catalog=catalog, models=registry, tracing=tracing)


def _spans(exporter: InMemorySpanExporter, name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def _submit_and_finish(client: TestClient) -> tuple[str, str]:
    r = client.post("/v1/flux-dev", json={"prompt": "a lighthouse", "width": 256, "height": 256}, headers={"X-Request-Id": "req-trace-1"})
    assert r.status_code == 200, r.text
    job = r.json()["id"]
    done = wait_for(lambda: (b := client.get(f"/v1/get_result?id={job}").json())["status"] != "Pending" and b, timeout=60)
    assert done["status"] == "Ready", done
    return job, r.headers["x-request-id"]


def test_the_request_span_and_the_node_run_span_share_one_trace(tmp_path, sqlite_url):
    tracing, exporter = _tracing()
    rt = _runtime(tmp_path, sqlite_url, "embedded", tracing)
    rt.start()
    try:
        client = TestClient(create_app(rt, manage_runtime=False))
        client.headers["x-key"] = create_key(rt)
        job, request_id = _submit_and_finish(client)
        node = wait_for(lambda: _spans(exporter, "node text_to_image"), timeout=10)[0]
    finally:
        rt.stop()
    [request] = _spans(exporter, "POST /v1/flux-dev")
    assert request.kind == SpanKind.SERVER
    assert request.attributes["http.route"] == "/v1/flux-dev"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["pixelmill.request_id"] == request_id == "req-trace-1"
    assert request.attributes["pixelmill.execution_id"] == job

    assert node.context.trace_id == request.context.trace_id
    assert node.parent is not None and node.parent.span_id == request.context.span_id
    assert node.attributes["pixelmill.execution_id"] == job
    assert node.attributes["pixelmill.node_type"] == "text_to_image"
    assert node.attributes["pixelmill.model"] == "fake"
    assert node.attributes["pixelmill.outcome"] == "completed"
    assert node.attributes["pixelmill.queued_seconds"] >= 0
    assert node.end_time >= node.start_time >= request.start_time
    polls = _spans(exporter, "GET /v1/get_result")
    assert polls and all(p.attributes["http.response.status_code"] == 200 for p in polls)


def test_a_client_traceparent_makes_the_request_span_its_child(tmp_path, sqlite_url):
    tracing, exporter = _tracing()
    rt = _runtime(tmp_path, sqlite_url, "embedded", tracing, queue="inprocess")
    try:
        client = TestClient(create_app(rt, manage_runtime=False))
        trace_id = uuid.uuid4().hex
        r = client.get("/healthz", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert r.status_code == 200
    finally:
        rt.stop()
    [span] = _spans(exporter, "GET /healthz")
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent.span_id == 0x00F067AA0BA902B7


@pytest.mark.redis
def test_a_worker_process_joins_the_trace_of_the_api_node_that_took_the_request(tmp_path, broker_url):
    """Scale-out: the API node and the worker each have their own tracer; the trace context travels in the database."""
    from celery.contrib.testing.worker import start_worker

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    migrate.upgrade(url)
    api_tracing, api_spans = _tracing()
    worker_tracing, worker_spans = _tracing()
    api = _runtime(tmp_path, url, "api", api_tracing, queue="celery", broker_url=broker_url)
    worker = _runtime(tmp_path, url, "worker", worker_tracing, queue="celery", broker_url=broker_url)
    api.start()
    worker.start()
    try:
        with start_worker(
            worker.queue.app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING",
            queues=["model.fake", "default"], hostname=f"trace-{uuid.uuid4().hex[:8]}@localhost", shutdown_timeout=20,
        ):
            client = TestClient(create_app(api, manage_runtime=False))
            client.headers["x-key"] = create_key(api)
            job, _ = _submit_and_finish(client)
            node = wait_for(lambda: _spans(worker_spans, "node text_to_image"), timeout=10)[0]
    finally:
        api.stop()
        worker.stop()
    [request] = _spans(api_spans, "POST /v1/flux-dev")
    assert not _spans(api_spans, "node text_to_image")  # the API node ran nothing
    assert node.context.trace_id == request.context.trace_id
    assert node.parent.span_id == request.context.span_id
    assert node.attributes["pixelmill.execution_id"] == job


def test_tracing_is_off_unless_asked_for(tmp_path, sqlite_url, monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "PIXELMILL_TRACING"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing_wanted(False, {})
    assert not tracing_wanted(False, {"OTEL_TRACES_EXPORTER": "none"})
    assert tracing_wanted(False, {"OTEL_TRACES_EXPORTER": "console"})
    assert tracing_wanted(True, {})
    assert not tracing_wanted(True, {"OTEL_SDK_DISABLED": "true"})
    rt = _runtime(tmp_path, sqlite_url, "off", None)
    try:
        assert rt.tracing is None
        assert not any(type(h).__name__ == "TracingHook" for h in rt.lifecycle.hooks)
        app = create_app(rt, manage_runtime=False)
        assert not any(m.cls.__name__ == "TracingMiddleware" for m in app.user_middleware)
    finally:
        rt.stop()
