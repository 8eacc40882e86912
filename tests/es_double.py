"""A strict Elasticsearch test double: a real HTTP server on 127.0.0.1.

The real ``elasticsearch`` client (8.x or 9.x) talks to it over HTTP, so every request
the project makes is built, serialised and parsed by the real client. It speaks only the
REST subset the project uses. Anything else -- an endpoint, a URL parameter, a body field,
a mapping option or a setting it does not implement -- gets an Elasticsearch-shaped 400
that names it, so a wrong or new request fails the test instead of being accepted and
ignored. ``tests/test_es_double_conformance.py`` holds each behaviour against what
Elasticsearch does; run it against a real cluster with ``ES_URL``.

Covered: ``GET /``; index templates (settings, mappings); create/delete/exists index
(settings ``number_of_shards`` 1, ``number_of_replicas``, ``refresh_interval``); put/get
mapping with type checking, objects, multi-fields and date formats; ``PUT /idx/_settings``;
``PUT|GET /idx/_doc/id``; refresh, both explicit and every ``index.refresh_interval`` (1 s by
default, ``-1`` off) as in Elasticsearch, checked lazily on each read against the double's
clock; ``_count``; ``_bulk`` with ``index`` and ``update`` (``doc``, ``doc_as_upsert``,
``detect_noop``) and ``require_alias``; ``_pit`` open and close (a new ``pit_id`` on every
page); ``_search`` with ``pit``, ``slice``, ``sort``, ``search_after``, ``size``, ``from``,
``_source``, ``track_total_hits`` and the ``bool``/``range``/``term``/``exists``/``match_all``
queries; ``rank_feature`` fields; stored scripts (``/_scripts/<id>``) and scripted bulk
updates (``script``, ``upsert``, ``scripted_upsert``), for the one stored script the project
uses, which ``tests/es_double_script.py`` runs as Python. Faults can be injected (error
answers, dropped connections, per-item bulk errors such as 429 storms) and authentication
can be required.

Run it by hand with ``python -m tests.es_double --port 9200``.
"""
from __future__ import annotations

import argparse
import base64
import copy
import fnmatch
import json
import math
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from tests import es_double_script

SUPPORTED_COMPAT = (8, 9)
NUMERIC_TYPES = {"float": float, "half_float": float, "double": float, "long": int, "integer": int,
                 "short": int, "byte": int}
FIELD_TYPES = set(NUMERIC_TYPES) | {"keyword", "text", "date", "boolean", "object", "rank_feature"}
COMMON_PARAMS = {"error_trace", "human", "pretty"}  # formatting only; filter_path would change answers
DEFAULT_DATE_FORMAT = "strict_date_optional_time||epoch_millis"
DEFAULT_REFRESH_INTERVAL = "1s"
NOT_IMPLEMENTED = ("the ES double does not implement it: implement it in tests/es_double.py, "
                   "with a test in tests/test_es_double_conformance.py, or do not send it")
_KEEP_ALIVE_RE = re.compile(r"^(\d+)(nanos|micros|ms|s|m|h|d)$")
_INDEX_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")
_NOW_RE = re.compile(r"^now(?:([+-])(\d+)([dhms]))?(?:/([dhms]))?$")
_ISO_RE = re.compile(r"^(?P<y>\d{4})(?:-(?P<mo>\d{2})(?:-(?P<d>\d{2})(?:T(?P<h>\d{2})(?::(?P<mi>\d{2})"
                     r"(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?(?P<z>Z|[+-]\d{2}(?::?\d{2})?)?)?)?)?$")

# Things Elasticsearch knows that the double refuses (so the error can say which side lacks them).
ES_FIELD_TYPES = {"nested", "flattened", "geo_point", "geo_shape", "ip", "dense_vector", "sparse_vector",
                  "scaled_float", "unsigned_long", "date_nanos", "wildcard", "match_only_text", "constant_keyword",
                  "binary", "alias", "completion", "search_as_you_type", "token_count", "version", "histogram",
                  "integer_range", "long_range", "float_range", "double_range", "date_range", "ip_range",
                  "rank_features", "semantic_text", "percolator", "join", "point", "shape",
                  "aggregate_metric_double", "counted_keyword"}
ES_FIELD_PARAMS = {"index", "doc_values", "store", "null_value", "copy_to", "analyzer", "search_analyzer",
                   "normalizer", "meta", "ignore_malformed", "scaling_factor", "subobjects", "enabled", "norms",
                   "similarity", "term_vector", "eager_global_ordinals", "index_options", "locale", "boost",
                   "position_increment_gap", "fielddata", "on_script_error", "script", "dynamic",
                   "time_series_dimension", "time_series_metric", "split_queries_on_whitespace",
                   "search_quote_analyzer", "index_prefixes", "index_phrases", "fielddata_frequency_filter"}
ES_ROOT_PARAMS = {"subobjects", "_source", "dynamic_templates", "numeric_detection", "dynamic_date_formats",
                  "runtime", "_routing", "_field_names", "enabled", "_data_stream_timestamp", "_size"}
ES_UPDATE_FIELDS = ["doc", "upsert", "doc_as_upsert", "script", "scripted_upsert", "detect_noop", "_source"]
# What each field type accepts besides ``type`` (all implemented).
FIELD_PARAMS = {"date": {"format"}, "keyword": {"ignore_above", "fields"}, "text": {"fields"},
                "boolean": set(), "object": {"properties"}, "rank_feature": {"positive_score_impact"},
                **{t: {"coerce"} for t in NUMERIC_TYPES}}
INDEX_SETTINGS = ("number_of_replicas", "number_of_shards", "refresh_interval")
DYNAMIC_TEXT = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}


class EsHttpError(Exception):
    """An error answer, rendered in Elasticsearch's shape."""

    def __init__(self, status: int, type_: str, reason: str, headers: dict | None = None, **extra: Any):
        super().__init__(f"{status} {type_}: {reason}")
        self.status, self.type, self.reason, self.extra = status, type_, reason, extra
        self.headers = headers or {}

    def body(self) -> dict:
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


class _DropConnection(Exception):
    """An injected fault: close the socket without answering."""


def _parsing(reason: str) -> EsHttpError:
    return EsHttpError(400, "parsing_exception", reason)


def _bad(reason: str) -> EsHttpError:
    return EsHttpError(400, "illegal_argument_exception", reason)


def _mapper(reason: str) -> EsHttpError:
    return EsHttpError(400, "mapper_parsing_exception", reason)


def _index_missing(index: str, why: str = "") -> EsHttpError:
    return EsHttpError(404, "index_not_found_exception", f"no such index [{index}]{why}",
                       **{"resource.type": "index_or_alias", "resource.id": index, "index": index})


def _similarity(a: str, b: str) -> float:
    """Lucene's ``LevenshteinDistance.getDistance``: 1 - edits / longer length."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b), 1)


def unknown_field(parser: str, name: str, candidates: Iterable[str]) -> str:
    """Elasticsearch's ``SuggestingErrorOnUnknown`` message: ``[parser] unknown field [x] did you mean [y]?``."""
    scored = sorted(((-_similarity(name, c), c) for c in candidates if _similarity(name, c) > 0.5))
    message = f"[{parser}] unknown field [{name}]"
    if len(scored) == 1:
        return f"{message} did you mean [{scored[0][1]}]?"
    if scored:
        return f"{message} did you mean any of [{', '.join(c for _, c in scored)}]?"
    return message


def time_value_ms(value: Any, setting: str) -> float | None:
    """Milliseconds of an Elasticsearch time value (``500ms``, ``1s``, ``5m``); ``-1`` is None (off)."""
    text = str(value)
    if text == "-1":
        return None
    if text == "0":
        return 0.0
    match = _KEEP_ALIVE_RE.match(text)
    if not match:
        raise _bad(f"failed to parse setting [{setting}] with value [{text}] as a time value: "
                   "unit is missing or unrecognized")
    units = {"nanos": 1e-6, "micros": 1e-3, "ms": 1, "s": 1e3, "m": 6e4, "h": 3.6e6, "d": 8.64e7}
    return int(match.group(1)) * units[match.group(2)]


# ---------------------------------------------------------------------------- dates


_JAVA_TOKEN = re.compile(r"yyyy|uuuu|MM|dd|HH|mm|ss|SSS|'[^']*'|[^A-Za-z]")
_JAVA_FIELDS = {"yyyy": r"(?P<y>\d{4})", "uuuu": r"(?P<y>\d{4})", "MM": r"(?P<mo>\d{2})", "dd": r"(?P<d>\d{2})",
                "HH": r"(?P<h>\d{2})", "mm": r"(?P<mi>\d{2})", "ss": r"(?P<s>\d{2})", "SSS": r"(?P<f>\d{3})"}
_ISO_FORMATS = {"strict_date_optional_time", "date_optional_time", "strict_date_optional_time_nanos"}
_EPOCH_FORMATS = {"epoch_millis": 1.0, "epoch_second": 1000.0}


def _java_pattern(pattern: str) -> re.Pattern | None:
    """A regex for a Java date pattern built from ``yyyy MM dd HH mm ss SSS`` and literals; None otherwise."""
    out, position, seen = [], 0, set()
    for match in _JAVA_TOKEN.finditer(pattern):
        if match.start() != position:
            return None
        token = match.group()
        if token in _JAVA_FIELDS:
            if token in seen:
                return None
            seen.add(token)
            out.append(_JAVA_FIELDS[token])
        else:
            out.append(re.escape(token[1:-1] if token.startswith("'") else token))
        position = match.end()
    return re.compile("^" + "".join(out) + "$") if position == len(pattern) and seen else None


def _from_parts(parts: dict) -> float:
    fraction = (parts.get("f") or "").ljust(9, "0")
    zone = parts.get("z")
    tz = UTC
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        tz = timezone(offset if zone[0] == "+" else -offset)
    moment = datetime(int(parts["y"]), int(parts.get("mo") or 1), int(parts.get("d") or 1), int(parts.get("h") or 0),
                      int(parts.get("mi") or 0), int(parts.get("s") or 0), int(fraction[:6]), tzinfo=tz)
    return moment.timestamp() * 1000


