"""Plain Pillow image operations: resize, crop, encode with metadata, safe decode.

Metadata (the generation seed, prompt, model...) travels inside the encoded
file as string key/value pairs:

* PNG: one text chunk per key (``tEXt``, or ``iTXt`` when the value is not
  Latin-1).
* JPEG and WebP: EXIF. ``ImageDescription`` (0x010E) and the Exif IFD's
  ``UserComment`` (0x9286) both hold the whole dict as ASCII-escaped JSON.

``read_metadata`` reads either form back.  ``decode_image`` opens untrusted
bytes: it checks the declared pixel count before decoding anything, limits
the accepted formats and turns every failure into ``ImageDecodeError``.
``decode_base64_image`` turns a client's base64 string or ``data:`` URL into
bytes, with a size cap checked before decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal
from urllib.parse import urlsplit

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

ResizeMode = Literal["fit", "fill", "stretch"]
OutputFormat = Literal["png", "jpeg", "webp"]

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_DIMENSION = 16384  # per side, for anything we create
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
DECODE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
"""Output format -> content type: the one map of the formats pixelmill writes."""
FILE_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
"""Output format -> file name extension."""


def extension_for(content_type: str) -> str:
    """The file name extension of a content type pixelmill writes (``bin`` for any other)."""
    for fmt, mime in MIME_TYPES.items():
        if mime == content_type:
            return FILE_EXTENSIONS[fmt]
    return "bin"

EXIF_IMAGE_DESCRIPTION = 0x010E
EXIF_IFD = 0x8769
EXIF_USER_COMMENT = 0x9286
_ASCII_PREFIX = b"ASCII\x00\x00\x00"


class ImageDecodeError(ValueError):
    """Bytes that are not an image we accept (corrupt, truncated, unsupported format)."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose declared size exceeds the pixel limit (a decompression bomb guard)."""


# --- geometry ---------------------------------------------------------------------------------


def resize(
    image: Image.Image,
    width: int | None = None,
    height: int | None = None,
    mode: ResizeMode = "fit",
    resample: str = "lanczos",
) -> Image.Image:
    """Resize ``image``.

    With only one of ``width``/``height`` the other follows the aspect ratio.
    With both: ``"fit"`` scales (up or down) to fit inside the box keeping the
    aspect ratio, ``"fill"`` scales to cover the box and centre-crops to exactly
    ``width`` x ``height``, ``"stretch"`` distorts to exactly that size.
    ``resample``: nearest, box, bilinear, hamming, bicubic or lanczos.
    """
    if resample not in RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}; use one of {', '.join(RESAMPLE)}")
    if mode not in ("fit", "fill", "stretch"):
        raise ValueError(f"unknown resize mode {mode!r}; use fit, fill or stretch")
    if width is None and height is None:
        raise ValueError("resize needs a width, a height or both")
    for name, value in (("width", width), ("height", height)):
        if value is not None and not 1 <= value <= MAX_DIMENSION:
            raise ValueError(f"{name} must be between 1 and {MAX_DIMENSION}, got {value}")
    filter_ = RESAMPLE[resample]
    src_w, src_h = image.size

    if width is None or height is None:
        ratio = width / src_w if width is not None else height / src_h
        target = (width or _scaled(src_w, ratio), height or _scaled(src_h, ratio))
        return image.resize(target, filter_)
    if mode == "stretch":
        return image.resize((width, height), filter_)
    if mode == "fit":
        ratio = min(width / src_w, height / src_h)
        return image.resize((min(width, _scaled(src_w, ratio)), min(height, _scaled(src_h, ratio))), filter_)
    # fill: cover the box, then cut the overflow evenly from both sides
    return ImageOps.fit(image, (width, height), filter_, centering=(0.5, 0.5))


def _scaled(length: int, ratio: float) -> int:
    return max(1, round(length * ratio))


