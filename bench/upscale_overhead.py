"""What the upscale node costs on top of the bare ncnn network.

Upscales the same 256x256 picture with ``Upscaler.upscale`` (mode handling,
reflect padding, tiling, progress/cancel checks, uint8 conversion, stitching)
and with a minimal inline loop over the same tiles that only feeds ncnn and
copies the crops out.  Runs alternate and the best of each is compared, which
keeps the noise of a shared machine out of the ratio.  ncnn runs one thread by
default here: with several threads on a busy machine, OpenMP spin-waiting
swamps the few milliseconds being measured (``--threads`` changes it).

    python bench/upscale_overhead.py [--model realesr-animevideov3-x2] [--size 256] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import ncnn
import numpy as np
from PIL import Image, ImageDraw

from pixelmill.models.base import StepControl
from pixelmill.models.upscale import DEFAULT_PAD, DEFAULT_TILE, UPSCALE_MODELS, Upscaler

TARGET_RATIO = 1.05


def test_picture(size: int) -> Image.Image:
    ys, xs = np.mgrid[0:size, 0:size]
    image = Image.fromarray((np.stack([xs, ys, (xs + ys) // 2], -1) % 256).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size * 0.1, size * 0.1, size * 0.5, size * 0.5), fill=(240, 200, 40))
    draw.rectangle((size * 0.55, size * 0.2, size * 0.9, size * 0.45), fill=(30, 80, 190))
    draw.text((size * 0.1, size * 0.7), "pixelmill", fill=(255, 255, 255))
    return image


def bare_ncnn(net, rgb: np.ndarray, scale: int, tile: int, pad: int) -> np.ndarray:
    """The same tiles through ncnn with nothing else around them."""
    height, width, _ = rgb.shape
    planar = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="reflect").transpose(2, 0, 1)
    planar = planar.astype(np.float32) / 255.0
    out = np.empty((3, height * scale, width * scale), np.float32)
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            h, w = min(tile, height - y), min(tile, width - x)
            chunk = np.ascontiguousarray(planar[:, y : y + h + 2 * pad, x : x + w + 2 * pad])
            ex = net.create_extractor()
            ex.input("data", ncnn.Mat(chunk))
            _, result = ex.extract("output")
            s = scale
            out[:, y * s : (y + h) * s, x * s : (x + w) * s] = np.asarray(result)[
                :, pad * s : (pad + h) * s, pad * s : (pad + w) * s
            ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesr-animevideov3-x2", choices=sorted(UPSCALE_MODELS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    image = test_picture(args.size)
    upscaler = Upscaler(args.model, threads=args.threads)
    info = UPSCALE_MODELS[args.model]
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = args.threads
    net.load_param(str(info.param_path))
    net.load_model(str(info.bin_path))
    rgb = np.asarray(image)

    # warm both (first extract allocates workspaces)
    upscaler.upscale(image.crop((0, 0, 32, 32)))
    bare_ncnn(net, rgb[:32, :32], upscaler.scale, DEFAULT_TILE, DEFAULT_PAD)

    node_times, bare_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        upscaler.upscale(image, StepControl(on_progress=lambda _fraction: None))
        node_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare_ncnn(net, rgb, upscaler.scale, DEFAULT_TILE, DEFAULT_PAD)
        bare_times.append(time.perf_counter() - start)

    node, bare = min(node_times), min(bare_times)
    ratio = node / bare
    print(
        f"model {args.model}, {args.size}x{args.size} -> x{upscaler.scale}, "
        f"tile {DEFAULT_TILE}, pad {DEFAULT_PAD}, {args.threads} thread(s)"
    )
    for label, times in (("Upscaler.upscale", node_times), ("bare ncnn", bare_times)):
        runs = ", ".join(f"{t * 1000:.0f}" for t in times)
        print(f"{label:<17} best {min(times) * 1000:6.0f} ms  median {statistics.median(times) * 1000:6.0f} ms  ({runs})")
    verdict = "ok" if ratio <= TARGET_RATIO else f"above the {TARGET_RATIO:.2f}x target"
    print(f"upscale node vs bare ncnn: {ratio:.2f}x ({verdict})")


if __name__ == "__main__":
    main()
