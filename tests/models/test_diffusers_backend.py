"""The diffusers backend on tiny random FLUX and Stable Diffusion pipelines.

The pipelines are built once per test session, written to disk, and loaded
back through the real path: catalog file -> registry -> DiffusersBackend.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from pixelmill.models.base import GenerationCancelled, StepControl, TextToImageRequest
from pixelmill.models.catalog import WEIGHTS_DIR, ModelCatalog
from pixelmill.models.diffusers_backend import DiffusersBackend, ModelLoadError
from pixelmill.models.registry import ModelRegistry
from tests.helpers.tiny_pipelines import build_tiny_flux, build_tiny_sd, torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny models: thread start-up and contention cost more than the maths.
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {"flux": build_tiny_flux(root / "flux"), "sd": build_tiny_sd(root / "sd")}


@pytest.fixture(scope="session")
def catalog(tiny_models, tmp_path_factory) -> ModelCatalog:
    file = tmp_path_factory.mktemp("catalog") / "catalog.toml"
    file.write_text(
        f"""
[[models]]
name = "tiny-flux"
path = "{tiny_models['flux']}"
device = "cpu"
default_steps = 3
max_steps = 12
bfl_endpoints = ["flux-dev"]

[[models]]
name = "tiny-flux-cfg"
path = "{tiny_models['flux']}"
device = "cpu"
default_steps = 3
default_true_cfg = 4.0
max_sequence_length = 8

[[models]]
name = "tiny-sd"
path = "{tiny_models['sd']}"
device = "cpu"
default_steps = 4
default_guidance = 5.0
supports_image_input = true

[[models]]
name = "missing"
path = "{tiny_models['flux']}-does-not-exist"
device = "cpu"
"""
    )
    return ModelCatalog.load(file)


@pytest.fixture(scope="session")
def registry(catalog) -> ModelRegistry:
    return ModelRegistry(catalog)


class Progress:
    """Records progress reports; optionally cancels after a given number of steps."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.values: list[float] = []
        self.control = StepControl(on_progress=self.on_progress)
        self.cancel_after = cancel_after

    def on_progress(self, fraction: float) -> None:
        self.values.append(fraction)
        if self.cancel_after is not None and len(self.values) >= self.cancel_after:
            self.control.cancel()


def run(registry: ModelRegistry, model: str, **fields) -> tuple[list[Image.Image], Progress]:
    progress = Progress()
    images = registry.backend(model).generate(TextToImageRequest(prompt="a red cat on the moon", **fields), progress.control)
    return images, progress


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd"])
def test_output_has_the_requested_non_square_size(registry, model):
    images, _ = run(registry, model, width=48, height=32, steps=2)
    assert [(im.size, im.mode) for im in images] == [((48, 32), "RGB")]


def test_flux_size_off_the_latent_grid_is_still_honoured(registry):
    images, _ = run(registry, "tiny-flux", width=37, height=21, steps=2)
    assert images[0].size == (37, 21)


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd"])
def test_same_seed_same_pixels_different_seed_different_pixels(registry, model):
    a, _ = run(registry, model, width=32, height=32, steps=3, seed=7)
    b, _ = run(registry, model, width=32, height=32, steps=3, seed=7)
    c, _ = run(registry, model, width=32, height=32, steps=3, seed=8)
    assert np.array_equal(pixels(a[0]), pixels(b[0]))
    assert np.abs(pixels(a[0]) - pixels(c[0])).max() > 0


