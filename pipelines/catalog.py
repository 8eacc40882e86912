"""The demo's sample catalog and the local image server it is served from.

The catalog is reproducible for a seed and needs no network, weights or
services: procedurally drawn product photos at varied quality, scikit-image's
real photos at graded distortions, listing shots of real objects cut out of
those photos (clean studio shots and the mistakes sellers make: a busy
background, a small or off-centre product, too dark, too bright, out of
focus), and a handful of broken and hostile items.
The images are served over HTTP on 127.0.0.1, so the demo goes through the
same fetcher, address guard and decoder as production.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import threading
import zlib
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from scoring.photos import (
    DEGRADATIONS,
    LISTING_OBJECTS,
    LISTING_TEXTURES,
    compose_listing,
    cutout,
    degrade,
    draw_product,
    sample_photos,
    studio_background,
    texture,
)

HUGE_PATH = "/huge.jpg"  # streamed without Content-Length, larger than any byte cap
HUGE_BYTES = 25_000_000
#: the listing shots of each real object: (label, what the shot shows); see :func:`listing_shot`
LISTING_SHOTS = ("studio", "cluttered", "small", "off-centre", "dim", "bright", "blurred")


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """One item of the catalog and what the demo expects to happen to it."""

    record: str  # the JSONL line, exactly as the backfill reads it
    expect: str  # "scored", "skipped" or the dead-letter reason
    note: str  # what the photo shows or why it is broken


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _bomb_png(side: int = 100_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def listing_shot(obj: Image.Image, shot: str, background: str, size: int = 512) -> Image.Image:
    """One listing photo of a cut-out object: the clean studio shot or one seller's mistake."""
    plain = studio_background(size)
    if shot == "cluttered":
        return compose_listing(obj, texture(background, size), 0.8)
    if shot == "small":
        return compose_listing(obj, plain, 0.3)
    if shot == "off-centre":
        return compose_listing(obj, plain, 0.45, (0.27, 0.25))
    studio = compose_listing(obj, plain, 0.85)
    if shot == "dim":
        return degrade(studio, "underexpose", 0.35)
    if shot == "bright":
        return degrade(studio, "overexpose", 0.45)
    if shot == "blurred":
        return degrade(studio, "blur", 0.6)
    if shot == "studio":
        return studio
    raise ValueError(f"unknown listing shot {shot!r}; choose one of {', '.join(LISTING_SHOTS)}")