class DateFormat:
    """An Elasticsearch date ``format``: named ISO and epoch formats and simple Java patterns, joined by ``||``."""

    def __init__(self, spec: str):
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"Invalid format: [{spec}]")
        self.spec = spec
        self._parts: list[Any] = []
        for part in spec.split("||"):
            if part in _ISO_FORMATS or part in _EPOCH_FORMATS:
                self._parts.append(part)
            else:
                pattern = _java_pattern(part)
                if pattern is None:
                    raise ValueError(f"Invalid format: [{spec}]: the ES double knows only "
                                     f"{sorted(_ISO_FORMATS | set(_EPOCH_FORMATS))} and Java patterns made of "
                                     "yyyy, MM, dd, HH, mm, ss, SSS and literals; " + NOT_IMPLEMENTED)
                self._parts.append(pattern)

    def parse(self, value: Any) -> float:
        """Epoch milliseconds; ValueError with Elasticsearch's message when no part of the format fits."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"failed to parse date field [{value}] with format [{self.spec}]")
        text = value if isinstance(value, str) else repr(value)
        for part in self._parts:
            try:
                if part in _EPOCH_FORMATS:
                    if isinstance(value, (int, float)) or re.fullmatch(r"-?\d+(\.\d+)?", text):
                        return float(text) * _EPOCH_FORMATS[part]
                elif part in _ISO_FORMATS:
                    match = _ISO_RE.match(text)
                    if match:
                        return _from_parts(match.groupdict())
                else:
                    match = part.match(text)
                    if match:
                        return _from_parts(match.groupdict())
            except (ValueError, OverflowError):
                continue
        raise ValueError(f"failed to parse date field [{value}] with format [{self.spec}]")


def parse_date(value: Any, spec: str = DEFAULT_DATE_FORMAT) -> float:
    """Epoch milliseconds for ``value`` under the date format ``spec``, else ValueError."""
    return DateFormat(spec).parse(value)


def _date_math(value: Any, date_format: DateFormat) -> float:
    if isinstance(value, str) and value.startswith("now"):
        match = _NOW_RE.match(value)
        if not match:
            raise _parsing(f"unsupported date math [{value}]: " + NOT_IMPLEMENTED)
        sign, amount, unit, round_to = match.groups()
        now = datetime.now(UTC)
        if amount:
            delta = timedelta(**{{"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[unit]: int(amount)})
            now = now + delta if sign == "+" else now - delta
        if round_to:
            fields = {"d": {"hour": 0, "minute": 0, "second": 0, "microsecond": 0},
                      "h": {"minute": 0, "second": 0, "microsecond": 0},
                      "m": {"second": 0, "microsecond": 0}, "s": {"microsecond": 0}}[round_to]
            now = now.replace(**fields)
        return now.timestamp() * 1000
    if isinstance(value, str) and "||" in value:
        raise _parsing(f"date math [{value}] with an anchor: " + NOT_IMPLEMENTED)
    try:
        return date_format.parse(value)
    except ValueError as exc:
        raise _parsing(str(exc)) from None


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^0-9a-z]+", text.lower()) if t]


# ---------------------------------------------------------------------------- mappings and settings


def _validate_field(name: str, spec: Any, path: str, multi: bool = False) -> dict:
    full = path + name
    if name == "":
        raise _bad("field name cannot be an empty string")
    if "." in name:
        raise _mapper(f"field name [{full}] has a dot: Elasticsearch expands it into objects, which the ES "
                      "double does not; write the field as an object with [properties]")
    if not isinstance(spec, dict):
        raise _mapper(f"Expected map for property [fields] on field [{full}] but got a {type(spec).__name__}")
    type_ = spec.get("type", "object" if "properties" in spec and not multi else None)
    if type_ is None:
        raise _mapper(f"No type specified for field [{full}]")
    if type_ not in FIELD_TYPES or (multi and type_ not in ("keyword", "text")):
        note = f"; {NOT_IMPLEMENTED}" if type_ in ES_FIELD_TYPES or multi else ""
        raise _mapper(f"No handler for type [{type_}] declared on field [{full}]{note}")
    for key in sorted(set(spec) - {"type"} - FIELD_PARAMS[type_]):
        if key in ES_FIELD_PARAMS or key in {p for ps in FIELD_PARAMS.values() for p in ps}:
            raise _mapper(f"parameter [{key}] on mapper [{full}] of type [{type_}]: {NOT_IMPLEMENTED}")
        raise _mapper(f"unknown parameter [{key}] on mapper [{full}] of type [{type_}]")
    if "format" in spec:
        try:
            DateFormat(spec["format"])
        except ValueError as exc:
            raise _mapper(f"Error parsing [format] on field [{full}]: {exc}") from None
    for flag in ("coerce", "positive_score_impact"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise _mapper(f"Failed to parse mapping: [{flag}] on mapper [{full}] must be true or false")
    if "ignore_above" in spec and (not isinstance(spec["ignore_above"], int) or spec["ignore_above"] < 0):
        raise _mapper(f"[ignore_above] must be positive, got [{spec['ignore_above']}] on mapper [{full}]")
    checked = dict(spec)
    if "fields" in spec:
        if multi or not isinstance(spec["fields"], dict):
            raise _mapper(f"[fields] on mapper [{full}] must be an object of sub-fields, not nested in one")
        checked["fields"] = {sub: _validate_field(sub, s, full + ".", multi=True) for sub, s in spec["fields"].items()}
    if "properties" in spec:
        checked["properties"] = _validate_properties(spec["properties"], full + ".")
    return checked


def _validate_properties(properties: Any, path: str = "") -> dict:
    if not isinstance(properties, dict):
        raise _mapper(f"[properties] must be an object{f' on [{path[:-1]}]' if path else ''}")
    return {name: _validate_field(name, spec, path) for name, spec in properties.items()}


def validate_mappings(mappings: Any) -> dict:
    """The mappings as sent, checked; anything the double does not implement is refused by name."""
    if mappings is None:
        return {}
    if not isinstance(mappings, dict):
        raise _mapper("Failed to parse mapping: mappings must be an object")
    for key in sorted(set(mappings) - {"properties", "dynamic", "_meta", "date_detection"}):
        if key in ES_ROOT_PARAMS:
            raise _mapper(f"Root mapping parameter [{key}]: {NOT_IMPLEMENTED}")
        raise _mapper(f"Root mapping definition has unsupported parameters:  [{key} : {json.dumps(mappings[key])}]")
    checked = dict(mappings)
    if "dynamic" in mappings:
        value = str(mappings["dynamic"]).lower()
        if value == "runtime":
            raise _mapper(f"[dynamic] [runtime]: {NOT_IMPLEMENTED}")
        if value not in ("true", "false", "strict"):
            raise _mapper(f"Could not convert [dynamic.dynamic] to boolean: unknown value [{mappings['dynamic']}]")
        checked["dynamic"] = value  # Elasticsearch answers it as a string
    if "date_detection" in mappings and not isinstance(mappings["date_detection"], bool):
        raise _mapper("[date_detection] must be true or false")
    if "_meta" in mappings and not isinstance(mappings["_meta"], dict):
        raise _mapper("[_meta] must be an object")
    if "properties" in mappings:
        checked["properties"] = _validate_properties(mappings["properties"])
    return checked


def _merge_field(name: str, old: dict, new: dict) -> dict:
    old_type, new_type = old.get("type", "object"), new.get("type", "object")
    if old_type != new_type:
        raise _bad(f"mapper [{name}] cannot be changed from type [{old_type}] to [{new_type}]")
    for key in ("format", "coerce", "ignore_above"):
        if key in old or key in new:
            if old.get(key) != new.get(key):
                raise _bad(f"Mapper for [{name}] conflicts with existing mapper:\n\tCannot update parameter [{key}] "
                           f"from [{old.get(key)}] to [{new.get(key)}]")
    merged = {**old, **new}
    if "properties" in old or "properties" in new:
        merged["properties"] = _merge_properties(old.get("properties", {}), new.get("properties", {}), name + ".")
    if "fields" in old or "fields" in new:
        merged["fields"] = _merge_properties(old.get("fields", {}), new.get("fields", {}), name + ".")
    return merged


def _merge_properties(current: dict, new: dict, path: str = "") -> dict:
    merged = dict(current)
    for name, spec in new.items():
        merged[name] = _merge_field(path + name, merged[name], spec) if name in merged else spec
    return merged


def merge_mappings(current: dict, new: dict) -> dict:
    """``new`` put onto ``current`` the way put-mapping does: fields added, a changed type refused."""
    merged = {**current, **{k: v for k, v in new.items() if k != "properties"}}
    if "properties" in current or "properties" in new:
        merged["properties"] = _merge_properties(current.get("properties", {}), new.get("properties", {}))
    return merged


def normalize_settings(settings: Any) -> dict[str, str]:
    """Index settings as Elasticsearch stores them: ``index.``-prefixed names, string values."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise _bad("settings must be an object")
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix if prefix.startswith("index.") else "index." + prefix] = value
    walk("", settings)
    normalized: dict[str, str] = {}
    for key, value in flat.items():
        name = key[len("index."):]
        if name not in INDEX_SETTINGS:
            raise _bad(f"unknown setting [{key}] please check that any required plugins are installed, or check the "
                       f"breaking changes documentation for removed settings (the ES double knows only "
                       f"{['index.' + s for s in INDEX_SETTINGS]}; {NOT_IMPLEMENTED})")
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if name == "refresh_interval":
            time_value_ms(text, key)
        else:
            if not text.isdigit():
                raise _bad(f"Failed to parse value [{text}] for setting [{key}]")
            if name == "number_of_shards" and text != "1":
                raise _bad(f"[{key}] = [{text}]: the ES double holds every index in one shard; {NOT_IMPLEMENTED}")
        normalized[name] = text
    return normalized


def nest_settings(settings: dict[str, str]) -> dict:
    """``{"index": {...}}``, the shape GET answers with."""
    return {"index": dict(settings)} if settings else {}


def _dynamic_spec(value: Any, date_detection: bool) -> dict | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "long"}
    if isinstance(value, float):
        return {"type": "float"}
    if isinstance(value, str):
        match = _ISO_RE.match(value)
        if date_detection and match and match.group("d"):
            try:
                _from_parts(match.groupdict())
                return {"type": "date"}
            except ValueError:
                pass
        return copy.deepcopy(DYNAMIC_TEXT)
    if isinstance(value, dict):
        return {"properties": {}}
    if isinstance(value, list):
        return next((s for s in (_dynamic_spec(v, date_detection) for v in value) if s), None)
    return None


