"""The double's state: indices with their documents and refreshes, templates, points in time, stored scripts.

:class:`Cluster` is what every endpoint module works on, through its public methods and
attributes; the server (``server.py``) owns it and holds its lock around each request.
"""
from __future__ import annotations

import base64
import copy
import fnmatch
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tests.es_double.dates import time_value_ms
from tests.es_double.errors import EsHttpError, index_missing
from tests.es_double.faults import Fault
from tests.es_double.mappings import FieldRef, check_value, dynamic_spec, merge_mappings

DEFAULT_REFRESH_INTERVAL = "1s"
_INDEX_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")


@dataclass
class Doc:
    """One stored document: its source, ``_version``, ``_seq_no`` and its place in ``_shard_doc`` order."""

    source: dict
    version: int
    seq_no: int
    shard_doc: int


@dataclass
class Index:
    """One index in one shard: mapping, settings, the latest documents and what search sees of them."""

    name: str
    mappings: dict
    settings: dict[str, str]
    created: float
    uuid: str = field(default_factory=lambda: uuid.uuid4().hex[:22])
    docs: dict[str, Doc] = field(default_factory=dict)
    searchable: dict[str, Doc] = field(default_factory=dict)
    pending: list[tuple[float, str, Doc]] = field(default_factory=list)  # writes no refresh has shown yet
    next_seq_no: int = 0  # per index (the double has one shard), advanced by every write but a noop
    next_shard_doc: int = 0
    refresh_base: float = 0.0  # scheduled refreshes happen at refresh_base + k * interval

    def refresh(self, upto: float | None = None) -> None:
        """Make the writes made at or before ``upto`` (all when None) visible to search."""
        keep = []
        for written, doc_id, doc in self.pending:
            if upto is None or written <= upto:
                self.searchable[doc_id] = doc
            else:
                keep.append((written, doc_id, doc))
        self.pending = keep

    def refresh_interval_ms(self) -> float | None:
        return time_value_ms(self.settings.get("refresh_interval", DEFAULT_REFRESH_INTERVAL),
                             "index.refresh_interval")

    def scheduled_refresh(self, now: float) -> None:
        """Apply the periodic refreshes Elasticsearch would have run by ``now``."""
        interval = self.refresh_interval_ms()
        if not self.pending or interval is None:
            return
        if interval == 0:
            self.refresh()
            return
        ticks = math.floor((now - self.refresh_base) * 1000 / interval)
        if ticks >= 1:
            self.refresh(self.refresh_base + ticks * interval / 1000)

    def field(self, name: str) -> FieldRef | None:
        """The mapped field ``name`` (dotted paths into objects, ``field.sub`` for multi-fields), or None."""
        properties = self.mappings.get("properties", {})
        spec: dict | None = None
        path: list[str] = []
        parts = name.split(".")
        for position, part in enumerate(parts):
            if spec is not None and spec.get("type", "object") != "object":
                sub = spec.get("fields", {}).get(part)
                if sub is None or position != len(parts) - 1:
                    return None
                return FieldRef(sub["type"], ".".join(path), sub)
            spec = properties.get(part)
            if spec is None:
                return None
            path.append(part)
            properties = spec.get("properties", {})
        assert spec is not None
        return FieldRef(spec.get("type", "object"), ".".join(path), spec)

    def check_and_map(self, source: dict, doc_id: str) -> None:
        """Type-check ``source`` against the mapping and add dynamic fields; raises EsHttpError (400)."""
        mappings = copy.deepcopy(self.mappings)
        had_properties = "properties" in mappings
        self._map_object(mappings, mappings.setdefault("properties", {}), source, "", doc_id)
        if not mappings["properties"] and not had_properties:
            del mappings["properties"]
        self.mappings = mappings

    def _map_object(self, mappings: dict, properties: dict, source: dict, prefix: str, doc_id: str) -> None:
        dynamic = mappings.get("dynamic", "true")
        for name, value in source.items():
            full = prefix + name
            if name == "" or "." in name:
                raise EsHttpError(400, "document_parsing_exception",
                                  f"[1:2] field name [{full}] is empty or has a dot: Elasticsearch expands dots into "
                                  f"objects, which the ES double does not; send objects"
                                  if name else "[1:2] Field name cannot be an empty string")
            spec = properties.get(name)
            if spec is None:
                if dynamic == "strict":
                    raise EsHttpError(400, "strict_dynamic_mapping_exception",
                                      f"[1:2] mapping set to strict, dynamic introduction of [{name}] within "
                                      f"[{prefix[:-1] or '_doc'}] is not allowed")
                if dynamic == "false":
                    continue
                spec = dynamic_spec(value, mappings.get("date_detection", True))
                if spec is None:
                    continue
                properties[name] = spec
            if spec.get("type", "object") == "object":
                for item in value if isinstance(value, list) else [value]:
                    if item is None:
                        continue
                    if not isinstance(item, dict):
                        raise EsHttpError(400, "document_parsing_exception",
                                          f"[1:2] object mapping for [{full}] tried to parse field [{name}] as object, "
                                          "but found a concrete value")
                    self._map_object(mappings, spec.setdefault("properties", {}), item, full + ".", doc_id)
                continue
            try:
                check_value(full, spec, value)
            except ValueError as exc:
                cause_type, cause_reason = exc.args
                preview = json.dumps(value)[:20]
                raise EsHttpError(400, "document_parsing_exception",
                                  f"[1:2] failed to parse field [{full}] of type [{spec['type']}] in document with "
                                  f"id '{doc_id}'. Preview of field's value: '{preview}'",
                                  caused_by={"type": cause_type, "reason": cause_reason}) from None


