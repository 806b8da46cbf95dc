"""A held-out set of cut-out tasks with known masks, for measuring background removal.

Three kinds of pictures, all made here (nothing to download), each with the
exact mask of what should stay:

* ``scene``   — pixelmill-tiny's held-out scenes (flat shapes on flat
  backdrops), rendered at 384 px, with sensor noise and JPEG compression.
* ``product`` — a product illustration with its own alpha channel
  (matplotlib's sample present box) placed on white, grey, pastel, gradient
  and vignetted backdrops at several sizes and places, with soft drop shadows.
* ``photo``   — real photographic texture (matplotlib's sample portrait)
  cut into object outlines (round badges, rounded cards, bottles) on plain
  backdrops with shadows: real-photo colour statistics inside the object.

``iou(alpha, mask)`` scores a result: the alpha channel thresholded at 50 %.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pixelmill.models.tiny.scenes import PALETTE, held_out_prompts, parse_prompt, render_scene, shape_polygon

BACKDROPS = [(250, 250, 250), (236, 236, 236), (255, 255, 255), (244, 232, 214), (214, 230, 244), (230, 244, 222), (40, 40, 44)]


@dataclass(frozen=True)
class CutoutCase:
    kind: str
    name: str
    image: Image.Image
    mask: np.ndarray  # bool, True where the subject is


def iou(alpha: np.ndarray, mask: np.ndarray) -> float:
    found = np.asarray(alpha) >= 128
    union = np.logical_or(found, mask).sum()
    return float(np.logical_and(found, mask).sum() / union) if union else 1.0


def _finish(image: Image.Image, rng: random.Random, quality: int = 88) -> Image.Image:
    arr = np.asarray(image, np.float32)
    arr = arr + np.random.default_rng(rng.randrange(1 << 30)).normal(0, 2.5, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _scene_mask(scene, size: int) -> np.ndarray:
    mask = Image.new("L", (size * 2, size * 2), 0)
    draw = ImageDraw.Draw(mask)
    for o in scene.objects:
        half = o.size * size * 2 / 2
        cx, cy = o.cx * size * 2, o.cy * size * 2
        box = (cx - half, cy - half, cx + half, cy + half)
        poly = shape_polygon(o.shape, box)
        draw.ellipse(box, fill=255) if poly is None else draw.polygon(poly, fill=255)
    return np.asarray(mask.resize((size, size), Image.Resampling.BOX)) >= 128


def _backdrop(rng: random.Random, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    base = np.array(rng.choice(BACKDROPS), np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    style = rng.choice(["plain", "plain", "gradient", "vignette"])
    if style == "gradient":
        shade = 1.0 - 0.12 * ys / height
    elif style == "vignette":
        r = np.hypot(xs / width - 0.5, ys / height - 0.5)
        shade = 1.0 - 0.25 * r**2
    else:
        shade = np.ones_like(xs)
    return base * shade[..., None]


def _place(rng: random.Random, backdrop: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, at: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Composite an RGBA object with a soft drop shadow; returns the picture and the object's mask."""
    height, width = backdrop.shape[:2]
    full_alpha = np.zeros((height, width), np.float32)
    full_rgb = np.zeros((height, width, 3), np.float32)
    x, y = at
    h, w = alpha.shape
    full_alpha[y : y + h, x : x + w] = alpha[: height - y, : width - x]
    full_rgb[y : y + h, x : x + w] = rgb[: height - y, : width - x]
    dx, dy = rng.randint(2, 10), rng.randint(4, 14)
    shadow = np.roll(np.roll(full_alpha, dy, 0), dx, 1)
    shadow = np.asarray(Image.fromarray((shadow * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(4, 10))), np.float32) / 255
    out = backdrop * (1 - rng.uniform(0.15, 0.3) * shadow[..., None])
    out = out * (1 - full_alpha[..., None]) + full_rgb * full_alpha[..., None]
    return out, full_alpha >= 0.5