def _check_value(name: str, spec: dict, value: Any) -> None:
    """Raise ValueError(cause type, reason) when ``value`` cannot go into the field ``spec``."""
    type_ = spec.get("type", "object")
    if value is None:
        return
    if isinstance(value, list):
        if type_ == "rank_feature":
            raise ValueError("illegal_argument_exception", f"[rank_feature] fields do not support indexing multiple "
                             f"values for the same field [{name}] in the same document")
        for item in value:
            _check_value(name, spec, item)
        return
    if type_ in NUMERIC_TYPES:
        if isinstance(value, (bool, dict)):
            raise ValueError("illegal_argument_exception", f"Current token ({type(value).__name__}) not numeric")
        if isinstance(value, str):
            if spec.get("coerce") is False:
                raise ValueError("illegal_argument_exception", "Cannot parse a string when coerce is false")
            try:
                float(value)
            except ValueError:
                raise ValueError("number_format_exception", f"For input string: \"{value}\"") from None
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError("illegal_argument_exception", f"[{type_}] supports only finite values, but got [{value}]")
    elif type_ == "date":
        try:
            DateFormat(spec.get("format", DEFAULT_DATE_FORMAT)).parse(value)
        except ValueError as exc:
            raise ValueError("illegal_argument_exception", str(exc)) from None
    elif type_ == "rank_feature":  # Lucene's FeatureField: one finite, positive normal float per document
        if isinstance(value, float) and math.isinf(value):
            raise ValueError("illegal_argument_exception", f"featureValue must be finite, got: {value} for feature "
                             f"{name}")
        if isinstance(value, (bool, dict)) or not isinstance(value, (int, float)) or not value >= 1.1754944e-38:
            raise ValueError("illegal_argument_exception", f"featureValue must be a positive normal float, got: "
                             f"{value} for feature {name} which is less than the minimum positive normal float")
    elif type_ == "boolean":
        if not (isinstance(value, bool) or value in ("true", "false", "")):
            raise ValueError("illegal_argument_exception",
                             f"Failed to parse value [{value}] as only [true] or [false] are allowed.")
    elif type_ in ("keyword", "text") and isinstance(value, dict):
        raise ValueError("illegal_argument_exception", "Can't get text on a START_OBJECT")


@dataclass(frozen=True)
class FieldRef:
    """A mapped field as a query sees it: its type, where its value lives in ``_source``, its mapping."""

    type: str
    path: str
    spec: dict

    def date_format(self) -> DateFormat:
        return DateFormat(self.spec.get("format", DEFAULT_DATE_FORMAT))

    def values(self, source: dict) -> list:
        values = _field_values(source, self.path)
        limit = self.spec.get("ignore_above")
        if limit is not None:  # longer strings are kept in _source but not indexed
            values = [v for v in values if not (isinstance(v, str) and len(v) > limit)]
        return values


def _field_values(source: dict, name: str) -> list:
    value: Any = source
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


@dataclass
class _Doc:
    source: dict
    version: int
    seq_no: int
    shard_doc: int


@dataclass
class _Index:
    name: str
    mappings: dict
    settings: dict[str, str]
    created: float
    uuid: str = field(default_factory=lambda: uuid.uuid4().hex[:22])
    docs: dict[str, _Doc] = field(default_factory=dict)
    searchable: dict[str, _Doc] = field(default_factory=dict)
    pending: list[tuple[float, str, _Doc]] = field(default_factory=list)  # writes no refresh has shown yet
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
                spec = _dynamic_spec(value, mappings.get("date_detection", True))
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
                _check_value(full, spec, value)
            except ValueError as exc:
                cause_type, cause_reason = exc.args
                preview = json.dumps(value)[:20]
                raise EsHttpError(400, "document_parsing_exception",
                                  f"[1:2] failed to parse field [{full}] of type [{spec['type']}] in document with "
                                  f"id '{doc_id}'. Preview of field's value: '{preview}'",
                                  caused_by={"type": cause_type, "reason": cause_reason}) from None


# ---------------------------------------------------------------------------- queries


def _clauses(value: Any, kind: str) -> list:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    raise _parsing(f"[bool] malformed [{kind}] clause")


def _single_field(body: Any, query: str) -> tuple[str, Any]:
    if not isinstance(body, dict) or len(body) != 1:
        found = sorted(body) if isinstance(body, dict) else body
        raise _parsing(f"[{query}] query doesn't support multiple fields, found {found}")
    return next(iter(body.items()))


Matcher = Callable[["_Index", dict], bool]


def compile_query(query: Any) -> Matcher:
    """Validate ``query`` and return ``match(index, source) -> bool``; anything outside the subset raises."""
    if not isinstance(query, dict) or len(query) != 1:
        raise _parsing("query malformed, must start with a single query name")
    (kind, body), = query.items()
    if kind == "match_all":
        if not isinstance(body, dict) or set(body) - {"boost"}:
            raise _parsing("[match_all] query malformed")
        return lambda index, source: True
    if kind == "bool":
        return _compile_bool(body)
    if kind == "term":
        return _compile_term(body)
    if kind == "range":
        return _compile_range(body)
    if kind == "exists":
        if not isinstance(body, dict) or set(body) - {"field", "boost"} or "field" not in body:
            raise _parsing("[exists] query malformed, [field] is required")
        name = body["field"]

        def match_exists(index: _Index, source: dict) -> bool:
            ref = index.field(name)
            return ref is not None and bool(ref.values(source))
        return match_exists
    raise _parsing(f"unknown query [{kind}]; {NOT_IMPLEMENTED}")


def _compile_bool(body: Any) -> Matcher:
    if not isinstance(body, dict):
        raise _parsing("[bool] query malformed")
    unknown = set(body) - {"filter", "must", "must_not", "should", "minimum_should_match", "boost"}
    if unknown:
        raise _parsing(f"[bool] query does not support [{min(unknown)}]")
    must = [compile_query(q) for k in ("filter", "must") for q in _clauses(body.get(k, []), k)]
    must_not = [compile_query(q) for q in _clauses(body.get("must_not", []), "must_not")]
    should = [compile_query(q) for q in _clauses(body.get("should", []), "should")]
    minimum = body.get("minimum_should_match", 0 if must or must_not else 1 if should else 0)
    if isinstance(minimum, str) and minimum.isdigit():
        minimum = int(minimum)
    if not isinstance(minimum, int) or isinstance(minimum, bool):
        raise _parsing(f"[bool] minimum_should_match [{minimum}]: only a whole number; {NOT_IMPLEMENTED}")

    def match_bool(index: _Index, source: dict) -> bool:
        return (all(m(index, source) for m in must) and not any(m(index, source) for m in must_not)
                and sum(bool(m(index, source)) for m in should) >= minimum)
    return match_bool


def _compile_term(body: Any) -> Matcher:
    name, spec = _single_field(body, "term")
    insensitive = False
    if isinstance(spec, dict):
        unknown = set(spec) - {"value", "boost", "case_insensitive"}
        if unknown or "value" not in spec:
            raise _parsing(f"[term] query does not support [{min(unknown or {'(missing value)'})}]")
        insensitive = spec.get("case_insensitive", False) is True
        spec = spec["value"]
    if isinstance(spec, (dict, list)) or spec is None:
        raise _parsing("[term] query malformed, no start_object after query name")
    wanted = spec

    def match_term(index: _Index, source: dict) -> bool:
        ref = index.field(name)
        if ref is None:
            return False  # an unmapped field is not indexed, so nothing matches
        if ref.type == "rank_feature":
            raise _bad("Queries on [rank_feature] fields are not supported")
        for value in ref.values(source):
            if ref.type == "text":
                if str(wanted).lower() in _tokens(str(value)) if insensitive else str(wanted) in _tokens(str(value)):
                    return True
            elif ref.type in NUMERIC_TYPES:
                try:
                    if float(value) == float(wanted):
                        return True
                except (TypeError, ValueError):
                    raise _parsing(f"failed to create query: For input string: \"{wanted}\"") from None
            elif ref.type == "date":
                if ref.date_format().parse(value) == _date_math(wanted, ref.date_format()):
                    return True
            elif ref.type == "boolean":
                if str(value).lower() == str(wanted).lower():
                    return True
            elif (str(value).lower() == str(wanted).lower()) if insensitive else str(value) == str(wanted):
                return True
        return False
    return match_term


def _compile_range(body: Any) -> Matcher:
    name, spec = _single_field(body, "range")
    if not isinstance(spec, dict):
        raise _parsing("[range] query malformed, no start_object after query name")
    unknown = set(spec) - {"gte", "gt", "lte", "lt", "format", "boost"}
    if unknown:
        raise _parsing(f"[range] query does not support [{min(unknown)}]"
                       + (f"; {NOT_IMPLEMENTED}" if min(unknown) in ("time_zone", "relation") else ""))
    bounds = {k: spec[k] for k in ("gte", "gt", "lte", "lt") if spec.get(k) is not None}
    try:
        query_format = DateFormat(spec["format"]) if "format" in spec else None
    except ValueError as exc:
        raise _parsing(f"[range] {exc}") from None

    def match_range(index: _Index, source: dict) -> bool:
        ref = index.field(name)
        if ref is None:
            return False
        if ref.type == "date":
            field_format = ref.date_format()
            limits = {k: _date_math(v, query_format or field_format) for k, v in bounds.items()}
            convert: Callable[[Any], float] = field_format.parse
        elif ref.type in NUMERIC_TYPES:
            try:
                limits = {k: float(v) for k, v in bounds.items()}
            except (TypeError, ValueError):
                raise _parsing(f"[range] bounds {bounds} are not numbers for the numeric field [{name}]") from None
            convert = float
        elif ref.type == "rank_feature":
            raise _bad(f"Field [{name}] of type [rank_feature] does not support range queries")
        else:
            raise _parsing(f"[range] on a [{ref.type}] field [{name}]: {NOT_IMPLEMENTED}")
        for value in ref.values(source):
            v = convert(value)
            if all({"gte": v >= lim, "gt": v > lim, "lte": v <= lim, "lt": v < lim}[k] for k, lim in limits.items()):
                return True
        return False
    return match_range


# ---------------------------------------------------------------------------- the server state


@dataclass
class RequestRecord:
    """One request as the double saw it (the Authorization header is kept as its scheme only).

    ``status`` is 0 for a connection the double dropped on purpose; ``response`` is the JSON answer.
    """

    method: str
    path: str
    params: dict
    headers: dict
    body: bytes
    status: int = 0
    auth_scheme: str | None = None
    response: Any = None

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def ndjson(self) -> list:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class _Fault:
    status: int  # 0: drop the connection without an answer
    remaining: int | None  # None: forever
    path: re.Pattern | None = None
    method: str | None = None
    ids: frozenset | None = None
    error_type: str | None = None
    reason: str | None = None

    def applies(self, method: str, path: str) -> bool:
        return (self.path is None or bool(self.path.search(path))) and self.method in (None, method)

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining > 0:
            self.remaining -= 1
            return True
        return False


def _error_type_for(status: int) -> tuple[str, str]:
    if status == 429:
        return ("es_rejected_execution_exception",
                ("rejected execution of coordinating operation [shard_detailed_coordinating_and_primary_bytes=0, "
                 "max_coordinating_and_primary_bytes=0]"))
    if status == 503:
        return "unavailable_shards_exception", "[items][0] primary shard is not active Timeout: [1m]"
    if status >= 500:
        return "internal_server_error", f"injected failure with status {status}"
    return "illegal_argument_exception", f"injected failure with status {status}"


