"""Decode untrusted image bytes into the square uint8 crop every score model takes.

Image bytes come from the open internet, so decoding is hostile-input code:
the pixel count is checked from the header *before* any pixel is decoded
(a 100 kB PNG can claim 50 000 x 50 000 pixels), every failure becomes a
:class:`~transforms.deadletter.Rejected` with a reason an operator can count,
and no Pillow global (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``) is
changed, because other code in the same worker may rely on them.

Large JPEGs decode at reduced scale (Pillow's ``draft``: the IDCT itself
skips the detail that the resize would throw away), which is what makes the
preprocessing several times faster than decode-then-resize.

Only the formats a listing photo is served in are parsed (:data:`ALLOWED_FORMATS`):
Pillow registers 43, most of them rarely fuzzed, and EPS hands the bytes to
Ghostscript. Any other format is refused before its parser runs; it is named
by Pillow's signature check alone.

Reasons: ``not_an_image`` (empty, random, HTML/SVG/text bytes),
``too_many_pixels`` (over the cap), ``truncated_image`` (the data ends or is
corrupt mid-stream), ``unsupported_image`` (a format other than
:data:`ALLOWED_FORMATS`, such as EPS, PSD or ICO, or a mode that cannot be
turned into RGB).
"""
from __future__ import annotations

import io
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transforms.deadletter import DEAD_LETTER, DEADLETTERED, Rejected, to_dead_letter
from transforms.provenance import ProvenanceLimits, WithProvenance, read_provenance

# Pillow format IDs parsed at all. A camera JPEG carrying extra pictures (MPO) opens through JPEG.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 8000x5000 photo; far beyond any listing photo, far below a bomb
_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


# Leading bytes of the formats listings use; bytes that start like one but do not parse were cut short.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM")


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _describe(data: bytes) -> str:
    head = data[:16]
    return f"{len(data)} bytes starting {head!r}"


