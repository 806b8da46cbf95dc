"""A queued execution's estimated start is a function of the queue, not of the clock,
and the execution list shows the same position and estimate as the detail."""

from __future__ import annotations

import threading
import time

from tests.api.test_sse_wait_http import make_client, start_workflow
from tests.conftest import FakeBackend, wait_for


class GatedBackend(FakeBackend):
    """Holds "busy" prompts until the gate opens, so the queue stands still while the test looks."""

    def __init__(self):
        super().__init__(steps=2, step_delay=0.2)
        self.gate = threading.Event()

    def generate(self, request, control):
        if request.prompt.startswith("busy"):
            self.gate.wait(30)
        return super().generate(request, control)


def test_estimated_start_does_not_drift_and_list_matches_detail(make_runtime, sqlite_url):
    backend = GatedBackend()
    rt, client = make_client(make_runtime, sqlite_url, backend)
    assert start_workflow(client, steps=2, headers={"Prefer": "wait=10"}).json()["status"] == "COMPLETED"  # a timing sample
    start_workflow(client, steps=2, prompt="busy 0")
    start_workflow(client, steps=2, prompt="busy 1")
    last = start_workflow(client, steps=2, prompt="last").json()
    eid = last["executionId"] if "executionId" in last else last["id"]

    first = client.get(f"/api/v1/executions/{eid}").json()
    assert first["status"] == "QUEUED" and first["queuePosition"] >= 1, first
    listed = {e["id"]: e for e in client.get("/api/v1/executions").json()["data"]}
    assert listed[eid]["queuePosition"] == first["queuePosition"]
    assert listed[eid]["estimatedStartAt"] == first["estimatedStartAt"] is not None
    time.sleep(1.1)  # the clock moves, the queue has not
    again = client.get(f"/api/v1/executions/{eid}").json()
    assert again["queuePosition"] == first["queuePosition"]
    assert again["estimatedStartAt"] == first["estimatedStartAt"], (first, again)
    backend.gate.set()
    wait_for(lambda: client.get(f"/api/v1/executions/{eid}").json()["status"] == "COMPLETED", timeout=30)