@dataclass
class _Pit:
    """One point in time: a snapshot per index, reachable through every id it has handed out."""

    ids: list[str]
    indices: list[tuple[_Index, dict[str, _Doc]]]
    expires: float


def _new_pit_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode().rstrip("=")


class EsDouble:
    """The double: ``start()``, use ``.url`` with the real client, ``stop()``; or use it as a context manager.

    ``clock`` (seconds, monotonic) drives refresh intervals and PIT keep-alives; tests may swap it
    for a manual one. ``auto_create_index`` mirrors the cluster setting ``action.auto_create_index``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, compat: Iterable[int] = SUPPORTED_COMPAT,
                 clock: Callable[[], float] = time.monotonic):
        self._host, self._port = host, port
        self.compat = tuple(compat)
        self.clock = clock
        self.auto_create_index = True
        self._lock = threading.RLock()
        self._indices: dict[str, _Index] = {}
        self._templates: dict[str, dict] = {}
        self._pits: dict[str, _Pit] = {}
        self._scripts: dict[str, dict] = {}  # stored scripts, see tests/es_double_script.py
        self._faults: list[_Fault] = []
        self._item_faults: list[_Fault] = []
        self._auth: set[str] | None = None
        self._echo_credentials = False
        self.requests: list[RequestRecord] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> EsDouble:
        handler = type("Handler", (_Handler,), {"double": self})
        self._server = ThreadingHTTPServer((self._host, self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="es-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the double first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- test API
    def reset(self) -> None:
        """Forget indices, templates, PITs, stored scripts, faults, auth and the request log."""
        with self._lock:
            self._indices.clear()
            self._templates.clear()
            self._pits.clear()
            self._scripts.clear()
            self._faults.clear()
            self._item_faults.clear()
            self._auth = None
            self._echo_credentials = False
            self.auto_create_index = True
            self.requests.clear()

    def create_index(self, index: str, properties: Mapping[str, Any] | None = None, dynamic: str = "true",
                     settings: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            mappings = {"properties": dict(properties or {}), "dynamic": dynamic}
            self._create_index(index, validate_mappings(mappings), normalize_settings(dict(settings or {})))

    def seed(self, index: str, docs: Mapping[str, dict] | Iterable[dict], refresh: bool = True) -> None:
        """Index documents directly (type-checked like ``PUT /idx/_doc/id``); a list takes ids from ``"id"``."""
        items = docs.items() if isinstance(docs, Mapping) else ((d["id"], d) for d in docs)
        with self._lock:
            idx = self._indices.get(index) or self._create_index(index, {}, {})
            for doc_id, source in items:
                self._put_doc(idx, str(doc_id), dict(source))
            if refresh:
                idx.refresh()

    def doc(self, index: str, doc_id: str) -> dict | None:
        with self._lock:
            found = self._indices[index].docs.get(doc_id) if index in self._indices else None
            return copy.deepcopy(found.source) if found else None

    def version(self, index: str, doc_id: str) -> int | None:
        with self._lock:
            found = self._indices[index].docs.get(doc_id) if index in self._indices else None
            return found.version if found else None

    def docs(self, index: str) -> dict[str, dict]:
        with self._lock:
            return {k: copy.deepcopy(v.source) for k, v in self._indices[index].docs.items()}

    def mapping(self, index: str) -> dict:
        with self._lock:
            return copy.deepcopy(self._indices[index].mappings)

    def template(self, name: str) -> dict | None:
        with self._lock:
            return copy.deepcopy(self._templates.get(name))

    def open_pits(self) -> set[str]:
        """The first id of every point in time that is neither closed nor expired."""
        with self._lock:
            self._expire_pits()
            return {pit.ids[0] for pit in self._pits.values()}

    def fail_requests(self, status: int, times: int | None = 1, path: str | None = None,
                      method: str | None = None, error_type: str | None = None, reason: str | None = None) -> None:
        """Answer the next ``times`` requests (``None``: all) whose path matches the regex ``path`` with ``status``."""
        with self._lock:
            self._faults.append(_Fault(status, times, re.compile(path) if path else None, method, None,
                                       error_type, reason))

    def fail_connections(self, times: int | None = 1, path: str | None = None, method: str | None = None) -> None:
        """Drop the connection of the next ``times`` matching requests without answering (after reading them)."""
        with self._lock:
            self._faults.append(_Fault(0, times, re.compile(path) if path else None, method))

    def fail_bulk_items(self, status: int, times: int | None = 1, ids: Iterable[str] | None = None,
                        error_type: str | None = None, reason: str | None = None) -> None:
        """Fail the next ``times`` bulk items (``None``: forever), optionally only those with ``ids``.

        The default error type follows the status: 429 is ``es_rejected_execution_exception``.
        """
        with self._lock:
            self._item_faults.append(_Fault(status, times, None, None, frozenset(ids) if ids else None,
                                            error_type, reason))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._item_faults.clear()

    def require_auth(self, api_key: str | None = None, basic: tuple[str, str] | None = None,
                     echo_credentials: bool = False) -> None:
        """Answer 401 unless a request carries one of these credentials (none given: no auth needed).

        ``echo_credentials`` makes the 401 reason quote the offered header, like a careless
        proxy would, so tests can prove that our side redacts it.
        """
        accepted = set()
        if api_key:
            accepted.add(f"ApiKey {api_key}")
        if basic:
            accepted.add("Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode())
        with self._lock:
            self._auth = accepted or None
            self._echo_credentials = echo_credentials

    def bulk_requests(self) -> list[RequestRecord]:
        return [r for r in list(self.requests) if r.path.endswith("/_bulk")]

    # -- internals
    def _create_index(self, name: str, mappings: dict, settings: dict[str, str]) -> _Index:
        """Create ``name`` from the best-matching template, with the request's mappings and settings on top."""
        if name in self._indices:
            raise EsHttpError(400, "resource_already_exists_exception", f"index [{name}/{self._indices[name].uuid}] "
                              "already exists", index=name)
        if not _INDEX_NAME_RE.match(name) or len(name) > 255:
            raise EsHttpError(400, "invalid_index_name_exception",
                              f"Invalid index name [{name}], must be lowercase and must not start with '_', '-', or '+'",
                              index=name)
        base_mappings: dict = {}
        base_settings: dict[str, str] = {}
        matching = [t for t in self._templates.values()
                    if any(fnmatch.fnmatchcase(name, p) for p in t["index_patterns"])]
        if matching:
            best = max(matching, key=lambda t: t.get("priority", 0))
            base_mappings = copy.deepcopy(best.get("template", {}).get("mappings", {}))
            base_settings = dict(best.get("template", {}).get("settings", {}).get("index", {}))
        index = _Index(name, merge_mappings(base_mappings, mappings), {**base_settings, **settings},
                       created=self.clock())
        index.refresh_base = index.created
        self._indices[name] = index
        return index

    def _put_doc(self, index: _Index, doc_id: str, source: dict) -> tuple[_Doc, bool]:
        index.check_and_map(source, doc_id)
        old = index.docs.get(doc_id)
        doc = _Doc(source, (old.version + 1) if old else 1, index.next_seq_no,
                   old.shard_doc if old else index.next_shard_doc)
        index.next_seq_no += 1
        if old is None:
            index.next_shard_doc += 1
        index.docs[doc_id] = doc
        index.pending.append((self.clock(), doc_id, doc))
        return doc, old is None

    def _visible(self, index: _Index) -> dict[str, _Doc]:
        """What a search on ``index`` sees now, after the periodic refreshes due by now."""
        index.scheduled_refresh(self.clock())
        return index.searchable

    def _expire_pits(self) -> None:
        now = self.clock()
        for pit_id, pit in list(self._pits.items()):
            if pit.expires < now:
                del self._pits[pit_id]

    def _resolve(self, expression: str, must_exist: bool = True) -> list[_Index]:
        names: list[str] = []
        for part in expression.split(","):
            if part in ("_all", "*"):
                names.extend(sorted(self._indices))
            elif any(c in part for c in "*?"):
                names.extend(n for n in sorted(self._indices) if fnmatch.fnmatchcase(n, part))
            elif part in self._indices:
                names.append(part)
            elif must_exist:
                raise _index_missing(part)
        return [self._indices[n] for n in dict.fromkeys(names)]


# ---------------------------------------------------------------------------- HTTP


