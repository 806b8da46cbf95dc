"""Background removal: IoU against known masks on a held-out set, per backend, side by side.

    python bench/background_iou.py [--models auto,selfie] [--seed 11]

The set (``pixelmill.models.background_eval``): pixelmill-tiny's held-out
scenes, a product illustration on plain / gradient / vignetted backdrops with
drop shadows, and real photographic texture cut into object outlines.  Prints
mean and worst IoU per kind and model, and seconds per image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pixelmill.models.background import BackgroundRemover, available_background_models
from pixelmill.models.background_eval import cutout_set, iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="auto,selfie")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    cases = cutout_set(args.seed)
    kinds = sorted({c.kind for c in cases})
    counts = {k: sum(c.kind == k for c in cases) for k in kinds}
    print(f"{len(cases)} held-out cut-outs: " + ", ".join(f"{counts[k]} {k}" for k in kinds))
    print(f"{'model':<8} " + " ".join(f"{k + ' mean/min':>18}" for k in kinds) + f" {'all':>6} {'s/img':>6}")
    for model in args.models.split(","):
        if model not in available_background_models():
            print(f"{model:<8} not available here")
            continue
        remover = BackgroundRemover(model)
        scores: dict[str, list[float]] = {k: [] for k in kinds}
        started = time.perf_counter()
        for case in cases:
            scores[case.kind].append(iou(np.asarray(remover.remove(case.image).getchannel("A")), case.mask))
        seconds = (time.perf_counter() - started) / len(cases)
        every = [s for k in kinds for s in scores[k]]
        cells = " ".join(f"{np.mean(scores[k]):>11.3f}/{min(scores[k]):.3f}" for k in kinds)
        print(f"{model:<8} {cells} {np.mean(every):>6.3f} {seconds:>6.2f}")
    print("target: IoU >= 0.9 on objects on plain backdrops")


if __name__ == "__main__":
    main()