def _other_format(data: bytes) -> str | None:
    """The Pillow format whose signature ``data`` carries, among those not allowed; never runs its parser."""
    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        if name in ALLOWED_FORMATS or accept is None:  # no signature check: it would have to parse to tell
            continue
        try:
            if accept(prefix):
                return name
        except Exception:  # noqa: BLE001, S112 - a signature check that cannot handle a short prefix
            continue
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only and refuse images over the pixel cap before decoding."""
    if not data:
        raise Rejected("not_an_image", "empty image data (0 bytes); check the image URL serves an image")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fired on the header (its limit is global; ours is checked below).
        raise Rejected("too_many_pixels", f"image refused by Pillow's decompression-bomb guard before decoding "
                       f"({exc}); the cap here is {max_pixels} pixels ({max_pixels / 1e6:g} MP, "
                       "--max-image-pixels)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        if _looks_like_image(data):
            raise Rejected("truncated_image", f"image header is incomplete or corrupt ({exc}): {_describe(data)}; "
                           "the file is cut short, re-upload or re-fetch it") from exc
        other = _other_format(data)
        if other is not None:
            raise Rejected("unsupported_image", f"the data looks like {other} (by its leading bytes), a format that "
                           f"is not decoded here (accepted: {', '.join(ALLOWED_FORMATS)}): {_describe(data)}; "
                           "the seller must upload a JPEG, PNG or WebP photo") from exc
        raise Rejected("not_an_image", f"not a recognised image format (accepted: {', '.join(ALLOWED_FORMATS)}): "
                       f"{_describe(data)}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise Rejected("unsupported_image", f"{img.format} image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise Rejected(
            "too_many_pixels",
            f"{img.format} image is {width}x{height} = {width * height} pixels, over the cap of "
            f"{max_pixels} pixels ({max_pixels / 1e6:g} MP, --max-image-pixels); it is refused before decoding")
    return img


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit greyscale to 8 bits; Pillow's convert() would clip at 255 instead."""
    arr = np.asarray(img, dtype=np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if img.mode.startswith("I;16"):
        arr = arr / 257.0  # declared 16-bit: 65535 -> 255 even for a dark image
    elif img.mode == "F" and peak <= 1.0:
        arr = arr * 255.0
    elif peak > 255.0:  # 32-bit int/float holding 16-bit samples
        arr = arr / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with any transparency composited over white (what a listing page shows)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        img = _sixteen_bit_to_l(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _classify_load_error(img: Image.Image, size: tuple[int, int], exc: BaseException) -> Rejected:
    text = str(exc)
    dims = f"{size[0]}x{size[1]}"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return Rejected("too_many_pixels", f"{img.format} image {dims}: {text}")
    if isinstance(exc, (OSError, SyntaxError)) and any(
            word in text.lower() for word in ("truncated", "broken", "premature", "end of file", "decoder error")):
        return Rejected("truncated_image",
                        f"{img.format} image {dims} is truncated or corrupt: {text}; "
                        "the file is incomplete, re-upload or re-fetch it")
    return Rejected("unsupported_image",
                    f"cannot decode {img.format} image (mode {img.mode}, {dims}): "
                    f"{type(exc).__name__}: {text}")


def open_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, target: int | None = None) -> Image.Image:
    """Decode ``data`` to an EXIF-oriented RGB image, alpha over white.

    With ``target``, JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8)
    whose shortest side still is at least ``target`` pixels. Raises
    :class:`Rejected` for anything that is not a decodable image.
    """
    img = _open(data, max_pixels)
    header_size = img.size
    try:
        if target is not None and img.format == "JPEG":
            img.draft("RGB", (target, target))  # keeps both sides >= target
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return _to_rgb(img)
    except Rejected:
        raise
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError, ZeroDivisionError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _classify_load_error(img, header_size, exc) from exc


def center_square(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shortest side to ``size`` and take the central square: uint8 (size, size, 3), C-contiguous.

    Only the central square of the source is resampled (``box``), and
    ``reducing_gap`` first shrinks by an integer factor with a box filter, so
    large inputs cost little; the final bicubic step is antialiased.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    side = min(width, height)
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    box = (left, top, left + side, top + side)
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.ascontiguousarray(np.array(out, dtype=np.uint8))


def decode_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes to the model's input: uint8 (size, size, 3). Raises :class:`Rejected`."""
    return center_square(open_rgb(data, max_pixels=max_pixels, target=size), size)


class _DecodeFn(beam.DoFn):
    def __init__(self, size: int, max_pixels: int, stage: str, provenance: ProvenanceLimits | None, total: str):
        self._total = total
        self._size = size
        self._max_pixels = max_pixels
        self._stage = stage
        self._provenance = provenance
        self._decoded = beam.metrics.Metrics.counter("imagescore", f"{stage}_decoded")
        self._bytes = beam.metrics.Metrics.distribution("imagescore", f"{stage}_input_bytes")

    def process(self, element) -> Iterator:
        item, data = element
        try:
            self._bytes.update(len(data))
            # read before decoding: the decoded pixels keep none of the metadata
            provenance = None if self._provenance is None else read_provenance(data, self._provenance)
            array = decode_image(data, self._size, self._max_pixels)
        except Exception as exc:  # every failure becomes a dead letter (counted there); nothing is dropped
            yield to_dead_letter(self._stage, exc, item.payload, id=item.id, total=self._total)
            return
        self._decoded.inc()
        yield (item if provenance is None else WithProvenance(item, provenance)), array


class DecodeImages(beam.PTransform):
    """``(Item, bytes)`` -> ``(Item, uint8 [size, size, 3])``, plus a tagged ``deadletter`` output.

    With ``provenance`` (caps), the key is :class:`~transforms.provenance.WithProvenance`
    ``(item, provenance)``: what the image's metadata says about its origin, read from the
    bytes before decoding.

    Apply it and read ``result[DecodeImages.MAIN]`` (or ``result.decoded``) and
    ``result[DEAD_LETTER]`` (or ``result.deadletter``). ``total`` is the counter its dead letters add to.
    """

    MAIN = "decoded"

    def __init__(self, size: int, max_pixels: int = DEFAULT_MAX_PIXELS, stage: str = "decode",
                 provenance: ProvenanceLimits | None = None, total: str = DEADLETTERED):
        super().__init__()
        self._total = total
        if size <= 0 or max_pixels <= 0:
            raise ValueError(f"size and max_pixels must be positive, got size={size} max_pixels={max_pixels}")
        self._size = size
        self._max_pixels = max_pixels
        self._stage = stage
        self._provenance = provenance

    def expand(self, pcoll):
        return pcoll | f"Decode[{self._stage}]" >> beam.ParDo(
            _DecodeFn(self._size, self._max_pixels, self._stage, self._provenance, self._total)).with_outputs(DEAD_LETTER, main=self.MAIN)