def _compat_version(value: str | None, header: str) -> int | None:
    """The ``compatible-with`` version of a media type, None for plain JSON/NDJSON; raises for anything else."""
    if value is None:
        return None
    media = [p.strip() for p in value.split(";")]
    kind = media[0].lower()
    if kind in ("application/json", "application/x-ndjson", "*/*"):
        return None
    if kind in ("application/vnd.elasticsearch+json", "application/vnd.elasticsearch+x-ndjson"):
        for param in media[1:]:
            key, _, val = param.partition("=")
            if key.strip() == "compatible-with" and val.strip().isdigit():
                return int(val.strip())
    raise EsHttpError(400, "media_type_header_exception", f"Invalid media-type value on headers [{header}]")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "es-double"
    double: EsDouble

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        auth = self.headers.get("Authorization")
        record = RequestRecord(self.command, unquote(split.path), params,
                               {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"},
                               body, auth_scheme=auth.split(" ", 1)[0] if auth else None)
        double = self.double
        double.requests.append(record)
        compat = None
        extra_headers: dict[str, str] = {}
        try:
            compat = self._check_headers(body)
            status, payload = _route(double, self.command, record.path, params, body, auth)
        except _DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        except EsHttpError as exc:
            status, payload, extra_headers = exc.status, exc.body(), exc.headers
        except Exception as exc:  # noqa: BLE001 -- a bug in the double must look like a server error, not hang the client
            status, payload = 500, EsHttpError(500, "double_internal_error", repr(exc)).body()
        record.status, record.response = status, payload
        self._respond(status, payload, compat, extra_headers)

    def _check_headers(self, body: bytes) -> int | None:
        accept = _compat_version(self.headers.get("Accept"), "Accept")
        content_type = self.headers.get("Content-Type")
        sent = _compat_version(content_type, "Content-Type") if body else None
        if body and not content_type:
            raise EsHttpError(406, "media_type_header_exception", "Content-Type header is missing")
        for version in (accept, sent):
            if version is not None and version not in self.double.compat:
                raise EsHttpError(400, "media_type_header_exception",
                                  f"A compatible version is required on both Content-Type and Accept headers if "
                                  f"either one has requested a compatible version. Accept={self.headers.get('Accept')}"
                                  f", Content-Type={content_type}; this server speaks {list(self.double.compat)}")
        if body and accept is not None and sent is not None and accept != sent:
            raise EsHttpError(400, "media_type_header_exception", "the compatible versions must match")
        return accept if accept is not None else sent

    def _respond(self, status: int, payload: Any, compat: int | None, extra_headers: dict) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        if compat is not None:
            self.send_header("Content-Type", f"application/vnd.elasticsearch+json;compatible-with={compat}")
        else:
            self.send_header("Content-Type", "application/json")
        for key, value in extra_headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _dispatch


def _json_body(body: bytes, required: bool = True) -> Any:
    if not body:
        if required:
            raise _parsing("request body is required")
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise EsHttpError(400, "x_content_parse_exception", f"failed to parse request body: {exc}") from None
    if not isinstance(value, dict):
        raise _parsing("request body must be a JSON object")
    return value


def _check_params(params: dict, allowed: set[str], path: str) -> None:
    """Elasticsearch's answer to an unknown URL parameter; the double also refuses ones it does not implement."""
    unknown = sorted(set(params) - allowed - COMMON_PARAMS)
    if unknown:
        raise _bad(f"request [{path}] contains unrecognized parameter{'s' if len(unknown) > 1 else ''}: "
                   f"[{', '.join(unknown)}]")


def _token(value: Any) -> str:
    """The name of the JSON token Elasticsearch's parser reports for ``value``."""
    if isinstance(value, dict):
        return "START_OBJECT"
    if isinstance(value, list):
        return "START_ARRAY"
    if isinstance(value, bool):
        return "VALUE_BOOLEAN"
    if isinstance(value, (int, float)):
        return "VALUE_NUMBER"
    return "VALUE_NULL" if value is None else "VALUE_STRING"


def _flag(params: dict, name: str) -> bool:
    value = params.get(name, "false")
    if value not in ("true", "false", ""):
        raise _bad(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")
    return value in ("true", "")


def _refresh_policy(params: dict) -> bool:
    """Whether ``?refresh`` asks for the write to be visible when the call returns."""
    value = params.get("refresh", "false")
    if value not in ("true", "false", "", "wait_for"):
        raise _bad(f"Unknown value for refresh: [{value}].")
    return value != "false"  # wait_for: the double refreshes at once instead of waiting for the next refresh


def _expand_wildcards(params: dict) -> None:
    value = params.get("expand_wildcards", "open")
    if any(v not in ("open", "all") for v in value.split(",")):
        raise _bad(f"[expand_wildcards] [{value}]: the ES double has only open, non-hidden indices; {NOT_IMPLEMENTED}")


def _keep_alive_ms(value: Any) -> float:
    milliseconds = time_value_ms(value, "keep_alive")
    if milliseconds is None:
        raise _parsing(f"failed to parse setting [keep_alive] with value [{value}] as a time value")
    return milliseconds


def _shards(total: int = 1) -> dict:
    return {"total": total, "successful": total, "skipped": 0, "failed": 0}


def _route(double: EsDouble, method: str, path: str, params: dict, body: bytes, auth: str | None) -> tuple[int, Any]:
    with double._lock:
        if double._auth is not None and auth not in double._auth:
            offered = f" with [{auth}]" if double._echo_credentials and auth else ""
            reason = (f"unable to authenticate user{offered} for REST request [{path}]" if auth
                      else f"missing authentication credentials for REST request [{path}]")
            raise EsHttpError(401, "security_exception", reason,
                              headers={"WWW-Authenticate": 'Basic realm="security", ApiKey'})
        for fault in double._faults:
            if fault.applies(method, path) and fault.take():
                if fault.status == 0:
                    raise _DropConnection()
                type_, reason = _error_type_for(fault.status)
                raise EsHttpError(fault.status, fault.error_type or type_, fault.reason or reason)
        double._expire_pits()
        parts = [p for p in path.split("/") if p]
        key = (method, tuple(p if p.startswith("_") else "*" for p in parts))
        handler = HANDLERS.get(key)
        if handler is None:
            raise _bad(f"no handler found for uri [{path}] and method [{method}]")
        return handler(double, parts, params, body)


def _info(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, set(), "/")
    major = max(double.compat)
    return 200, {"name": "es-double", "cluster_name": "es-double", "cluster_uuid": "es-double-cluster",
                 "version": {"number": f"{major}.0.0", "build_flavor": "default", "lucene_version": "10.0.0",
                             "minimum_wire_compatibility_version": f"{major - 1}.18.0",
                             "minimum_index_compatibility_version": f"{major - 1}.0.0"},
                 "tagline": "You Know, for Search"}


def _aliases_refused(aliases: Any, where: str) -> None:
    if aliases not in (None, {}):
        raise _bad(f"[aliases] in {where}: the ES double has no index aliases; {NOT_IMPLEMENTED}")


# ---------------------------------------------------------------------------- index templates


def _put_template(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"create", "master_timeout", "cause"}, "/" + "/".join(parts))
    name = parts[1]
    spec = _json_body(body)
    known = ["index_patterns", "template", "priority", "composed_of", "version", "_meta", "data_stream",
             "allow_auto_create", "ignore_missing_component_templates", "deprecated"]
    for key in spec:
        if key not in known:
            raise EsHttpError(400, "x_content_parse_exception",
                              "[1:2] " + unknown_field("index_template", key, known))
        if key in ("data_stream", "allow_auto_create", "ignore_missing_component_templates", "deprecated") or (
                key == "composed_of" and spec[key]):
            raise EsHttpError(400, "x_content_parse_exception", f"[index_template] [{key}]: {NOT_IMPLEMENTED}")
    patterns = spec.get("index_patterns")
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: index patterns are missing;")
    template = spec.get("template") or {}
    if not isinstance(template, dict):
        raise EsHttpError(400, "x_content_parse_exception", "[template] must be an object")
    for key in template:
        if key not in ("mappings", "settings", "aliases", "lifecycle", "data_stream_options"):
            raise EsHttpError(400, "x_content_parse_exception",
                              "[1:2] " + unknown_field("template", key, ["mappings", "settings", "aliases"]))
        if key not in ("mappings", "settings", "aliases"):
            raise EsHttpError(400, "x_content_parse_exception", f"[template] [{key}]: {NOT_IMPLEMENTED}")
    _aliases_refused(template.get("aliases"), f"index template [{name}]")
    stored_template: dict[str, Any] = {}
    if "settings" in template:
        stored_template["settings"] = nest_settings(normalize_settings(template["settings"]))
    if "mappings" in template:
        stored_template["mappings"] = validate_mappings(template["mappings"])
    priority = spec.get("priority")
    if priority is not None and (not isinstance(priority, int) or priority < 0):
        raise _bad(f"index template priority requires a non-negative integer, got [{priority}]")
    if _flag(params, "create") and name in double._templates:
        raise _bad(f"index template [{name}] already exists")
    for other_name, other in double._templates.items():
        if other_name != name and other.get("priority", 0) == (priority or 0) and any(
                fnmatch.fnmatchcase(p, q) or fnmatch.fnmatchcase(q, p) for p in patterns for q in other["index_patterns"]):
            raise _bad(f"index template [{name}] has index patterns {patterns} matching patterns from existing "
                       f"templates [{other_name}] with patterns ({other_name} => {other['index_patterns']}) that "
                       f"have the same priority [{priority or 0}], multiple index templates may not match during index "
                       "creation, please use a different priority")
    stored: dict[str, Any] = {"index_patterns": list(patterns), "template": stored_template,
                              "composed_of": list(spec.get("composed_of", []))}
    for key in ("priority", "version", "_meta"):
        if key in spec:
            stored[key] = spec[key]
    double._templates[name] = stored
    return 200, {"acknowledged": True}


def _get_template(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"master_timeout", "local"}, "/" + "/".join(parts))
    pattern = parts[1] if len(parts) > 1 else "*"
    names = [n for n in sorted(double._templates) if fnmatch.fnmatchcase(n, pattern)]
    if not names and not any(c in pattern for c in "*?"):
        raise EsHttpError(404, "resource_not_found_exception", f"index template matching [{pattern}] not found")
    return 200, {"index_templates": [{"name": n, "index_template": copy.deepcopy(double._templates[n])}
                                     for n in names]}


def _delete_template(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"master_timeout", "timeout"}, "/" + "/".join(parts))
    if double._templates.pop(parts[1], None) is None:
        raise EsHttpError(404, "resource_not_found_exception", f"index_template [{parts[1]}] missing")
    return 200, {"acknowledged": True}


# ---------------------------------------------------------------------------- indices, mappings, settings


def _create_index(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"wait_for_active_shards", "timeout", "master_timeout"}, "/" + parts[0])
    spec = _json_body(body, required=False)
    for key in spec:
        if key not in ("mappings", "settings", "aliases"):
            raise _parsing(f"unknown key [{key}] for create index")
    _aliases_refused(spec.get("aliases"), f"create index [{parts[0]}]")
    double._create_index(parts[0], validate_mappings(spec.get("mappings")), normalize_settings(spec.get("settings")))
    return 200, {"acknowledged": True, "shards_acknowledged": True, "index": parts[0]}


def _delete_index(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"ignore_unavailable", "timeout", "master_timeout"}, "/" + parts[0])
    if any(c in parts[0] for c in "*?") or parts[0] == "_all":
        raise _bad("Wildcard expressions or all indices are not allowed")  # action.destructive_requires_name
    for index in double._resolve(parts[0], must_exist=not _flag(params, "ignore_unavailable")):
        del double._indices[index.name]
    return 200, {"acknowledged": True}


def _index_exists(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, set(), "/" + parts[0])
    return (200 if double._resolve(parts[0], must_exist=False) else 404), None


def _put_mapping(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"timeout", "master_timeout", "write_index_only"}, "/" + "/".join(parts))
    indices = double._resolve(parts[0])
    if not indices:
        raise _index_missing(parts[0])
    spec = _json_body(body)
    if list(spec) == ["_doc"]:
        raise _bad("Types cannot be provided in put mapping requests")
    mappings = validate_mappings(spec)
    merged = [(index, merge_mappings(index.mappings, mappings)) for index in indices]  # check all, then change
    for index, new in merged:
        index.mappings = new
    return 200, {"acknowledged": True}


def _get_mapping(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"master_timeout", "local"}, "/" + "/".join(parts))
    return 200, {i.name: {"mappings": copy.deepcopy(i.mappings)} for i in double._resolve(parts[0])}


