"""Prompt adherence and speed of the shipped pixelmill-tiny model.

Generates one image for each held-out (colour, shape, background) triple of the
scene grammar - combinations the model never saw in training - at 256x256
through ``DiffusionPipeline.from_pretrained`` and scores it with the
deterministic scene analyser.  Prints colour, shape and background accuracy
(targets 90 % / 80 % / 90 %) and the generation time per image, through
pixelmill's diffusers backend (what the server runs) next to the direct
pipeline call.

    python bench/tiny_adherence.py [--folder PATH] [--steps N] [--limit 28] [--large]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pixelmill.models.tiny import WEIGHTS_DIR, model_defaults
from pixelmill.models.tiny.scenes import analyse_image, held_out_prompts

TARGETS = {"colour": 0.90, "shape": 0.80, "background": 0.90}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's default_steps")
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument(
        "--true-cfg", type=float, default=None,
        help="classifier-free guidance scale with an empty negative prompt (default: the model's default_true_cfg)",
    )
    ap.add_argument("--limit", type=int, default=None, help="score only the first N held-out prompts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--large", action="store_true", help="also time one 1024x768 image")
    ap.add_argument("--save", type=Path, default=None, help="write the images into this folder")
    args = ap.parse_args()

    from diffusers import DiffusionPipeline

    torch.set_num_threads(args.threads)
    defaults = model_defaults(args.folder)
    steps = args.steps or defaults["default_steps"]
    guidance = defaults["default_guidance"] if args.guidance is None else args.guidance
    true_cfg = defaults.get("default_true_cfg", 1.0) if args.true_cfg is None else args.true_cfg
    pipe = DiffusionPipeline.from_pretrained(args.folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    print(f"{type(pipe).__name__} from {args.folder}: {steps} steps, guidance {guidance}, true CFG {true_cfg}")

    def generate(prompt: str, seed: int, width: int = 256, height: int = 256):
        return pipe(
            prompt, width=width, height=height, num_inference_steps=steps, guidance_scale=guidance,
            negative_prompt="" if true_cfg > 1 else None, true_cfg_scale=true_cfg,
            max_sequence_length=defaults.get("max_sequence_length", 512),
            generator=torch.Generator().manual_seed(seed),
        ).images[0]

    generate("a red circle on a blue background", 0)  # warm-up
    hits = {"colour": 0, "shape": 0, "background": 0}
    times = []
    prompts = held_out_prompts()[: args.limit]
    for i, (prompt, (colour, shape, background)) in enumerate(prompts):
        t0 = time.perf_counter()
        img = generate(prompt, seed=i)
        times.append(time.perf_counter() - t0)
        a = analyse_image(img)
        hits["colour"] += a.colour == colour
        hits["shape"] += a.shape == shape
        hits["background"] += a.background == background
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            img.save(args.save / f"{i:02d}_{prompt.replace(' ', '_')}.png")
        print(f"  {prompt!r:70} -> bg={a.background} colour={a.colour} shape={a.shape}")
    n = len(prompts)
    print(f"\nheld-out prompts: {n}")
    for key, target in TARGETS.items():
        acc = hits[key] / n
        print(f"{key:>10} accuracy: {acc:6.1%}  (target {target:.0%}) {'OK' if acc >= target else 'BELOW'}")
    print(f"256x256 generation: median {statistics.median(times):.2f} s/image, mean {statistics.mean(times):.2f} s")
    direct, backend = backend_vs_direct(args.folder, generate, prompts[:8])
    print(f"256x256 through pixelmill's backend vs direct pipeline call: {backend:.2f} s vs {direct:.2f} s "
          f"({backend / direct:.2f}x)")
    if args.large:
        t0 = time.perf_counter()
        img = generate("a blue square on a yellow background", 0, 1024, 768)
        print(f"1024x768 generation: {time.perf_counter() - t0:.2f} s ({img.size[0]}x{img.size[1]})")
        if args.save:
            img.save(args.save / "large_1024x768.png")


def backend_vs_direct(folder: Path, generate, prompts) -> tuple[float, float]:
    """Median seconds per 256x256 image: the direct pipeline call, and pixelmill's backend on the same folder."""
    from pixelmill.models.base import StepControl, TextToImageRequest
    from pixelmill.models.catalog import ModelSpec
    from pixelmill.models.diffusers_backend import DiffusersBackend

    backend = DiffusersBackend(ModelSpec(name="bench", path=str(folder), device="cpu", dtype="float32"))
    backend.load()
    direct_times, backend_times = [], []
    for i, (prompt, _) in enumerate(prompts):
        t0 = time.perf_counter()
        generate(prompt, seed=i)
        direct_times.append(time.perf_counter() - t0)
        request = TextToImageRequest(prompt=prompt, width=256, height=256, seed=i)
        t0 = time.perf_counter()
        backend.generate(request, StepControl())
        backend_times.append(time.perf_counter() - t0)
    return statistics.median(direct_times), statistics.median(backend_times)


if __name__ == "__main__":
    main()
