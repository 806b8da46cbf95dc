"""Procedural scenes for pixelmill-tiny: a prompt grammar, a renderer and an analyser.

The scene world is deliberately small: flat-coloured shapes on a flat-coloured
background.  It is what the shipped ``pixelmill-tiny`` diffusion model was
trained on, and what it can draw.

* :func:`sample_scene` / :func:`scene_prompt` produce a random scene and its
  English prompt, e.g. ``"a small red circle on the left on a yellow background"``
  or ``"a red circle above a blue square on a white background"``.
* :func:`render_scene` draws a scene with Pillow at any size.
* :func:`analyse_image` looks at any RGB image (rendered or generated) and
  recovers the dominant background colour, the main object's colour and its
  shape.  It is deterministic and needs no model.

Held-out split: a fixed set of (object colour, shape, background) triples,
:data:`HELD_OUT`, never appears in training scenes (:func:`is_held_out`).  Every
colour, shape and background, and every pair of them, still appears in
training, so held-out prompts test composition of known words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

#: Named colours of the scene world and their RGB values.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Where a single object sits; "" means the centre (no phrase in the prompt).
POSITIONS: dict[str, tuple[float, float]] = {
    "": (0.5, 0.5),
    "on the left": (0.27, 0.5),
    "on the right": (0.73, 0.5),
    "at the top": (0.5, 0.27),
    "at the bottom": (0.5, 0.73),
}
SIZES: dict[str, float] = {"small": 0.24, "": 0.4, "big": 0.56}
#: Relations between two objects: offset of the first object from the second.
RELATIONS: dict[str, tuple[float, float]] = {
    "above": (0.0, -1.0),
    "below": (0.0, 1.0),
    "left of": (-1.0, 0.0),
    "right of": (1.0, 0.0),
}

_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


def _held_out_triples() -> frozenset[tuple[str, str, str]]:
    """The fixed held-out (colour, shape, background) triples: 28 of 224."""
    out = set()
    for ci, c in enumerate(COLOURS):
        for si, s in enumerate(SHAPES):
            for bi, b in enumerate(COLOURS):
                if c != b and (ci + 3 * si + 5 * bi) % 8 == 0:
                    out.add((c, s, b))
    return frozenset(out)


#: (object colour, shape, background colour) triples that never occur in training.
HELD_OUT: frozenset[tuple[str, str, str]] = _held_out_triples()


def is_held_out(colour: str, shape: str, background: str) -> bool:
    """True when this object/background triple belongs to the held-out split."""
    return (colour, shape, background) in HELD_OUT


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted."""
    words = {"a", "on", "background"}
    words.update(COLOURS)
    words.update(SHAPES)
    for phrase in list(POSITIONS) + list(SIZES) + list(RELATIONS):
        words.update(phrase.split())
    return sorted(w for w in words if w)


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene; centre and size are fractions of the image."""

    colour: str
    shape: str
    cx: float
    cy: float
    size: float
    size_word: str = ""
    position: str = ""


@dataclass(frozen=True)
class Scene:
    """A background colour, one or two objects and, for two, their relation."""

    background: str
    objects: tuple[SceneObject, ...]
    relation: str = ""
    meta: dict = field(default_factory=dict, compare=False)


def scene_prompt(scene: Scene) -> str:
    """The English prompt that describes ``scene``."""

    def noun(o: SceneObject) -> str:
        words = ["a"] + ([o.size_word] if o.size_word else []) + [o.colour, o.shape]
        return " ".join(words)

    if len(scene.objects) == 1:
        o = scene.objects[0]
        text = noun(o) + (f" {o.position}" if o.position else "")
    else:
        a, b = scene.objects
        text = f"{noun(a)} {scene.relation} {noun(b)}"
    return f"{text} on a {scene.background} background"


def parse_prompt(prompt: str) -> Scene | None:
    """Read a grammar prompt back into a canonical :class:`Scene` (None if it is not one)."""
    words = prompt.lower().strip().rstrip(".").split()
    if len(words) < 5 or words[-1] != "background" or words[-4:-2] != ["on", "a"]:
        return None
    background = words[-2]
    body = " ".join(words[:-4])
    for rel in sorted(RELATIONS, key=len, reverse=True):
        token = f" {rel} a "
        if token in body:
            left, right = body.split(token, 1)
            a, b = _parse_noun(left), _parse_noun("a " + right)
            if a is None or b is None:
                return None
            return Scene(background, (a, b), rel)
    obj = None
    for pos in sorted(POSITIONS, key=len, reverse=True):
        if pos and body.endswith(" " + pos):
            obj = _parse_noun(body[: -len(pos) - 1], pos)
            break
    else:
        obj = _parse_noun(body)
    if obj is None or background not in PALETTE:
        return None
    return Scene(background, (obj,))


def _parse_noun(text: str, position: str = "") -> SceneObject | None:
    words = text.split()
    if not words or words[0] != "a":
        return None
    words = words[1:]
    size_word = ""
    if words and words[0] in SIZES and words[0]:
        size_word = words.pop(0)
    if len(words) != 2 or words[0] not in PALETTE or words[1] not in SHAPES:
        return None
    cx, cy = POSITIONS[position]
    return SceneObject(words[0], words[1], cx, cy, SIZES[size_word], size_word, position)


def sample_scene(rng: random.Random, *, held_out: bool = False, two_objects: float = 0.25) -> Scene:
    """A random scene from the training split (or, with ``held_out``, the held-out split).

    Held-out scenes have a single object whose (colour, shape, background)
    triple is in :data:`HELD_OUT`.
    """
    if held_out:
        colour, shape, background = rng.choice(sorted(HELD_OUT))
        return _single(rng, colour, shape, background)
    while True:
        background = rng.choice(COLOURS)
        if rng.random() < two_objects:
            scene = _pair(rng, background)
        else:
            colour = rng.choice([c for c in COLOURS if c != background])
            scene = _single(rng, colour, rng.choice(SHAPES), background)
        if not any(is_held_out(o.colour, o.shape, background) for o in scene.objects):
            return scene


def held_out_prompts(seed: int = 7) -> list[tuple[str, tuple[str, str, str]]]:
    """One prompt per held-out triple, with a random size word and position: (prompt, (colour, shape, background)).

    Sorted by triple and deterministic for a seed; ``bench/tiny_adherence.py``
    scores exactly these (seed 7).
    """
    rng = random.Random(seed)
    out = []
    for triple in sorted(HELD_OUT):
        while True:
            scene = sample_scene(rng, held_out=True)
            o = scene.objects[0]
            if (o.colour, o.shape, scene.background) == triple:
                break
        out.append((scene_prompt(scene), triple))
    return out


def _single(rng: random.Random, colour: str, shape: str, background: str) -> Scene:
    size_word = rng.choice(list(SIZES))
    position = rng.choice(list(POSITIONS))
    size = SIZES[size_word] * rng.uniform(0.9, 1.1)
    cx, cy = POSITIONS[position]
    cx += rng.uniform(-0.04, 0.04)
    cy += rng.uniform(-0.04, 0.04)
    return Scene(background, (SceneObject(colour, shape, cx, cy, size, size_word, position),))


def _pair(rng: random.Random, background: str) -> Scene:
    ca, cb = rng.sample([c for c in COLOURS if c != background], 2)
    sa, sb = rng.choice(SHAPES), rng.choice(SHAPES)
    relation = rng.choice(list(RELATIONS))
    dx, dy = RELATIONS[relation]
    size = 0.3 * rng.uniform(0.9, 1.1)
    gap = 0.22
    a = SceneObject(ca, sa, 0.5 + dx * gap, 0.5 + dy * gap, size)
    b = SceneObject(cb, sb, 0.5 - dx * gap, 0.5 - dy * gap, size)
    return Scene(background, (a, b), relation)


def shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """The outline of ``shape`` fitted to ``box`` (x0, y0, x1, y1); None for a circle."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(x0 + w / 2, y0), (x1, y1), (x0, y1)]
    if shape == "cross":
        a, b = 1 / 3, 2 / 3
        pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
        return [(x0 + u * w, y0 + v * h) for u, v in pts]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    poly = shape_polygon(shape, box)
    if poly is None:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def render_scene(scene: Scene, width: int = 256, height: int = 256, supersample: int = 2) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``width`` x ``height`` (anti-aliased)."""
    s = max(1, supersample)
    W, H = width * s, height * s
    img = Image.new("RGB", (W, H), PALETTE[scene.background])
    draw = ImageDraw.Draw(img)
    unit = min(W, H)
    for o in scene.objects:
        half = o.size * unit / 2
        cx, cy = o.cx * W, o.cy * H
        _draw_shape(draw, o.shape, (cx - half, cy - half, cx + half, cy + half), PALETTE[o.colour])
    if s > 1:
        img = img.resize((width, height), Image.Resampling.BOX)
    return img


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyse_image` found in an image."""

    background: str
    colour: str | None
    shape: str | None
    bbox: tuple[int, int, int, int] | None
    fill_ratio: float


