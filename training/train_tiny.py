"""Train pixelmill-tiny from scratch: a small FLUX-architecture text-to-image model.

Stages (all on rendered scenes from ``pixelmill.models.tiny.scenes``, training split only):

1. **VAE** - an ``AutoencoderTiny`` (16x downsampling, 16 latent channels, no
   normalisation layers) learns to reconstruct whole rendered scenes (L1 + MSE,
   object pixels weighted up, a small latent L2 penalty).
2. **Latent pool** - scenes at several sizes are rendered and encoded once;
   the latent mean/std become the VAE's ``shift_factor`` / ``scaling_factor``.
3. **Flow matching** - the ``FluxTransformer2DModel`` and both text encoders
   (CLIP, pooled; T5, per token) are trained jointly with the rectified-flow
   objective ``x_t = (1 - t) x0 + t noise``, target ``noise - x0``, which is
   what ``FlowMatchEulerDiscreteScheduler`` integrates at sampling time; tokens
   covered by objects, and more so those where the named shape differs from
   the other shapes, weigh more in the loss; training times lean to high noise.

The result is written with ``FluxPipeline.save_pretrained`` (safetensors) plus a
``pixelmill.json`` with default steps/guidance, and reloads with
``DiffusionPipeline.from_pretrained(folder, local_files_only=True)``.

The T5 prompt is padded to ``T5_MAX_LENGTH`` tokens (not FluxPipeline's default
512); ``pixelmill.json`` records it as ``max_sequence_length`` and the backend
passes it to the pipeline, so training and serving see identical inputs.

Usage (CPU, about 85 minutes; the shipped weights' recipe)::

    python training/train_tiny.py --out training/runs/tiny --vae-minutes 16 --vae-pool 1500 --pool 4000 \
        --minutes 55 --lr 1e-3 --ema 0.998 --warmup 200 --default-steps 16 --default-true-cfg 3 \
        --shape-weight-flow 8 --t-mean 0.8 --decoder-minutes 6 --eval 28

See training/README.md for GPU flags.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffusers import FluxPipeline  # noqa: E402
from tiny_components import (  # noqa: E402
    T5_MAX_LENGTH,
    TinySizes,
    build_clip_tokenizer,
    build_scheduler,
    build_t5_tokenizer,
    build_text_encoders,
    build_transformer,
    build_vae,
)

from pixelmill.models.tiny.scenes import (  # noqa: E402
    COLOURS,
    PALETTE,
    SHAPES,
    analyse_image,
    render_scene,
    sample_scene,
    scene_prompt,
    shape_polygon,
    vocabulary,
)



def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_tensor(img) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return a / 127.5 - 1.0


# --------------------------------------------------------------------------- VAE


#: Residual blocks per VAE level for each downsampling factor (levels - 1 halvings).
VAE_BLOCKS = {8: (0, 1, 2, 2), 16: (0, 1, 1, 2, 2)}


#: Whole scenes the VAE trains on: (width, height, batch, probability).  Whole
#: images, not crops: GroupNorm statistics of a crop differ from those of a full
#: scene, and a VAE trained on crops shifts colours on full images.
VAE_BUCKETS = [(128, 128, 8, 0.5), (160, 96, 8, 0.15), (96, 160, 8, 0.15), (256, 256, 2, 0.2)]


def object_mask(scene, img) -> torch.Tensor:
    """(1, H, W) float: 1 where a pixel is not the background colour (objects and their edges)."""
    bg = torch.tensor(PALETTE[scene.background], dtype=torch.float32).view(3, 1, 1)
    px = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return ((px - bg).abs().sum(0, keepdim=True) > 24).float()


def pixel_weights(mask: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Per-pixel loss weights: background 1, object pixels ``object_weight``."""
    return 1.0 + (object_weight - 1.0) * mask


