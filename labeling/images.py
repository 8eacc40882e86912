"""Fetch a window's images through the backfill's safe fetcher and shrink them for the judge.

The endpoint never fetches seller URLs itself: we fetch (with the same
address, scheme, size and time limits as the backfill), decode, downscale to
``image_size`` on the long side and inline them as JPEG data URLs. That keeps
hostile URLs away from the provider and the token cost of a window bounded.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from PIL import Image

from transforms.deadletter import Rejected
from transforms.decode import open_rgb
from transforms.fetch import ImageFetcher

JPEG_QUALITY = 85


def fetch_all(fetcher: ImageFetcher, urls: Sequence[str]) -> list[bytes]:
    """All images of a window, or :class:`Rejected` for the first that fails (naming its URL)."""
    results = fetcher.fetch_many(list(urls))
    for url, result in zip(urls, results):
        if isinstance(result, BaseException):
            reason = result.reason if isinstance(result, Rejected) else "fetch_error"
            raise Rejected(reason, f"image {url}: {result}")
    return results


def downscale(data: bytes, size: int, url: str = "<image>") -> Image.Image:
    """Decode and shrink so the long side is at most ``size`` (never enlarged)."""
    try:
        image = open_rgb(data, target=size)
    except Rejected as exc:
        raise Rejected(exc.reason, f"image {url}: {exc}") from None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def to_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def window_data_urls(fetcher: ImageFetcher, urls: Sequence[str], size: int) -> list[str]:
    """The data URLs of a window's images, in order; any failure rejects the whole window."""
    blobs = fetch_all(fetcher, urls)
    return [to_data_url(downscale(data, size, url)) for url, data in zip(urls, blobs)]
