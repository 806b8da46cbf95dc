"""Background removal: object cut-outs, a person segmenter (MediaPipe) and any saliency ONNX model.

Four backends, all running offline on the CPU with nothing to download:

* ``"auto"`` (the default) — the main subject of product and object shots
  (``"subject"`` below) where the backdrop is plain; the person segmenter
  where it is not and a person is in the picture; otherwise OpenCV's
  fine-grained saliency refined the same way.
* ``"subject"`` — cut-outs against a plain or gradient backdrop: a quadratic
  colour surface is fitted to the image border (robustly, so objects that
  touch the border do not bend it), each pixel's CIELAB distance from it (soft
  shadows discounted) seeds OpenCV's GrabCut, and a guided filter on the full
  image gives the edges.  It knows no classes: anything that stands out from
  the backdrop is kept, people included.

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

BACKGROUND_MODELS = ("auto", "subject", "selfie", "onnx")
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
    models = ["auto", "subject"] if importlib.util.find_spec("cv2") is not None else []
    if importlib.util.find_spec("mediapipe") is not None and find_selfie_model() is not None:
        models.append("selfie")
    if importlib.util.find_spec("onnxruntime") is not None and (onnx_path is None or Path(onnx_path).is_file()):
        models.append("onnx")
    return models


class BackgroundRemover:
    """Cut the subject out of an image: returns RGBA with the background at alpha 0.

    ``model``: ``"auto"`` (objects on plain backdrops, people elsewhere),
    ``"subject"`` (objects and people on a plain or gradient backdrop),
    ``"selfie"`` (people, MediaPipe) or ``"onnx"`` (a saliency model, needs
    ``onnx_path``).  ``threshold``: None for a soft edge, or a confidence
    in (0, 1) for a hard one.  ``selfie_model_path`` overrides where the selfie
    ``.tflite`` comes from.  ``input_size``/``mean``/``std`` describe the ONNX
    model's input (see the module docstring).
    """

    def __init__(
        self,
        model: str = "auto",
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
        if model in ("auto", "subject"):
            self._segment = _SubjectSegmenter(people=model == "auto", selfie_model_path=selfie_model_path)
        elif model == "selfie":
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
            raise ValueError(f"unknown background model {model!r}; use one of {', '.join(BACKGROUND_MODELS)}")

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


class _SubjectSegmenter:
    """The main subject against its backdrop: border colour model -> GrabCut -> guided filter.

    Works on a copy whose longer side is at most ``work_side`` pixels; the
    result is brought back to full size by a guided filter steered by the full
    image, so edges follow the picture, not the working grid.
    """

    work_side = 384
    plain_fraction = 0.6  # of border pixels close to the fitted backdrop: "a plain backdrop"

    def __init__(self, people: bool = True, selfie_model_path: str | None = None) -> None:
        self.people = people
        self._selfie_path = selfie_model_path

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        height, width = rgb.shape[:2]
        scale = min(1.0, self.work_side / max(height, width))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (max(8, round(width * scale)), max(8, round(height * scale))), interpolation=cv2.INTER_AREA)
        distance, shadow, plain, noise = _backdrop_distance(small)
        if plain >= self.plain_fraction or not self.people:
            seed, hulls = _threshold(distance, shadow, noise)
        else:
            person = self._person(rgb)
            if person is not None:
                return person
            seed = _saliency_seed(small)
            hulls = None
        hard = _grabcut(small, seed, hulls)
        if hulls is not None:
            hard = _half_coverage_edges(hard, distance)
        return _guided_upsample(rgb, hard)

    def _person(self, rgb: np.ndarray) -> np.ndarray | None:
        path = Path(self._selfie_path) if self._selfie_path else find_selfie_model()
        if path is None or importlib.util.find_spec("mediapipe") is None:
            return None
        confidence = _SelfieSegmenter.for_path(path)(rgb)
        return confidence if (confidence > 0.5).mean() > 0.03 else None


def _backdrop_distance(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """How far each pixel is from a backdrop fitted to the border (CIELAB), which pixels
    look like shadow on it, and how plain the border is (0..1).

    The backdrop is a quadratic colour surface (plain colours, gradients and
    vignettes).  It is fitted by least squares to the border pixels near the
    border's dominant colour, then refitted without those it explains worst,
    so objects that touch the edge do not bend it.  A pixel darker than the
    backdrop with the backdrop's hue is shadow-like.  The last value is the
    border's typical distance from the fit: the picture's noise.
    """
    import cv2

    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0  # L in 0..100; a, b stay offset by 128 (distances are unaffected)
    height, width = lab.shape[:2]
    band = max(2, round(0.03 * min(height, width)))
    border = np.zeros((height, width), bool)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xs / max(1, width - 1) - 0.5, ys / max(1, height - 1) - 0.5
    features = np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], -1)
    f_border, c_border = features[border], lab[border]
    # the dominant border colour: the fullest cell of a coarse Lab histogram
    cells = np.floor(c_border / 12.0).astype(np.int64)
    codes = (cells[:, 0] * 64 + cells[:, 1]) * 64 + cells[:, 2]
    values, counts = np.unique(codes, return_counts=True)
    dominant = c_border[codes == values[counts.argmax()]].mean(0)
    keep = np.linalg.norm(c_border - dominant, axis=1) < 25.0
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(f_border[keep], c_border[keep], rcond=None)
        residual = np.linalg.norm(f_border @ coef - c_border, axis=1)
        keep = residual <= max(4.0, 2.5 * float(np.median(residual[keep])))
    backdrop = features @ coef
    diff = lab - backdrop
    chroma = np.hypot(diff[..., 1], diff[..., 2])
    distance = np.sqrt(chroma**2 + diff[..., 0] ** 2)
    shadow = (diff[..., 0] < 0) & (chroma < 6.0) & (lab[..., 0] > 0.45 * backdrop[..., 0])
    plain = float((residual < 6.0).mean())
    noise = float(np.median(residual[keep])) if keep.any() else 0.0
    return distance, shadow, plain, noise


def _threshold(distance: np.ndarray, shadow: np.ndarray | None = None, noise: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Foreground seed: clearly off the backdrop (8 CIELAB units, more in noisy pictures),
    and the convex hull of each of its objects (where GrabCut may still find more of it).

    Shadow-like pixels count only inside the hull of the rest of their object
    (a grey ribbon on a box stays; the box's cast shadow goes).
    """
    import cv2

    seed = distance > max(8.0, 4.0 * noise)
    solid = (seed & ~shadow) if shadow is not None else seed
    solid = cv2.morphologyEx(solid.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    hulls = np.zeros_like(solid)
    contours, _ = cv2.findContours(solid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        if cv2.contourArea(contour) >= 0.001 * solid.size:
            cv2.fillPoly(hulls, [cv2.convexHull(contour)], 1)
    hulls = hulls > 0
    return (solid > 0) | (seed & hulls), hulls


def _saliency_seed(rgb: np.ndarray) -> np.ndarray:
    """A seed for busy backdrops without a person: OpenCV's fine-grained static saliency,
    Otsu-thresholded (the central two thirds where OpenCV is built without it)."""
    import cv2

    if not hasattr(cv2, "saliency"):
        seed = np.zeros(rgb.shape[:2], bool)
        h, w = seed.shape
        seed[h // 6 : h - h // 6, w // 6 : w - w // 6] = True
        return seed
    saliency = cv2.saliency.StaticSaliencyFineGrained.create()
    ok, smap = saliency.computeSaliency(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    smap = cv2.GaussianBlur(np.asarray(smap, np.float32), (0, 0), 3)
    smap = np.clip(255 * smap / max(1e-6, float(smap.max())), 0, 255).astype(np.uint8)
    _, seed = cv2.threshold(smap, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return seed > 0


def _grabcut(rgb: np.ndarray, seed: np.ndarray, hulls: np.ndarray | None = None) -> np.ndarray:
    """GrabCut from the seed: its core is sure foreground, far away sure backdrop, the rest
    (the seed, a ring around it and the objects' hulls) to decide."""
    import cv2

    height, width = seed.shape
    side = min(height, width)
    seed8 = seed.astype(np.uint8)
    seed8 = cv2.morphologyEx(seed8, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(seed8, 8)
    if count <= 1:
        return np.zeros_like(seed, dtype=np.float32)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= max(0.002 * height * width, 0.02 * areas.max())) + 1
    seed8 = np.isin(labels, keep).astype(np.uint8)
    near = max(3, side // 40)
    core = cv2.erode(seed8, np.ones((near, near), np.uint8))
    reach = cv2.dilate(seed8, np.ones((2 * near + 1, 2 * near + 1), np.uint8))
    mask = np.full((height, width), cv2.GC_BGD, np.uint8)
    mask[reach > 0] = cv2.GC_PR_BGD
    if hulls is not None:
        mask[hulls] = cv2.GC_PR_FGD
    mask[seed8 > 0] = cv2.GC_PR_FGD
    mask[core > 0] = cv2.GC_FGD
    if not (mask == cv2.GC_FGD).any() or not (mask == cv2.GC_BGD).any():
        return seed8.astype(np.float32)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, 4, cv2.GC_INIT_WITH_MASK)
    found = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    if hulls is not None and found.any():
        # narrow gaps inside an object's outline (a ribbon as light as the backdrop) close up
        k = max(3, round(0.2 * np.sqrt(found.sum())))
        closed = cv2.morphologyEx(found, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        found = found | (closed & hulls.astype(np.uint8))
    return found.astype(np.float32)


def _half_coverage_edges(found: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Trim the outline to the pixels that are at least half object.

    An outline pixel that mixes object and backdrop is as far from the backdrop
    as the share of object in it; it stays when that is at least half the
    distance of the object just inside (its nearest interior pixels).
    """
    import cv2

    found8 = found.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    interior = cv2.erode(found8, kernel, iterations=2)
    band = (found8 > 0) & (interior == 0)
    reference = cv2.dilate((distance * interior).astype(np.float32), np.ones((7, 7), np.uint8))
    weak = band & (reference > 0) & (distance < 0.5 * reference)
    out = found.copy()
    out[weak] = 0.0
    return out


def _guided_upsample(rgb: np.ndarray, hard: np.ndarray) -> np.ndarray:
    """The working-size mask at full size, its edges steered by the full image (guided filter)."""
    import cv2

    height, width = rgb.shape[:2]
    up = cv2.resize(hard, (width, height), interpolation=cv2.INTER_LINEAR)
    if not hasattr(cv2, "ximgproc"):
        return np.clip(up, 0.0, 1.0)
    radius = max(2, round(min(height, width) / 160))
    guide = rgb.astype(np.float32) / 255.0
    soft = cv2.ximgproc.guidedFilter(guide, up.astype(np.float32), radius, 1e-3)
    return np.clip(soft, 0.0, 1.0)
