"""Bounded memory at the door: an API node given input images just under the pixel limit reads their
sizes from the headers; it decodes no pixels (the node that loads the image does, on a worker).

A 6300 x 6300 PNG of one colour is about 70 KB of base64 but 119 MB of RGB pixels; 20 such BFL
requests in parallel are sent to a real `pixelmill serve` process (a scale-out API node: Celery
queue, no worker) while its resident memory is sampled from /proc."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.e2e.test_serve_subprocess import PIXELMILL, free_port, stop, wait_until_serving
from tests.queue.conftest import broker_db, broker_url  # noqa: F401  (Redis fixtures)

PARALLEL = 20
SIDE = 6300  # 39.7 MP: just under the default 40 MP limit
BOUND_MB = 150  # growth of the server's resident memory over its warmed-up level, at the peak


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for pid {pid}")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc to read a process's memory")
def test_twenty_parallel_near_limit_images_keep_the_api_node_small(tmp_path, broker_url):  # noqa: F811
    buf = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (200, 30, 30)).save(buf, format="PNG", compress_level=9)
    image_b64 = base64.b64encode(buf.getvalue()).decode()
    assert len(image_b64) < 200_000
    small = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(small, format="PNG")

    catalog = tmp_path / "models.toml"
    catalog.write_text(
        '[[models]]\nname = "edit"\npath = "/nonexistent"\nprice_per_megapixel = 1.0\nsupports_image_input = true\n'
        'bfl_endpoints = ["flux-kontext-pro"]\n'
    )
    env = {
        **os.environ, "PIXELMILL_DATA_DIR": str(tmp_path / "data"), "PIXELMILL_MODELS_CATALOG": str(catalog),
        "PIXELMILL_QUEUE": "celery", "PIXELMILL_BROKER_URL": broker_url, "PIXELMILL_SECRET_KEY": "s",
    }
    key = json.loads(subprocess.check_output(PIXELMILL + ["keys", "create", "--account", "mem", "--plan", "enterprise", "--credits", "1000", "--json"], env=env))["key"]
    port = free_port()
    proc = subprocess.Popen(PIXELMILL + ["serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc, timeout=120)
        with httpx.Client(base_url=base, headers={"x-key": key}, timeout=120) as http:

            def submit(image: str) -> httpx.Response:
                return http.post("/v1/flux-kontext-pro", json={"prompt": "make it blue", "input_image": image, "aspect_ratio": "1:1"})

            for _ in range(3):  # warm up every code path once, with a small image
                warm = submit(base64.b64encode(small.getvalue()).decode())
                assert warm.status_code == 200, warm.text
            baseline = _rss_mb(proc.pid)

            samples: list[float] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    samples.append(_rss_mb(proc.pid))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            with ThreadPoolExecutor(PARALLEL) as pool:
                answers = list(pool.map(lambda _: submit(image_b64), range(PARALLEL)))
            time.sleep(0.3)
            done.set()
            sampler.join(5)
        peak = max(samples)
        print(f"\nAPI node RSS: {baseline:.0f} MB warmed up, {peak:.0f} MB at the peak of {PARALLEL} parallel "
              f"{SIDE}x{SIDE} submits ({len(samples)} samples); bound +{BOUND_MB} MB")
        assert all(r.status_code == 200 for r in answers), [r.text[:200] for r in answers if r.status_code != 200][:3]
        assert peak - baseline < BOUND_MB
    finally:
        stop(proc, 15)
