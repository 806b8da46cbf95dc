"""The served OpenAPI document, fuzzed: no server errors, and every response as documented."""

from __future__ import annotations

from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from tests.conftest import FakeBackend, create_key
from tests.helpers.fuzz import fuzz


def test_fuzzing_the_document_finds_no_server_errors_and_no_undocumented_shapes(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=1), plans={"unlimited": {}}, admin_key="admin-secret", sync_timeout_s=5)
    app = create_app(rt, manage_runtime=False)
    key = create_key(rt, plan="unlimited", credits=10_000_000)
    report = fuzz(app, {"x-key": key, "Authorization": "Bearer admin-secret"}, max_examples=2, budget_s=25)
    print(report.summary())
    print(sorted(report.timings.items(), key=lambda kv: -kv[1])[:12])
    assert report.cases >= report.operations  # every operation was tried at least once
    assert not report.failures, report.summary()
