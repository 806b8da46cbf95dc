"""BFL's finetuned endpoints on a real tiny FLUX pipeline: ``finetune_id`` names a LoRA of the
serving model's catalog entry and ``finetune_strength`` is its scale.

The finetuned image differs from the base model's and is, pixel for pixel, the
image a workflow's ``text_to_image`` node makes with that LoRA at that scale and
the same seed; ``my_finetunes`` / ``finetune_details`` list the catalog's LoRAs;
an unknown finetune is BFL's 422 about ``finetune_id``.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pixelmill.api.app import create_app
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.diffusers_backend import DiffusersBackend
from tests.conftest import create_key, wait_for
from tests.helpers.tiny_pipelines import cached_tiny_flux, make_lora, torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny_entry(tmp_path_factory) -> str:
    folder = cached_tiny_flux()
    out = tmp_path_factory.mktemp("loras")
    ink, neon = (make_lora(folder, out, seed) for seed in (1, 2))
    # ultra-finetuned and flux-pro-finetuned are mapped to it; fill-finetuned follows plain fill
    return (
        f'path = "{folder}"\ndevice = "cpu"\ndefault_steps = 2\nmin_side = 16\nmax_side = 64\nsize_multiple = 16\n'
        'supports_image_input = true\n'
        'bfl_endpoints = ["flux-pro-1.1-ultra-finetuned", "flux-pro-finetuned", "flux-pro-1.0-fill"]\n'
        f'loras = {{ ink = "{ink}", neon = "{neon}" }}\n'
    )


@pytest.fixture
def api(make_runtime, sqlite_url, tiny_entry):
    spec = ModelCatalog.from_toml('[[models]]\nname = "tiny"\n' + tiny_entry).get("tiny")
    rt = make_runtime(sqlite_url, extra_models={"tiny": (tiny_entry, DiffusersBackend(spec))}, plans={"unlimited": {}})
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt, plan="unlimited")
    return rt, client


def _pixels(client, url: str) -> np.ndarray:
    r = client.get(url)
    assert r.status_code == 200
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.int16)


def _bfl_image(client, endpoint: str, body: dict) -> np.ndarray:
    r = client.post(f"/v1/{endpoint}", json={"output_format": "png", **body})
    assert r.status_code == 200, r.text
    done = wait_for(lambda: (b := client.get(r.json()["polling_url"]).json())["status"] != "Pending" and b, timeout=120)
    assert done["status"] == "Ready", done
    return _pixels(client, done["result"]["sample"])


def _node_image(client, params: dict) -> np.ndarray:
    node = {"type": "text_to_image", "params": {"model": "tiny", "output_format": "png", **params}}
    r = client.post("/api/v1/workflows", json={"name": "t2i", "nodes": {"gen": node}})
    assert r.status_code == 201, r.text
    r = client.post(f"/api/v1/workflows/{r.json()['id']}/execute", json={})
    assert r.status_code == 201, r.text
    eid = r.json()["executionId"]
    done = wait_for(lambda: (b := client.get(f"/api/v1/executions/{eid}/poll").json())["status"] not in ("QUEUED", "RUNNING") and b, timeout=120)
    assert done["status"] == "COMPLETED", done
    return _pixels(client, done["outputs"][0])


def test_a_finetune_is_its_lora_at_the_finetune_strength(api):
    _, client = api
    ultra = _bfl_image(client, "flux-pro-1.1-ultra-finetuned", {"prompt": "a red cat", "seed": 5, "finetune_id": "ink"})
    height, width = ultra.shape[:2]
    same = {"prompt": "a red cat", "seed": 5, "width": width, "height": height}
    base = _node_image(client, same)
    assert np.abs(ultra - base).mean() > 1.0  # the finetune changes the image
    # BFL's default strength for ultra is 1.2: the node's LoRA at scale 1.2, same seed, same pixels
    assert np.array_equal(ultra, _node_image(client, {**same, "loras": [{"name": "ink", "scale": 1.2}]}))
    weaker = _bfl_image(client, "flux-pro-1.1-ultra-finetuned", {"prompt": "a red cat", "seed": 5, "finetune_id": "ink", "finetune_strength": 0.4})
    assert np.array_equal(weaker, _node_image(client, {**same, "loras": [{"name": "ink", "scale": 0.4}]}))
    assert np.abs(weaker - ultra).mean() > 0.1
    none = _bfl_image(client, "flux-pro-1.1-ultra-finetuned", {"prompt": "a red cat", "seed": 5, "finetune_id": "ink", "finetune_strength": 0})
    assert np.array_equal(none, base)  # strength 0: no influence
    # legacy flux-pro-finetuned on the synchronous mount (256x256 made at the model's largest, 64x64):
    # its own default strength (1.1), the other LoRA
    r = client.post("/sync/v1/flux-pro-finetuned", json={"prompt": "a red cat", "seed": 5, "width": 256, "height": 256, "steps": 2, "finetune_id": "neon", "output_format": "png"})
    assert r.status_code == 200, r.text
    pro = _pixels(client, r.json()["images"][0]["url"])
    assert pro.shape == (64, 64, 3)
    node = {"prompt": "a red cat", "seed": 5, "width": 64, "height": 64, "steps": 2, "guidance": 2.5}
    assert np.array_equal(pro, _node_image(client, {**node, "loras": [{"name": "neon", "scale": 1.1}]}))
    assert np.abs(pro - _node_image(client, node)).mean() > 1.0


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_fill_finetuned_inpaints_with_the_finetune(api):
    _, client = api
    image = _png_b64(Image.new("RGB", (32, 32), (200, 30, 30)))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    body = {"prompt": "a cat", "seed": 3, "steps": 15, "image": image, "mask": _png_b64(mask)}
    plain = _bfl_image(client, "flux-pro-1.0-fill", body)
    tuned = _bfl_image(client, "flux-pro-1.0-fill-finetuned", {**body, "finetune_id": "ink"})
    assert tuned.shape == plain.shape  # the input's shape
    q = tuned.shape[0] // 4
    assert np.abs(tuned[q:3 * q, q:3 * q] - plain[q:3 * q, q:3 * q]).mean() > 1.0  # the masked area is painted by the finetune
    assert np.array_equal(tuned[:q // 2], plain[:q // 2])  # outside the mask both keep the input


def test_finetunes_are_listed_and_unknown_ones_refused(api):
    _, client = api
    assert client.get("/v1/my_finetunes").json() == {"finetunes": ["ink", "neon"]}
    details = client.get("/v1/finetune_details", params={"finetune_id": "ink"}).json()["finetune_details"]
    assert details["finetune_type"] == "lora" and details["models"] == ["tiny"]
    assert set(details["endpoints"]) == {"flux-pro-1.1-ultra-finetuned", "flux-pro-finetuned", "flux-pro-1.0-fill-finetuned"}
    r = client.get("/v1/finetune_details", params={"finetune_id": "glitter"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "finetune_id"]
    r = client.post("/v1/flux-pro-1.1-ultra-finetuned", json={"prompt": "x", "finetune_id": "glitter"})
    assert r.status_code == 422, r.text
    item = r.json()["detail"][0]
    assert item["loc"] == ["body", "finetune_id"] and "ink" in item["msg"] and "Finetune not found" in r.json()["message"]
    r = client.post("/v1/flux-pro-1.1-ultra-finetuned", json={"prompt": "x", "finetune_id": "ink", "finetune_strength": 2.5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "finetune_strength"]
    r = client.post("/v1/pricing", json={"endpoint": "flux-pro-1.1-ultra-finetuned", "prompt": "x", "finetune_id": "glitter"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "finetune_id"]