def build_catalog(root: Path, base_url: str, *, seed: int = 7, products: int = 160,
                  now: datetime | None = None) -> list[CatalogEntry]:
    """Write ``root/images/*`` and return the catalog entries whose URLs point at ``base_url``."""
    now = now or datetime.now(UTC)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries: list[CatalogEntry] = []

    def item(item_id: str, urls: list[str], *, age_days: float = 3.0, title: str = "", **extra) -> str:
        created = (now - timedelta(days=age_days)).isoformat(timespec="seconds")
        record = {"id": item_id, "image_urls": urls, "created_at": created, "title": title,
                  "price": float(rng.integers(5, 300) * 100)}
        record.update(extra)
        return json.dumps(record)

    def add(item_id: str, data: bytes, suffix: str, expect: str, note: str, **kw) -> None:
        (images / f"{item_id}{suffix}").write_bytes(data)
        entries.append(CatalogEntry(item(item_id, [f"{base_url}/images/{item_id}{suffix}"], title=note, **kw), expect, note))

    for i in range(products):
        clutter = float(rng.choice([0.0, 0.0, 0.3, 0.8]))
        scale = float(rng.choice([1.0, 1.0, 0.8, 0.25]))
        photo = draw_product(rng, 512, clutter=clutter, object_scale=scale, off_center=float(rng.random() * 0.5))
        kind = str(rng.choice(["clean", *DEGRADATIONS]))
        level = 0.0 if kind == "clean" else float(rng.choice([0.25, 0.5, 0.75, 1.0]))
        if kind != "clean":
            photo = degrade(photo, kind, level, seed=i)
        note = f"product, {kind}" + (f" {level:.2f}" if level else "") + f", clutter {clutter:.1f}, scale {scale:.2f}"
        add(f"prod-{i:03d}", _jpeg(photo), ".jpg", "scored", note)

    for name, photo in sample_photos():
        for kind in DEGRADATIONS:
            for level in (0.0, 0.5, 1.0):
                if level == 0.0 and kind != DEGRADATIONS[0]:
                    continue  # one clean copy per photo
                shown = degrade(photo, kind, level, seed=len(entries))
                label = "clean" if level == 0 else f"{kind} {level:.1f}"
                add(f"photo-{name}-{label.replace(' ', '-')}", _jpeg(shown), ".jpg", "scored", f"{name}, {label}")

    for i, name in enumerate(LISTING_OBJECTS):
        obj = cutout(name)
        background = LISTING_TEXTURES[i % len(LISTING_TEXTURES)]
        for shot in LISTING_SHOTS:
            note = f"listing, {name}, {shot}" + (f" (on {background})" if shot == "cluttered" else "")
            add(f"listing-{name}-{shot}", _jpeg(listing_shot(obj, shot, background)), ".jpg", "scored", note)

    # Broken and hostile items: each must end as a dead letter (or counted skip) with this reason.
    add("broken-truncated", _jpeg(draw_product(rng, 256))[:700], ".jpg", "truncated_image", "JPEG cut off mid-stream")
    add("broken-random-bytes", rng.bytes(4096), ".jpg", "not_an_image", "random bytes served as image/jpeg")
    add("broken-html", b"<html><body>Not found</body></html>", ".html", "bad_content_type", "an HTML page, not an image")
    add("hostile-bomb", _bomb_png(), ".png", "too_many_pixels", "PNG header claiming 100000 x 100000 pixels")
    hostile = [
        ("broken-404", f"{base_url}/images/does-not-exist.jpg", "http_404", "image URL that returns 404"),
        ("hostile-huge", f"{base_url}{HUGE_PATH}", "too_large", "25 MB streamed with no Content-Length"),
        ("hostile-file-url", "file:///etc/passwd", "blocked_scheme", "file:// URL to a system file"),
        ("hostile-bare-path", "/etc/passwd", "blocked_scheme", "a bare local path"),
        ("hostile-metadata", "http://169.254.169.254/latest/meta-data/", "blocked_address", "cloud metadata endpoint"),
        ("hostile-private", "http://10.0.0.7/photo.jpg", "blocked_address", "a private-range address"),
        ("hostile-mapped-loopback", "http://[::ffff:127.0.0.1]/photo.jpg", "blocked_address", "loopback in IPv4-mapped IPv6"),
        ("hostile-ftp", "ftp://example.com/photo.jpg", "blocked_scheme", "an ftp:// URL"),
    ]
    for item_id, url, expect, note in hostile:
        entries.append(CatalogEntry(item(item_id, [url], title=note), expect, note))
    entries += [
        CatalogEntry('{"id": "bad-json", "image_urls": [', "malformed_json", "a truncated JSON line"),
        CatalogEntry(item("", [f"{base_url}/images/prod-000.jpg"]), "bad_id", "an empty id"),
        CatalogEntry(item("no-images", []), "no_images", "no image URLs"),
        CatalogEntry(json.dumps({"id": "bad-date", "image_urls": [f"{base_url}/images/prod-000.jpg"],
                                 "created_at": "last tuesday"}), "bad_date", "created_at that is not a date"),
        CatalogEntry(item("old-item", [f"{base_url}/images/prod-001.jpg"], age_days=400), "skipped",
                     "created 400 days ago, outside the 90-day window"),
    ]
    return entries


def write_catalog(entries: list[CatalogEntry], path: Path) -> None:
    path.write_text("".join(entry.record + "\n" for entry in entries))


class _Handler(SimpleHTTPRequestHandler):
    """Static files, plus one endless-looking image to exercise the byte cap."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".jpg": "image/jpeg", ".png": "image/png",
                      ".html": "text/html"}

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == HUGE_PATH:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            block = b"\xff" * 65536
            try:
                for _ in range(HUGE_BYTES // len(block)):
                    self.wfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the fetcher hung up at its byte cap, as it should
            return
        super().do_GET()

    def log_message(self, format, *args):  # quiet: the demo prints its own summary
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the fetcher connects many at once; the default backlog of 5 drops them


class ImageServer:
    """Serve ``root`` on 127.0.0.1 (a free port) in a background thread; use as a context manager."""

    def __init__(self, root: Path, port: int = 0):
        self._server = _Server(("127.0.0.1", port), partial(_Handler, directory=os.fspath(root)))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
