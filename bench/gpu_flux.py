"""GPU speed of the catalog's speed options on the full-size FLUX.1 [dev] architecture.

No FLUX weights can be downloaded here, so the transformer (12 B parameters,
19 double + 38 single blocks) and the VAE are built with random weights in
bf16 directly on the GPU; prompts enter as random T5/CLIP-sized embeddings
(``prompt_embeds`` 512 x 4096, pooled 768), which is what the text encoders
would hand the transformer — their own cost is outside the timed loop.
Random weights make the *speed* of every kernel real; what step caching skips
depends on the weights, so the caching figures are indicative only.

For each configuration: build, one warm-up image (compiling when asked), then
``--runs`` timed images at ``--size``² and ``--steps`` steps; printed as s/image
and speed-up over eager bf16.  Configurations: eager, compile (QKV fusion +
torch.compile), fp8 (torchao float8 weights and activations), first-block
cache, TaylorSeer cache, compile + fp8, compile + fp8 + first-block cache.
``--cold-start`` then measures a fresh process from start to its first image
with compile + fp8, twice: the first fills the on-disk compile cache, the
second is the figure (target <= 15 s).

    python bench/gpu_flux.py                 # on a CUDA GPU (H100/H200): a few minutes
    python bench/gpu_flux.py --smoke         # a tiny configuration on the CPU: checks the script runs
    python bench/gpu_flux.py --only eager,compile+fp8 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch

FULL = dict(
    transformer=dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
    ),
    vae=dict(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    ),
    text_tokens=512,
)
SMOKE = dict(
    transformer=dict(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    ),
    vae=dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=1.0, shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False, norm_num_groups=4,
    ),
    text_tokens=16,
)
CONFIGS = {
    "eager": dict(),
    "compile": dict(compile=True),
    "fp8": dict(quantize="fp8"),
    "first_block": dict(cache="first_block"),
    "taylorseer": dict(cache="taylorseer"),
    "compile+fp8": dict(compile=True, quantize="fp8"),
    "compile+fp8+first_block": dict(compile=True, quantize="fp8", cache="first_block"),
}


@dataclass
class Setup:
    arch: dict
    device: str
    dtype: torch.dtype
    size: int
    steps: int


def spec(name: str, **options) -> SimpleNamespace:
    """What ``apply_speed_options`` reads from a catalog entry."""
    base = dict(name=name, compile=False, quantize="none", cache="none", cache_threshold=0.08, cache_interval=5, cache_warmup_steps=3)
    return SimpleNamespace(**{**base, **options})


def build(setup: Setup, options: dict):
    """A FluxPipeline of the given architecture with random weights (seed 0), the options applied."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from pixelmill.models.speed import apply_speed_options

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(setup.dtype)
    try:
        with torch.device(setup.device):
            transformer = FluxTransformer2DModel(**setup.arch["transformer"]).eval()
            vae = AutoencoderKL(**setup.arch["vae"]).eval()
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    applied = apply_speed_options(pipe, spec("bench", **options), setup.device)
    return pipe, applied


def embeddings(setup: Setup) -> dict:
    g = torch.Generator("cpu").manual_seed(1)
    t = setup.arch["transformer"]
    return dict(
        prompt_embeds=torch.randn(1, setup.arch["text_tokens"], t["joint_attention_dim"], generator=g).to(setup.device, setup.dtype),
        pooled_prompt_embeds=torch.randn(1, t["pooled_projection_dim"], generator=g).to(setup.device, setup.dtype),
    )


def generate(pipe, setup: Setup, inputs: dict) -> float:
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(
            **inputs, height=setup.size, width=setup.size, num_inference_steps=setup.steps, guidance_scale=3.5,
            generator=torch.Generator("cpu").manual_seed(0), output_type="pil",
        )
    sync()
    return time.perf_counter() - start


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_config(setup: Setup, name: str, runs: int) -> dict:
    built = time.perf_counter()
    pipe, applied = build(setup, CONFIGS[name])
    built = time.perf_counter() - built
    inputs = embeddings(setup)
    warm = generate(pipe, setup, inputs)
    times = [generate(pipe, setup, inputs) for _ in range(runs)]
    out = {"config": name, "applied": applied, "build_s": built, "first_image_s": warm, "s_per_image": sum(times) / len(times)}
    if torch.cuda.is_available():
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def cold_start(args) -> float:
    """Seconds from a fresh process's start to its first image (compile + fp8), with the compile cache on disk."""
    cmd = [sys.executable, __file__, "--first-image", "--size", str(args.size), "--steps", str(args.steps)] + (["--smoke"] if args.smoke else [])
    env = dict(os.environ, PIXELMILL_BENCH_CACHE=args.compile_cache)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def first_image(args, setup: Setup) -> None:
    from pixelmill.models.speed import use_compile_cache

    use_compile_cache(os.environ["PIXELMILL_BENCH_CACHE"])
    pipe, _ = build(setup, CONFIGS["compile+fp8"])
    generate(pipe, setup, embeddings(setup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration on the CPU (checks that the script works)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; 64 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 28; 2 with --smoke)")
    parser.add_argument("--runs", type=int, default=2, help="timed images per configuration")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    parser.add_argument("--cold-start", dest="cold", action="store_true", help="also time a fresh process to its first image")
    parser.add_argument("--compile-cache", default=None, help="folder for compiled kernels (default: a new temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--first-image", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = args.size or (64 if args.smoke else 1024)
    args.steps = args.steps or (2 if args.smoke else 28)
    cuda = torch.cuda.is_available() and not args.smoke
    setup = Setup(SMOKE if args.smoke else FULL, "cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32, args.size, args.steps)
    if args.first_image:
        first_image(args, setup)
        return
    if not args.smoke and not cuda:
        sys.exit("no CUDA GPU: run on a GPU machine, or use --smoke to check the script on the CPU")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(CONFIGS)
    if unknown:
        sys.exit(f"unknown configuration(s): {', '.join(sorted(unknown))}; known: {', '.join(CONFIGS)}")
    device = torch.cuda.get_device_name() if cuda else "CPU (smoke)"
    print(f"FLUX.1 [dev] architecture{' (tiny smoke configuration)' if args.smoke else ''}, random weights, {setup.dtype}, "
          f"{args.size}x{args.size}, {args.steps} steps, on {device}")
    results = [time_config(setup, name, args.runs) for name in names]
    eager = next((r["s_per_image"] for r in results if r["config"] == "eager"), None)
    print(f"{'configuration':<26}{'applied':<34}{'s/image':>9}{'speed-up':>10}{'1st image s':>13}")
    for r in results:
        speedup = f"{eager / r['s_per_image']:.2f}x" if eager else "-"
        print(f"{r['config']:<26}{', '.join(r['applied']) or '-':<34}{r['s_per_image']:>9.3f}{speedup:>10}{r['first_image_s']:>13.2f}")
    if args.cold:
        with tempfile.TemporaryDirectory() as tmp:
            args.compile_cache = args.compile_cache or tmp
            filling = cold_start(args)
            warm_cache = cold_start(args)
        print(f"cold start to first image (compile + fp8): {filling:.1f} s filling the compile cache, {warm_cache:.1f} s with it (target <= 15 s)")
        results.append({"config": "cold_start", "fill_s": filling, "with_cache_s": warm_cache})
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
