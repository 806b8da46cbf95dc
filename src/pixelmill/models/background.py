"""Background removal: a person segmenter (MediaPipe) and any saliency ONNX model.

Two backends, both real models running on the CPU:

* ``"selfie"`` — MediaPipe's selfie segmentation model (Apache-2.0, 250 KB,
  256x256 input) through the MediaPipe Tasks ``ImageSegmenter``.  Fast (tens
  of milliseconds) and good at people; it does not cut out other objects.
  The ``.tflite`` file is looked up in the installed ``mediapipe`` package
  first and otherwise taken from ``pixelmill/models/assets``.
* ``"onnx"`` — a general-object saliency model (U²-Net, IS-Net, BiRefNet and
  alike) from a local file the operator provides; nothing is downloaded.

ONNX contract: one image input of shape 1x3xHxW, RGB, float32, scaled to 0..1
then normalised with ``(x - mean) / std`` (ImageNet mean/std by default; pass
``mean=(0.5, 0.5, 0.5), std=(1, 1, 1)`` for IS-Net).  H and W come from the
model's input shape when it is fixed, else ``input_size`` (default 1024).
The first output is the saliency map, 1x1xhxw (or 1xhxw / hxw): values inside
[0, 1] are used as probabilities, anything else is treated as logits and put
through a sigmoid.  The map is resized back to the image size and becomes the
alpha channel.

``threshold=None`` keeps a soft alpha (confidence x 255); a number makes it
binary (confidence >= threshold: opaque, else transparent).
"""

from __future__ import annotations

import atexit
import importlib.util
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pixelmill.models.base import StepControl

SELFIE_MODEL_NAMES = ("selfie_segmentation.tflite", "selfie_segmenter.tflite", "selfie_multiclass_256x256.tflite")
BUNDLED_SELFIE_MODEL = Path(__file__).parent / "assets" / "selfie_segmentation.tflite"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ONNX_INPUT_SIZE = 1024


