"""Load collect's windows, the judge's labels and embed's vectors into arrays for training and evaluation.

Every image that cannot be used (no label, no embedding) and every window that
cannot be used (no labels at all, clicked image unusable, fewer than two usable
images) is counted by reason in :attr:`Dataset.dropped`; nothing is dropped
silently. Malformed files stop the run with the file and line that broke.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
from collections.abc import Iterator

import numpy as np

from training.pairs import make_pairs

SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------- file reading
def match_files(pattern: str, flag: str) -> list[str]:
    """Paths matching a glob on any Beam filesystem (local, gs://, ...), sorted."""
    from apache_beam.io.filesystems import FileSystems
    try:
        result = FileSystems.match([pattern])[0]
        paths = sorted(m.path for m in result.metadata_list)
    except Exception as exc:  # Beam raises BeamIOError subclasses per scheme
        raise FileNotFoundError(f"{flag} {pattern!r}: cannot list files ({exc})") from exc
    if not paths:
        raise FileNotFoundError(f"{flag} {pattern!r} matches no files; check the path and quote the glob")
    return paths


def _read_bytes(path: str) -> bytes:
    from apache_beam.io.filesystems import CompressionTypes, FileSystems
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
        return handle.read()


def iter_records(path: str) -> Iterator[tuple[str, dict | str]]:
    """``(where, record)`` for each JSON object of a JSONL or Parquet file, or ``(where, problem)`` for a bad line.

    Callers decide what a bad line means: training refuses it, the analysis counts it.
    """
    data = _read_bytes(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        for i, record in enumerate(pq.read_table(io.BytesIO(data)).to_pylist()):
            yield f"{path}#{i}", record
        return
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, f"not valid JSON ({exc.msg})"
            continue
        if not isinstance(record, dict):
            yield where, f"expected a JSON object, got {type(record).__name__}"
            continue
        yield where, record


def read_records(pattern: str, flag: str) -> list[dict]:
    """All records of the JSONL (``.jsonl``/``.json``, optionally compressed) or Parquet files a glob matches."""
    records: list[dict] = []
    for path in match_files(pattern, flag):
        for where, record in iter_records(path):
            if isinstance(record, str):
                raise ValueError(f"{where}: {record}; fix or remove the line")
            records.append(record)
    return records


def _field(record: dict, name: str, kind, where: str):
    if name not in record or record[name] is None:
        raise ValueError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: field {name!r} should be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


# ---------------------------------------------------------------- embeddings
@dataclasses.dataclass
class Embeddings:
    """One row per (item id, image URL); ``matrix[index[(item_id, image_url)]]`` is its vector.

    Keyed by both, because a seller can change an item's photo: a label given to
    one photo must never be trained against another photo's vector.
    """

    item_ids: list[str]
    image_urls: list[str]
    matrix: np.ndarray  # float32 [M, D]
    backbone_id: str

    def __post_init__(self):
        self.index = {key: row for row, key in enumerate(zip(self.item_ids, self.image_urls))}

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def load_embeddings(pattern: str) -> Embeddings:
    """Read embed's Parquet files; refuses mixed backbones or dimensions (they cannot share one head)."""
    rows = read_records(pattern, "--embeddings")
    item_ids, urls, vectors, backbones = [], [], [], set()
    seen: set[tuple[str, str]] = set()
    for k, row in enumerate(rows):
        where = f"--embeddings row {k}"
        item_id = _field(row, "item_id", str, where)
        vector = _field(row, "embedding", (list, tuple, np.ndarray), where)
        backbones.add(_field(row, "backbone_id", str, where))
        key = (item_id, (row.get("image_url") or "").strip())
        if key in seen:  # the same image embedded twice (it sat in two windows): one vector is enough
            continue
        seen.add(key)
        item_ids.append(item_id)
        urls.append(key[1])
        vectors.append(np.asarray(vector, dtype=np.float32))
    if len(backbones) > 1:
        raise ValueError(f"--embeddings {pattern!r} mixes backbones {sorted(backbones)}; "
                         "train on embeddings from one backbone (re-run embed or narrow the glob)")
    dims = {v.shape for v in vectors}
    if len(dims) > 1:
        raise ValueError(f"--embeddings {pattern!r} has vectors of different shapes {sorted(dims)}")
    matrix = np.stack(vectors).astype(np.float32)
    if not np.isfinite(matrix).all():
        bad = [item_ids[i] for i in np.flatnonzero(~np.isfinite(matrix).all(axis=1))[:5]]
        raise ValueError(f"--embeddings {pattern!r}: non-finite values for items {bad}; re-embed them")
    return Embeddings(item_ids, urls, matrix, backbones.pop())


# ---------------------------------------------------------------- labels and windows
def load_labels(pattern: str, judges: collections.Counter | None = None) -> dict[str, dict[str, float]]:
    """``serp_id -> {item_id: label}`` from the label step's records; ``judges`` counts rows per judge name."""
    labels: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for k, row in enumerate(read_records(pattern, "--labels")):
        where = f"--labels row {k}"
        if judges is not None:
            judges[f"{row.get('judge') or 'unknown'}"] += 1
        serp_id = _field(row, "serp_id", str, where)
        item_id = _field(row, "item_id", str, where)
        label = _field(row, "label", (int, float), where)
        if not math.isfinite(label):
            raise ValueError(f"{where}: label of {serp_id}/{item_id} is {label}")
        labels[serp_id][item_id] = float(label)
    return dict(labels)


@dataclasses.dataclass(frozen=True)
class Window:
    serp_id: str
    query: str
    split: str
    anchor_item_id: str
    items: tuple[dict, ...]  # collect's item records, original order


def load_windows(pattern: str) -> list[Window]:
    windows, seen = [], set()
    for k, row in enumerate(read_records(pattern, "--windows")):
        where = f"--windows row {k}"
        serp_id = _field(row, "serp_id", str, where)
        split = _field(row, "split", str, where)
        if split not in SPLITS:
            raise ValueError(f"{where} ({serp_id}): split {split!r} is not one of {SPLITS}")
        items = _field(row, "items", list, where)
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("item_id"), str):
                raise ValueError(f"{where} ({serp_id}): every item needs a string item_id, got {item!r}")
        if serp_id in seen:
            raise ValueError(f"{where}: serp_id {serp_id!r} appears twice; windows must be unique per SERP")
        seen.add(serp_id)
        windows.append(Window(serp_id, str(row.get("query") or ""), split,
                              _field(row, "anchor_item_id", str, where), tuple(items)))
    return windows


# ---------------------------------------------------------------- arrays
@dataclasses.dataclass
class SplitData:
    """Flat per-image arrays of one split plus its training pairs (rows index the embedding matrix)."""

    serp_ids: list[str]
    queries: list[str]
    group: np.ndarray       # int [N], index into serp_ids
    row: np.ndarray         # int [N], embedding row
    item_id: list[str]
    image_url: list[str]
    position: np.ndarray    # int [N]
    label: np.ndarray       # float [N]
    clicked: np.ndarray     # bool [N]
    pair_w: np.ndarray      # int [P], embedding rows of winners
    pair_l: np.ndarray      # int [P]
    pair_group: np.ndarray  # int [P], contiguous per window

    @property
    def n_windows(self) -> int:
        return len(self.serp_ids)

    @property
    def n_pairs(self) -> int:
        return len(self.pair_w)


@dataclasses.dataclass
class Dataset:
    embeddings: Embeddings
    splits: dict[str, SplitData]
    dropped: dict[str, int]
    judges: dict[str, int] = dataclasses.field(default_factory=dict)  # label rows per judge

    def summary(self) -> dict:
        return {"backbone_id": self.embeddings.backbone_id, "embed_dim": self.embeddings.dim,
                "splits": {name: {"windows": s.n_windows, "images": len(s.group), "pairs": s.n_pairs}
                           for name, s in self.splits.items()},
                "dropped": dict(self.dropped), "judges": dict(self.judges)}


def build_dataset(windows: list[Window], labels: dict[str, dict[str, float]], embeddings: Embeddings) -> Dataset:
    """Join windows, labels and embeddings; keep only images that have both a label and a vector."""
    dropped: collections.Counter = collections.Counter()
    parts = {name: collections.defaultdict(list) for name in SPLITS}
    for window in windows:
        window_labels = labels.get(window.serp_id)
        if not window_labels:
            dropped["window_unlabelled"] += 1
            dropped["image_in_dropped_window"] += len(window.items)
            continue
        kept, row_of = [], {}
        for item in window.items:
            item_id = item["item_id"]
            key = (item_id, (item.get("image_url") or "").strip())  # embed strips URLs too
            if item_id not in window_labels:
                dropped["image_unlabelled"] += 1
            elif key not in embeddings.index:
                dropped["image_without_embedding"] += 1  # not embedded, or only another photo of the item
            else:
                kept.append(item)
                row_of[item_id] = embeddings.index[key]
        kept_ids = {item["item_id"] for item in kept}
        if window.anchor_item_id not in kept_ids:
            dropped["window_clicked_image_unusable"] += 1
            dropped["image_in_dropped_window"] += len(kept)
            continue
        if len(kept) < 2:
            dropped["window_too_few_images"] += 1
            dropped["image_in_dropped_window"] += len(kept)
            continue
        part = parts[window.split]
        g = len(part["serp_ids"])
        part["serp_ids"].append(window.serp_id)
        part["queries"].append(window.query)
        for k, item in enumerate(kept):
            part["group"].append(g)
            part["row"].append(row_of[item["item_id"]])
            part["item_id"].append(item["item_id"])
            part["image_url"].append(item.get("image_url") or "")
            part["position"].append(int(item.get("position", k)))
            part["label"].append(window_labels[item["item_id"]])
            part["clicked"].append(bool(item.get("clicked")) or item["item_id"] == window.anchor_item_id)
        pairs = make_pairs({item["item_id"]: window_labels[item["item_id"]] for item in kept}, window.anchor_item_id)
        for winner, loser in pairs:
            part["pair_w"].append(row_of[winner])
            part["pair_l"].append(row_of[loser])
            part["pair_group"].append(g)
    splits = {}
    for name, part in parts.items():
        def ints(key: str, part: dict = part) -> np.ndarray:
            return np.asarray(part[key], dtype=np.int64)
        splits[name] = SplitData(
            serp_ids=part["serp_ids"], queries=part["queries"], group=ints("group"), row=ints("row"),
            item_id=part["item_id"], image_url=part["image_url"], position=ints("position"),
            label=np.asarray(part["label"], dtype=np.float64), clicked=np.asarray(part["clicked"], dtype=bool),
            pair_w=ints("pair_w"), pair_l=ints("pair_l"), pair_group=ints("pair_group"))
    return Dataset(embeddings, splits, dict(dropped))


def load_dataset(windows: str, labels: str, embeddings: str) -> Dataset:
    """The three globs of ``imagescore train`` / ``evaluate`` joined into one :class:`Dataset`."""
    judges: collections.Counter = collections.Counter()
    data = build_dataset(load_windows(windows), load_labels(labels, judges), load_embeddings(embeddings))
    data.judges = dict(judges)
    return data