def test_num_images_gives_distinct_images(registry):
    images, _ = run(registry, "tiny-flux", width=32, height=32, steps=2, num_images=3, seed=1)
    assert len(images) == 3
    assert all(im.size == (32, 32) for im in images)
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))
    assert not np.array_equal(pixels(images[1]), pixels(images[2]))


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd"])
def test_progress_is_per_step_monotonic_and_reaches_one(registry, model):
    _, progress = run(registry, model, width=32, height=32, steps=5)
    assert progress.values == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_steps_default_and_clamp_to_the_catalog(registry):
    _, progress = run(registry, "tiny-flux", width=16, height=16)
    assert len(progress.values) == 3  # default_steps
    _, progress = run(registry, "tiny-flux", width=16, height=16, steps=100)
    assert len(progress.values) == 12  # max_steps
    _, progress = run(registry, "tiny-flux", width=16, height=16, steps=7)
    assert len(progress.values) == 7


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd"])
def test_cancel_stops_at_the_next_step(registry, model):
    progress = Progress(cancel_after=2)
    request = TextToImageRequest(prompt="a cat", width=32, height=32, steps=10)
    with pytest.raises(GenerationCancelled):
        registry.backend(model).generate(request, progress.control)
    assert len(progress.values) == 2 < 10


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd"])
def test_previews_decode_the_sampler_state_after_evenly_spread_steps(registry, model):
    progress = Progress()
    made = []
    progress.control.previews = 3
    progress.control.on_preview = lambda index, images: made.append((index, len(progress.values), images))
    request = TextToImageRequest(prompt="a red cat on the moon", width=48, height=32, steps=8, num_images=2, seed=3)
    final = registry.backend(model).generate(request, progress.control)
    assert [(index, after_step) for index, after_step, _ in made] == [(0, 2), (1, 4), (2, 6)]
    assert all([im.size for im in images] == [(48, 32), (48, 32)] for _, _, images in made)
    # the sampler's state converges on the result: the last preview is the closest to it
    distance = [np.abs(pixels(images[0]) - pixels(final[0])).mean() for _, _, images in made]
    assert distance[-1] < distance[0]
    plain, _ = run(registry, model, width=48, height=32, steps=8, num_images=2, seed=3)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(plain, final))  # previews change nothing


def test_preview_steps_are_spread_and_never_the_last():
    control = StepControl(previews=3)
    assert control.preview_steps(8) == [1, 3, 5]
    assert control.preview_steps(30) == [7, 14, 21]
    assert control.preview_steps(2) == [0]  # too few steps: fewer previews
    assert control.preview_steps(1) == [] and StepControl().preview_steps(30) == []


def test_cancelled_before_start_runs_no_step(registry):
    progress = Progress()
    progress.control.cancel()
    with pytest.raises(GenerationCancelled):
        registry.backend("tiny-flux").generate(TextToImageRequest(prompt="a cat", width=16, height=16), progress.control)
    assert progress.values == []


def test_guidance_reaches_the_model(registry):
    low, _ = run(registry, "tiny-flux", width=32, height=32, steps=2, guidance=1.0)
    high, _ = run(registry, "tiny-flux", width=32, height=32, steps=2, guidance=9.0)
    assert not np.array_equal(pixels(low[0]), pixels(high[0]))


def test_true_cfg_and_sequence_length_from_the_catalog_reach_the_pipeline(registry):
    plain, _ = run(registry, "tiny-flux", width=32, height=32, steps=2, seed=5)
    guided, progress = run(registry, "tiny-flux-cfg", width=32, height=32, steps=2, seed=5)
    assert not np.array_equal(pixels(plain[0]), pixels(guided[0]))
    assert progress.values == [0.5, 1.0]  # one report per step, not per transformer call
    kwargs = registry.backend("tiny-flux-cfg")._call_kwargs(
        registry.backend("tiny-flux-cfg").load(), TextToImageRequest(prompt="x", width=32, height=32), StepControl()
    )
    assert (kwargs["true_cfg_scale"], kwargs["negative_prompt"], kwargs["max_sequence_length"]) == (4.0, "", 8)


def test_negative_prompt_changes_stable_diffusion_output(registry):
    plain, _ = run(registry, "tiny-sd", width=32, height=32, steps=2)
    negative, _ = run(registry, "tiny-sd", width=32, height=32, steps=2, negative_prompt="blue sky")
    assert not np.array_equal(pixels(plain[0]), pixels(negative[0]))


def test_image_to_image_uses_the_input_and_strength(registry):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    images, progress = run(registry, "tiny-sd", width=48, height=32, steps=10, strength=0.5, init_image=init)
    assert images[0].size == (48, 32)
    assert len(progress.values) == 5  # strength 0.5 runs the last half of the schedule
    assert progress.values[-1] == pytest.approx(1.0)
    again, _ = run(registry, "tiny-sd", width=48, height=32, steps=10, strength=0.5, init_image=init)
    assert np.array_equal(pixels(images[0]), pixels(again[0]))


