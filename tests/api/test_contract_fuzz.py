"""The served OpenAPI document, fuzzed: no server errors, and every response as documented."""

from __future__ import annotations


from pixelmill.api.app import create_app
from tests.conftest import create_key
from tests.helpers.fuzz import TinyBackend, fuzz


def test_fuzzing_the_document_finds_no_server_errors_and_no_undocumented_shapes(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=TinyBackend(), plans={"unlimited": {}}, admin_key="admin-secret", sync_timeout_s=5)
    app = create_app(rt, manage_runtime=False)
    key = create_key(rt, plan="unlimited", credits=10_000_000)
    # a short budget: every operation once with valid data, then invalid data while time is left;
    # bench/fuzz_api.py runs the long version
    report = fuzz(app, {"x-key": key, "Authorization": "Bearer admin-secret"}, max_examples=1, budget_s=30)
    print(report.summary())
    assert report.cases >= report.operations  # every operation was tried at least once
    assert not report.failures, report.summary()
