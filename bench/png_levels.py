"""PNG output: encoding time and size per zlib level, for the default (``png_compress_level``).

A pixelmill-tiny output (256x256: flat colours), the same image upscaled to 1024x1024 (the size
of a FLUX output), and a textured 1024x1024 image (smoothed noise, closer to a photograph than the
tiny model's shapes), each encoded as the runner encodes it; the time is the best of ``--repeat`` runs.

    PYTHONPATH=src python bench/png_levels.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image, ImageFilter

from pixelmill.models.base import StepControl, TextToImageRequest
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.imageops import encode_image
from pixelmill.models.registry import ModelRegistry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    backend = ModelRegistry(ModelCatalog.load(None)).backend("pixelmill-tiny")
    [small] = backend.generate(TextToImageRequest(prompt="a red circle on a blue background", width=256, height=256, steps=16, seed=1), StepControl())
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    textured = Image.fromarray(noise).resize((1024, 1024), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    images = {"tiny 256": small, "tiny 1024": small.resize((1024, 1024), Image.BICUBIC), "texture 1024": textured}
    print(f"PNG encoding, best of {args.repeat} (level 1 is the default)")
    print(f"{'image':>12} {'level':>5} {'ms':>8} {'bytes':>10} {'time vs 6':>10} {'size vs 6':>10}")
    for name, image in images.items():
        rows = {}
        for level in (0, 1, 3, 6, 9):
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                data = encode_image(image, "png", png_compress_level=level)
                best = min(best, time.perf_counter() - t)
            rows[level] = (best, len(data))
        for level, (seconds, size) in rows.items():
            print(f"{name:>12} {level:>5} {seconds * 1000:8.1f} {size:10d} {seconds / rows[6][0]:9.2f}x {size / rows[6][1]:9.2f}x")


if __name__ == "__main__":
    main()