def crop(image: Image.Image, left: int, top: int, width: int, height: int) -> Image.Image:
    """The ``width`` x ``height`` rectangle whose top-left corner is (``left``, ``top``).

    Raises ValueError when the rectangle is empty or reaches outside the image.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"crop size must be positive, got {width}x{height}")
    if left < 0 or top < 0:
        raise ValueError(f"crop origin must not be negative, got left={left}, top={top}")
    if left + width > image.width or top + height > image.height:
        raise ValueError(
            f"crop rectangle left={left} top={top} width={width} height={height} reaches outside "
            f"the {image.width}x{image.height} image"
        )
    return image.crop((left, top, left + width, top + height))


# --- encoding ---------------------------------------------------------------------------------


def convert(image: Image.Image, format: OutputFormat = "png", quality: int = 90) -> bytes:
    """Encode ``image`` as PNG, JPEG or WebP without any metadata."""
    return encode_image(image, format, quality)


def encode_image(
    image: Image.Image,
    format: OutputFormat = "png",
    quality: int = 90,
    metadata: dict[str, str] | None = None,
    png_compress_level: int = 1,
) -> bytes:
    """Encode ``image`` and embed ``metadata`` (see the module docstring).

    ``quality`` (1-100) applies to JPEG and WebP; PNG is lossless, ``png_compress_level``
    (zlib 0-9) trading encoding time for size.  JPEG has no
    alpha: transparent images are flattened onto white.  Metadata of the
    source image (EXIF, text chunks) is not carried over; the ICC profile is.
    """
    fmt = format.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unsupported output format {format!r}; use png, jpeg or webp")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    options: dict = {}
    if image.info.get("icc_profile"):
        options["icc_profile"] = image.info["icc_profile"]

    if fmt == "png":
        image = _for_png(image)
        if metadata:
            chunks = PngImagePlugin.PngInfo()
            for key, value in metadata.items():
                chunks.add_text(key, value)
            options["pnginfo"] = chunks
        options["compress_level"] = png_compress_level
    else:
        image = _flatten(image) if fmt == "jpeg" else _for_webp(image)
        options["quality"] = quality
        if metadata:
            options["exif"] = _exif_for(metadata).tobytes()
        if fmt == "webp":
            options["method"] = 4

    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **options)
    return buffer.getvalue()


def _exif_for(metadata: dict[str, str]) -> Image.Exif:
    text = json.dumps(metadata, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    exif = Image.Exif()
    exif[EXIF_IMAGE_DESCRIPTION] = text
    exif[EXIF_IFD] = {EXIF_USER_COMMENT: _ASCII_PREFIX + text.encode("ascii")}
    return exif


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "L"):
        return image
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _for_png(image: Image.Image) -> Image.Image:
    return image if image.mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16") else image.convert("RGBA")


def _for_webp(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "RGBA"):
        return image
    return image.convert("RGBA" if has_alpha(image) else "RGB")


# --- decoding ---------------------------------------------------------------------------------

_decode_slots = threading.BoundedSemaphore(2)


def set_decode_concurrency(n: int) -> None:
    """How many images this process decodes at once (each may take hundreds of MB)."""
    global _decode_slots
    if n < 1:
        raise ValueError("decode concurrency must be at least 1")
    _decode_slots = threading.BoundedSemaphore(n)


@contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of the process's decode slots while decoding pixels (waits for a free one)."""
    slots = _decode_slots
    with slots:
        yield


