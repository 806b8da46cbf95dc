"""Tiny, randomly initialised diffusers pipelines built on the spot for tests.

Each builder writes a complete diffusers folder (``model_index.json`` plus one
sub-folder per component) that ``DiffusionPipeline.from_pretrained`` loads
like any real checkpoint.  Everything is made locally: weights come from a
fixed torch seed and the tokenizers from a small hand-made vocabulary, so no
model hub is needed.  The pictures are noise, but sizes, seeds, step counts,
progress and cancellation behave exactly as with a full-size model.

``build_tiny_flux(folder)`` / ``build_tiny_sd(folder)`` build into a given
folder (and return it as a string); ``cached_tiny_flux()`` /
``cached_tiny_sd()`` build once per test process into a temporary folder and
return the same path afterwards, so several test files can share one copy.
``make_lora(folder, out, seed)`` saves a random LoRA for the tiny FLUX model.

Tiny models run far faster on one CPU thread than on several contended ones;
wrap test runs in ``torch_threads(1)`` (as a module fixture, say).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import string
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

# Words the tiny tokenizers know as whole tokens; anything else is spelled
# out letter by letter (CLIP) or mapped to <unk> (T5).
_WORDS = (
    "a an the of on in with and photo painting picture portrait landscape cat dog "
    "fox bird tree house city street mountain sea sky sun moon night day red green "
    "blue yellow black white small big old new happy sad dark light"
).split()

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character map used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _tiny_clip_tokenizer():
    """A CLIP byte-level BPE tokenizer with ~600 tokens, built from scratch."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    # Merge every known word left to right so it becomes one token.
    for word in _WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            merged = current + nxt
            rule = (current, nxt)
            if rule not in merges:
                merges.append(rule)
            if merged not in vocab:
                vocab[merged] = len(vocab)
            current = merged
    vocab[_CLIP_BOS] = len(vocab)
    vocab[_CLIP_EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _tiny_t5_tokenizer():
    """A T5 unigram tokenizer over a few dozen words and the Latin letters."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0) for w in _WORDS]
    pieces += [(c, -5.0) for c in string.ascii_lowercase + string.digits]
    pieces += [("▁" + c, -5.5) for c in string.ascii_lowercase]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def _tiny_clip_text_encoder(tokenizer, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        hidden_act="gelu",
        projection_dim=hidden,
        max_position_embeddings=77,
    )
    torch.manual_seed(0)
    return CLIPTextModel(config).eval()


def _tiny_t5_encoder(tokenizer, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return T5EncoderModel(config).eval()


def build_tiny_flux(folder: str | os.PathLike) -> str:
    """Write a tiny random FLUX.1 pipeline (FluxPipeline) into ``folder``.

    Two transformer blocks, CLIP + T5 text encoders and a one-level VAE
    (latent scale 1, so any even width/height is honoured exactly).  Guidance
    embedding is on, as in FLUX.1 [dev].  Returns the folder as a string.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return str(folder)
    tokenizer = _tiny_clip_tokenizer()
    tokenizer_2 = _tiny_t5_tokenizer()
    text_encoder = _tiny_clip_text_encoder(tokenizer)
    text_encoder_2 = _tiny_t5_encoder(tokenizer_2)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    return _save(pipe, folder)


def build_tiny_sd(folder: str | os.PathLike) -> str:
    """Write a tiny random Stable Diffusion 1.5-style pipeline into ``folder``.

    UNet with two resolution levels, a two-level VAE (latent scale 2), a CLIP
    text encoder and a DDIM scheduler; no safety checker.  Width and height
    must be multiples of 8, as for the real thing.  Returns the folder.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return str(folder)
    tokenizer = _tiny_clip_tokenizer()
    text_encoder = _tiny_clip_text_encoder(tokenizer)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipe, folder)


def _save(pipe, folder: Path) -> str:
    """Save atomically: build in a sibling temp folder, then rename into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    pipe.save_pretrained(staging)
    if folder.exists() and not any(folder.iterdir()):
        folder.rmdir()
    staging.rename(folder)
    return str(folder)


_cache_lock = threading.Lock()
_cache: dict[str, str] = {}
_cache_root: Path | None = None


def _cached(kind: str, builder) -> str:
    global _cache_root
    with _cache_lock:
        if kind not in _cache:
            if _cache_root is None:
                _cache_root = Path(tempfile.mkdtemp(prefix="pixelmill-tiny-models-"))
                atexit.register(shutil.rmtree, _cache_root, True)
            _cache[kind] = builder(_cache_root / kind)
        return _cache[kind]


def cached_tiny_flux() -> str:
    """The tiny FLUX folder, built on first use and shared within this process."""
    return _cached("flux", build_tiny_flux)


def cached_tiny_sd() -> str:
    """The tiny Stable Diffusion folder, built on first use and shared within this process."""
    return _cached("sd", build_tiny_sd)


def describe(folder: str | os.PathLike) -> dict:
    """The pipeline class and components recorded in a built folder's model_index.json."""
    return json.loads((Path(folder) / "model_index.json").read_text())


@contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run torch on ``count`` CPU threads inside the block, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_lora(folder: str, out: Path, seed: int) -> str:
    """A rank-4 LoRA with random weights for the tiny FLUX transformer's attention, saved as diffusers does."""
    from diffusers import DiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = DiffusionPipeline.from_pretrained(folder)
    torch.manual_seed(seed)
    pipe.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    with torch.no_grad():  # strong enough to see on a 2-step, 32-pixel image
        for name, weight in pipe.transformer.named_parameters():
            if "lora_" in name:
                weight.copy_(torch.randn_like(weight) * 0.5)
    state = get_peft_model_state_dict(pipe.transformer)
    type(pipe).save_lora_weights(str(out), transformer_lora_layers=state, weight_name=f"lora{seed}.safetensors")
    return str(out / f"lora{seed}.safetensors")