def _put_settings(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"timeout", "master_timeout"}, "/" + "/".join(parts))
    indices = double._resolve(parts[0])
    settings = normalize_settings(_json_body(body))
    if "number_of_shards" in settings:
        raise _bad(f"Can't update non dynamic settings [[index.number_of_shards]] for open indices "
                   f"[{', '.join(f'[{i.name}/{i.uuid}]' for i in indices)}]")
    now = double.clock()
    for index in indices:
        if "refresh_interval" in settings:
            index.scheduled_refresh(now)  # what the old interval made visible stays visible
            index.refresh_base = now
        index.settings.update(settings)
    return 200, {"acknowledged": True}


def _refresh(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, set(), "/" + "/".join(parts))
    indices = double._resolve(parts[0]) if parts[0] != "_refresh" else list(double._indices.values())
    for index in indices:
        index.refresh()
    return 200, {"_shards": _shards(len(indices))}


# ---------------------------------------------------------------------------- documents


def _index_doc(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"refresh", "timeout", "op_type", "wait_for_active_shards"}, "/" + "/".join(parts))
    refresh = _refresh_policy(params)
    op_type = params.get("op_type", "index")
    if op_type not in ("index", "create"):
        raise _bad(f"opType must be 'create' or 'index', found: [{op_type}]")
    name, doc_id = parts[0], parts[2]
    index = double._indices.get(name) or _auto_create(double, name)
    if op_type == "create" and doc_id in index.docs:
        old = index.docs[doc_id]
        raise EsHttpError(409, "version_conflict_engine_exception",
                          f"[{doc_id}]: version conflict, document already exists (current version [{old.version}])",
                          index_uuid=index.uuid, shard="0", index=name)
    doc, created = double._put_doc(index, doc_id, _json_body(body))
    if refresh:
        index.refresh()
    return (201 if created else 200), {"_index": name, "_id": doc_id, "_version": doc.version,
                                       "result": "created" if created else "updated", "_shards": _shards(),
                                       "_seq_no": doc.seq_no, "_primary_term": 1}


def _get_doc(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"realtime"}, "/" + "/".join(parts))
    name, doc_id = parts[0], parts[2]
    if name not in double._indices:
        raise _index_missing(name)
    index = double._indices[name]
    # GET is real time by default: it sees the latest write, refreshed or not.
    realtime = _flag({"realtime": params.get("realtime", "true")}, "realtime")
    doc = index.docs.get(doc_id) if realtime else double._visible(index).get(doc_id)
    if doc is None:
        return 404, {"_index": name, "_id": doc_id, "found": False}
    return 200, {"_index": name, "_id": doc_id, "_version": doc.version, "_seq_no": doc.seq_no,
                 "_primary_term": 1, "found": True, "_source": copy.deepcopy(doc.source)}


def _mget(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    """``POST /idx/_mget`` with ``{"ids": [...]}``, real time like GET; ``_source_includes`` keeps top-level
    fields (patterns allowed). The streaming analyzer reads stored scores this way."""
    _check_params(params, {"realtime", "_source_includes"}, "/" + "/".join(parts))
    name = parts[0]
    if name not in double._indices:
        raise _index_missing(name)
    request = _json_body(body)
    ids = request.get("ids") if isinstance(request, dict) else None
    if not isinstance(ids, list) or not ids or set(request) - {"ids"}:
        raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: no documents to get;")
    index = double._indices[name]
    realtime = _flag({"realtime": params.get("realtime", "true")}, "realtime")
    visible = index.docs if realtime else double._visible(index)
    includes = [f for f in params.get("_source_includes", "").split(",") if f]
    docs = []
    for doc_id in map(str, ids):
        doc = visible.get(doc_id)
        if doc is None:
            docs.append({"_index": name, "_id": doc_id, "found": False})
            continue
        source = copy.deepcopy(doc.source)
        if includes:
            source = {k: v for k, v in source.items() if any(fnmatch.fnmatchcase(k, p) for p in includes)}
        docs.append({"_index": name, "_id": doc_id, "_version": doc.version, "_seq_no": doc.seq_no,
                     "_primary_term": 1, "found": True, "_source": source})
    return 200, {"docs": docs}


def _auto_create(double: EsDouble, name: str) -> _Index:
    """A write to a missing index creates it, unless the cluster setting ``action.auto_create_index`` is off."""
    if not double.auto_create_index:
        raise _index_missing(name, " and [action.auto_create_index] is [false]")
    return double._create_index(name, {}, {})


# ---------------------------------------------------------------------------- bulk


@dataclass
class BulkOp:
    """One parsed bulk action: ``kind`` names its handler in :data:`BULK_ACTIONS`."""

    kind: str
    index: str
    doc_id: str | None
    body: dict
    require_alias: bool


def _line_error(position: int, line: bytes, key: str, message: str) -> EsHttpError:
    column = max(line.decode(errors="replace").find(json.dumps(key)), 0) + 1
    return EsHttpError(400, "x_content_parse_exception", f"[1:{column}] {message}", line=position + 1)


def parse_update_body(source: dict, position: int, line: bytes) -> dict:
    """An update's body: ``doc`` with ``doc_as_upsert``/``detect_noop``, or a stored ``script`` with
    ``upsert``/``scripted_upsert`` (checked by ``tests/es_double_script.py``)."""
    for key in source:
        if key not in ES_UPDATE_FIELDS:
            raise _line_error(position, line, key, unknown_field("UpdateRequest", key, ES_UPDATE_FIELDS))
        if key not in UPDATE_FIELDS:
            raise _line_error(position, line, key, f"[UpdateRequest] field [{key}]: {NOT_IMPLEMENTED}")
    scripted = sorted(set(source) & es_double_script.UPDATE_FIELDS)
    if scripted:
        if "script" not in source and "doc" in source:
            raise _line_error(position, line, scripted[0],
                              f"[UpdateRequest] field [{scripted[0]}] with [doc]: {NOT_IMPLEMENTED}")
        _script_call(es_double_script.check_update_body, source, position + 1)
        return source
    if not isinstance(source.get("doc"), dict):
        raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: script or doc is missing;")
    for key in ("doc_as_upsert", "detect_noop"):
        if key in source and not isinstance(source[key], bool):
            raise _line_error(position, line, key, f"[UpdateRequest] failed to parse field [{key}]")
    return source


# Extension points, one entry per bulk action kind: BULK_BODY_PARSERS checks an action's body line
# (a malformed one refuses the whole request), BULK_ACTIONS applies it to one document and returns the
# item's answer. UPDATE_FIELDS is what update bodies may carry; the rest of ES_UPDATE_FIELDS is refused.
UPDATE_FIELDS = {"doc", "doc_as_upsert", "detect_noop"} | es_double_script.UPDATE_FIELDS
BULK_BODY_PARSERS: dict[str, Callable[[dict, int, bytes], dict]] = {"index": lambda source, *_: source,
                                                                    "update": parse_update_body}


def _bulk(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"refresh", "timeout", "wait_for_active_shards", "require_alias"}, "/" + "/".join(parts))
    refresh = _refresh_policy(params)
    default_alias = _flag(params, "require_alias")
    default_index = parts[0] if parts[0] != "_bulk" else None
    if not body.endswith(b"\n"):
        raise _bad("The bulk request must be terminated by a newline [\\n]")
    started = time.monotonic()
    operations = _parse_bulk(body.split(b"\n")[:-1], default_index, default_alias)
    _check_id_lengths(operations)
    items = [_bulk_item(double, op) for op in operations]
    if refresh:
        for name in dict.fromkeys(op.index for op in operations):
            if name in double._indices:
                double._indices[name].refresh()
    return 200, {"took": int((time.monotonic() - started) * 1000),
                 "errors": any("error" in item[next(iter(item))] for item in items), "items": items}


def _check_id_lengths(operations: list[BulkOp]) -> None:
    """Elasticsearch validates every item before running any: an ``_id`` over 512 UTF-8 bytes refuses the
    whole request (``DocWriteRequest.validateDocIdLength``), one numbered message per long id."""
    errors = [f"id [{op.doc_id}] is too long, must be no longer than 512 bytes but was: {size}"
              for op in operations if op.doc_id and (size := len(op.doc_id.encode("utf-8"))) > 512]
    if errors:
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: " + "".join(f"{n}: {e};" for n, e in enumerate(errors, 1)))


def _parse_bulk(lines: list[bytes], default_index: str | None, default_alias: bool) -> list[BulkOp]:
    """Every action of the request; a malformed line refuses the whole request, as in Elasticsearch."""
    operations = []
    position = 0
    while position < len(lines):
        if not lines[position].strip():
            position += 1
            continue
        try:
            action = json.loads(lines[position])
        except ValueError:
            raise EsHttpError(400, "x_content_parse_exception",
                              f"[{position + 1}:1] Malformed action/metadata line") from None
        if not isinstance(action, dict) or not action:
            raise _bad(f"Malformed action/metadata line [{position + 1}], expected FIELD_NAME but found [END_OBJECT]")
        if len(action) != 1:
            raise _bad(f"Malformed action/metadata line [{position + 1}], expected END_OBJECT but found [FIELD_NAME]")
        if not isinstance(next(iter(action.values())), dict):
            raise _bad(f"Malformed action/metadata line [{position + 1}], expected START_OBJECT but found "
                       f"[{_token(next(iter(action.values())))}]")
        (op, meta), = action.items()
        if op in ("create", "delete"):
            raise _bad(f"Malformed action/metadata line [{position + 1}]: action [{op}]: {NOT_IMPLEMENTED}")
        if op not in BULK_BODY_PARSERS:
            raise _bad(f"Malformed action/metadata line [{position + 1}], expected one of [create, delete, index, "
                       f"update] but found [{op}]")
        for key in meta:
            if key not in ("_index", "_id", "require_alias", "retry_on_conflict"):
                raise _bad(f"Action/metadata line [{position + 1}] contains an unknown parameter [{key}]")
        if position + 1 >= len(lines):
            raise _bad(f"Validation Failed: 1: no requests added or missing source for action line [{position + 1}];")
        try:
            source = json.loads(lines[position + 1])
        except ValueError:
            raise EsHttpError(400, "x_content_parse_exception", f"[{position + 2}:1] Unexpected character") from None
        if not isinstance(source, dict):
            raise EsHttpError(400, "x_content_parse_exception", f"[{position + 2}:1] expected a JSON object")
        body = BULK_BODY_PARSERS[op](source, position + 1, lines[position + 1])
        index_name = meta.get("_index", default_index)
        if not index_name:
            raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: index is missing;")
        doc_id = meta.get("_id")
        if op == "update" and (doc_id is None or doc_id == ""):
            raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: id is missing;")
        require_alias = meta.get("require_alias", default_alias)
        operations.append(BulkOp(op, str(index_name), None if doc_id is None else str(doc_id), body,
                                 require_alias is True or require_alias == "true"))
        position += 2
    return operations


