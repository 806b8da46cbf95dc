"""End to end: `pixelmill serve` as a subprocess, a key from the CLI, a BFL round trip with a real model."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from pixelmill.models.tiny.scenes import analyse_image
from tests.helpers.tiny_pipelines import cached_tiny_flux

PIXELMILL = [sys.executable, "-m", "pixelmill.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(base: str, proc: subprocess.Popen, timeout: float = 60, log: Path | None = None) -> None:
    """Poll ``/healthz`` until the server answers; fail with its output (``log``) if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise AssertionError(log.read_text(errors="replace") if log is not None else f"server exited with {proc.returncode}")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def server(tmp_path):
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        f"""
[[models]]
name = "tiny-flux"
path = "{cached_tiny_flux()}"
device = "cpu"
default_steps = 4
price_per_megapixel = 1.5
bfl_endpoints = ["flux-dev", "flux-pro-1.1"]
"""
    )
    port = free_port()
    env = {**os.environ, "PIXELMILL_DATA_DIR": str(tmp_path / "data"), "PIXELMILL_MODELS_CATALOG": str(catalog), "HF_HUB_OFFLINE": "1"}
    key = json.loads(subprocess.check_output(PIXELMILL + ["keys", "create", "--account", "e2e", "--credits", "50", "--json"], env=env))["key"]
    log = tmp_path / "server.log"  # read when the server does not start
    with open(log, "wb") as out:
        proc = subprocess.Popen(PIXELMILL + ["serve", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_until_serving(base, proc, log=log)
    yield base, key, env
    stop(proc)


def test_bfl_round_trip_through_a_real_server(server):
    base, key, _env = server
    with httpx.Client(headers={"x-key": key}, timeout=30) as http:
        r = http.post(f"{base}/v1/flux-dev", json={"prompt": "a red circle on a blue background", "width": 256, "height": 256, "steps": 4, "seed": 42, "output_format": "png"})
        assert r.status_code == 200, r.text
        sub = r.json()
        assert sub["polling_url"].startswith(base)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = http.get(sub["polling_url"]).json()
            if body["status"] != "Pending":
                break
            time.sleep(0.3)
        assert body["status"] == "Ready", body
        assert body["result"]["seed"] == 42
        img = httpx.get(body["result"]["sample"])  # signed URL: no key needed
        assert img.status_code == 200
        im = Image.open(io.BytesIO(img.content))
        assert im.size == (256, 256) and im.format == "PNG"
        assert im.info["seed"] == "42"
        assert len(set(im.convert("RGB").getdata())) > 10  # a real decoded image, not a flat fill
        assert http.get(f"{base}/v1/credits").json()["credits"] == pytest.approx(50 - sub["cost"])


def test_cli_keys_list_and_revoke(server):
    base, key, env = server
    listing = subprocess.check_output(PIXELMILL + ["keys", "list"], env=env).decode()
    assert "e2e" in listing and "active" in listing
    key_id = listing.split()[0]
    subprocess.check_call(PIXELMILL + ["keys", "revoke", key_id], env=env, stdout=subprocess.DEVNULL)
    r = httpx.get(f"{base}/v1/credits", headers={"x-key": key})
    assert r.status_code == 403


def test_serve_with_no_configuration_uses_the_shipped_model(tmp_path):
    """A fresh machine: no catalog, no settings — the built-in pixelmill-tiny answers a BFL request."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}
    env.update({"PIXELMILL_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"})
    key = json.loads(subprocess.check_output(PIXELMILL + ["keys", "create", "--json"], env=env))["key"]
    proc = subprocess.Popen(PIXELMILL + ["serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc)
        with httpx.Client(headers={"x-key": key}, timeout=30) as http:
            sub = http.post(f"{base}/v1/flux-pro-1.1", json={"prompt": "a red circle on a white background", "width": 256, "height": 256, "seed": 1}).json()
            deadline = time.monotonic() + 120
            while (body := http.get(sub["polling_url"]).json())["status"] == "Pending" and time.monotonic() < deadline:
                time.sleep(0.3)
            assert body["status"] == "Ready", body
            im = Image.open(io.BytesIO(httpx.get(body["result"]["sample"]).content))
            assert im.size == (256, 256) and im.format == "JPEG"
        # OpenAI streaming with partial images: the built-in model's intermediate states, then the image
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, timeout=60)
        prompt = "a big blue square on a yellow background"
        events = list(client.images.generate(model="pixelmill-tiny", prompt=prompt, size="256x256", stream=True, partial_images=2))
        assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
        images = [Image.open(io.BytesIO(base64.b64decode(e.b64_json))).convert("RGB") for e in events]
        assert all(image.size == (256, 256) for image in images)
        assert analyse_image(images[-1]).background == "yellow"
        assert analyse_image(images[1]).background == "yellow"  # the later preview already shows the scene
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_log_pipe_nobody_reads_holds_up_no_request_and_every_line_is_json(tmp_path):
    """`pixelmill serve | collector` where the collector stops reading: the server goes on answering.

    Its log lines wait in memory (up to 10,000) instead of in a write on the event loop; uvicorn's
    own lines go the same way, as JSON, and a request is logged once (before: uvicorn's plain
    access line beside pixelmill's, written where it was logged, stalled the server once the
    pipe's 64 KiB were full, after about 200 requests)."""
    import threading

    port = free_port()
    env = {**os.environ, "PIXELMILL_DATA_DIR": str(tmp_path / "data"), "PIXELMILL_PRELOAD_MODELS": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(PIXELMILL + ["serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    answered: list[int] = []
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
    try:
        wait_until_serving(base, proc, timeout=120)
        with httpx.Client(base_url=base, timeout=10) as client:
            for i in range(500):  # about 200 KB of log lines: three times what the pipe holds
                answered.append(client.get("/healthz").status_code)
                answered.append(client.get("/v1/get_result", params={"id": f"missing-{i}"}).status_code)
    finally:
        reader.start()  # the collector reads again
        stop(proc, timeout=30)
        reader.join(30)
    assert answered == [200, 401] * 500
    lines = output[0].decode().splitlines()
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert [line for line in lines if line.startswith(("INFO:", "WARNING:", "ERROR:"))] == []  # uvicorn's plain format
    assert any(x["logger"].startswith("uvicorn") and "Application startup complete" in x["message"] for x in logged)
    access = [x["message"] for x in logged if x["logger"] == "pixelmill.access"]
    assert sum(m.startswith("GET /v1/get_result 401") for m in access) == 500
    assert sum(m.startswith("GET /healthz 200") for m in access) >= 500  # and the polls that waited for the start
    assert not [x for x in logged if "dropped" in x["message"]]


def test_a_server_stopped_while_its_log_reader_lags_still_writes_its_last_lines(tmp_path):
    """SIGTERM to `pixelmill serve` whose log collector is behind: every line, up to uvicorn's
    "Finished server process", reaches the collector once it reads again.

    uvicorn re-raises a captured SIGTERM once it has shut down, so the process dies by the
    signal: no exit handlers run and nothing flushes the lines still waiting for the log
    writer.  Before, they were lost (here: the collector starts reading 3 s after the signal,
    when the old server was long gone); the server now waits for its log lines (at most
    10 s for a reader that never comes back) before it dies."""
    import signal
    import threading

    port = free_port()
    env = {**os.environ, "PIXELMILL_DATA_DIR": str(tmp_path / "data"), "PIXELMILL_PRELOAD_MODELS": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(PIXELMILL + ["serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
    try:
        wait_until_serving(base, proc, timeout=120)
        with httpx.Client(base_url=base, timeout=10) as client:
            for i in range(300):  # about 120 KB of log lines: more than the pipe holds
                assert client.get("/v1/get_result", params={"id": f"missing-{i}"}).status_code == 401
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.start()  # the collector reads again
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        reader.join(30)
    assert proc.returncode == -signal.SIGTERM  # it still dies by the signal, as uvicorn intends
    logged = [json.loads(line) for line in output[0].decode().splitlines() if line.startswith("{")]
    access = [x["message"] for x in logged if x["logger"] == "pixelmill.access"]
    assert sum(m.startswith("GET /v1/get_result 401") for m in access) == 300
    assert "Finished server process" in logged[-1]["message"]


def test_serve_on_a_port_already_taken_exits_with_uvicorns_startup_failure_code(tmp_path):
    """A server that could not start (its port is taken) exits non-zero (3, as `uvicorn` does), so a
    supervisor or a shell script sees the failure instead of a clean exit."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PIXELMILL_DATA_DIR": str(tmp_path / "data"), "PIXELMILL_PRELOAD_MODELS": "false", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(PIXELMILL + ["serve", "--port", str(port)], env=env, capture_output=True, timeout=120)
    assert done.returncode == 3, done.stderr.decode(errors="replace")[-2000:]
    assert b"address already in use" in done.stderr.lower() or b"address already in use" in done.stdout.lower()


def test_ctrl_c_stops_serve_cleanly(tmp_path):
    """Ctrl-C (SIGINT) in the terminal running `pixelmill serve`: a graceful stop, exit status 0, no
    "Aborted!" and no traceback, as `uvicorn` itself stops."""
    import signal

    port = free_port()
    env = {**os.environ, "PIXELMILL_DATA_DIR": str(tmp_path / "data"), "PIXELMILL_PRELOAD_MODELS": "false", "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(PIXELMILL + ["serve", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", proc, timeout=120, log=log)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, log.read_text(errors="replace")[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert "Aborted" not in text and "Traceback" not in text
    assert "Finished server process" in text
