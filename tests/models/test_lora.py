"""LoRAs per request on a tiny FLUX pipeline, with LoRA files made in the test.

A request naming a LoRA of its model's catalog entry changes the image; the
same request again (or on a freshly loaded model) gives the same pixels; going
back to no LoRA gives the base model's pixels, without reloading the base
weights; the LoRAs kept loaded are bounded (least recently used dropped).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelmill.models.base import StepControl, TextToImageRequest
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.diffusers_backend import DiffusersBackend
from tests.helpers.tiny_pipelines import cached_tiny_flux, make_lora, torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> ModelCatalog:
    folder = cached_tiny_flux()
    out = tmp_path_factory.mktemp("loras")
    ink, neon, dust = (make_lora(folder, out, seed) for seed in (1, 2, 3))
    return ModelCatalog.from_toml(
        f'[[models]]\nname = "tiny"\npath = "{folder}"\ndevice = "cpu"\ndefault_steps = 2\nlora_cache = 2\n'
        f'loras = {{ ink = "{ink}", neon = "{neon}", dust = "{dust}" }}\n'
    )


def image(backend, *loras) -> np.ndarray:
    request = TextToImageRequest(prompt="a red cat", width=32, height=32, steps=2, seed=5, loras=tuple(loras))
    return np.asarray(backend.generate(request, StepControl())[0], dtype=np.int16)


def test_a_lora_changes_the_image_and_matches_a_reference_run(catalog):
    backend = DiffusersBackend(catalog.get("tiny"))
    base = image(backend)
    inked = image(backend, ("ink", 1.0))
    assert np.abs(inked - base).mean() > 1.0
    half = image(backend, ("ink", 0.5))
    assert np.abs(half - base).mean() > 0.1 and np.abs(half - inked).mean() > 0.1
    transformer = backend.pipeline.transformer
    assert np.array_equal(image(backend), base)  # back to the base model: same object, not reloaded
    assert backend.pipeline.transformer is transformer
    assert np.array_equal(image(backend, ("ink", 1.0)), inked)
    fresh = DiffusersBackend(catalog.get("tiny"))  # a reference run on a freshly loaded model
    assert np.array_equal(image(fresh, ("ink", 1.0)), inked)
    both = image(backend, ("ink", 1.0), ("neon", 0.7))
    assert np.abs(both - inked).mean() > 0.1


def test_loaded_loras_are_bounded_least_recently_used_first(catalog):
    backend = DiffusersBackend(catalog.get("tiny"))  # lora_cache = 2
    image(backend, ("ink", 1.0))
    image(backend, ("neon", 1.0))
    image(backend, ("ink", 1.0))  # neon is now the least recently used
    dusty = image(backend, ("dust", 1.0))
    assert list(backend._loras) == ["ink", "dust"]
    assert set(backend.pipeline.get_list_adapters()["transformer"]) == {"ink", "dust"}
    again = DiffusersBackend(catalog.get("tiny"))
    assert np.array_equal(image(again, ("dust", 1.0)), dusty)


def test_unknown_loras_are_refused_before_running(catalog):
    from pixelmill.config import Settings
    from pixelmill.engine.graph import GraphProblems, prepare
    from pixelmill.models.registry import ModelRegistry
    from pixelmill.nodes.registry import default_registry
    from pixelmill.nodes.services import NodeServices

    services = NodeServices.build(Settings(secret_key="x"), catalog, ModelRegistry(catalog))
    node = {"type": "text_to_image", "params": {"model": "tiny", "prompt": "x", "width": 64, "height": 64, "loras": [{"name": "glitter"}]}}
    with pytest.raises(GraphProblems) as err:
        prepare({"nodes": {"gen": node}}, default_registry(), services)
    assert "glitter" in str(err.value.details) and "ink" in str(err.value.details)
    node["params"]["loras"] = [{"name": "ink", "scale": 0.8}]
    prepared = prepare({"nodes": {"gen": node}}, default_registry(), services)
    assert prepared.nodes["gen"].params.loras[0].scale == 0.8
    with pytest.raises(ValueError):
        DiffusersBackend(catalog.get("tiny")).generate(
            TextToImageRequest(prompt="x", width=32, height=32, loras=(("glitter", 1.0),)), StepControl()
        )


def test_generations_with_other_loras_never_overlap_and_each_gets_its_own_pixels(catalog):
    """LoRAs live in the weights every seat shares: a run that wants other LoRAs waits until the
    running ones end (and runs with the same LoRAs go side by side), so no image mixes two sets."""
    import threading
    import time

    backend = DiffusersBackend(catalog.get("tiny"))
    wanted = {"base": (), "ink": (("ink", 1.0),), "neon": (("neon", 1.0),)}
    alone = {name: image(backend, *loras) for name, loras in wanted.items()}  # neon is active last
    apply = backend._apply_loras

    def slow_apply(pipe, loras):  # a change takes a while (a LoRA read from disk): others arrive meanwhile
        time.sleep(0.1)
        apply(pipe, loras)

    backend._apply_loras = slow_apply
    spans: dict[str, list[float]] = {}
    got: dict[str, np.ndarray] = {}

    def run(name: str, key: str) -> None:
        torch.set_num_threads(1)  # as the reference runs (libgomp keeps the count per thread)

        def on_progress(_fraction: float) -> None:
            spans.setdefault(key, []).append(time.monotonic())
            time.sleep(0.05)  # long enough steps for the runs to meet

        request = TextToImageRequest(prompt="a red cat", width=32, height=32, steps=2, seed=5, loras=wanted[name])
        got[key] = np.asarray(backend.generate(request, StepControl(on_progress=on_progress))[0], dtype=np.int16)

    # neon arrives while ink-1 changes the LoRAs away from neon: it must not join
    runs = [("ink", "ink-1"), ("neon", "neon"), ("ink", "ink-2"), ("base", "base")]
    threads = [threading.Thread(target=run, args=r) for r in runs]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    for name, key in runs:
        assert np.array_equal(got[key], alone[name]), key
    first, last = {k: v[0] for k, v in spans.items()}, {k: v[-1] for k, v in spans.items()}
    for name_a, a in runs:
        for name_b, b in runs:
            if a < b and name_a != name_b:  # other LoRAs: one ended before the other began
                assert last[a] < first[b] or last[b] < first[a], (a, b)
