"""Builders for the pixelmill-tiny FLUX components (tokenizers, text encoders, VAE, transformer).

Every component is a standard diffusers / transformers class, so the saved
folder loads with ``DiffusionPipeline.from_pretrained`` like any FLUX model.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderTiny, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

from pixelmill.models.tiny.scenes import vocabulary

CLIP_MAX_LENGTH = 24
#: T5 prompt length the model is trained with; shipped in pixelmill.json as
#: ``max_sequence_length`` and passed to FluxPipeline by the backend.
T5_MAX_LENGTH = 16


@dataclass
class TinySizes:
    """Width/depth knobs of the tiny model (defaults: the shipped configuration)."""

    vae_width: int = 32
    vae_blocks: tuple[int, ...] = (0, 1, 1, 2, 2)  # residual blocks per level; 5 levels: 16x downsampling
    latent_channels: int = 16
    heads: int = 4
    head_dim: int = 32
    dual_layers: int = 2
    single_layers: int = 4
    text_dim: int = 64
    clip_layers: int = 2
    t5_layers: int = 1


def build_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer whose merges spell out each grammar word as one token."""
    vocab: dict[str, int] = {}

    def add(tok: str) -> None:
        if tok not in vocab:
            vocab[tok] = len(vocab)

    for tok in ("<|startoftext|>", "<|endoftext|>"):
        add(tok)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        add(ch)
        add(ch + "</w>")
    merges: list[tuple[str, str]] = []
    for word in vocabulary():
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        cur = symbols[0]
        for nxt in symbols[1:]:
            pair = (cur, nxt)
            cur = cur + nxt
            if pair not in merges:
                merges.append(pair)
            add(cur)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def build_t5_tokenizer() -> T5TokenizerFast:
    """A unigram T5 tokenizer with one piece per grammar word (letters as fallback)."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in vocabulary()]
    pieces += [(ch, -8.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def build_text_encoders(sizes: TinySizes, clip_tok: CLIPTokenizer, t5_tok: T5TokenizerFast):
    """The CLIP (pooled) and T5 (sequence) text encoders, randomly initialised."""
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=sizes.text_dim,
            intermediate_size=sizes.text_dim * 2,
            num_hidden_layers=sizes.clip_layers,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=sizes.text_dim,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
            hidden_act="gelu",
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=sizes.text_dim,
            d_kv=16,
            d_ff=sizes.text_dim * 2,
            num_layers=sizes.t5_layers,
            num_heads=4,
            relative_attention_num_buckets=16,
            relative_attention_max_distance=32,
            decoder_start_token_id=0,
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
    )
    return clip, t5


def build_vae(sizes: TinySizes) -> AutoencoderTiny:
    """A small convolutional autoencoder: 16x downsampling, 16 latent channels, no normalisation layers.

    diffusers' ``AutoencoderTiny`` (the TAESD architecture, which FluxPipeline
    also runs as ``taef1``) rather than ``AutoencoderKL``: the KL VAE puts a
    GroupNorm in front of every convolution, and GroupNorm subtracts each
    image's mean per channel group.  On flat-coloured scenes that mean *is* the
    colour, so a GroupNorm VAE has to smuggle absolute colour through channel
    differences and learns it slowly; it was the main limit of the model.
    A normalisation-free autoencoder carries colour straight through.
    """
    n = len(sizes.vae_blocks)
    return AutoencoderTiny(
        in_channels=3,
        out_channels=3,
        encoder_block_out_channels=(sizes.vae_width,) * n,
        decoder_block_out_channels=(sizes.vae_width,) * n,
        num_encoder_blocks=sizes.vae_blocks,
        num_decoder_blocks=tuple(reversed(sizes.vae_blocks)),
        latent_channels=sizes.latent_channels,
        act_fn="relu",
        upsample_fn="nearest",
        upsampling_scaling_factor=2,
    )


def build_transformer(sizes: TinySizes) -> FluxTransformer2DModel:
    """A tiny FLUX transformer (no guidance embedding: plain conditional flow matching)."""
    hd = sizes.head_dim
    rope = (hd - 2 * (3 * hd // 8), 3 * hd // 8, 3 * hd // 8)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * sizes.latent_channels,
        num_layers=sizes.dual_layers,
        num_single_layers=sizes.single_layers,
        attention_head_dim=hd,
        num_attention_heads=sizes.heads,
        joint_attention_dim=sizes.text_dim,
        pooled_projection_dim=sizes.text_dim,
        guidance_embeds=False,
        axes_dims_rope=rope,
    )


def build_scheduler(base_image_seq_len: int = 64) -> FlowMatchEulerDiscreteScheduler:
    """The FLUX flow-matching Euler scheduler with resolution-dependent time shift.

    ``base_image_seq_len`` is the token count of a 256x256 image (the trained
    size), where the shift is smallest.
    """
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=base_image_seq_len,
        max_image_seq_len=base_image_seq_len * 32,
    )