def _item_fault(double: EsDouble, doc_id: str | None) -> _Fault | None:
    for fault in double._item_faults:
        if (fault.ids is None or doc_id in fault.ids) and fault.take():
            return fault
    return None


def _bulk_item(double: EsDouble, op: BulkOp) -> dict:
    base = {"_index": op.index, "_id": op.doc_id}
    fault = _item_fault(double, op.doc_id)
    if fault is not None:
        type_, reason = _error_type_for(fault.status)
        return {op.kind: {**base, "status": fault.status,
                          "error": {"type": fault.error_type or type_, "reason": fault.reason or reason}}}
    index = None
    try:
        if op.require_alias:  # the double has no aliases, so every target fails the check
            raise _index_missing(op.index, f" and [require_alias] request flag is [true] and [{op.index}] is not an alias")
        index = double._indices.get(op.index) or _auto_create(double, op.index)
        result = BULK_ACTIONS[op.kind](double, index, op)
        base["_id"] = result.pop("_id", op.doc_id)
        return {op.kind: {**base, **result}}
    except EsHttpError as exc:
        error = {"type": exc.type, "reason": exc.reason, **exc.extra}
        if index is not None:
            error.setdefault("index_uuid", index.uuid)
            error.setdefault("index", op.index)
        return {op.kind: {**base, "status": exc.status, "error": error}}


def _written(doc: _Doc, result: str, status: int) -> dict:
    return {"_version": doc.version, "result": result, "_shards": _shards(), "_seq_no": doc.seq_no,
            "_primary_term": 1, "status": status}


def bulk_index(double: EsDouble, index: _Index, op: BulkOp) -> dict:
    if op.doc_id == "":
        raise _bad("if _id is specified it must not be empty")
    doc_id = op.doc_id if op.doc_id is not None else base64.urlsafe_b64encode(uuid.uuid4().bytes[:15]).decode()
    doc, created = double._put_doc(index, doc_id, op.body)
    return {"_id": doc_id, **_written(doc, "created" if created else "updated", 201 if created else 200)}


def bulk_update(double: EsDouble, index: _Index, op: BulkOp) -> dict:
    assert op.doc_id
    old = index.docs.get(op.doc_id)
    if old is None and not (op.body.get("doc_as_upsert") or "upsert" in op.body):
        raise EsHttpError(404, "document_missing_exception", f"[{op.doc_id}]: document missing",
                          index_uuid=index.uuid, shard="0", index=index.name)
    if "script" in op.body:
        return _scripted_update(double, index, op, old)
    if old is None:
        doc, _ = double._put_doc(index, op.doc_id, copy.deepcopy(op.body["doc"]))
        return _written(doc, "created", 201)
    merged = _deep_merge(old.source, op.body["doc"])
    if merged == old.source and op.body.get("detect_noop", True):
        # A noop writes nothing: no new version and no new sequence number.
        return {"_version": old.version, "result": "noop", "_shards": {**_shards(), "total": 0, "successful": 0},
                "_seq_no": old.seq_no, "_primary_term": 1, "status": 200}
    doc, _ = double._put_doc(index, op.doc_id, merged)
    return _written(doc, "updated", 200)


def _scripted_update(double: EsDouble, index: _Index, op: BulkOp, old: _Doc | None) -> dict:
    """A stored-script update (or upsert), run by ``tests/es_double_script.py``."""
    assert op.doc_id
    result, source = _script_call(es_double_script.apply_update, double._scripts, op.doc_id,
                                  old.source if old else None, op.body)
    if result == "noop":  # as for a doc update: no new version and no new sequence number
        return {"_version": old.version if old else -1, "result": "noop",
                "_shards": {**_shards(), "total": 0, "successful": 0},
                "_seq_no": old.seq_no if old else -2, "_primary_term": 1 if old else 0, "status": 200}
    doc, created = double._put_doc(index, op.doc_id, source)
    return _written(doc, result, 201 if created else 200)


BULK_ACTIONS: dict[str, Callable[[EsDouble, _Index, BulkOp], dict]] = {"index": bulk_index, "update": bulk_update}


def _script_call(function: Callable[..., Any], *args: Any) -> Any:
    """Run a hook of tests/es_double_script.py, turning its errors into the double's."""
    try:
        return function(*args)
    except es_double_script.ScriptError as exc:
        raise EsHttpError(exc.status, exc.type, exc.reason, **exc.extra) from None


def _stored_script(function: Callable[[dict, str, dict, bytes], tuple[int, Any]]) -> Handler:
    """A ``/_scripts/<id>`` handler: ``tests/es_double_script.py``'s ``function`` on the double's stored scripts."""
    return lambda double, parts, params, body: _script_call(function, double._scripts, parts[1], params, body)


def _deep_merge(old: dict, new: dict) -> dict:
    merged = copy.deepcopy(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ---------------------------------------------------------------------------- point in time


def _open_pit(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"keep_alive", "ignore_unavailable", "expand_wildcards", "preference",
                           "allow_partial_search_results"}, "/" + "/".join(parts))
    _expand_wildcards(params)
    if body:
        raise _parsing(f"a body for open point in time (index_filter): {NOT_IMPLEMENTED}")
    if "keep_alive" not in params:
        raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: [keep_alive] is not specified;")
    keep_alive = _keep_alive_ms(params["keep_alive"])
    indices = double._resolve(parts[0], must_exist=not _flag(params, "ignore_unavailable"))
    pit = _Pit([_new_pit_id()], [(i, dict(double._visible(i))) for i in indices],
               double.clock() + keep_alive / 1000)
    double._pits[pit.ids[0]] = pit
    return 200, {"id": pit.ids[0], "_shards": _shards(len(indices))}


def _close_pit(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, set(), "/_pit")
    spec = _json_body(body)
    if set(spec) != {"id"}:
        raise _parsing("[close_point_in_time] expects exactly [id]")
    pit = double._pits.get(spec["id"])
    if pit is None:
        return 404, {"succeeded": True, "num_freed": 0}
    for pit_id in pit.ids:  # every id handed out for it points at the same contexts
        double._pits.pop(pit_id, None)
    return 200, {"succeeded": True, "num_freed": len(pit.indices)}


# ---------------------------------------------------------------------------- search


@dataclass(frozen=True)
class _SortKey:
    name: str
    order: str
    ref: FieldRef | None  # None for _shard_doc, _doc and _id


def _sort_spec(sort: Any) -> list[tuple[str, str]]:
    if sort is None:
        return []
    entries = sort if isinstance(sort, list) else [sort]
    spec = []
    for entry in entries:
        if isinstance(entry, str):
            spec.append((entry, "asc"))
        elif isinstance(entry, dict) and len(entry) == 1:
            (name, order), = entry.items()
            if isinstance(order, dict):
                for key in order:
                    if key != "order":
                        if key in ("format", "missing", "unmapped_type", "mode", "numeric_type", "nested"):
                            raise _parsing(f"[field_sort] [{key}]: {NOT_IMPLEMENTED}")
                        raise _parsing(unknown_field("field_sort", key, ["order", "format", "missing",
                                                                         "unmapped_type", "mode", "numeric_type"]))
                order = order.get("order", "asc")
            if order not in ("asc", "desc"):
                raise _parsing(f"[{name}] sort order [{order}] is not one of [asc, desc]")
            spec.append((name, order))
        else:
            raise _parsing("malformed sort format, within the sort array, an object, or an actual string are allowed")
    if any(name == "_score" for name, _ in spec):
        raise _parsing(f"sort on [_score]: the ES double does not score; {NOT_IMPLEMENTED}")
    return spec


def _resolve_sort(spec: list[tuple[str, str]], indices: list[_Index], pit: bool) -> list[_SortKey]:
    keys = []
    for name, order in spec:
        if name == "_shard_doc" and not pit:
            raise _bad("[_shard_doc] sort field cannot be used without [point in time]")
        if name in ("_shard_doc", "_doc", "_id"):
            keys.append(_SortKey(name, order, None))
            continue
        refs = [index.field(name) for index in indices]
        missing = [i.name for i, r in zip(indices, refs) if r is None]
        if missing:
            raise EsHttpError(400, "query_shard_exception", f"No mapping found for [{name}] in order to sort on",
                              index=missing[0])
        ref = refs[0]
        assert ref is not None
        if ref.type == "text":
            raise _bad(f"Text fields are not optimised for operations that require per-document field data like "
                       f"aggregations and sorting, so these operations are disabled by default. Please use a keyword "
                       f"field instead. Alternatively, set fielddata=true on [{name}] in order to load field data by "
                       "uninverting the inverted index. Note that this can use significant memory.")
        if ref.type == "object":
            raise _bad(f"sort on the object field [{name}]")
        if ref.type == "rank_feature":
            raise _bad("[rank_feature] fields do not support sorting, scripting or aggregating")
        keys.append(_SortKey(name, order, ref))
    return keys


def _sort_value(key: _SortKey, shard: int, doc_id: str, doc: _Doc, index: _Index) -> Any:
    if key.name in ("_shard_doc", "_doc"):
        return (shard << 32) | doc.shard_doc  # shard ordinal in the high bits, as Elasticsearch encodes it
    if key.name == "_id":
        return doc_id
    ref = index.field(key.name)
    values = ref.values(doc.source) if ref else []
    if not values:
        return None
    converted = [_sort_input(key, ref, v) for v in values]
    return min(converted) if key.order == "asc" else max(converted)  # Elasticsearch's default sort mode


def _sort_input(key: _SortKey, ref: FieldRef | None, value: Any) -> Any:
    """A document or ``search_after`` value as the sort compares it; ValueError when it does not fit."""
    if key.name in ("_shard_doc", "_doc"):
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
            raise ValueError(f"Failed to parse search_after value [{value}] for [{key.name}] as a long")
        return int(value)
    if ref is None or ref.type in ("keyword", "_id"):
        return str(value)
    if ref.type == "date":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)  # sort values are epoch millis whatever the field's format
        return int(ref.date_format().parse(value))  # a date in the field's format works too
    if ref.type == "boolean":
        if str(value).lower() not in ("true", "false", "0", "1"):
            raise ValueError(f"Failed to parse search_after value [{value}] for boolean field [{key.name}]")
        return 1 if str(value).lower() in ("true", "1") else 0
    number = float(value)
    return int(number) if NUMERIC_TYPES[ref.type] is int else number


class _Desc:
    """Reverses the order of a sort value."""

    def __init__(self, value: Any):
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return self.value > other.value

    def __gt__(self, other: _Desc) -> bool:
        return self.value < other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.value == other.value


def _order_key(keys: list[_SortKey], values: list) -> tuple:
    out = []
    for key, value in zip(keys, values):
        missing = value is None  # missing values sort last in either order, Elasticsearch's default
        out.append((missing, 0 if missing else _Desc(value) if key.order == "desc" else value))
    return tuple(out)