def _nearest_colour_index(pixels: np.ndarray) -> np.ndarray:
    d = ((pixels[..., None, :] - _PALETTE_ARRAY) ** 2).sum(-1)
    return d.argmin(-1)


def analyse_image(image: Image.Image, work_size: int = 128) -> Analysis:
    """Recover background colour, main object colour and shape from an image.

    Steps: the image is resized to ``work_size`` on its short side; every pixel
    is mapped to its nearest palette colour; the background is the most common
    colour on the border; object pixels are those far (in RGB) from the
    background colour; the largest connected blob of them is the main object,
    its colour is the majority palette colour of its pixels, and its shape is
    the template (circle, square, triangle, cross) drawn into the blob's
    bounding box that overlaps the blob best (intersection over union).
    """
    import cv2

    img = image.convert("RGB")
    scale = work_size / min(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX)
    px = np.asarray(img, dtype=np.float32)
    labels = _nearest_colour_index(px)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    bg_index = int(np.bincount(border, minlength=len(COLOURS)).argmax())
    background = COLOURS[bg_index]
    dist = np.sqrt(((px - _PALETTE_ARRAY[bg_index]) ** 2).sum(-1))
    mask = ((dist > 70) & (labels != bg_index)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return Analysis(background, None, None, None, 0.0)
    best = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    area = int(stats[best, cv2.CC_STAT_AREA])
    if area < 0.002 * mask.size:
        return Analysis(background, None, None, None, 0.0)
    blob = comp == best
    colour_votes = np.bincount(labels[blob], minlength=len(COLOURS))
    colour_votes[bg_index] = 0
    colour = COLOURS[int(colour_votes.argmax())]
    x, y, w, h = (int(v) for v in stats[best, :4])
    crop = blob[y : y + h, x : x + w]
    shape = _classify_shape(crop)
    return Analysis(background, colour, shape, (x, y, x + w, y + h), float(area) / float(w * h))


def _classify_shape(crop: np.ndarray) -> str:
    """The shape template whose rasterisation best matches a tight blob mask."""
    h, w = crop.shape
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        tmpl = Image.new("L", (w * 2, h * 2), 0)
        _draw_shape(ImageDraw.Draw(tmpl), shape, (0, 0, w * 2 - 1, h * 2 - 1), 255)
        t = np.asarray(tmpl.resize((w, h), Image.Resampling.BOX)) > 127
        inter = np.logical_and(t, crop).sum()
        union = np.logical_or(t, crop).sum()
        iou = inter / max(1, union)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best
