"""Speed options of the catalog on a tiny FLUX pipeline on the CPU: each one runs and stays close
to the unoptimised output; fp8 (which needs a recent CUDA GPU) is a no-op with a warning here.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from pixelmill.models.base import StepControl, TextToImageRequest
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.diffusers_backend import DiffusersBackend
from pixelmill.models.speed import COMPILE_CACHE_ENV, use_compile_cache
from tests.helpers.tiny_pipelines import cached_tiny_flux, torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


def backend(**options) -> DiffusersBackend:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"').replace("True", "true") for k, v in options.items())
    catalog = ModelCatalog.from_toml(f'[[models]]\nname = "tiny"\npath = "{cached_tiny_flux()}"\ndevice = "cpu"\ndefault_steps = 4\n{extra}')
    b = DiffusersBackend(catalog.get("tiny"))
    b.load()
    return b


def image(b: DiffusersBackend, seed: int = 3) -> np.ndarray:
    request = TextToImageRequest(prompt="a red cat on the moon", width=32, height=32, steps=4, seed=seed)
    return np.asarray(b.generate(request, StepControl())[0], dtype=np.int16)


@pytest.fixture(scope="module")
def eager() -> np.ndarray:
    return image(backend())


def test_fp8_is_a_no_op_with_a_warning_without_a_recent_cuda_gpu(eager, caplog):
    with caplog.at_level(logging.WARNING, logger="pixelmill.models.speed"):
        b = backend(quantize="fp8")
    assert b.speed_options == []
    assert any("fp8" in r.getMessage() and "CUDA" in r.getMessage() for r in caplog.records)
    assert np.array_equal(image(b), eager)


def test_int8_weights_run_and_stay_close(eager):
    b = backend(quantize="int8")
    assert b.speed_options == ["quantize=int8"]
    quantized = [m for m in b.pipeline.transformer.modules() if type(getattr(m, "weight", None)).__name__ not in ("Parameter", "Tensor", "NoneType")]
    assert quantized, "no layer was quantized"
    out = image(b)
    assert np.abs(out - eager).mean() < 8


@pytest.mark.parametrize("cache", ["first_block", "taylorseer"])
def test_step_caching_runs_stays_close_and_repeats(eager, cache):
    b = backend(cache=cache, cache_warmup_steps=1, cache_interval=2)
    assert b.speed_options == [f"cache={cache}"]
    first = image(b)
    assert np.abs(first - eager).mean() < 20
    assert np.array_equal(image(b), first)  # no state leaks from one generation into the next


@pytest.mark.slow  # about a minute of CPU time to compile
def test_compile_runs_close_to_eager_and_keeps_its_kernels_on_disk(eager, tmp_path, monkeypatch):
    monkeypatch.setenv(COMPILE_CACHE_ENV, os.environ.get(COMPILE_CACHE_ENV, ""))  # restored afterwards
    folder = use_compile_cache(tmp_path / "compile-cache")
    b = backend(compile=True)
    assert b.speed_options == ["compile"]
    out = image(b)
    assert np.abs(out - eager).max() <= 2
    assert any(folder.rglob("*")), "nothing was written to the compile cache"