def find_selfie_model() -> Path | None:
    """The selfie segmentation ``.tflite``: from the mediapipe package if it ships
    one, otherwise the bundled copy; None when neither exists."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            for name in SELFIE_MODEL_NAMES:
                found = sorted(Path(root).rglob(name))
                if found:
                    return found[0]
    return BUNDLED_SELFIE_MODEL if BUNDLED_SELFIE_MODEL.is_file() else None


def available_background_models(onnx_path: str | None = None) -> list[str]:
    """Backends usable right now: ``"selfie"`` when mediapipe and its model are
    present, ``"onnx"`` when onnxruntime is installed (and ``onnx_path``, if
    given, is an existing file)."""
    models = []
    if importlib.util.find_spec("mediapipe") is not None and find_selfie_model() is not None:
        models.append("selfie")
    if importlib.util.find_spec("onnxruntime") is not None and (onnx_path is None or Path(onnx_path).is_file()):
        models.append("onnx")
    return models


class BackgroundRemover:
    """Cut the subject out of an image: returns RGBA with the background at alpha 0.

    ``model``: ``"selfie"`` (people, MediaPipe) or ``"onnx"`` (general objects,
    needs ``onnx_path``).  ``threshold``: None for a soft edge, or a confidence
    in (0, 1) for a hard one.  ``selfie_model_path`` overrides where the selfie
    ``.tflite`` comes from.  ``input_size``/``mean``/``std`` describe the ONNX
    model's input (see the module docstring).
    """

    def __init__(
        self,
        model: str = "selfie",
        onnx_path: str | None = None,
        threshold: float | None = None,
        *,
        selfie_model_path: str | None = None,
        input_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
        self.model = model
        self.threshold = threshold
        if model == "selfie":
            path = Path(selfie_model_path) if selfie_model_path else find_selfie_model()
            if path is None or not path.is_file():
                raise ValueError("selfie segmentation model not found (mediapipe package or bundled asset)")
            self._segment = _SelfieSegmenter.for_path(path)
        elif model == "onnx":
            if not onnx_path:
                raise ValueError("model 'onnx' needs onnx_path: a local U2-Net/IS-Net/BiRefNet-style .onnx file")
            if not Path(onnx_path).is_file():
                raise ValueError(f"ONNX model file not found: {onnx_path}")
            self._segment = _OnnxSaliency.for_path(Path(onnx_path), input_size, tuple(mean), tuple(std))
        else:
            raise ValueError(f"unknown background model {model!r}; use 'selfie' or 'onnx'")

    def mask(self, image: Image.Image, control: StepControl | None = None) -> np.ndarray:
        """Foreground confidence in [0, 1], float32, shape (height, width)."""
        control = control or StepControl()
        control.check()
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        control.report(0.1)
        confidence = self._segment(rgb)
        if confidence.shape != rgb.shape[:2]:
            confidence = _resize_float(confidence, rgb.shape[1], rgb.shape[0])
        control.report(0.9)
        return np.clip(confidence, 0.0, 1.0).astype(np.float32, copy=False)

    def remove(self, image: Image.Image, control: StepControl | None = None) -> Image.Image:
        """Return ``image`` as RGBA, same size, with the background transparent.

        An alpha channel already present in ``image`` is kept where it is lower
        than the computed one.
        """
        control = control or StepControl()
        confidence = self.mask(image, control)
        control.check()
        if self.threshold is None:
            alpha = (confidence * 255.0 + 0.5).astype(np.uint8)
        else:
            alpha = np.where(confidence >= self.threshold, 255, 0).astype(np.uint8)
        out = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            alpha = np.minimum(alpha, np.asarray(out.getchannel("A")))
        out.putalpha(Image.fromarray(alpha, "L"))
        control.report(1.0)
        return out


def _resize_float(values: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(values.astype(np.float32), "F").resize((width, height), Image.Resampling.BILINEAR))


class _SelfieSegmenter:
    """One MediaPipe ImageSegmenter per model file, shared, calls serialised."""

    _cache: dict[Path, "_SelfieSegmenter"] = {}
    _cache_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            output_confidence_masks=True,
            output_category_mask=False,
        )
        self._segmenter = vision.ImageSegmenter.create_from_options(options)
        self._lock = threading.Lock()

    @classmethod
    def for_path(cls, path: Path) -> "_SelfieSegmenter":
        key = path.resolve()
        with cls._cache_lock:
            if key not in cls._cache:
                cls._cache[key] = cls(key)
            return cls._cache[key]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import mediapipe as mp

        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        with self._lock:
            result = self._segmenter.segment(frame)
        masks = result.confidence_masks
        # one mask (person) for the selfie model; the multiclass model's first mask is background
        person = np.array(masks[0].numpy_view(), dtype=np.float32)
        if len(masks) > 1:
            person = 1.0 - person
        return person.reshape(person.shape[0], person.shape[1])

    @classmethod
    def close_all(cls) -> None:
        with cls._cache_lock:
            for segmenter in cls._cache.values():
                segmenter._segmenter.close()
            cls._cache.clear()


atexit.register(_SelfieSegmenter.close_all)


class _OnnxSaliency:
    """An onnxruntime session for a 1x3xHxW -> saliency-map model, cached per file."""

    _cache: dict[tuple, "_OnnxSaliency"] = {}
    _cache_lock = threading.Lock()

    def __init__(self, path: Path, input_size: int | None, mean: tuple, std: tuple) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        model_input = self._session.get_inputs()[0]
        shape = list(model_input.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise ValueError(f"{path.name}: expected a 1x3xHxW input, the model declares {shape}")
        fixed = [d if isinstance(d, int) and d > 0 else None for d in shape[2:]]
        fallback = input_size or DEFAULT_ONNX_INPUT_SIZE
        self.height = fixed[0] or fallback
        self.width = fixed[1] or fallback
        self._input_name = model_input.name
        self._mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    @classmethod
    def for_path(cls, path: Path, input_size: int | None, mean: tuple, std: tuple) -> "_OnnxSaliency":
        key = (path.resolve(), path.stat().st_mtime_ns, input_size, mean, std)
        with cls._cache_lock:
            if key not in cls._cache:
                cls._cache[key] = cls(path, input_size, mean, std)
            return cls._cache[key]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(rgb, "RGB").resize((self.width, self.height), Image.Resampling.BILINEAR)
        x = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0
        x = ((x - self._mean) / self._std)[None].astype(np.float32)
        output = np.asarray(self._session.run(None, {self._input_name: x})[0], dtype=np.float32)
        saliency = output.reshape(output.shape[-2], output.shape[-1]) if output.ndim >= 2 else None
        if saliency is None or output.size != saliency.size:
            raise ValueError(f"saliency model output has shape {output.shape}; expected 1x1xHxW")
        if saliency.min() < 0.0 or saliency.max() > 1.0:
            saliency = 1.0 / (1.0 + np.exp(-np.clip(saliency, -60.0, 60.0)))
        return saliency
