"""Resize, crop, encode (with metadata) and safe decode."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pixelmill.models.imageops import (
    ImageDecodeError,
    ImageTooLargeError,
    convert,
    crop,
    decode_image,
    encode_image,
    read_metadata,
    resize,
)


def picture(width: int = 200, height: int = 100) -> Image.Image:
    image = Image.new("RGB", (width, height), (20, 120, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width // 4, height - 1), fill=(255, 0, 0))  # red left quarter
    draw.rectangle((width * 3 // 4, 0, width - 1, height - 1), fill=(0, 200, 0))  # green right quarter
    return image


# --- resize -----------------------------------------------------------------------------------


def test_fit_keeps_aspect_ratio_inside_the_box():
    assert resize(picture(200, 100), 100, 100, mode="fit").size == (100, 50)
    assert resize(picture(200, 100), 800, 100, mode="fit").size == (200, 100)
    assert resize(picture(200, 100), 1000, 1000, mode="fit").size == (1000, 500)  # scales up too


def test_fill_covers_the_box_and_crops_the_sides_evenly():
    out = resize(picture(200, 100), 100, 100, mode="fill")
    assert out.size == (100, 100)
    # the middle half survives; the red and green quarters are cut away equally
    pixels = np.asarray(out)
    assert pixels[50, 50].tolist() == [20, 120, 220]
    assert pixels[50, 2][0] < 100 and pixels[50, -3][1] < 150


def test_stretch_and_single_side():
    assert resize(picture(200, 100), 50, 80, mode="stretch").size == (50, 80)
    assert resize(picture(200, 100), width=50).size == (50, 25)
    assert resize(picture(200, 100), height=300).size == (600, 300)
    assert resize(picture(200, 100), width=40, resample="nearest").getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "width, a height"),
        ({"width": 0}, "width must be between"),
        ({"width": 10, "mode": "zoom"}, "resize mode"),
        ({"width": 10, "resample": "sinc"}, "resample"),
        ({"height": 100_000}, "height must be between"),
    ],
)
def test_resize_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resize(picture(), **kwargs)


# --- crop -------------------------------------------------------------------------------------


def test_crop_returns_the_rectangle():
    out = crop(picture(200, 100), left=150, top=10, width=50, height=20)
    assert out.size == (50, 20)
    assert out.getpixel((0, 0)) == (0, 200, 0)


@pytest.mark.parametrize(
    "box, message",
    [
        ((-1, 0, 10, 10), "must not be negative"),
        ((0, 0, 0, 10), "must be positive"),
        ((190, 0, 20, 10), "outside the 200x100 image"),
        ((0, 95, 10, 10), "outside the 200x100 image"),
    ],
)
def test_crop_bounds_are_checked(box, message):
    with pytest.raises(ValueError, match=message):
        crop(picture(200, 100), *box)


# --- encode / metadata ------------------------------------------------------------------------

METADATA = {"seed": "1234567890", "prompt": "a red fox — in snow", "model": "flux-dev"}


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_convert_encodes_each_format(fmt, magic):
    data = convert(picture(), fmt, quality=80)
    assert data.startswith(magic)
    decoded = decode_image(data)
    assert decoded.size == (200, 100)
    assert np.abs(np.asarray(decoded, dtype=int) - np.asarray(picture(), dtype=int)).mean() < 4
    assert read_metadata(data) == {}


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_metadata_round_trips(fmt):
    data = encode_image(picture(), fmt, 90, METADATA)
    assert read_metadata(data) == METADATA


def test_png_metadata_is_in_text_chunks():
    data = encode_image(picture(), "png", 90, {"seed": "42"})
    assert b"tEXtseed\x0042" in data
    assert Image.open(io.BytesIO(data)).text["seed"] == "42"


def test_jpeg_metadata_is_in_exif_description_and_user_comment():
    exif = Image.open(io.BytesIO(encode_image(picture(), "jpeg", 90, {"seed": "42"}))).getexif()
    assert exif[0x010E] == '{"seed":"42"}'
    assert exif.get_ifd(0x8769)[0x9286].endswith(b'{"seed":"42"}')


def test_quality_changes_jpeg_size_and_bad_values_are_refused():
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert len(convert(noisy, "jpeg", 20)) < len(convert(noisy, "jpeg", 95))
    with pytest.raises(ValueError, match="quality"):
        convert(noisy, "jpeg", 0)
    with pytest.raises(ValueError, match="output format"):
        convert(noisy, "gif")


def test_transparency_survives_png_and_webp_and_flattens_to_white_in_jpeg():
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    image.putpixel((8, 8), (0, 0, 255, 255))
    assert decode_image(convert(image, "png")).getpixel((0, 0))[3] == 0
    assert decode_image(convert(image, "webp", 100)).getpixel((0, 0))[3] == 0
    jpeg = decode_image(convert(image, "jpeg", 95))
    assert jpeg.mode == "RGB" and min(jpeg.getpixel((0, 0))) > 240


# --- decode -----------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but carries almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="limit is 1000000 pixels"):
        decode_image(png_header_only(50_000, 50_000), max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError):
        decode_image(convert(picture(200, 100)), max_pixels=200 * 100 - 1)
    assert decode_image(convert(picture(200, 100)), max_pixels=200 * 100).size == (200, 100)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["empty", "text", "broken-png"],
)
def test_garbage_is_an_image_decode_error(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_truncated_image_is_an_image_decode_error():
    data = convert(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "png")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_formats_outside_the_allow_list_are_refused():
    buffer = io.BytesIO()
    picture().save(buffer, format="TIFF")
    with pytest.raises(ImageDecodeError, match="accepted formats"):
        decode_image(buffer.getvalue())
    assert issubclass(ImageDecodeError, ValueError)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buffer = io.BytesIO()
    picture(200, 100).save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_image(buffer.getvalue()).size == (100, 200)


def test_decode_normalises_modes():
    assert decode_image(convert(picture().convert("L"), "png")).mode == "RGB"
    assert decode_image(convert(picture().convert("RGBA"), "png")).mode == "RGBA"


def test_alpha_mask_marks_transparent_pixels_for_repainting_and_needs_alpha():
    from pixelmill.models.imageops import BadImageInput
    from pixelmill.nodes.load_image import alpha_mask

    image = Image.new("RGBA", (4, 2), (9, 9, 9, 255))
    image.putpixel((0, 0), (9, 9, 9, 0))
    image.putpixel((1, 0), (9, 9, 9, 128))
    mask = alpha_mask(image)
    assert mask.mode == "L" and list(mask.getdata()) == [255, 127, 0, 0, 0, 0, 0, 0]
    with pytest.raises(BadImageInput, match="no alpha channel"):
        alpha_mask(Image.new("RGB", (4, 2)))


def test_pad_edges_stretches_the_border_and_margin_mask_marks_the_margins():
    from pixelmill.models.imageops import margin_mask, pad_edges

    image = Image.new("RGB", (3, 2), (1, 2, 3))
    image.putpixel((2, 1), (9, 9, 9))
    padded = pad_edges(image, 1, 0, 2, 1)
    assert padded.size == (6, 3) and padded.getpixel((5, 2)) == (9, 9, 9) and padded.getpixel((0, 0)) == (1, 2, 3)
    mask = margin_mask((3, 2), 1, 0, 2, 1)
    assert mask.size == (6, 3)
    assert [mask.getpixel((x, 0)) for x in range(6)] == [255, 0, 0, 0, 255, 255]
    assert all(mask.getpixel((x, 2)) == 255 for x in range(6))


def test_probe_reads_size_orientation_and_alpha_from_the_header_without_decoding(monkeypatch):
    from PIL import ImageFile

    from pixelmill.models.imageops import ImageTooLargeError, probe_image

    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg, png_exif, rgba, trns = io.BytesIO(), io.BytesIO(), io.BytesIO(), io.BytesIO()
    picture(200, 100).save(jpeg, format="JPEG", exif=exif.tobytes())
    picture(200, 100).save(png_exif, format="PNG", exif=exif.tobytes())
    picture().convert("RGBA").save(rgba, format="PNG")
    picture().convert("P").save(trns, format="PNG", transparency=0)

    def no_decoding(self):
        raise AssertionError("probe_image decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert probe_image(jpeg.getvalue()).size == (100, 200)  # as decode_image shows it
    assert probe_image(png_exif.getvalue()).size == (100, 200)
    assert probe_image(rgba.getvalue()).alpha and probe_image(trns.getvalue()).alpha
    plain = probe_image(convert(picture(), "png"))
    assert (plain.format, plain.size, plain.alpha) == ("PNG", (200, 100), False)
    with pytest.raises(ImageTooLargeError):
        probe_image(convert(picture(), "png"), max_pixels=100)


def test_probe_refuses_what_is_not_a_whole_image():
    from pixelmill.models.imageops import probe_image

    data = convert(picture(), "png")
    for bad in (b"", b"not an image", data[: len(data) // 2], data[:-20] + b"\0" * 20):
        with pytest.raises(ImageDecodeError):
            probe_image(bad)


def test_png_outputs_use_the_configured_compression_level_and_stay_lossless():
    import numpy as np
    from PIL import ImageFilter

    from pixelmill.config import Settings
    from pixelmill.files.provenance import Provenance

    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize((256, 256), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    assert Settings().png_compress_level == 1
    sizes = {}
    for level in (0, 1, 9):
        data = Provenance.from_settings(Settings(png_compress_level=level)).encode(image, "png", {"prompt": "p"})
        decoded = Image.open(io.BytesIO(data))
        assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(image))
        sizes[level] = len(data)
    assert sizes[0] > sizes[1] > sizes[9]
