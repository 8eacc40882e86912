"""Where an image says it was made by AI: a provenance signal read from the fetched bytes.

Vision-LLM judges may prefer AI-generated images, so the score is written with what the
image's own metadata says about its origin, and ranking can discount it
(``es/boosting.py``'s ``ai_factor``). The signal is read from the raw bytes before
decoding, because decoding keeps pixels and drops metadata.

Signals, in order of precedence:

1. **C2PA** (a signed manifest, JPEG APP11 / PNG ``caBX`` / WebP ``C2PA``), read with
   ``c2pa-python`` offline (no remote manifest, no OCSP). An action whose IPTC
   ``digitalSourceType`` is generative gives ``c2pa_ai``; one that declares a camera capture
   gives ``c2pa_capture``. Detail: the claim generator.
2. **XMP** ``Iptc4xmpExt:DigitalSourceType`` naming a generative source: ``xmp_ai``.
3. **Generator metadata**: PNG text chunks ``parameters`` (AUTOMATIC1111) or ``prompt`` /
   ``workflow`` JSON (ComfyUI), or a generator named by EXIF Software, XMP CreatorTool or
   the PNG ``Software``/``Source`` chunks (``data/generators.txt``): ``generator_metadata``.

Otherwise ``none``. Metadata is hostile input: XMP is parsed with ``defusedxml`` (no DTD,
so no entity expansion and no external entities), and packets, text chunks, manifests and
the time spent per image are capped. Anything malformed or over a cap gives ``unreadable``
with what was wrong in the detail; :func:`read_provenance` never raises.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
import struct
import time
import zlib
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

from PIL import Image

from es.mapping import AI_PROVENANCE_VALUES

#: the values that say an image was made by AI (what ranking's ``ai_factor`` discounts)
C2PA_AI, XMP_AI, GENERATOR_METADATA = AI_PROVENANCE_VALUES
C2PA_CAPTURE, NONE, UNREADABLE = "c2pa_capture", "none", "unreadable"
PROVENANCE_VALUES = (C2PA_AI, C2PA_CAPTURE, XMP_AI, GENERATOR_METADATA, NONE, UNREADABLE)

IPTC_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "algorithmicMedia"})
CAPTURE_SOURCE_TYPES = frozenset({"digitalCapture", "computationalCapture"})

_XMP_NS = "http://ns.adobe.com/xap/1.0/"
_IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_EXIF_SOFTWARE = 305
_MAX_DETAIL = 80


class Provenance(NamedTuple):
    """``value`` (one of :data:`PROVENANCE_VALUES`) and a short ``detail``: the generator or claim,
    what was wrong when unreadable, empty for none."""

    value: str
    detail: str = ""

    @property
    def is_ai(self) -> bool:
        return self.value in AI_PROVENANCE_VALUES


NO_PROVENANCE = Provenance(NONE, "")


class WithProvenance(NamedTuple):
    """An element (an ``Item`` or ``Update``) with the provenance of its fetched image: the key
    the scoring chain carries through inference when the score is written with it."""

    element: Any
    provenance: Provenance


@dataclasses.dataclass(frozen=True)
class ProvenanceLimits:
    """Caps on what one image's metadata may cost. ``trust_anchors``: PEM certificates C2PA
    signatures are checked against (the detail says when a signature is invalid)."""

    max_xmp_bytes: int = 1 << 20
    max_text_chunks: int = 64
    max_text_bytes: int = 1 << 20  # one text chunk, after decompression
    max_manifest_bytes: int = 4 << 20
    max_chunks: int = 10_000  # PNG/WebP chunks walked before giving up
    max_seconds: float = 0.5
    trust_anchors: str | None = None


class _Unreadable(Exception):
    """Metadata present but malformed or over a cap; the message is the detail."""


class _Metadata:
    """The raw metadata of one image, as found by walking its container."""

    def __init__(self) -> None:
        self.xmp: bytes | None = None
        self.exif: bytes | None = None
        self.texts: dict[str, str] = {}
        self.manifest_bytes = 0
        self.mime = ""


@lru_cache(maxsize=1)
def generator_names() -> tuple[str, ...]:
    """The generator names of ``transforms/data/generators.txt`` (package data)."""
    text = resources.files("transforms").joinpath("data/generators.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=1)
def _generator_pattern() -> re.Pattern:
    names = sorted(generator_names(), key=len, reverse=True)
    return re.compile(r"(?<!\w)(" + "|".join(re.escape(name) for name in names) + r")(?!\w)", re.IGNORECASE)


def named_generator(text: str | None) -> str | None:
    """The generator (as listed) that ``text`` names as a whole word, or None: an editor is not one."""
    if not text:
        return None
    match = _generator_pattern().search(text)
    if match is None:
        return None
    found = match.group(1).lower()
    return next(name for name in generator_names() if name.lower() == found)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL - 1] + "…"


# --- container walks -------------------------------------------------------------------------

def _walk_jpeg(data: bytes, meta: _Metadata, limits: ProvenanceLimits) -> None:
    meta.mime = "image/jpeg"
    pos, xmp_total = 2, 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise _Unreadable(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan: no metadata after it
            return
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        body = data[pos + 4:pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            raise _Unreadable(f"JPEG segment at byte {pos} runs past the end of the file")
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            meta.exif = body[6:]
        elif marker == 0xE1 and body.startswith(_JPEG_XMP):
            xmp_total += len(body)
            meta.xmp = body[len(_JPEG_XMP):]
        elif marker == 0xE1 and body.startswith(b"http://ns.adobe.com/xmp/extension/\x00"):
            xmp_total += len(body)
        elif marker == 0xEB and body[:2] == b"JP":  # JUMBF: a C2PA manifest store
            meta.manifest_bytes += len(body)
        if xmp_total > limits.max_xmp_bytes:
            raise _Unreadable(f"XMP over {limits.max_xmp_bytes} bytes")
        pos += 2 + length


def _inflate(payload: bytes, keyword: str, limits: ProvenanceLimits) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, limits.max_text_bytes + 1)
    except zlib.error as exc:
        raise _Unreadable(f"PNG text chunk {keyword!r} is not valid zlib ({exc})") from None
    if len(out) > limits.max_text_bytes or inflater.unconsumed_tail:
        raise _Unreadable(f"PNG text chunk {keyword!r} inflates past {limits.max_text_bytes} bytes")
    return out


def _png_text(kind: bytes, body: bytes, limits: ProvenanceLimits) -> tuple[str, bytes]:
    keyword, sep, rest = body.partition(b"\x00")
    if not sep:
        raise _Unreadable(f"PNG {kind.decode()} chunk has no keyword terminator")
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        return name, rest
    if kind == b"zTXt":
        return name, _inflate(rest[1:], name, limits)
    if len(rest) < 2:
        raise _Unreadable(f"PNG iTXt chunk {name!r} is cut short")
    compressed, rest = rest[0], rest[2:]
    _language, _, rest = rest.partition(b"\x00")
    _translated, _, text = rest.partition(b"\x00")
    return name, _inflate(text, name, limits) if compressed else text


def _walk_png(data: bytes, meta: _Metadata, limits: ProvenanceLimits) -> None:
    meta.mime = "image/png"
    pos, chunks, texts = 8, 0, 0
    while pos + 8 <= len(data) and chunks < limits.max_chunks:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise _Unreadable(f"PNG chunk {kind!r} at byte {pos} runs past the end of the file")
        chunks += 1
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            texts += 1
            if texts > limits.max_text_chunks:
                raise _Unreadable(f"over {limits.max_text_chunks} PNG text chunks")
            if kind != b"tEXt" and length > limits.max_text_bytes:
                raise _Unreadable(f"PNG {kind.decode()} chunk of {length} bytes, over {limits.max_text_bytes}")
            name, text = _png_text(kind, body, limits)
            if name == "XML:com.adobe.xmp":
                if len(text) > limits.max_xmp_bytes:
                    raise _Unreadable(f"XMP over {limits.max_xmp_bytes} bytes")
                meta.xmp = text
            elif len(text) <= limits.max_text_bytes:
                meta.texts[name] = text.decode("utf-8" if kind == b"iTXt" else "latin-1", "replace")
        elif kind == b"eXIf":
            meta.exif = body
        elif kind == b"caBX":
            meta.manifest_bytes += length
        elif kind == b"IEND":
            return
        pos += 12 + length


def _walk_webp(data: bytes, meta: _Metadata, limits: ProvenanceLimits) -> None:
    meta.mime = "image/webp"
    pos, chunks = 12, 0
    while pos + 8 <= len(data) and chunks < limits.max_chunks:
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise _Unreadable(f"WebP chunk {kind!r} at byte {pos} runs past the end of the file")
        chunks += 1
        if kind == b"XMP ":
            if length > limits.max_xmp_bytes:
                raise _Unreadable(f"XMP over {limits.max_xmp_bytes} bytes")
            meta.xmp = body
        elif kind == b"EXIF":
            meta.exif = body[6:] if body.startswith(b"Exif\x00\x00") else body
        elif kind == b"C2PA":
            meta.manifest_bytes += length
        pos += 8 + length + (length & 1)


def _metadata(data: bytes, limits: ProvenanceLimits) -> _Metadata:
    meta = _Metadata()
    if data.startswith(b"\xff\xd8"):
        _walk_jpeg(data, meta, limits)
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        _walk_png(data, meta, limits)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        _walk_webp(data, meta, limits)
    if meta.manifest_bytes > limits.max_manifest_bytes:
        raise _Unreadable(f"C2PA manifest over {limits.max_manifest_bytes} bytes")
    return meta


# --- the signals ---------------------------------------------------------------------------------

def _source_type(value: Any) -> str:
    """``trainedAlgorithmicMedia`` of an IPTC digital source type URI (or of the bare code)."""
    text = str(value or "").strip()
    return text[len(IPTC_SOURCE_TYPE):] if text.startswith(IPTC_SOURCE_TYPE) else text.rsplit("/", 1)[-1]


@lru_cache(maxsize=4)
def _c2pa_context(trust_anchors: str | None) -> Any:
    import c2pa  # a native library: loaded only when an image carries a manifest

    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    return c2pa.Context.from_dict(settings)


def _c2pa(data: bytes, meta: _Metadata, limits: ProvenanceLimits) -> Provenance | None:
    import c2pa

    try:
        with c2pa.Reader(meta.mime, io.BytesIO(data), context=_c2pa_context(limits.trust_anchors)) as reader:
            store = json.loads(reader.json())
    except (c2pa.C2paError, ValueError, OSError) as exc:
        raise _Unreadable(f"C2PA manifest: {_short(exc)}") from None
    manifest = (store.get("manifests") or {}).get(store.get("active_manifest") or "")
    if not isinstance(manifest, dict):
        raise _Unreadable("C2PA manifest store has no active manifest")
    info = manifest.get("claim_generator_info") or []
    generator = (info[0].get("name") if info and isinstance(info[0], dict) else None) \
        or manifest.get("claim_generator") or "C2PA"
    if store.get("validation_state") == "Invalid":
        generator = f"{generator} (invalid signature)"
    sources = set()
    for assertion in manifest.get("assertions") or []:
        if isinstance(assertion, dict) and str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions") or []:
                if isinstance(action, dict) and action.get("digitalSourceType"):
                    sources.add(_source_type(action["digitalSourceType"]))
    if sources & AI_SOURCE_TYPES:
        return Provenance(C2PA_AI, _short(generator))
    if sources & CAPTURE_SOURCE_TYPES:
        return Provenance(C2PA_CAPTURE, _short(generator))
    return None


def _xmp_fields(packet: bytes) -> tuple[set[str], str | None]:
    """``(digital source types, creator tool)`` of an XMP packet, parsed without DTDs or entities."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    try:
        root = fromstring(packet.strip(b"\x00 \t\r\n"), forbid_dtd=True, forbid_entities=True,
                          forbid_external=True)
    except (DefusedXmlException, ParseError, ValueError) as exc:
        raise _Unreadable(f"XMP: {_short(f'{type(exc).__name__}: {exc}')}") from None
    sources, tool = set(), None
    source_key, tool_key = f"{{{_IPTC_EXT_NS}}}DigitalSourceType", f"{{{_XMP_NS}}}CreatorTool"
    for element in root.iter():
        for key, value in [(element.tag, element.text), *element.attrib.items()]:
            if key == source_key and value and value.strip():
                sources.add(_source_type(value))
            elif key == tool_key and value and value.strip():
                tool = value.strip()
    return sources, tool


