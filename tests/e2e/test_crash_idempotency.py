"""Exactly once across a crash: `pixelmill serve` killed with SIGKILL while the node of a keyed,
waiting request runs; restarted; the client's retry with the same Idempotency-Key is answered
from the execution the first request created (waiting for it), never with a second one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import httpx
import sqlalchemy as sa

from pixelmill.domain.status import NodeStatus
from pixelmill.store.tables import credit_ledger, executions, node_runs
from tests.conftest import wait_for
from tests.e2e.test_serve_subprocess import PIXELMILL, free_port, wait_until_serving
from tests.helpers.tiny_pipelines import cached_tiny_flux

REQUESTS = {
    # dialect: (path, body, headers that make the first request wait for its result)
    "bfl": ("/v1/flux-dev", {"prompt": "a red circle", "width": 256, "height": 256, "steps": 4, "seed": 3}, {"Prefer": "wait=300"}),
    "openai": ("/v1/images/generations", {"model": "tiny-flux", "prompt": "a red circle", "size": "256x256", "steps": 4, "seed": 3, "response_format": "url"}, {}),
}


class Server:
    """`pixelmill serve` on one data folder and database, started and killed at will."""

    def __init__(self, tmp_path, db_url: str | None):
        catalog = tmp_path / "models.toml"
        catalog.write_text(
            f'[[models]]\nname = "tiny-flux"\npath = "{cached_tiny_flux()}"\ndevice = "cpu"\ndefault_steps = 4\n'
            f'price_per_megapixel = 1.5\nbfl_endpoints = ["flux-dev"]\n'
        )
        self.env = {
            **os.environ, "PIXELMILL_DATA_DIR": str(tmp_path / "data"), "PIXELMILL_MODELS_CATALOG": str(catalog),
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PIXELMILL_SECRET_KEY": "s", "PIXELMILL_MAX_WAIT_S": "300",
            "PIXELMILL_PRELOAD_MODELS": "true",  # serving only once the model is loaded
        }
        if db_url:
            self.env["PIXELMILL_DATABASE_URL"] = db_url
        self.db_url = db_url or f"sqlite:///{tmp_path / 'data' / 'pixelmill.db'}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = open(tmp_path / "server.log", "w+b")

    def key(self) -> str:
        out = subprocess.check_output(PIXELMILL + ["keys", "create", "--account", "crash", "--credits", "50", "--json"], env=self.env)
        return json.loads(out)["key"]

    def start(self) -> None:
        self.proc = subprocess.Popen(PIXELMILL + ["serve", "--port", str(self.port)], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until_serving(self.base, self.proc, timeout=300)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def rows(self, query):
        eng = sa.create_engine(self.db_url)
        try:
            with eng.connect() as conn:
                return conn.execute(query).all()
        finally:
            eng.dispose()


def test_retries_after_a_crash_mid_node_answer_from_the_first_executions(tmp_path):
    """A BFL request with ``Prefer: wait`` and a synchronous OpenAI request, both keyed, both waiting
    (the first one's node running, the other's queued) when the server is killed; after the restart
    each retry gets the execution its first request created, and each was run and charged once."""
    server = Server(tmp_path, None)
    try:
        key = server.key()
        server.start()
        answered: list = []
        sent = []
        for dialect in ("bfl", "openai"):
            path, body, wait_headers = REQUESTS[dialect]
            headers = {"x-key": key, "Idempotency-Key": f"crash-{dialect}", **wait_headers}
            sent.append((dialect, path, body, headers))

            def first_request(path=path, body=body, headers=headers):  # its server dies under it
                try:
                    answered.append(httpx.post(server.base + path, json=body, headers=headers, timeout=600))
                except httpx.HTTPError:
                    pass

            threading.Thread(target=first_request, daemon=True).start()

            def created(n=len(sent)):
                return len(server.rows(sa.select(executions.c.id))) == n

            wait_for(created, timeout=120, interval=0.05)

        def node_running():
            assert not answered, f"a first request was answered before the crash: {answered[0].status_code} {answered[0].text[:300]}"
            rows = server.rows(sa.select(node_runs.c.status, node_runs.c.progress).where(node_runs.c.status == NodeStatus.RUNNING))
            return rows and rows[0].progress > 0

        wait_for(node_running, timeout=180, interval=0.05)
        server.kill()  # mid-node: no response was ever sent, both records are still "processing"
        first_ids = {r.id for r in server.rows(sa.select(executions.c.id))}
        server.start()  # the embedded server re-queues the interrupted node runs

        for dialect, path, body, headers in sent:
            r = httpx.post(server.base + path, json=body, headers=headers, timeout=320)
            assert r.status_code == 200, r.text
            assert r.headers.get("Idempotent-Replayed") == "true"
            if dialect == "bfl":
                assert r.json()["id"] in first_ids and r.json()["status"] == "Ready"
            else:
                assert r.headers["X-Execution-Id"] in first_ids and len(r.json()["data"]) == 1
            again = httpx.post(server.base + path, json=body, headers=headers, timeout=60)  # from now on a plain replay
            assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"
        rows = server.rows(sa.select(executions.c.id, executions.c.status))
        assert {r.id for r in rows} == first_ids and {r.status for r in rows} == {"succeeded"}
        settles = server.rows(sa.select(credit_ledger.c.kind).where(credit_ledger.c.kind.in_(["hold", "capture", "release"])))
        assert sorted(k for (k,) in settles) == ["capture", "capture", "hold", "hold"]
    except AssertionError:
        server.log.seek(0)
        print(server.log.read().decode(errors="replace")[-4000:])
        raise
    finally:
        server.stop()


