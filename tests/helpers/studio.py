"""Studio's browser tests: a real `pixelmill serve` on the shipped pixelmill-tiny model, with two keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.test_serve_subprocess import free_port, stop, wait_until_serving

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "studio"
PIXELMILL = [sys.executable, "-m", "pixelmill.cli"]
ADMIN_KEY = "studio-admin-key-for-tests"


def create_key(env, account: str, credits: float) -> str:
    args = ["keys", "create", "--account", account, "--credits", str(credits), "--plan", "pro", "--json"]
    out = subprocess.check_output(PIXELMILL + args, env=env)
    return json.loads(out)["key"]


@contextmanager
def studio_server(tmp: Path, log_name: str = "server.log"):
    """Yields {"base", "key" (100 credits), "poor" (almost none)}; the server's log is copied to ARTIFACTS/log_name."""
    port = free_port()
    env = {**os.environ, "PIXELMILL_DATA_DIR": str(tmp / "data"), "PIXELMILL_ADMIN_KEY": ADMIN_KEY, "HF_HUB_OFFLINE": "1"}
    env.pop("PIXELMILL_MODELS_CATALOG", None)  # the shipped catalog: pixelmill-tiny
    rich, poor = create_key(env, "studio", 100), create_key(env, "poor", 0.0001)
    log = open(tmp / "server.log", "wb")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(PIXELMILL + ["serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_serving(base, proc)
        except AssertionError:
            raise AssertionError((tmp / "server.log").read_text(errors="replace")[-4000:]) from None
        yield {"base": base, "key": rich, "poor": poor}
    finally:
        stop(proc)
        log.close()
        shutil.copy(tmp / "server.log", ARTIFACTS / log_name) if ARTIFACTS.is_dir() else None


def wait_until(predicate, timeout: float = 30, what: str = "condition"):
    """Polls ``predicate`` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} not met in {timeout} s"
        time.sleep(0.1)
    return value