@dataclass
class Pit:
    """One point in time: a snapshot per index, reachable through every id it has handed out."""

    ids: list[str]
    indices: list[tuple[Index, dict[str, Doc]]]
    expires: float


def new_pit_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode().rstrip("=")


class Cluster:
    """Everything the double holds, and the operations the endpoints share.

    ``clock`` (seconds, monotonic) drives refresh intervals and PIT keep-alives; tests may swap it
    for a manual one. ``auto_create_index`` mirrors the cluster setting ``action.auto_create_index``.
    ``compat`` lists the client majors (``compatible-with``) the double answers.
    """

    def __init__(self, compat: Iterable[int], clock: Callable[[], float]):
        self.compat = tuple(compat)
        self.clock = clock
        self.auto_create_index = True
        self.lock = threading.RLock()
        self.indices: dict[str, Index] = {}
        self.templates: dict[str, dict] = {}
        self.pits: dict[str, Pit] = {}  # every id a point in time has handed out, to that point in time
        self.scripts: dict[str, dict] = {}  # stored scripts, see tests/es_double/scripts.py
        self.item_faults: list[Fault] = []  # per-item bulk faults, taken by tests/es_double/bulk.py

    def reset(self) -> None:
        """Forget indices, templates, PITs, stored scripts and item faults; the default cluster settings."""
        self.indices.clear()
        self.templates.clear()
        self.pits.clear()
        self.scripts.clear()
        self.item_faults.clear()
        self.auto_create_index = True

    # -- indices and documents
    def create_index(self, name: str, mappings: dict, settings: dict[str, str]) -> Index:
        """Create ``name`` from the best-matching template, with the (checked) mappings and settings on top."""
        if name in self.indices:
            raise EsHttpError(400, "resource_already_exists_exception", f"index [{name}/{self.indices[name].uuid}] "
                              "already exists", index=name)
        if not _INDEX_NAME_RE.match(name) or len(name) > 255:
            raise EsHttpError(400, "invalid_index_name_exception",
                              f"Invalid index name [{name}], must be lowercase and must not start with '_', '-', "
                              "or '+'", index=name)
        base_mappings: dict = {}
        base_settings: dict[str, str] = {}
        matching = [t for t in self.templates.values()
                    if any(fnmatch.fnmatchcase(name, p) for p in t["index_patterns"])]
        if matching:
            best = max(matching, key=lambda t: t.get("priority", 0))
            base_mappings = copy.deepcopy(best.get("template", {}).get("mappings", {}))
            base_settings = dict(best.get("template", {}).get("settings", {}).get("index", {}))
        index = Index(name, merge_mappings(base_mappings, mappings), {**base_settings, **settings},
                      created=self.clock())
        index.refresh_base = index.created
        self.indices[name] = index
        return index

    def write_target(self, name: str) -> Index:
        """The index a write goes to: a missing one is created, unless ``action.auto_create_index`` is off."""
        if name in self.indices:
            return self.indices[name]
        if not self.auto_create_index:
            raise index_missing(name, " and [action.auto_create_index] is [false]")
        return self.create_index(name, {}, {})

    def existing(self, name: str) -> Index:
        """The index ``name`` (a concrete name, no wildcards), or Elasticsearch's 404."""
        if name not in self.indices:
            raise index_missing(name)
        return self.indices[name]

    def resolve(self, expression: str, must_exist: bool = True) -> list[Index]:
        """The indices an expression names: comma-separated names, wildcards, ``_all`` or ``*``."""
        names: list[str] = []
        for part in expression.split(","):
            if part in ("_all", "*"):
                names.extend(sorted(self.indices))
            elif any(c in part for c in "*?"):
                names.extend(n for n in sorted(self.indices) if fnmatch.fnmatchcase(n, part))
            elif part in self.indices:
                names.append(part)
            elif must_exist:
                raise index_missing(part)
        return [self.indices[n] for n in dict.fromkeys(names)]

    def put_doc(self, index: Index, doc_id: str, source: dict) -> tuple[Doc, bool]:
        """Type-check, map and store ``source`` as ``doc_id``, visible after the next refresh; (doc, created)."""
        index.check_and_map(source, doc_id)
        old = index.docs.get(doc_id)
        doc = Doc(source, (old.version + 1) if old else 1, index.next_seq_no,
                  old.shard_doc if old else index.next_shard_doc)
        index.next_seq_no += 1
        if old is None:
            index.next_shard_doc += 1
        index.docs[doc_id] = doc
        index.pending.append((self.clock(), doc_id, doc))
        return doc, old is None

    def visible(self, index: Index) -> dict[str, Doc]:
        """What a search on ``index`` sees now, after the periodic refreshes due by now."""
        index.scheduled_refresh(self.clock())
        return index.searchable

    # -- points in time
    def open_pit(self, indices: list[Index], keep_alive_ms: float) -> Pit:
        """A snapshot of what a search on ``indices`` sees now, kept ``keep_alive_ms`` after its last use."""
        pit = Pit([new_pit_id()], [(i, dict(self.visible(i))) for i in indices],
                  self.clock() + keep_alive_ms / 1000)
        self.pits[pit.ids[0]] = pit
        return pit

    def next_pit_id(self, pit: Pit) -> str:
        """A new id for ``pit``, as Elasticsearch may hand out on each page; every older id keeps working."""
        new_id = new_pit_id()
        pit.ids.append(new_id)
        self.pits[new_id] = pit
        return new_id

    def close_pit(self, pit_id: str) -> Pit | None:
        """Close the point in time ``pit_id`` belongs to (all its ids); None when none is open."""
        pit = self.pits.get(pit_id)
        if pit is not None:
            for known in pit.ids:
                self.pits.pop(known, None)
        return pit

    def expire_pits(self) -> None:
        now = self.clock()
        for pit_id, pit in list(self.pits.items()):
            if pit.expires < now:
                del self.pits[pit_id]

    # -- faults
    def take_item_fault(self, doc_id: str | None) -> Fault | None:
        """The injected fault the next bulk item on ``doc_id`` meets, if any (it uses one of its turns)."""
        for fault in self.item_faults:
            if (fault.ids is None or doc_id in fault.ids) and fault.take():
                return fault
        return None
