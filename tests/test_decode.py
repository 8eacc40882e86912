"""Decoding untrusted image bytes: every mode, orientation, transparency, and every way bytes can be bad."""
import io
import struct
import zlib

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import EpsImagePlugin, Image, features

from pipelines.local_runner import local_runner
from transforms.deadletter import DEAD_LETTER, Rejected
from transforms.decode import (
    ALLOWED_FORMATS,
    DecodeImages,
    center_square,
    decode_image,
    open_rgb,
)
from transforms.items import parse_item

SIZE = 64


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int = 120, height: int = 80) -> Image.Image:
    """Red grows left to right, green top to bottom: any flip or rotation shows."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 60)], -1).astype(np.uint8))


def rejected(data: bytes, **kwargs) -> Rejected:
    with pytest.raises(Rejected) as info:
        decode_image(data, SIZE, **kwargs)
    return info.value


# ----------------------------------------------------------------------------- modes

@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_mode_decodes_to_rgb_uint8_with_the_content_kept(mode):
    base = gradient()
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        assert img.mode == "I;16"
    elif mode == "I":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.int32) * 257)
    elif mode == "F":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255.0)
    else:
        img = base.convert(mode)
    fmt = {"CMYK": "JPEG", "I": "TIFF", "F": "TIFF"}.get(mode, "PNG")
    out = decode_image(encode(img, fmt), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    grey = out.mean(axis=2)
    # Brightness still rises from the top-left to the bottom-right corner (nothing clipped to white/black).
    assert grey[-4:, -4:].mean() > grey[:4, :4].mean() + 40, mode


def test_sixteen_bit_is_scaled_not_clipped():
    dark = Image.fromarray(np.full((40, 40), 128 * 257, dtype=np.uint16))  # mid grey in 16 bits
    out = decode_image(encode(dark), 16)
    assert abs(int(out.mean()) - 128) <= 1


def test_alpha_is_composited_over_white():
    img = Image.new("RGBA", (50, 50), (255, 0, 0, 0))       # fully transparent red
    img.paste((0, 0, 255, 255), (0, 0, 25, 50))             # opaque blue left half
    out = open_rgb(encode(img))
    assert out.getpixel((40, 25)) == (255, 255, 255)
    assert out.getpixel((10, 25)) == (0, 0, 255)


def test_palette_with_transparency_index_is_composited_over_white():
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.info["transparency"] = 1                           # colour 1 is transparent
    img.paste(0, (0, 0, 10, 20))
    out = open_rgb(encode(img, transparency=1))
    assert out.getpixel((15, 10)) == (255, 255, 255)
    assert out.getpixel((5, 10)) == (0, 0, 0)


def test_exif_orientation_is_applied():
    img = gradient(120, 80)                                 # landscape
    exif = Image.Exif()
    exif[0x0112] = 6                                        # stored rotated: display turned 90 degrees clockwise
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    out = open_rgb(data)
    assert out.size == (80, 120)                            # now portrait
    expected = np.asarray(img.transpose(Image.Transpose.ROTATE_270), dtype=np.float32)
    assert np.abs(np.asarray(out, dtype=np.float32) - expected).mean() < 4


def test_large_jpeg_uses_draft_but_never_below_target():
    img = gradient(2000, 1200)
    data = encode(img, "JPEG", quality=90)
    drafted = open_rgb(data, target=256)
    assert min(drafted.size) >= 256 and drafted.size[0] < 2000   # reduced at decode time
    assert decode_image(data, 256).shape == (256, 256, 3)


def test_center_square_crops_the_middle_after_resizing_the_short_side():
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 255, 0), (100, 0, 200, 100))                # the middle third is green
    out = center_square(img, 50)
    assert out.shape == (50, 50, 3)
    inner = out[:, 2:-2]                                     # the filter may borrow from just outside
    assert inner[:, :, 1].min() > 240 and inner[:, :, 0].max() < 15


# ----------------------------------------------------------------------------- bad input

def png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR that claim a huge canvas, with one tiny IDAT: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height,named", [
    (10_000, 5_000, "10000x5000"),          # over our cap: refused by our header check
    (50_000, 50_000, "2500000000"),         # over Pillow's own hard limit: its DecompressionBombError
])
def test_decompression_bomb_is_refused_from_the_header(width, height, named):
    err = rejected(png_header_claiming(width, height), max_pixels=40_000_000)
    assert err.reason == "too_many_pixels"
    assert named in str(err) and "40000000" in str(err)


def test_pixel_cap_is_configurable():
    data = encode(gradient(120, 80))
    assert rejected(data, max_pixels=5_000).reason == "too_many_pixels"
    assert decode_image(data, SIZE, max_pixels=9_600).shape == (SIZE, SIZE, 3)


def test_truncated_jpeg_is_rejected_as_truncated():
    data = encode(gradient(400, 300), "JPEG", quality=90)
    err = rejected(data[: len(data) // 2])
    assert err.reason == "truncated_image"
    assert "400x300" in str(err)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_image_cut_inside_its_header_is_truncated_not_foreign(fmt):
    err = rejected(encode(gradient(), fmt)[:20])
    assert err.reason == "truncated_image"


@pytest.mark.parametrize("data", [
    b"",
    np.random.default_rng(0).bytes(4096),
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
    b"<!DOCTYPE html><html><body>Access denied</body></html>",
], ids=["empty", "random", "svg", "html"])
def test_non_images_are_rejected_as_not_an_image(data):
    err = rejected(data)
    assert err.reason == "not_an_image"
    assert f"{len(data)} bytes" in str(err)


# ----------------------------------------------------------------------------- formats

def psd(img: Image.Image) -> bytes:
    """A minimal uncompressed RGB Photoshop file (Pillow reads PSD but cannot write it)."""
    width, height = img.size
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    planes = b"".join(np.asarray(img, dtype=np.uint8)[:, :, c].tobytes() for c in range(3))
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planes


def mpo(img: Image.Image) -> bytes:
    """A two-picture MPO (what stereo and some phone cameras write): Pillow opens it as format MPO."""
    buffer = io.BytesIO()
    img.save(buffer, "MPO", save_all=True, append_images=[img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"])
def test_every_listing_photo_format_decodes(fmt):
    img = gradient()
    data = mpo(img) if fmt == "MPO" else encode(img, fmt)
    assert Image.open(io.BytesIO(data)).format == fmt
    out = decode_image(data, SIZE)
    assert out.shape == (SIZE, SIZE, 3)
    grey = out.mean(axis=2)
    assert grey[-4:, -4:].mean() > grey[:4, :4].mean() + 40, fmt


@pytest.fixture
def parsers_never_run(monkeypatch):
    """Fail the test if the EPS parser opens anything or Ghostscript is started."""
    called = []

    def refuse(*args, **kwargs):
        called.append(args)
        raise AssertionError("the EPS parser / Ghostscript was reached")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", refuse)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    return called


def test_eps_is_refused_without_parsing_or_ghostscript(parsers_never_run):
    data = encode(gradient(), "EPS")
    assert data.startswith(b"%!PS")
    err = rejected(data)
    assert err.reason == "unsupported_image"
    assert "EPS" in str(err) and "JPEG, PNG, WEBP, GIF, BMP, TIFF" in str(err) and f"{len(data)} bytes" in str(err)
    assert parsers_never_run == []


@pytest.mark.parametrize("fmt", ["PSD", "ICO", "PCX", "PPM", "QOI", "SGI", "DDS", pytest.param(
    "JPEG2000", marks=pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow built without OpenJPEG")),
    pytest.param("AVIF", marks=pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF"))])
def test_other_pillow_formats_are_unsupported(fmt):
    img = gradient(48, 32)
    data = psd(img) if fmt == "PSD" else encode(img, fmt)
    assert Image.open(io.BytesIO(data)).format == fmt, "the fixture really is that format, and Pillow reads it"
    err = rejected(data)
    assert err.reason == "unsupported_image", err
    assert fmt in str(err) and f"{len(data)} bytes" in str(err)


@pytest.mark.parametrize("fmt", ["IM", "SPIDER"])
def test_formats_without_a_signature_are_not_images(fmt):
    """Pillow can only tell these by parsing them, so they are not parsed: to us they are unknown bytes."""
    img = gradient(48, 32)
    data = encode(img.convert("F") if fmt == "SPIDER" else img, fmt)
    assert Image.open(io.BytesIO(data)).format == fmt
    err = rejected(data)
    assert err.reason == "not_an_image" and f"{len(data)} bytes" in str(err)


def test_only_web_formats_are_allowed():
    assert set(ALLOWED_FORMATS) == {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}


# ----------------------------------------------------------------------------- Beam transform

def test_decode_images_keeps_every_good_image_and_dead_letters_every_bad_one():
    good = {f"good{i}": encode(gradient(100 + 10 * i, 90), "JPEG" if i % 2 else "PNG") for i in range(5)}
    good.update({f"good-{fmt.lower()}": encode(gradient(), fmt) for fmt in ("WEBP", "GIF", "BMP", "TIFF")})
    bad = {
        "empty": (b"", "not_an_image"),
        "html": (b"<html>nope</html>", "not_an_image"),
        "bomb": (png_header_claiming(30_000, 30_000), "too_many_pixels"),
        "cut": (encode(gradient(300, 200), "JPEG")[:600], "truncated_image"),
        "eps": (encode(gradient(), "EPS"), "unsupported_image"),
        "psd": (psd(gradient()), "unsupported_image"),
        "ico": (encode(gradient(), "ICO"), "unsupported_image"),
    }

    def item(name: str):
        return parse_item({"id": name, "image_urls": [f"https://img.example/{name}.jpg"],
                           "created_at": "2026-01-01T00:00:00Z"})

    elements = [(item(k), v) for k, v in good.items()] + [(item(k), v) for k, (v, _) in bad.items()]
    with BeamTestPipeline(runner=local_runner()) as p:
        result = p | beam.Create(elements) | DecodeImages(SIZE)
        shapes = result[DecodeImages.MAIN] | "Shape" >> beam.Map(
            lambda kv: (kv[0].id, kv[1].shape, kv[1].dtype.name))
        letters = result[DEAD_LETTER] | "Reason" >> beam.Map(
            lambda d: (d["id"], d["stage"], d["reason"], d["payload"] == item(d["id"]).payload))
        assert_that(shapes, equal_to([(k, (SIZE, SIZE, 3), "uint8") for k in good]), label="good")
        assert_that(letters, equal_to([(k, "decode", reason, True) for k, (_, reason) in bad.items()]),
                    label="dead")


def test_decode_images_refuses_a_bad_size():
    with pytest.raises(ValueError):
        DecodeImages(0)