def weighted_recon_loss(rec: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """L1 + MSE, weighted per pixel and normalised by the weights' mean.

    Objects cover a small share of a scene, so an unweighted loss is dominated
    by the background and leaves object colours for last; weighting object
    pixels is what makes a short VAE training keep them.
    """
    err = (rec - x).abs() + (rec - x) ** 2
    return (err * w).mean() / w.mean()


def _vae_pool(args, rng: random.Random) -> list[tuple[torch.Tensor, torch.Tensor, int, float]]:
    """Per size bucket: images (N, 3, H, W), object masks (N, 1, H, W), batch size, probability."""
    pool = []
    for w, h, batch, prob in VAE_BUCKETS:
        n = max(batch, int(args.vae_pool * prob))
        images, masks = [], []
        for _ in range(n):
            scene = sample_scene(rng, two_objects=0.3)
            img = render_scene(scene, w, h)
            images.append(to_tensor(img))
            masks.append(object_mask(scene, img))
        pool.append((torch.stack(images), torch.stack(masks), batch, prob))
    return pool


def _vae_batch(pool, rng: random.Random, device, mult: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks, batch, _ = rng.choices(pool, weights=[p[3] for p in pool])[0]
    idx = [rng.randrange(len(images)) for _ in range(batch * mult)]
    return images[idx].to(device), masks[idx].to(device)


def _vae_preview(vae, args, rng: random.Random, device, name: str) -> float:
    """Save originals over reconstructions of 4 full 256x256 scenes; return their L1 error."""
    from PIL import Image

    with torch.no_grad():
        x = torch.stack([to_tensor(render_scene(sample_scene(rng), 256, 256)) for _ in range(4)]).to(device)
        rec = vae.decode(vae.encode(x).latents).sample
        grid = torch.cat([torch.cat(list(x), 2), torch.cat(list(rec), 2)], 1).clamp(-1, 1)
        args.run_dir.mkdir(parents=True, exist_ok=True)
        arr = ((grid.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(arr).save(args.run_dir / name)
        return F.l1_loss(rec, x).item()


def train_vae(vae, args, rng: random.Random, device) -> None:
    """Stage 1: reconstruct whole rendered scenes of several sizes."""
    log("rendering VAE training images")
    pool = _vae_pool(args, rng)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    vae.train().to(device)
    t0, step = time.time(), 0
    while step < args.vae_steps and time.time() - t0 < args.vae_minutes * 60:
        x, mask = _vae_batch(pool, rng, device, args.vae_batch_mult)
        z = vae.encode(x).latents
        # a little latent noise: the decoder must tolerate the flow model's imperfect latents
        rec = vae.decode(z + args.vae_noise * torch.randn_like(z)).sample
        kl = z.pow(2).mean()  # keeps the latents small and centred (there is no KL term in a plain autoencoder)
        loss = weighted_recon_loss(rec, x, pixel_weights(mask, args.object_weight)) + args.vae_kl * kl
        frac = min(1.0, (time.time() - t0) / (args.vae_minutes * 60), step / args.vae_steps)
        lr = args.vae_lr * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            log(f"vae step {step} loss {loss.item():.4f} latent power {kl.item():.3f}")
        step += 1
    log(f"vae done: {step} steps in {time.time() - t0:.0f}s")
    vae.eval()
    err = _vae_preview(vae, args, rng, device, "vae_reconstruction.png")
    log(f"vae reconstruction L1 on full 256x256 scenes {err:.4f} (image in {args.run_dir})")


def refine_decoder(vae, args, rng: random.Random, device) -> None:
    """Stage 4: sharpen/colour-correct the VAE decoder with the encoder frozen.

    The latent space does not move (same encoder, same shift/scale), so the
    flow-matching transformer stays valid; only decoding gets better.
    """
    log("refining VAE decoder (encoder frozen)")
    vae.to(device).eval().requires_grad_(False)
    pool = []
    with torch.no_grad():  # the encoder is frozen: encode the pool once
        for x, masks, batch, prob in _vae_pool(args, rng):
            z = torch.cat([vae.encode(x[i : i + 32].to(device)).latents.cpu() for i in range(0, len(x), 32)])
            pool.append((x, masks, z, batch * args.vae_batch_mult, prob))
    params = list(vae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    t0, step = time.time(), 0
    budget = args.decoder_minutes * 60
    while time.time() - t0 < budget:
        xs, ms, zs, batch, _ = rng.choices(pool, weights=[p[4] for p in pool])[0]
        idx = [rng.randrange(len(xs)) for _ in range(batch)]
        x, z = xs[idx].to(device), zs[idx].to(device)
        rec = vae.decode(z).sample
        loss = weighted_recon_loss(rec, x, pixel_weights(ms[idx].to(device), args.object_weight))
        frac = (time.time() - t0) / budget
        for g in opt.param_groups:
            g["lr"] = args.decoder_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0:
            log(f"decoder step {step} loss {loss.item():.4f}")
        step += 1
    vae.requires_grad_(False)
    err = _vae_preview(vae, args, rng, device, "vae_reconstruction_refined.png")
    log(f"decoder refined: {step} steps, reconstruction L1 {err:.4f}")


# --------------------------------------------------------------------------- latent pool


BUCKETS = [  # (width, height, samples relative to --pool, batch, probability)
    (256, 256, 1.0, 32, 0.6),
    (320, 192, 0.2, 32, 0.08),
    (192, 320, 0.2, 32, 0.08),
    (384, 384, 0.2, 16, 0.12),
    (512, 384, 0.15, 12, 0.12),
]


def token_pixels(vae) -> int:
    """Side in pixels of one transformer token: FLUX packs 2x2 latent cells into a token."""
    return 2 * 2 ** (len(vae.config.encoder_block_out_channels) - 1)


def shape_tokens(scene, width: int, height: int, px: int = 32) -> torch.Tensor:
    """Per packed token (``px`` x ``px`` pixels): how much its object coverage would change with another shape.

    For each object the same box is drawn as every other shape; a token's value
    is the largest difference in covered area.  It is high exactly on the
    tokens that tell the named shape apart (a square's corners, a triangle's
    slopes, a cross's notches) and zero on background and object interiors.
    """
    from PIL import Image, ImageDraw

    unit = min(width, height)
    out = torch.zeros(height // px, width // px)
    for o in scene.objects:
        half = o.size * unit / 2
        cx, cy = o.cx * width, o.cy * height
        box = (cx - half, cy - half, cx + half, cy + half)
        covers = {}
        for shape in SHAPES:
            m = Image.new("L", (width, height), 0)
            poly = shape_polygon(shape, box)
            if poly is None:
                ImageDraw.Draw(m).ellipse(box, fill=255)
            else:
                ImageDraw.Draw(m).polygon(poly, fill=255)
            a = torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)
            covers[shape] = a.view(height // px, px, width // px, px).mean((1, 3))
        diff = torch.stack([(covers[o.shape] - c).abs() for s, c in covers.items() if s != o.shape]).amax(0)
        out = torch.maximum(out, diff)
    return out.flatten()


@torch.no_grad()
def build_latent_pool(vae, args, rng: random.Random, device) -> list[dict]:
    """Stage 2: render + encode training scenes per size bucket."""
    pool = []
    px = token_pixels(vae)
    for w, h, frac, batch, prob in BUCKETS:
        batch = max(1, batch * px * px // (32 * 32))  # the same number of tokens per step whatever the VAE
        n = max(1, int(args.pool * frac))  # batches are drawn with replacement: a pool may be smaller than one
        lat, cover, edge, prompts = [], [], [], []
        for i in range(0, n, 16):
            scenes = [sample_scene(rng, two_objects=0.25) for _ in range(min(16, n - i))]
            imgs = [render_scene(s, w, h) for s in scenes]
            x = torch.stack([to_tensor(im) for im in imgs]).to(device)
            lat.append(vae.encode(x).latents.cpu())
            # object coverage per packed transformer token (2x2 latent cells)
            m = torch.stack([object_mask(s, im) for s, im in zip(scenes, imgs)])
            cover.append(F.avg_pool2d(m, px).flatten(1).half())
            edge.append(torch.stack([shape_tokens(s, w, h, px) for s in scenes]).half())
            prompts += [scene_prompt(s) for s in scenes]
        pool.append({
            "size": (w, h), "latents": torch.cat(lat), "cover": torch.cat(cover), "edge": torch.cat(edge),
            "prompts": prompts,
            "batch": batch, "prob": prob,
        })
        log(f"pool {w}x{h}: {n} scenes")
    if args.vae_from is not None:  # keep the latent normalisation the transformer was trained with
        shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    else:
        allz = torch.cat([b["latents"].transpose(0, 1).flatten(1) for b in pool], dim=1)
        shift = allz.mean().item()
        scale = 1.0 / allz.std().item()
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    for b in pool:
        b["latents"] = (b["latents"] - shift) * scale
    log(f"latent shift {shift:.4f} scale {scale:.4f}")
    return pool


# --------------------------------------------------------------------------- text


class TextBatch:
    """Tokenised prompts exactly as FluxPipeline makes them: CLIP ids and T5 ids, both padded."""

    def __init__(self, clip_tok, t5_tok):
        self.clip_tok, self.t5_tok = clip_tok, t5_tok

    def __call__(self, prompts: list[str], device):
        clip_ids = self.clip_tok(
            prompts, padding="max_length", max_length=self.clip_tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        t5_ids = self.t5_tok(
            prompts, padding="max_length", max_length=T5_MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        return clip_ids.to(device), t5_ids.to(device)


def transformer_forward(transformer, clip, t5, text, latents_packed, img_ids, t):
    """One FLUX transformer call, conditioned the way FluxPipeline conditions it."""
    clip_ids, t5_ids = text
    pooled = clip(clip_ids).pooler_output
    enc = t5(t5_ids)[0]
    txt_ids = torch.zeros(enc.shape[1], 3, device=enc.device)
    return transformer(
        hidden_states=latents_packed,
        encoder_hidden_states=enc,
        pooled_projections=pooled,
        timestep=t,
        img_ids=img_ids,
        txt_ids=txt_ids,
        return_dict=False,
    )[0]


# --------------------------------------------------------------------------- flow matching


def sample_t(n: int, device, uniform: float = 0.3, mean: float = 0.0) -> torch.Tensor:
    """Training times: logit-normal (FLUX/SD3 style, location ``mean``) mixed with a share of uniform."""
    t = torch.sigmoid(mean + torch.randn(n, device=device))
    u = torch.rand(n, device=device)
    return torch.where(torch.rand(n, device=device) < uniform, u, t).clamp(1e-4, 1 - 1e-4)


def save_pipeline(out: Path, vae, clip, t5, transformer, clip_tok, t5_tok, args, extra: dict) -> None:
    pipe = FluxPipeline(
        scheduler=build_scheduler((256 // token_pixels(vae)) ** 2),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    meta = {
        "default_steps": args.default_steps,
        "default_guidance": args.default_guidance,
        "default_true_cfg": args.default_true_cfg,
        "max_sequence_length": T5_MAX_LENGTH,
        "trained_size": 256,
        "min_size": 256,
        "max_size": 1440,
        "size_multiple": 32,
        "vocabulary": vocabulary(),
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "example_prompt": "a red circle on a blue background",
        **extra,
    }
    (out / "pixelmill.json").write_text(json.dumps(meta, indent=2) + "\n")
    _clean_configs(out)


def _save_vae(vae, out: Path) -> None:
    """Write a (refined) VAE back into the pipeline folder ``out``."""
    vae.cpu().save_pretrained(out / "vae", safe_serialization=True)
    _clean_configs(out)


def _clean_configs(out: Path) -> None:
    """Drop what the saved component configs need not carry.

    ``_name_or_path`` is the folder a component was loaded from (``--resume``,
    ``--vae-from``): a path on the training machine, meaningless in a shipped
    folder.  ``block_out_channels`` of the VAE: AutoencoderTiny re-derives it on
    load, and saved it only makes diffusers warn.
    """
    for path in out.glob("*/config.json"):
        config = json.loads(path.read_text())
        dropped = config.pop("_name_or_path", None) is not None
        if path.parent.name == "vae":
            dropped |= config.pop("block_out_channels", None) is not None
        if dropped:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def quick_eval(folder: Path, n: int, steps: int, true_cfg: float = 1.0) -> dict:
    """Generate n held-out prompts at 256x256 and score them with the analyser."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(1234)
    ok = np.zeros(3)
    for i in range(n):
        s = sample_scene(rng, held_out=True)
        img = pipe(
            scene_prompt(s), height=256, width=256, num_inference_steps=steps, guidance_scale=1.0,
            negative_prompt="" if true_cfg > 1 else None, true_cfg_scale=true_cfg,
            max_sequence_length=T5_MAX_LENGTH, generator=torch.Generator().manual_seed(i),
        ).images[0]
        a = analyse_image(img)
        o = s.objects[0]
        ok += [a.colour == o.colour, a.shape == o.shape, a.background == s.background]
    return {"colour": ok[0] / n, "shape": ok[1] / n, "background": ok[2] / n}


def train_flow(vae, clip, t5, transformer, clip_tok, t5_tok, pool, args, rng, device, out: Path) -> None:
    """Stage 3: joint flow-matching training of transformer + text encoders, with EMA."""
    modules = torch.nn.ModuleList([transformer, clip, t5]).to(device).train()
    ema = copy.deepcopy(modules).eval().requires_grad_(False)
    params = [p for p in modules.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    texter = TextBatch(clip_tok, t5_tok)
    probs = [b["prob"] for b in pool]
    t0 = last_ckpt = time.time()
    step, avg = 0, None
    budget = args.minutes * 60
    while step < args.steps and time.time() - t0 < budget:
        b = rng.choices(pool, weights=probs)[0]
        idx = [rng.randrange(len(b["prompts"])) for _ in range(b["batch"] * args.batch_mult)]
        x0 = b["latents"][idx].to(device)
        prompts = [b["prompts"][i] if rng.random() > args.cond_drop else "" for i in idx]
        B, C, h, w = x0.shape
        noise = torch.randn_like(x0)
        t = sample_t(B, device, args.t_uniform, args.t_mean)
        tt = t.view(B, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * noise
        packed = FluxPipeline._pack_latents(xt, B, C, h, w)
        target = FluxPipeline._pack_latents(noise - x0, B, C, h, w)
        ids = FluxPipeline._prepare_latent_image_ids(B, h // 2, w // 2, device, xt.dtype)
        pred = transformer_forward(transformer, clip, t5, texter(prompts, device), packed, ids, t)
        w_tok = (
            1.0
            + (args.object_weight_flow - 1.0) * b["cover"][idx].to(device).float()
            + args.shape_weight_flow * b["edge"][idx].to(device).float()
        )
        loss = (((pred - target) ** 2).mean(-1) * w_tok).mean() / w_tok.mean()
        warm = min(1.0, (step + 1) / args.warmup)
        decay = 0.5 * (1 + math.cos(math.pi * min(1.0, (time.time() - t0) / budget)))
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.1 + 0.9 * decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), modules.parameters()):
                pe.lerp_(pm, 1 - d)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"flow step {step} loss {avg:.4f} lr {opt.param_groups[0]['lr']:.2e} ({time.time() - t0:.0f}s)")
        step += 1
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            last_ckpt = time.time()
            save_pipeline(out, vae, *_cpu(ema), clip_tok, t5_tok, args, {"train_steps": args.prior_steps + step})
            log(f"checkpoint at step {step} -> {out}")
    save_pipeline(out, vae, *_cpu(ema), clip_tok, t5_tok, args, {"train_steps": args.prior_steps + step})
    log(f"flow done: {step} steps in {time.time() - t0:.0f}s")


def _cpu(ema):
    transformer, clip, t5 = (copy.deepcopy(m).cpu() for m in ema)
    return clip, t5, transformer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("training/runs/pixelmill-tiny"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--run-dir", type=Path, default=Path("training/runs"), help="logs and previews")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width-mult", type=int, default=1, help="scale transformer heads (GPU: 2-4)")
    ap.add_argument(
        "--vae-factor", type=int, default=16, choices=sorted(VAE_BLOCKS),
        help="VAE downsampling; a transformer token covers twice that many pixels on a side",
    )
    ap.add_argument("--vae-steps", type=int, default=100000)
    ap.add_argument("--vae-minutes", type=float, default=7.0)
    ap.add_argument("--vae-batch-mult", type=int, default=1, help="multiply the VAE batch sizes (GPU: 4-8)")
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-3, help="weight of the latent L2 penalty")
    ap.add_argument("--vae-noise", type=float, default=0.05, help="std of the noise added to latents while training the VAE")
    ap.add_argument("--vae-pool", type=int, default=1500)
    ap.add_argument("--object-weight", type=float, default=6.0, help="VAE loss weight of object pixels (background: 1)")
    ap.add_argument(
        "--object-weight-flow", type=float, default=3.0, help="flow loss weight of tokens covered by objects (background: 1)"
    )
    ap.add_argument(
        "--shape-weight-flow", type=float, default=8.0,
        help="extra flow loss weight on the tokens that tell the named shape from the others (see shape_tokens)",
    )
    ap.add_argument("--vae-from", type=Path, default=None, help="reuse the VAE of an earlier run's folder")
    ap.add_argument("--resume", type=Path, default=None, help="continue training the networks of a saved folder")
    ap.add_argument("--pool", type=int, default=3000, help="256x256 scenes in the latent pool")
    ap.add_argument("--steps", type=int, default=1000000)
    ap.add_argument("--minutes", type=float, default=28.0)
    ap.add_argument("--batch-mult", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--t-uniform", type=float, default=0.3, help="share of uniformly sampled training times")
    ap.add_argument(
        "--t-mean", type=float, default=0.8,
        help="location of the logit-normal training times (> 0 trains more at high noise, where layout and shape are decided)",
    )
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--cond-drop", type=float, default=0.1)
    ap.add_argument("--ckpt-minutes", type=float, default=6.0)
    ap.add_argument("--default-steps", type=int, default=12)
    ap.add_argument("--default-guidance", type=float, default=1.0)
    ap.add_argument("--default-true-cfg", type=float, default=1.0, help="classifier-free guidance scale to recommend")
    ap.add_argument("--eval", type=int, default=24, help="held-out prompts scored after training")
    ap.add_argument("--decoder-minutes", type=float, default=5.0, help="decoder refinement after flow training")
    ap.add_argument("--decoder-lr", type=float, default=6e-4)
    ap.add_argument(
        "--refine-only", action="store_true", help="only refine the decoder of the folder at --out and save it back"
    )
    args = ap.parse_args(argv)
    args.prior_steps = 0  # flow steps already in a --resume folder; pixelmill.json counts them all

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = torch.device(args.device)
    sizes = TinySizes(heads=4 * args.width_mult, vae_blocks=VAE_BLOCKS[args.vae_factor])
    clip_tok, t5_tok = build_clip_tokenizer(), build_t5_tokenizer()
    clip, t5 = build_text_encoders(sizes, clip_tok, t5_tok)
    transformer = build_transformer(sizes)
    if args.resume is not None:
        from transformers import CLIPTextModel, T5EncoderModel
        from diffusers import FluxTransformer2DModel

        clip = CLIPTextModel.from_pretrained(args.resume, subfolder="text_encoder")
        t5 = T5EncoderModel.from_pretrained(args.resume, subfolder="text_encoder_2")
        transformer = FluxTransformer2DModel.from_pretrained(args.resume, subfolder="transformer")
        args.vae_from = args.vae_from or args.resume
        args.prior_steps = json.loads((args.resume / "pixelmill.json").read_text()).get("train_steps", 0)
        log(f"continuing from {args.resume}")
    t_start = time.time()
    if args.refine_only:
        from diffusers import AutoencoderTiny

        vae = AutoencoderTiny.from_pretrained(args.out, subfolder="vae")
        refine_decoder(vae, args, rng, device)
        _save_vae(vae, args.out)
        log(f"refined decoder saved to {args.out / 'vae'}")
        return
    if args.vae_from is not None:
        from diffusers import AutoencoderTiny

        vae = AutoencoderTiny.from_pretrained(args.vae_from, subfolder="vae").to(device)
        log(f"VAE reused from {args.vae_from}")
    else:
        vae = build_vae(sizes)
        train_vae(vae, args, rng, device)
    vae.eval().requires_grad_(False)
    pool = build_latent_pool(vae, args, rng, device)
    train_flow(vae, clip, t5, transformer, clip_tok, t5_tok, pool, args, rng, device, args.out)
    if args.decoder_minutes > 0:
        refine_decoder(vae, args, rng, device)
        _save_vae(vae, args.out)
    log(f"total training time {(time.time() - t_start) / 60:.1f} min")
    if args.eval:
        scores = quick_eval(args.out, args.eval, args.default_steps, args.default_true_cfg)
        log(f"held-out quick eval ({args.eval} prompts): {scores}")


if __name__ == "__main__":
    main()