def test_input_image_refused_by_a_text_only_model(registry):
    with pytest.raises(ValueError, match="does not accept an input image"):
        run(registry, "tiny-flux", width=16, height=16, init_image=Image.new("RGB", (16, 16)))


def test_registry_loads_once_across_threads(catalog):
    registry = ModelRegistry(catalog)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(registry.backend("tiny-flux"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(b is got[0] for b in got)
    assert isinstance(got[0], DiffusersBackend) and got[0].loaded
    assert registry.loaded() == ["tiny-flux"]


def test_concurrent_generations_on_one_pipeline_match_sequential(registry):
    request = TextToImageRequest(prompt="a dog", width=32, height=32, steps=3, seed=3)
    backend = registry.backend("tiny-flux")
    expected = backend.generate(request, StepControl())[0]
    results: list[Image.Image] = []
    threads = [
        threading.Thread(target=lambda: results.extend(backend.generate(request, StepControl()))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    assert all(np.array_equal(pixels(r), pixels(expected)) for r in results)


def test_registry_errors_and_injection(catalog):
    registry = ModelRegistry(catalog)
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        registry.backend("nope")
    with pytest.raises(ModelLoadError, match="model 'missing'.*model_index.json missing"):
        registry.backend("missing")
    assert registry.loaded() == []

    class Solid:
        def generate(self, request, control):
            control.report(1.0)
            return [Image.new("RGB", (request.width, request.height), "white")] * request.num_images

    registry.register("missing", Solid())
    images = registry.backend("missing").generate(TextToImageRequest(prompt="x", width=8, height=4), StepControl())
    assert images[0].size == (8, 4)
    assert registry.loaded() == ["missing"]
    assert registry.unload("missing") and registry.loaded() == []


@pytest.mark.skipif(
    not (WEIGHTS_DIR / "pixelmill-tiny" / "model_index.json").is_file(), reason="built-in weights not present"
)
def test_builtin_default_model_generates():
    registry = ModelRegistry(ModelCatalog.load())
    spec = registry.catalog.for_bfl_endpoint("flux-dev")
    progress = Progress()
    request = TextToImageRequest(prompt="a red circle on a blue background", width=64, height=96, steps=2, seed=5)
    images = registry.backend(spec.name).generate(request, progress.control)
    assert images[0].size == (64, 96)
    assert progress.values == pytest.approx([0.5, 1.0])


def test_flux_image_to_image_through_its_img2img_sibling(catalog):
    spec = catalog.get("tiny-flux").model_copy(update={"supports_image_input": True})
    backend = DiffusersBackend(spec)
    init = Image.new("RGB", (32, 32), (20, 200, 40))
    progress = Progress()
    request = TextToImageRequest(prompt="a cat", width=48, height=32, steps=8, strength=0.5, init_image=init)
    images = backend.generate(request, progress.control)
    assert images[0].size == (48, 32)
    assert len(progress.values) == 4 and progress.values[-1] == pytest.approx(1.0)
    assert type(backend.pipeline).__name__ == "FluxPipeline"  # the text-to-image pipeline is kept as is


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd"])
def test_inpainting_repaints_the_mask_and_keeps_the_rest_pixel_for_pixel(catalog, model):
    spec = catalog.get(model).model_copy(update={"supports_image_input": True})
    backend = DiffusersBackend(spec)
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (0, 0, 24, 32))  # repaint the left half, keep the right half
    request = TextToImageRequest(prompt="a cat", width=48, height=32, steps=4, strength=1.0, init_image=init, mask_image=mask)
    out = backend.generate(request, Progress().control)[0]
    assert out.size == (48, 32)
    got, want = pixels(out), pixels(init)
    assert np.array_equal(got[:, 24:], want[:, 24:])
    assert np.abs(got[:, :24] - want[:, :24]).mean() > 20
    again = backend.generate(request, Progress().control)[0]
    assert np.array_equal(pixels(again), got)
    assert type(backend.pipeline).__name__ in ("FluxPipeline", "StableDiffusionPipeline")  # untouched


def test_a_mask_without_an_input_image_is_refused(catalog):
    backend = DiffusersBackend(catalog.get("tiny-sd"))
    with pytest.raises(ValueError, match="mask needs an input image"):
        backend.generate(TextToImageRequest(prompt="x", width=16, height=16, mask_image=Image.new("L", (16, 16))), Progress().control)


def test_two_generations_run_side_by_side_over_one_copy_of_the_weights(catalog):
    """On the CPU two callers generate at once (two worker threads use two cores), each on a
    pipeline of its own over the same modules; each image is what it would be alone."""
    backend = DiffusersBackend(catalog.get("tiny-flux"))
    requests = [TextToImageRequest(prompt=f"a dog {i}", width=32, height=32, steps=3, seed=i) for i in range(2)]
    alone = [pixels(backend.generate(r, StepControl())[0]) for r in requests]
    assert backend.side_by_side
    met = threading.Event()
    stepped = [threading.Event(), threading.Event()]
    results: list = [None, None]

    def run(i: int) -> None:
        def on_progress(_fraction: float) -> None:
            stepped[i].set()
            if stepped[1 - i].wait(10):  # the other run stepped while this one is inside its own
                met.set()

        results[i] = pixels(backend.generate(requests[i], StepControl(on_progress=on_progress))[0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert met.is_set()
    assert all(np.array_equal(results[i], alone[i]) for i in range(2))
    seats = backend._free
    assert len(seats) == 2 and seats[0] is not seats[1]
    assert seats[0].transformer is seats[1].transformer and seats[0].scheduler is not seats[1].scheduler


def test_a_model_with_speed_options_or_off_the_cpu_generates_one_at_a_time(catalog):
    backend = DiffusersBackend(catalog.get("tiny-flux"))
    assert backend.side_by_side
    backend.speed_options = ["cache"]  # a step cache keeps its state in the shared modules
    assert not backend.side_by_side
    backend.speed_options = []
    backend.device = "cuda"
    assert not backend.side_by_side


def test_a_generation_waiting_for_the_one_pipeline_can_be_cancelled_meanwhile(catalog):
    """Where generations run one at a time, the one waiting for the pipeline stops on a cancel at
    once instead of after the running one."""
    backend = DiffusersBackend(catalog.get("tiny-flux"))
    backend.load()
    backend.speed_options = ["cache"]  # one at a time
    inside, release = threading.Event(), threading.Event()

    def hold(_fraction: float) -> None:
        inside.set()
        release.wait(10)

    first = threading.Thread(
        target=backend.generate,
        args=(TextToImageRequest(prompt="a dog", width=32, height=32, steps=2, seed=1), StepControl(on_progress=hold)),
    )
    first.start()
    try:
        assert inside.wait(10)
        waiting = StepControl()
        outcome: list = []

        def second() -> None:
            try:
                backend.generate(TextToImageRequest(prompt="a cat", width=32, height=32, steps=2, seed=2), waiting)
                outcome.append("generated")
            except GenerationCancelled:
                outcome.append("cancelled")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        waiting.cancel()
        t.join(5)
        assert outcome == ["cancelled"] and first.is_alive()  # the running one still holds the pipeline
    finally:
        release.set()
        first.join(10)


def test_a_server_process_logs_model_loading_as_json_lines_only():
    """In a process that logs through pixelmill's handler (a server, a worker), loading a model
    writes JSON lines only: diffusers', transformers' and PyTorch's own stderr handlers (plain
    text, progress bars) are set aside for pixelmill's, so a log collector gets lines it parses."""
    import json
    import subprocess
    import sys

    from tests.helpers.tiny_pipelines import cached_tiny_flux

    code = (
        "import logging, sys\n"
        "from pixelmill.ops.logs import configure_logging\n"
        "configure_logging()\n"
        "from pixelmill.models.catalog import ModelSpec\n"
        "from pixelmill.models.diffusers_backend import DiffusersBackend\n"
        "DiffusersBackend(ModelSpec(name='t', path=sys.argv[1], device='cpu', dtype='float32')).load()\n"
        "logging.getLogger('transformers.t').warning('a library line')\n"
        "logging.getLogger().handlers[0].flush()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(cached_tiny_flux())], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("{")] == []
    logged = [json.loads(line) for line in lines]
    assert any(x["logger"] == "transformers.t" and x["message"] == "a library line" for x in logged)
    assert any(x["logger"] == "pixelmill.models.diffusers_backend" for x in logged)