def _scenes(rng: random.Random, size: int = 384) -> list[CutoutCase]:
    cases = []
    for prompt, _ in held_out_prompts():
        scene = parse_prompt(prompt)
        if scene is None or any(o.colour == scene.background for o in scene.objects):
            continue
        image = _finish(render_scene(scene, size, size), rng)
        cases.append(CutoutCase("scene", prompt, image, _scene_mask(scene, size)))
    return cases


def _sample_image(name: str, mode: str) -> Image.Image | None:
    """One of matplotlib's sample images (None without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "sample_data" / name
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return im.convert(mode)


def _composite(rng: random.Random, kind: str, name: str, size: tuple[int, int], rgb: np.ndarray, alpha: np.ndarray,
               at: tuple[int, int]) -> CutoutCase:
    """An object placed with its shadow on a random backdrop of ``size``, noised and JPEG-compressed."""
    picture, mask = _place(rng, _backdrop(rng, size), rgb, alpha, at)
    return CutoutCase(kind, name, _finish(Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)), rng), mask)


def _products(rng: random.Random, count: int = 12) -> list[CutoutCase]:
    product = _sample_image("Minduka_Present_Blue_Pack.png", "RGBA")
    if product is None:
        return []
    cases = []
    for i in range(count):
        width, height = rng.choice([(512, 512), (640, 480), (480, 640)])
        scale = rng.uniform(0.35, 0.75) * min(width, height) / max(product.size)
        obj = product.resize((max(8, round(product.width * scale)), max(8, round(product.height * scale))), Image.Resampling.LANCZOS)
        arr = np.asarray(obj, np.float32)
        at = (rng.randint(8, width - obj.width - 8), rng.randint(8, height - obj.height - 8))
        cases.append(_composite(rng, "product", f"present-{i}", (width, height), arr[..., :3], arr[..., 3] / 255, at))
    return cases


def _outline(kind: str, w: int, h: int) -> Image.Image:
    mask = Image.new("L", (w * 2, h * 2), 0)
    draw = ImageDraw.Draw(mask)
    W, H = w * 2, h * 2
    if kind == "badge":
        draw.ellipse((0, 0, W - 1, H - 1), fill=255)
    elif kind == "card":
        draw.rounded_rectangle((0, 0, W - 1, H - 1), radius=min(W, H) // 6, fill=255)
    else:  # bottle: a body and a neck
        draw.rounded_rectangle((0, H * 0.3, W - 1, H - 1), radius=W // 5, fill=255)
        draw.rectangle((W * 0.35, 0, W * 0.65, H * 0.35), fill=255)
    return mask.resize((w, h), Image.Resampling.BOX)


def _photos(rng: random.Random, count: int = 12) -> list[CutoutCase]:
    photo = _sample_image("grace_hopper.jpg", "RGB")
    if photo is None:
        return []
    cases = []
    for i in range(count):
        width, height = 512, 512
        kind = ["badge", "card", "bottle"][i % 3]
        w = rng.randint(150, 300)
        h = w if kind == "badge" else rng.randint(int(w * 1.1), min(440, int(w * 1.8)))
        left, top = rng.randint(0, photo.width - 160), rng.randint(0, photo.height - 160)
        crop = photo.crop((left, top, min(photo.width, left + rng.randint(160, 400)), min(photo.height, top + rng.randint(160, 400))))
        tex = np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR), np.float32)
        alpha = np.asarray(_outline(kind, w, h), np.float32) / 255
        at = (rng.randint(8, width - w - 8), rng.randint(8, height - h - 8))
        cases.append(_composite(rng, "photo", f"{kind}-{i}", (width, height), tex, alpha, at))
    return cases


def cutout_set(seed: int = 11) -> list[CutoutCase]:
    """The whole held-out set, the same for a given seed."""
    rng = random.Random(seed)
    return _scenes(rng) + _products(rng) + _photos(rng)