def _exif_software(exif: bytes) -> str | None:
    try:
        value = Image.Exif()
        value.load(exif)
        software = value.get(_EXIF_SOFTWARE)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored like a missing one; EXIF is not the signal's core
        return None
    return software.strip("\x00 ") if isinstance(software, str) else None


def _classify(data: bytes, limits: ProvenanceLimits, deadline: float) -> Provenance:
    def check_time() -> None:
        if time.monotonic() > deadline:
            raise _Unreadable(f"metadata took over {limits.max_seconds:g}s to read")

    meta = _metadata(data, limits)
    check_time()
    if meta.manifest_bytes:
        found = _c2pa(data, meta, limits)
        check_time()
        if found is not None:
            return found
    tool = None
    if meta.xmp is not None:
        sources, tool = _xmp_fields(meta.xmp)
        check_time()
        ai = sorted(sources & AI_SOURCE_TYPES)
        if ai:
            return Provenance(XMP_AI, ai[0])
    texts = meta.texts
    if "parameters" in texts:
        return Provenance(GENERATOR_METADATA, "AUTOMATIC1111")
    if any(texts.get(key, "").lstrip().startswith("{") for key in ("prompt", "workflow")):
        return Provenance(GENERATOR_METADATA, "ComfyUI")
    for text in (tool, texts.get("Software"), texts.get("Source"),
                 _exif_software(meta.exif) if meta.exif else None):
        generator = named_generator(text)
        if generator is not None:
            return Provenance(GENERATOR_METADATA, generator)
    return NO_PROVENANCE


def read_provenance(data: bytes, limits: ProvenanceLimits = ProvenanceLimits()) -> Provenance:
    """The provenance the metadata of ``data`` declares; never raises (bad metadata is ``unreadable``)."""
    deadline = time.monotonic() + limits.max_seconds
    try:
        return _classify(data, limits, deadline)
    except _Unreadable as exc:
        return Provenance(UNREADABLE, _short(str(exc)))
    except Exception as exc:  # noqa: BLE001 - hostile bytes must not cost the score; say what broke
        return Provenance(UNREADABLE, _short(f"{type(exc).__name__}: {exc}"))
