"""GPU speed options a catalog entry can turn on, applied to a pipeline once it is loaded.

* ``compile = true``: fuse the attention's Q/K/V projections and compile the
  denoiser with ``torch.compile``.  Compiled kernels are kept on disk
  (``compile_cache_dir``; the inductor FX-graph and AOT caches), so a restart
  reuses them instead of compiling again.
* ``quantize = "fp8"``: float8 weights and dynamic float8 activations for the
  denoiser's linear layers through torchao.  It needs a CUDA GPU of compute
  capability 8.9 or newer (Ada, Hopper, Blackwell); elsewhere it is skipped with
  a warning.  ``quantize = "int8"``: int8 weight-only, any device.
* ``cache = "first_block"`` / ``"taylorseer"``: diffusers' step caching (reuse
  the transformer's output when the first block's output barely changed, or
  predict skipped steps with a Taylor expansion).

Every option that the hardware or the installed libraries cannot do is a
no-op with one warning naming why; the model still serves.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("pixelmill.models.speed")

COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache(folder: str | os.PathLike) -> Path:
    """Keep compiled kernels in ``folder`` (inductor's on-disk caches), for this process and its children."""
    path = Path(folder).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    os.environ[COMPILE_CACHE_ENV] = str(path)
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        if hasattr(inductor_config, "autotune_local_cache"):
            inductor_config.autotune_local_cache = True
        import torch._functorch.config as functorch_config

        if hasattr(functorch_config, "enable_autograd_cache"):
            functorch_config.enable_autograd_cache = True
    except Exception:  # pragma: no cover - an older torch without these switches
        log.warning("this torch build has no on-disk compile cache switches; compiling on every start")
    return path


def denoiser(pipe: Any) -> torch.nn.Module | None:
    """The pipeline's denoising network (``transformer`` for FLUX/SD3, ``unet`` for SD)."""
    return getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)


def fp8_supported(device: str) -> str | None:
    """None when fp8 matmuls can run on ``device``; else why not."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return f"fp8 needs a CUDA GPU; this model runs on {device}"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        return f"fp8 needs compute capability 8.9 or newer; this GPU has {major}.{minor}"
    return None


def apply_speed_options(pipe: Any, spec: Any, device: str) -> list[str]:
    """Apply the catalog entry's ``quantize``, ``cache`` and ``compile`` to a loaded pipeline.

    Returns what was applied (for the log and the models report); each option
    that cannot apply here is skipped with a warning.
    """
    applied: list[str] = []
    net = denoiser(pipe)
    if net is None:
        if spec.quantize != "none" or spec.cache != "none" or spec.compile:
            log.warning("model %s: %s has no denoiser to speed up; speed options skipped", spec.name, type(pipe).__name__)
        return applied
    if spec.quantize != "none":
        why = _quantize(net, spec.quantize, device)
        if why is None:
            applied.append(f"quantize={spec.quantize}")
        else:
            log.warning("model %s: quantize=%s skipped: %s", spec.name, spec.quantize, why)
    if spec.cache != "none":
        why = _cache(net, spec)
        if why is None:
            applied.append(f"cache={spec.cache}")
        else:
            log.warning("model %s: cache=%s skipped: %s", spec.name, spec.cache, why)
    if spec.compile:
        why = _compile(net, device)
        if why is None:
            applied.append("compile")
        else:
            log.warning("model %s: compile skipped: %s", spec.name, why)
    if applied:
        log.info("model %s: %s", spec.name, ", ".join(applied))
    return applied


def _quantize(net: torch.nn.Module, kind: str, device: str) -> str | None:
    try:
        from torchao.quantization import quantize_
    except Exception as exc:
        return f"torchao is not installed ({exc})"
    if kind == "fp8":
        why = fp8_supported(device)
        if why is not None:
            return why
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    elif kind == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        config = Int8WeightOnlyConfig()
    else:  # pragma: no cover - the catalog validates the value
        return f"unknown quantization {kind!r}"
    quantize_(net, config, filter_fn=_big_linear)
    return None


def _big_linear(module: torch.nn.Module, fqn: str) -> bool:
    """Linear layers worth quantizing (tiny or odd-shaped ones stay as they are)."""
    return isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def _cache(net: torch.nn.Module, spec: Any) -> str | None:
    enable = getattr(net, "enable_cache", None)
    if enable is None:
        return f"{type(net).__name__} does not support step caching in this diffusers version"
    try:
        if spec.cache == "first_block":
            from diffusers import FirstBlockCacheConfig

            config = FirstBlockCacheConfig(threshold=spec.cache_threshold)
        else:
            from diffusers import TaylorSeerCacheConfig

            config = TaylorSeerCacheConfig(cache_interval=spec.cache_interval, disable_cache_before_step=spec.cache_warmup_steps)
    except ImportError as exc:
        return f"this diffusers version has no {spec.cache} cache ({exc})"
    enable(config)
    return None


def _compile(net: torch.nn.Module, device: str) -> str | None:
    fuse = getattr(net, "fuse_qkv_projections", None)
    if callable(fuse):
        try:
            fuse()
        except Exception as exc:  # an attention processor without fusion: compile anyway
            log.info("QKV fusion unavailable for %s: %s", type(net).__name__, exc)
    try:
        net.compile(dynamic=False)
    except Exception as exc:
        return f"torch.compile failed: {exc}"
    return None
