"""Read the SERP windows that ``imagescore collect`` wrote (``windows*.jsonl`` or ``windows*.parquet``)."""
from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from transforms.deadletter import Rejected
from transforms.items import json_object


@dataclass(frozen=True)
class WindowItem:
    item_id: str
    image_url: str
    position: int | None
    clicked: bool


@dataclass(frozen=True)
class Window:
    serp_id: str
    split: str | None
    items: tuple[WindowItem, ...]
    payload: str  # the original line, kept for dead letters

    @property
    def image_urls(self) -> list[str]:
        return [item.image_url for item in self.items]


def parse_window(line: str) -> Window:
    """One JSON line -> :class:`Window`; raises Rejected(malformed_json|bad_window) naming the field."""
    data, _ = json_object(line, "window line")
    serp_id = data.get("serp_id")
    if not isinstance(serp_id, str) or not serp_id:
        raise Rejected("bad_window", "window has no string 'serp_id'")
    raw_items = data.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise Rejected("bad_window", f"window {serp_id} has no 'items' list")
    items = []
    for index, item in enumerate(raw_items):
        if not isinstance(item, dict):
            raise Rejected("bad_window", f"window {serp_id} item {index} is not an object")
        item_id, url = item.get("item_id"), item.get("image_url")
        if not isinstance(item_id, (str, int)) or isinstance(item_id, bool) or str(item_id) == "":
            raise Rejected("bad_window", f"window {serp_id} item {index} has no 'item_id'")
        if not isinstance(url, str) or not url:
            raise Rejected("bad_window", f"window {serp_id} item {item_id} has no 'image_url'")
        position = item.get("position")
        items.append(WindowItem(str(item_id), url, position if isinstance(position, int) else None,
                                bool(item.get("clicked", False))))
    ids = [i.item_id for i in items]
    if len(set(ids)) != len(ids):
        raise Rejected("bad_window", f"window {serp_id} lists an item twice: {ids}")
    split = data.get("split")
    return Window(serp_id, split if isinstance(split, str) else None, tuple(items), line)


def window_files(patterns: Sequence[str]) -> list[str]:
    """Expand the ``--windows`` globs; refuses a pattern that matches nothing, since that is a typo."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise ValueError(f"--windows {pattern!r} matches no file; point it at collect's windows*.jsonl")
        files += [f for f in matched if f not in files]
    return files


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(number, JSON line) of a JSONL file, or of each row of collect's ``--format parquet`` output."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield number, json.dumps(row)
        return
    with open(path, encoding="utf-8") as handle:
        yield from enumerate(handle, start=1)


def read_windows(files: Sequence[str]) -> Iterator[Window | tuple[Rejected, str]]:
    """Every non-blank line (or Parquet row) of ``files``: a Window, or (Rejected, line) for one that is not."""
    for path in files:
        for number, line in _lines(path):
            if not line.strip():
                continue
            try:
                yield parse_window(line.rstrip("\n"))
            except Rejected as exc:
                yield Rejected(exc.reason, f"{path}:{number}: {exc}"), line.rstrip("\n")