def _source_filter(spec: Any) -> Callable[[dict], dict | None]:
    if spec is True or spec is None:
        return copy.deepcopy
    if spec is False:
        return lambda source: None
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not all(isinstance(n, str) and not any(c in n for c in "*?") for n in names):
        raise _parsing(f"[_source] {json.dumps(spec)}: the ES double takes true, false or field names without "
                       f"wildcards; {NOT_IMPLEMENTED}")

    def pick(source: dict) -> dict:
        picked: dict = {}
        for name in names:
            value: Any = source
            for part in name.split("."):
                value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is not _MISSING:
                target = picked
                *outer, last = name.split(".")
                for part in outer:
                    target = target.setdefault(part, {})
                target[last] = copy.deepcopy(value)
        return picked
    return pick


_MISSING = object()


def _search(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"allow_partial_search_results", "ignore_unavailable", "expand_wildcards"},
                  "/" + "/".join(parts))
    _expand_wildcards(params)
    started = time.monotonic()
    spec = _json_body(body, required=False)
    known = ["query", "size", "from", "sort", "search_after", "pit", "slice", "track_total_hits", "_source"]
    for key in spec:
        if key not in known:
            raise _parsing(f"Unknown key for a {_token(spec[key])} in [{key}].")
    pit_spec = spec.get("pit")
    pit = _pit_for(double, parts, pit_spec) if pit_spec is not None else None
    if pit is not None:
        sources = pit.indices
    elif parts[0] == "_search":
        sources = [(i, double._visible(i)) for i in double._indices.values()]
    else:
        indices = double._resolve(parts[0], must_exist=not _flag(params, "ignore_unavailable"))
        sources = [(i, double._visible(i)) for i in indices]
    size, offset = spec.get("size", 10), spec.get("from", 0)
    if not isinstance(size, int) or size < 0 or not isinstance(offset, int) or offset < 0:
        raise _bad("[size] and [from] must be non-negative integers")
    if size + offset > 10_000:
        raise _bad(f"Result window is too large, from + size must be less than or equal to: [10000] but was "
                   f"[{size + offset}]. See the scroll api for a more efficient way to request large data sets.")
    query = compile_query(spec.get("query", {"match_all": {}}))
    sort = _sort_spec(spec.get("sort"))
    search_after = spec.get("search_after")
    # SearchRequest#rewrite: a PIT search gets the _shard_doc tiebreaker unless its sort already ends with it
    # or search_after carries exactly one value per requested sort field.
    if pit is not None and sort and sort[-1][0] != "_shard_doc" and (
            search_after is None or (isinstance(search_after, list) and len(search_after) == len(sort) + 1)):
        sort.append(("_shard_doc", "asc"))
    keys = _resolve_sort(sort, [i for i, _ in sources], pit is not None)
    after = _search_after(keys, search_after, offset, [i for i, _ in sources])
    slice_spec = _check_slice(spec.get("slice"), pit is not None)
    matches = []
    for shard, (index, docs) in enumerate(sources):
        for doc_id, doc in docs.items():
            if slice_spec is not None and zlib.crc32(doc_id.encode()) % slice_spec["max"] != slice_spec["id"]:
                continue
            if query(index, doc.source):
                matches.append((index, doc_id, doc, [_sort_value(k, shard, doc_id, doc, index) for k in keys]))
    total = len(matches)  # hits.total counts every match, before search_after and paging
    if keys:
        matches.sort(key=lambda m: _order_key(keys, m[3]))
        if after is not None:
            matches = [m for m in matches if _order_key(keys, m[3]) > after]
    source_of = _source_filter(spec.get("_source", True))
    hits = []
    for index, doc_id, doc, values in matches[offset:offset + size]:
        hit: dict[str, Any] = {"_index": index.name, "_id": doc_id, "_score": None}
        source = source_of(doc.source)
        if source is not None:
            hit["_source"] = source
        if keys:
            hit["sort"] = values
        hits.append(hit)
    hits_body: dict[str, Any] = {"max_score": None, "hits": hits}
    track = spec.get("track_total_hits", 10_000)
    if track is True or (isinstance(track, int) and not isinstance(track, bool) and track >= 0):
        limit = total if track is True else track
        hits_body["total"] = {"value": min(total, limit), "relation": "eq" if total <= limit else "gte"}
    elif track is not False:
        raise _parsing(f"[track_total_hits] must be a boolean or a non-negative integer, got [{track}]")
    response: dict[str, Any] = {"took": int((time.monotonic() - started) * 1000), "timed_out": False,
                                "_shards": _shards(len(sources)), "hits": hits_body}
    if pit is not None:
        new_id = _new_pit_id()  # Elasticsearch may answer with a new id; clients must use the latest
        pit.ids.append(new_id)
        double._pits[new_id] = pit
        response["pit_id"] = new_id
    return 200, response


def _pit_for(double: EsDouble, parts: list, pit_spec: Any) -> _Pit:
    if parts[0] != "_search":
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: [indices] cannot be used with point in time. Do not specify "
                          "any index with point in time.;")
    if not isinstance(pit_spec, dict) or set(pit_spec) - {"id", "keep_alive"} or "id" not in pit_spec:
        raise _parsing("[pit] malformed: expected [id] and optional [keep_alive]")
    pit = double._pits.get(pit_spec["id"])
    if pit is None:
        raise EsHttpError(404, "search_context_missing_exception",
                          "No search context found for id [the point in time is closed or expired]")
    if "keep_alive" in pit_spec:
        pit.expires = double.clock() + _keep_alive_ms(pit_spec["keep_alive"]) / 1000
    return pit


def _search_after(keys: list[_SortKey], search_after: Any, offset: int, indices: list[_Index]) -> tuple | None:
    if search_after is None:
        return None
    if not keys:
        raise _bad("Sort must contain at least one field.")
    if not isinstance(search_after, list) or len(search_after) != len(keys):
        count = len(search_after) if isinstance(search_after, list) else 1
        raise _bad(f"search_after has {count} value(s) but sort has {len(keys)}.")
    if offset:
        raise _bad("[from] parameter must be set to 0 when [search_after] is used.")
    values = []
    for key, value in zip(keys, search_after):
        ref = indices[0].field(key.name) if key.ref is not None and indices else key.ref
        try:
            values.append(None if value is None else _sort_input(key, ref, value))
        except (TypeError, ValueError) as exc:
            raise _bad(str(exc) if "parse" in str(exc) else
                       f"Failed to parse search_after value [{value}] for field [{key.name}]") from None
    return _order_key(keys, values)


def _check_slice(slice_spec: Any, has_pit: bool) -> dict | None:
    if slice_spec is None:
        return None
    if not has_pit:
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: [slice] can only be used with [scroll] or [point-in-time] requests;")
    if not isinstance(slice_spec, dict) or set(slice_spec) - {"id", "max"} or \
            not isinstance(slice_spec.get("id"), int) or not isinstance(slice_spec.get("max"), int):
        raise _parsing("[slice] malformed: expected integer [id] and [max] (a [field] is not implemented)")
    if slice_spec["max"] <= 1:
        raise _bad("max must be greater than 1")
    if not 0 <= slice_spec["id"] < slice_spec["max"]:
        raise _bad("id must be greater than or equal to 0 and lower than max")
    return slice_spec


def _count(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"ignore_unavailable", "expand_wildcards"}, "/" + "/".join(parts))
    _expand_wildcards(params)
    spec = _json_body(body, required=False)
    if set(spec) - {"query"}:
        raise _parsing(f"request does not support [{min(set(spec) - {'query'})}]")
    match = compile_query(spec.get("query", {"match_all": {}}))
    indices = double._resolve(parts[0], must_exist=not _flag(params, "ignore_unavailable"))
    total = sum(1 for index in indices for doc in double._visible(index).values() if match(index, doc.source))
    return 200, {"count": total, "_shards": _shards(len(indices))}


Handler = Callable[[EsDouble, list, dict, bytes], tuple[int, Any]]
HANDLERS: dict[tuple[str, tuple[str, ...]], Handler] = {
    ("GET", ()): _info, ("HEAD", ()): _info,
    ("PUT", ("_index_template", "*")): _put_template, ("POST", ("_index_template", "*")): _put_template,
    ("GET", ("_index_template", "*")): _get_template, ("GET", ("_index_template",)): _get_template,
    ("DELETE", ("_index_template", "*")): _delete_template,
    ("POST", ("_bulk",)): _bulk, ("PUT", ("_bulk",)): _bulk, ("POST", ("*", "_bulk")): _bulk, ("PUT", ("*", "_bulk")): _bulk,
    ("POST", ("_refresh",)): _refresh, ("GET", ("_refresh",)): _refresh,
    ("POST", ("*", "_refresh")): _refresh, ("GET", ("*", "_refresh")): _refresh,
    ("POST", ("*", "_pit")): _open_pit, ("DELETE", ("_pit",)): _close_pit,
    ("POST", ("_search",)): _search, ("GET", ("_search",)): _search,
    ("POST", ("*", "_search")): _search, ("GET", ("*", "_search")): _search,
    ("POST", ("*", "_count")): _count, ("GET", ("*", "_count")): _count,
    ("PUT", ("*", "_mapping")): _put_mapping, ("POST", ("*", "_mapping")): _put_mapping,
    ("GET", ("*", "_mapping")): _get_mapping,
    ("PUT", ("*", "_settings")): _put_settings,
    ("PUT", ("_scripts", "*")): _stored_script(es_double_script.put_script),
    ("POST", ("_scripts", "*")): _stored_script(es_double_script.put_script),
    ("GET", ("_scripts", "*")): _stored_script(es_double_script.get_script),
    ("DELETE", ("_scripts", "*")): _stored_script(es_double_script.delete_script),
    ("PUT", ("*", "_doc", "*")): _index_doc, ("POST", ("*", "_doc", "*")): _index_doc,
    ("GET", ("*", "_doc", "*")): _get_doc,
    ("POST", ("*", "_mget")): _mget, ("GET", ("*", "_mget")): _mget,
    ("PUT", ("*",)): _create_index, ("DELETE", ("*",)): _delete_index, ("HEAD", ("*",)): _index_exists,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the strict Elasticsearch test double by hand.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; keep it local)")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--compat", default="8,9", help="client majors to accept (compatible-with), e.g. 8 or 8,9")
    args = parser.parse_args(argv)
    double = EsDouble(args.host, args.port, compat=[int(v) for v in args.compat.split(",")])
    double.start()
    print(f"ES double listening on {double.url} (Ctrl-C to stop); state lives in memory only", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        double.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
