"""On-disk cache of judged windows, so a rerun resumes without paying for a window twice.

One JSON file per (judge setup, window images, repeat). The key hashes
everything that changes what the judge sees or who answers: prompt version
and text, model, image URLs in order, image size and repeat index. Writes go
to a temporary file that is renamed into place, so an interrupted run never
leaves a half-written entry that a rerun would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def cache_key(*, prompt_version: str, prompt_sha256: str, model: str, image_urls: Sequence[str],
              image_size: int, repeat: int, endpoint: str = "", sampling: dict | None = None) -> str:
    """sha256 over the canonical JSON of everything that determines a window's answer.

    ``endpoint`` (two servers may serve different weights under one model name)
    and ``sampling`` (temperature, max_tokens) are part of it, so a rerun with
    other settings asks again instead of reusing answers it did not ask for.
    """
    material = json.dumps({
        "prompt_version": prompt_version, "prompt_sha256": prompt_sha256, "model": model,
        "image_urls": list(image_urls), "image_size": image_size, "repeat": repeat,
        "endpoint": endpoint, "sampling": sampling or {},
    }, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class WindowCache:
    """Files ``<dir>/<key[:2]>/<key>.json``; thread-safe because each write is one atomic rename."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored entry, or None when absent or unreadable (an unreadable entry is simply re-judged)."""
        try:
            with open(self._path(key), encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, entry: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(entry, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