@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header says: format, displayed size (EXIF orientation applied), transparency."""

    format: str
    size: tuple[int, int]
    alpha: bool


_ORIENTATION = 0x0112


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, formats: Iterable[str] = DECODE_FORMATS) -> ImageInfo:
    """Check untrusted image bytes from their header, without decoding a pixel.

    The same refusals as :func:`decode_image` for what a header shows (empty data,
    unknown format, a size over ``max_pixels``); a PNG's chunk checksums are also
    verified, so a truncated or corrupted PNG is refused too.  Memory stays at the
    size of ``data`` whatever the image's dimensions: the pixels are decoded once,
    later, by the node that uses them.
    """
    if not data:
        raise ImageDecodeError("empty image data")
    allowed = [f.upper() for f in formats]
    try:
        image = Image.open(io.BytesIO(data), formats=allowed)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is too large to decode; the limit is {max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable image (accepted formats: {', '.join(allowed)})") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"image declares an empty size {width}x{height}")
        if width * height > max_pixels:
            raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels")
        fmt = image.format or ""
        alpha = has_alpha(image)
        orientation = None
        raw_exif = image.info.get("exif")  # what the header carried (Image.getexif would decode a PNG)
        if raw_exif:
            try:
                exif = Image.Exif()
                exif.load(raw_exif)
                orientation = exif.get(_ORIENTATION)
            except Exception:  # unreadable EXIF: decode_image ignores it too
                orientation = None
    if fmt == "PNG":
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as fresh:
                fresh.verify()  # reads the chunks and checks their CRCs; decompresses nothing
        except Exception as exc:
            raise ImageDecodeError(f"corrupt or truncated PNG image: {exc}") from exc
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(fmt, (width, height), alpha)


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Iterable[str] = DECODE_FORMATS,
) -> Image.Image:
    """Decode untrusted image bytes into a loaded RGB or RGBA image.

    The declared width x height is checked against ``max_pixels`` before any
    pixel is decoded (``ImageTooLargeError``).  Only ``formats`` are tried;
    empty, corrupt or truncated data raise ``ImageDecodeError``.  EXIF
    orientation is applied; animated images give their first frame.
    """
    if not data:
        raise ImageDecodeError("empty image data")
    allowed = [f.upper() for f in formats]
    try:
        image = Image.open(io.BytesIO(data), formats=allowed)
    except Image.DecompressionBombError as exc:  # Pillow's own, larger, limit tripped first
        raise ImageTooLargeError(f"image is too large to decode; the limit is {max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable image (accepted formats: {', '.join(allowed)})") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
    try:
        with decode_slot():
            image.load()
            image = ImageOps.exif_transpose(image)
            wanted = "RGBA" if has_alpha(image) else "RGB"
            return image if image.mode == wanted else image.convert(wanted)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is too large to decode; the limit is {max_pixels} pixels") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated {image.format} image: {exc}") from exc


def pad_edges(image: Image.Image, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """``image`` with margins added, each filled by repeating the nearest edge pixel (outpainting's start)."""
    import numpy as np

    arr = np.asarray(image)
    pad = ((top, bottom), (left, right)) + (((0, 0),) if arr.ndim == 3 else ())
    return Image.fromarray(np.pad(arr, pad, mode="edge"), mode=image.mode)


def margin_mask(size: tuple[int, int], left: int, top: int, right: int, bottom: int) -> Image.Image:
    """An L mask of a padded image: 255 over the added margins, 0 over the original ``size``."""
    width, height = size
    mask = Image.new("L", (width + left + right, height + top + bottom), 255)
    mask.paste(0, (left, top, left + width, top + height))
    return mask


def fit_size(width: int, height: int, multiple: int = 16, min_side: int = 256, max_side: int = 2048) -> tuple[int, int]:
    """An output size with ``width:height``'s aspect ratio, sides multiples of ``multiple`` within the bounds.

    Larger than ``max_side`` scales down, smaller than ``min_side`` scales up
    (the longer side wins when both apply); each side is then rounded to the
    multiple and clamped.
    """
    scale = min(1.0, max_side / max(width, height))
    scale = max(scale, min_side / min(width, height)) if min(width, height) * scale < min_side else scale
    scale = min(scale, max_side / max(width, height))
    return tuple(min(max_side, max(min_side, round(v * scale / multiple) * multiple)) for v in (width, height))  # type: ignore[return-value]


def has_alpha(image: Image.Image) -> bool:
    """True when the image carries transparency (an alpha band or a transparent palette entry)."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def read_metadata(data: bytes) -> dict[str, str]:
    """The metadata ``encode_image`` embedded in ``data`` (empty dict when none)."""
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDecodeError("not a readable image") from exc
    if image.format == "PNG":
        image.load()  # text chunks after the image data are read on load
        return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    exif = image.getexif()
    candidates = [exif.get(EXIF_IMAGE_DESCRIPTION)]
    comment = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
    if isinstance(comment, bytes):
        candidates.append(comment[len(_ASCII_PREFIX) :] if comment.startswith(_ASCII_PREFIX) else comment)
    for candidate in candidates:
        if isinstance(candidate, bytes):
            candidate = candidate.decode("utf-8", "replace")
        if not candidate:
            continue
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            return {str(k): str(v) for k, v in parsed.items()}
    return {}


# --- base64 and data URLs ------------------------------------------------------------------


class BadImageInput(ValueError):
    """An image field that is not a usable base64 image (or data URL)."""

    code = "invalid_image"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def error_dict(self) -> dict[str, Any]:
        """The error as a pydantic-style dict (``loc`` relative to the body)."""
        return {"type": "invalid_image", "loc": (self.field,), "msg": f"Invalid image: {self.reason}"}


_DATA_URL_RE = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)
_B64_CHARS_RE = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")
_B64URL_CHARS_RE = re.compile(rb"^[A-Za-z0-9_-]*={0,2}$")
_WHITESPACE = re.compile(r"\s+")


def is_url(value: Any) -> bool:
    """Whether ``value`` is an ``http``/``https`` URL with a host."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def decode_base64_image(value: str, field: str, max_bytes: int) -> bytes:
    """Decode an image given as raw base64 or as a ``data:image/...;base64,`` URL.

    Whitespace is ignored, missing ``=`` padding is tolerated and the URL-safe
    alphabet is accepted.  Raises :class:`BadImageInput` for anything else, for
    an empty image, and for images over ``max_bytes`` (checked before decoding).
    The bytes are not checked to be a decodable picture.
    """
    if not isinstance(value, str):
        raise BadImageInput(field, "expected a base64 string")
    text = value.strip()
    match = _DATA_URL_RE.match(text)
    if match:
        media_type = match.group(1).strip().lower()
        params = [p.strip().lower() for p in match.group(2).split(";") if p.strip()]
        if not media_type.startswith("image/"):
            raise BadImageInput(field, f"data URL media type must be image/*, got {media_type!r}")
        if "base64" not in params:
            raise BadImageInput(field, "data URL must be base64-encoded (';base64,')")
        text = text[match.end() :]
    elif text[:5].lower() == "data:":
        raise BadImageInput(field, "malformed data URL")
    elif is_url(text):
        raise BadImageInput(field, "expected base64 image data, got a URL")
    data = _WHITESPACE.sub("", text).encode("ascii", errors="replace")
    if not data:
        raise BadImageInput(field, "image is empty")
    # 4 base64 characters carry 3 bytes; refuse before allocating the decoded copy
    if (len(data.rstrip(b"=")) * 3) // 4 > max_bytes:
        raise BadImageInput(field, f"image is larger than {max_bytes} bytes")
    if _B64_CHARS_RE.match(data):
        alt = None
    elif _B64URL_CHARS_RE.match(data):
        alt = b"-_"
    else:
        raise BadImageInput(field, "invalid base64 (unexpected characters)")
    body = data.rstrip(b"=")
    if len(body) % 4 == 1:
        raise BadImageInput(field, "invalid base64 (truncated data)")
    padded = body + b"=" * (-len(body) % 4)
    try:
        decoded = base64.b64decode(padded, altchars=alt, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImageInput(field, f"invalid base64 ({exc})") from None
    if not decoded:
        raise BadImageInput(field, "image is empty")
    if len(decoded) > max_bytes:
        raise BadImageInput(field, f"image is larger than {max_bytes} bytes")
    return decoded
