"""Inline search scripts: the score monitor's two Painless scripts, as Python, and nothing else.

Like the stored guard script (``scripts.py``), no Painless runs here: an inline ``script``
(in a ``script`` query or a ``histogram``'s ``script``) is recognised by the SHA-256 of its exact
source, and any other source is refused by name. The hashes are pinned on purpose: changing
a script in ``es/monitoring.py`` makes the double refuse it until its Python rendering here is
changed with it. Scripts read *doc values*: a ``float`` field's value as the float32 it is
stored as, widened to double; a ``date`` as whole epoch milliseconds.
"""
from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from typing import Any

from tests.es_double.errors import NOT_IMPLEMENTED, EsHttpError, parsing_error
from tests.es_double.mappings import NUMERIC_TYPES, FieldRef
from tests.es_double.state import Index

BIN_SCRIPT_SHA256 = "b9dc2c92c610f1a28c7efd5d62eef11ebaebe153befe5e9a29d089aa1a567c90"
STALE_SCRIPT_SHA256 = "6659585f2ad319c367eba6ff574435dc7d0ba7e0e4d960b6ed565f22245163c1"


def f32(value: float) -> float:
    """``(double) (float) value``: rounded to the nearest float32, as Java's cast does."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def doc_values(ref: FieldRef | None, source: dict) -> list:
    """A field's doc values in one document, sorted, as aggregations and scripts see them."""
    if ref is None:
        return []
    raw = ref.values(source)
    if ref.type in NUMERIC_TYPES:
        if NUMERIC_TYPES[ref.type] is int:
            return sorted(int(float(v)) for v in raw)
        values = [float(v) for v in raw]
        if ref.type == "float":
            values = [f32(v) for v in values]
        elif ref.type == "half_float":
            values = [struct.unpack("<e", struct.pack("<e", v))[0] for v in values]
        return sorted(values)
    if ref.type == "date":
        return sorted(math.floor(ref.date_format().parse(v)) for v in raw)  # date doc values are whole millis
    if ref.type == "boolean":
        return sorted(1 if str(v).lower() == "true" else 0 for v in raw)
    return sorted(str(v) for v in raw)


def _script_error(source: str, reason: str, cause: str = "illegal_argument_exception") -> EsHttpError:
    """A Painless runtime error in a search, in Elasticsearch's shape."""
    failure = {"type": "script_exception", "reason": "runtime error", "script_stack": [], "script": source,
               "lang": "painless", "caused_by": {"type": cause, "reason": reason}}
    return EsHttpError(400, "search_phase_execution_exception", "all shards failed", phase="query",
                       grouped=True, failed_shards=[{"shard": 0, "reason": failure}], caused_by=failure)


class Doc:
    """``doc['field']`` of one document of one index."""

    def __init__(self, index: Index, source: dict, script: str):
        self.index, self.source, self.script = index, source, script

    def __getitem__(self, name: str) -> list:
        ref = self.index.field(name)
        if ref is None:
            raise _script_error(self.script, f"No field found for [{name}] in mapping")
        return doc_values(ref, self.source)

    def contains_key(self, name: str) -> bool:
        """``doc.containsKey(name)``: whether the index maps the field."""
        return self.index.field(name) is not None

    def value(self, name: str) -> Any:
        values = self[name]
        if not values:
            raise _script_error(self.script, f"A document doesn't have a value for a field! Use doc[{name}].size()==0 "
                                "to check if a document is missing a field!", "illegal_state_exception")
        return values[0]


def _bins(doc: Doc, params: dict) -> Any:
    """es/monitoring.py BIN_SCRIPT: the bin index of image_score against float32 edges."""
    s = float(doc.value("image_score"))
    n = params.get("bins")
    if not isinstance(n, int) or isinstance(n, bool):
        raise _script_error(doc.script, f"params.bins must be an integer, got {n!r}", "class_cast_exception")
    b = min(max(math.floor(s * n), 0), n - 1)
    if b < n - 1 and s >= f32((b + 1) / n):
        b += 1
    elif b > 0 and s < f32(b / n):
        b -= 1
    return b


def _stale(doc: Doc, params: dict) -> Any:
    """es/monitoring.py STALE_SCRIPT: the score's item version is older than the document's."""
    if not (doc.contains_key("image_score_version") and doc.contains_key("updated_at")):
        return False
    version, updated = doc["image_score_version"], doc["updated_at"]
    return bool(version and updated and version[0] < updated[0])


SCRIPTS: dict[str, Callable[[Doc, dict], Any]] = {BIN_SCRIPT_SHA256: _bins, STALE_SCRIPT_SHA256: _stale}


def compile_script(spec: Any, where: str) -> Callable[[Index, dict], Any]:
    """``run(index, source)`` for an inline script the double knows; anything else is refused by name."""
    if isinstance(spec, str):
        spec = {"source": spec}
    if not isinstance(spec, dict):
        raise parsing_error(f"[{where}] [script] must be an object")
    unknown = set(spec) - {"source", "lang", "params"}
    if unknown:
        raise parsing_error(f"[{where}] script option [{min(unknown)}]: {NOT_IMPLEMENTED}")
    if spec.get("lang", "painless") != "painless":
        raise EsHttpError(400, "illegal_argument_exception", f"script_lang not supported [{spec['lang']}]")
    source = spec.get("source")
    if not isinstance(source, str):
        raise parsing_error(f"[{where}] script needs an inline [source] (stored scripts by id: {NOT_IMPLEMENTED})")
    run = SCRIPTS.get(hashlib.sha256(source.encode("utf-8")).hexdigest())
    if run is None:
        raise parsing_error(f"[{where}] inline script {source[:80]!r}...: the ES double runs only the score monitor's "
                            f"scripts of es/monitoring.py; {NOT_IMPLEMENTED}")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise parsing_error(f"[{where}] script [params] must be an object")
    return lambda index, source_doc: run(Doc(index, source_doc, source), params)
