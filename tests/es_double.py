"""A strict Elasticsearch test double: a real HTTP server on 127.0.0.1.

The real ``elasticsearch`` client (8.x or 9.x) talks to it over HTTP, so every request
the project makes is built, serialised and parsed by the real client. It speaks only the
REST subset the project uses and answers anything else, and any body it does not
understand, with an Elasticsearch-shaped error, so a wrong request fails the test
instead of passing silently.

Covered: ``GET /``; index templates; create/delete/exists index; put/get mapping with
type checking; ``PUT|GET /idx/_doc/id``; ``_refresh`` (search sees only refreshed
documents, as in Elasticsearch); ``_count``; ``_bulk`` with ``update`` (``doc``) and
``index`` actions; ``_pit`` open and close; ``_search`` with ``pit``, ``slice``, ``sort``,
``search_after``, ``size`` and the ``bool``/``range``/``term``/``exists``/``match_all``
queries; stored scripts and scripted bulk updates, for the one stored script the project
uses (``tests/es_double_script.py``); ``rank_feature`` fields. Faults can be injected (whole-request errors, per-item bulk errors such as
429 storms) and authentication can be required.

Run it by hand with ``python -m tests.es_double --port 9200``.
"""
from __future__ import annotations

import argparse
import base64
import copy
import fnmatch
import itertools
import json
import re
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from tests import es_double_script

SUPPORTED_COMPAT = (8, 9)
NUMERIC_TYPES = {"float": float, "half_float": float, "double": float, "long": int, "integer": int,
                 "short": int, "byte": int}
FIELD_TYPES = set(NUMERIC_TYPES) | {"keyword", "text", "date", "boolean", "object", "rank_feature"}
COMMON_PARAMS = {"error_trace", "filter_path", "human", "pretty"}
DATE_FORMAT = "strict_date_optional_time||epoch_millis"
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$")
_NOW_RE = re.compile(r"^now(?:([+-])(\d+)([dhms]))?(?:/([dhms]))?$")
_KEEP_ALIVE_RE = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_INDEX_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")


class EsHttpError(Exception):
    """An error answer, rendered in Elasticsearch's shape."""

    def __init__(self, status: int, type_: str, reason: str, headers: dict | None = None, **extra: Any):
        super().__init__(f"{status} {type_}: {reason}")
        self.status, self.type, self.reason, self.extra = status, type_, reason, extra
        self.headers = headers or {}

    def body(self) -> dict:
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


def _parsing(reason: str) -> EsHttpError:
    return EsHttpError(400, "parsing_exception", reason)


def _bad(reason: str) -> EsHttpError:
    return EsHttpError(400, "illegal_argument_exception", reason)


def _index_missing(index: str) -> EsHttpError:
    return EsHttpError(404, "index_not_found_exception", f"no such index [{index}]",
                       **{"resource.type": "index_or_alias", "resource.id": index, "index": index})


def parse_date(value: Any) -> float:
    """Epoch milliseconds for a ``strict_date_optional_time||epoch_millis`` value, else ValueError."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if value.isdigit():
            return float(value)
        if _DATE_RE.match(value):
            text = value.replace(" ", "T").replace("Z", "+00:00")
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp() * 1000
    raise ValueError(f"failed to parse date field [{value}] with format [{DATE_FORMAT}]")


def _date_math(value: Any) -> float:
    if isinstance(value, str) and value.startswith("now"):
        match = _NOW_RE.match(value)
        if not match:
            raise _parsing(f"unsupported date math [{value}]")
        sign, amount, unit, round_to = match.groups()
        now = datetime.now(UTC)
        if amount:
            delta = timedelta(**{{"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[unit]: int(amount)})
            now = now + delta if sign == "+" else now - delta
        if round_to:
            fields = {"d": {"hour": 0, "minute": 0, "second": 0, "microsecond": 0}, "h": {"minute": 0, "second": 0, "microsecond": 0},
                      "m": {"second": 0, "microsecond": 0}, "s": {"microsecond": 0}}[round_to]
            now = now.replace(**fields)
        return now.timestamp() * 1000
    try:
        return parse_date(value)
    except ValueError as exc:
        raise _parsing(str(exc)) from None


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^0-9a-z]+", text.lower()) if t]


# ---------------------------------------------------------------------------- mappings


def _validate_properties(properties: Any, where: str) -> dict:
    if not isinstance(properties, dict):
        raise EsHttpError(400, "mapper_parsing_exception", f"[properties] must be an object in {where}")
    checked = {}
    for name, spec in properties.items():
        if not isinstance(spec, dict):
            raise EsHttpError(400, "mapper_parsing_exception",
                              f"Expected map for property [fields] on field [{name}] but got a {type(spec).__name__}")
        if "properties" in spec and "type" not in spec:
            checked[name] = {"type": "object", "properties": _validate_properties(spec["properties"], name)}
            continue
        type_ = spec.get("type")
        if type_ not in FIELD_TYPES:
            raise EsHttpError(400, "mapper_parsing_exception",
                              f"No handler for type [{type_}] declared on field [{name}]")
        unknown = set(spec) - {"type", "format", "fields", "index", "doc_values", "ignore_above", "null_value",
                               "properties", "coerce", "positive_score_impact"}
        if unknown:
            raise EsHttpError(400, "mapper_parsing_exception",
                              f"unknown parameter [{min(unknown)}] on mapper [{name}] of type [{type_}]")
        checked[name] = dict(spec)
    return checked


def _validate_mappings(mappings: Any, where: str) -> dict:
    if mappings is None:
        return {"properties": {}}
    if not isinstance(mappings, dict):
        raise EsHttpError(400, "mapper_parsing_exception", f"mappings must be an object in {where}")
    unknown = set(mappings) - {"properties", "dynamic", "_meta", "_source", "date_detection"}
    if unknown:
        raise EsHttpError(400, "mapper_parsing_exception",
                          f"Root mapping definition has unsupported parameters:  [{min(unknown)}]")
    dynamic = mappings.get("dynamic", True)
    if str(dynamic).lower() not in ("true", "false", "strict"):
        raise EsHttpError(400, "mapper_parsing_exception", f"unknown value [{dynamic}] for [dynamic]")
    return {"properties": _validate_properties(mappings.get("properties", {}), where),
            "dynamic": str(dynamic).lower()}


def _merge_properties(current: dict, new: dict, index: str) -> dict:
    merged = dict(current)
    for name, spec in new.items():
        old = merged.get(name)
        if old is not None and old.get("type") != spec.get("type"):
            raise _bad(f"mapper [{name}] cannot be changed from type [{old.get('type')}] to [{spec.get('type')}]")
        merged[name] = spec
    return merged


def _dynamic_type(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "date" if _DATE_RE.match(value) else "text"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return next((t for t in map(_dynamic_type, value) if t), None)
    return None


def _check_value(name: str, type_: str, value: Any) -> None:
    """Raise ValueError (with Elasticsearch's cause type) when ``value`` cannot go into a ``type_`` field."""
    if value is None:
        return
    if isinstance(value, list):
        if type_ == "rank_feature":
            raise ValueError("illegal_argument_exception", f"[rank_feature] fields do not support indexing multiple "
                             f"values for the same field [{name}] in the same document")
        for item in value:
            _check_value(name, type_, item)
        return
    if type_ in NUMERIC_TYPES:
        if isinstance(value, (bool, dict)):
            raise ValueError("illegal_argument_exception", f"Current token ({type(value).__name__}) not numeric")
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                raise ValueError("number_format_exception", f"For input string: \"{value}\"") from None
    elif type_ == "date":
        try:
            parse_date(value)
        except ValueError as exc:
            raise ValueError("illegal_argument_exception", str(exc)) from None
    elif type_ == "rank_feature":  # Lucene's FeatureField: one positive normal float per document
        if isinstance(value, (bool, dict)) or not isinstance(value, (int, float)) or not value >= 1.1754944e-38:
            raise ValueError("illegal_argument_exception", f"featureValue must be a positive normal float, got: "
                             f"{value} for feature {name} which is less than the minimum positive normal float")
    elif type_ == "boolean":
        if not (isinstance(value, bool) or value in ("true", "false", "")):
            raise ValueError("illegal_argument_exception",
                             f"Failed to parse value [{value}] as only [true] or [false] are allowed.")
    elif type_ in ("keyword", "text"):
        if isinstance(value, dict):
            raise ValueError("illegal_argument_exception",
                             "Can't get text on a START_OBJECT")
    elif type_ == "object" and not isinstance(value, dict):
        raise ValueError("illegal_argument_exception",
                         f"object mapping for [{name}] tried to parse field [{name}] as object, but found a concrete value")


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
    uuid: str = field(default_factory=lambda: uuid.uuid4().hex[:22])
    docs: dict[str, _Doc] = field(default_factory=dict)
    searchable: dict[str, _Doc] = field(default_factory=dict)

    def refresh(self) -> None:
        self.searchable = {k: copy.deepcopy(v) for k, v in self.docs.items()}

    def field_type(self, name: str) -> str | None:
        spec = self.mappings["properties"].get(name)
        return spec.get("type") if spec else None

    def check_and_map(self, source: dict, doc_id: str) -> None:
        """Type-check ``source`` against the mapping, adding dynamic fields; raises EsHttpError (400)."""
        new_fields = {}
        for name, value in source.items():
            type_ = self.field_type(name) or new_fields.get(name)
            if type_ is None:
                if self.mappings.get("dynamic") == "strict":
                    raise EsHttpError(400, "strict_dynamic_mapping_exception",
                                      f"[1:2] mapping set to strict, dynamic introduction of [{name}] "
                                      f"within [_doc] is not allowed")
                if self.mappings.get("dynamic") == "false":
                    continue
                type_ = _dynamic_type(value)
                if type_ is None:
                    continue
                new_fields[name] = type_
            try:
                _check_value(name, type_, value)
            except ValueError as exc:
                cause_type, cause_reason = exc.args
                preview = json.dumps(value)[:20]
                raise EsHttpError(400, "document_parsing_exception",
                                  f"[1:2] failed to parse field [{name}] of type [{type_}] in document with id "
                                  f"'{doc_id}'. Preview of field's value: '{preview}'",
                                  caused_by={"type": cause_type, "reason": cause_reason}) from None
        for name, type_ in new_fields.items():
            self.mappings["properties"][name] = {"type": type_}


# ---------------------------------------------------------------------------- queries


def _field_values(source: dict, name: str) -> list:
    value: Any = source
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


def _clauses(value: Any, kind: str) -> list:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    raise _parsing(f"[bool] malformed [{kind}] clause")


def _single_field(body: Any, query: str) -> tuple[str, Any]:
    if not isinstance(body, dict) or len(body) != 1:
        raise _parsing(f"[{query}] query doesn't support multiple fields, found {sorted(body) if isinstance(body, dict) else body}")
    return next(iter(body.items()))


def compile_query(query: Any, index_for: Any) -> Any:
    """Validate ``query`` and return ``match(index, doc) -> bool``; anything outside the subset raises."""
    if not isinstance(query, dict) or len(query) != 1:
        raise _parsing("query malformed, must start with a single query name")
    (kind, body), = query.items()
    if kind == "match_all":
        if body not in ({},) and not (isinstance(body, dict) and set(body) <= {"boost"}):
            raise _parsing("[match_all] query malformed")
        return lambda index, source: True
    if kind == "bool":
        if not isinstance(body, dict):
            raise _parsing("[bool] query malformed")
        unknown = set(body) - {"filter", "must", "must_not", "should", "minimum_should_match", "boost"}
        if unknown:
            raise _parsing(f"[bool] query does not support [{min(unknown)}]")
        must = [compile_query(q, index_for) for k in ("filter", "must") for q in _clauses(body.get(k, []), k)]
        must_not = [compile_query(q, index_for) for q in _clauses(body.get("must_not", []), "must_not")]
        should = [compile_query(q, index_for) for q in _clauses(body.get("should", []), "should")]
        minimum = int(body.get("minimum_should_match", 0 if must or must_not else 1 if should else 0))

        def match_bool(index: _Index, source: dict) -> bool:
            return (all(m(index, source) for m in must) and not any(m(index, source) for m in must_not)
                    and sum(bool(m(index, source)) for m in should) >= minimum)
        return match_bool
    if kind == "term":
        name, spec = _single_field(body, "term")
        if isinstance(spec, dict):
            unknown = set(spec) - {"value", "boost", "case_insensitive"}
            if unknown or "value" not in spec:
                raise _parsing(f"[term] query does not support [{min(unknown or {'(missing value)'})}]")
            spec = spec["value"]
        if isinstance(spec, (dict, list)) or spec is None:
            raise _parsing("[term] query malformed, no start_object after query name")
        wanted = spec

        def match_term(index: _Index, source: dict) -> bool:
            type_ = index.field_type(name)
            for value in _field_values(source, name):
                if type_ == "text":
                    if str(wanted) in _tokens(str(value)):
                        return True
                elif type_ in NUMERIC_TYPES:
                    try:
                        if float(value) == float(wanted):
                            return True
                    except (TypeError, ValueError):
                        raise _parsing(f"failed to create query: For input string: \"{wanted}\"") from None
                elif type_ == "date":
                    if parse_date(value) == _date_math(wanted):
                        return True
                elif type_ == "boolean":
                    if str(value).lower() == str(wanted).lower():
                        return True
                elif str(value) == str(wanted):
                    return True
            return False
        return match_term
    if kind == "range":
        name, spec = _single_field(body, "range")
        if not isinstance(spec, dict):
            raise _parsing("[range] query malformed, no start_object after query name")
        unknown = set(spec) - {"gte", "gt", "lte", "lt", "format", "time_zone", "boost"}
        if unknown:
            raise _parsing(f"[range] query does not support [{min(unknown)}]")
        bounds = {k: spec[k] for k in ("gte", "gt", "lte", "lt") if spec.get(k) is not None}

        def match_range(index: _Index, source: dict) -> bool:
            type_ = index.field_type(name)
            convert = (lambda v: parse_date(v)) if type_ == "date" else float
            limits = {k: (_date_math(v) if type_ == "date" else float(v)) for k, v in bounds.items()}
            for value in _field_values(source, name):
                try:
                    v = convert(value)
                except (TypeError, ValueError):
                    continue
                if all({"gte": v >= lim, "gt": v > lim, "lte": v <= lim, "lt": v < lim}[k]
                       for k, lim in limits.items()):
                    return True
            return False
        return match_range
    if kind == "exists":
        if not isinstance(body, dict) or set(body) - {"field", "boost"} or "field" not in body:
            raise _parsing("[exists] query malformed, [field] is required")
        name = body["field"]
        return lambda index, source: bool(_field_values(source, name))
    raise _parsing(f"unknown query [{kind}]")


# ---------------------------------------------------------------------------- the server state


@dataclass
class RequestRecord:
    """One request as the double saw it (the Authorization header is kept as its scheme only)."""

    method: str
    path: str
    params: dict
    headers: dict
    body: bytes
    status: int = 0
    auth_scheme: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def ndjson(self) -> list:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class _Fault:
    status: int
    remaining: int | None  # None: forever
    path: re.Pattern | None = None
    method: str | None = None
    ids: frozenset | None = None
    error_type: str | None = None
    reason: str | None = None

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


class EsDouble:
    """The double: ``start()``, use ``.url`` with the real client, ``stop()``; or use it as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, compat: Iterable[int] = SUPPORTED_COMPAT):
        self._host, self._port = host, port
        self.compat = tuple(compat)
        self._lock = threading.RLock()
        self._indices: dict[str, _Index] = {}
        self._templates: dict[str, dict] = {}
        self._pits: dict[str, dict] = {}
        self._scripts: dict[str, dict] = {}  # stored scripts, see tests/es_double_script.py
        self._faults: list[_Fault] = []
        self._item_faults: list[_Fault] = []
        self._auth: set[str] | None = None
        self._echo_credentials = False
        self._seq = itertools.count()
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
        """Forget indices, templates, PITs, faults, auth and the request log."""
        with self._lock:
            self._indices.clear()
            self._templates.clear()
            self._pits.clear()
            self._scripts.clear()
            self._faults.clear()
            self._item_faults.clear()
            self._auth = None
            self._echo_credentials = False
            self.requests.clear()

    def create_index(self, index: str, properties: Mapping[str, Any] | None = None, dynamic: str = "true") -> None:
        with self._lock:
            self._create_index(index, {"properties": dict(properties or {}), "dynamic": dynamic})

    def seed(self, index: str, docs: Mapping[str, dict] | Iterable[dict], refresh: bool = True) -> None:
        """Index documents directly (type-checked like ``PUT /idx/_doc/id``); a list takes ids from ``"id"``."""
        items = docs.items() if isinstance(docs, Mapping) else ((d["id"], d) for d in docs)
        with self._lock:
            idx = self._indices.get(index) or self._create_index(index, None)
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
        with self._lock:
            return set(self._pits)

    def fail_requests(self, status: int, times: int | None = 1, path: str | None = None,
                      method: str | None = None, error_type: str | None = None, reason: str | None = None) -> None:
        """Answer the next ``times`` requests (``None``: all) whose path matches the regex ``path`` with ``status``."""
        with self._lock:
            self._faults.append(_Fault(status, times, re.compile(path) if path else None, method, None,
                                       error_type, reason))

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
    def _create_index(self, name: str, mappings: dict | None) -> _Index:
        if name in self._indices:
            raise EsHttpError(400, "resource_already_exists_exception", f"index [{name}/{self._indices[name].uuid}] "
                              "already exists", index=name)
        if not _INDEX_NAME_RE.match(name) or len(name) > 255:
            raise EsHttpError(400, "invalid_index_name_exception",
                              f"Invalid index name [{name}], must be lowercase and must not start with '_', '-', or '+'",
                              index=name)
        base = {"properties": {}, "dynamic": "true"}
        matching = [t for t in self._templates.values()
                    if any(fnmatch.fnmatchcase(name, p) for p in t["index_patterns"])]
        if matching:
            best = max(matching, key=lambda t: t.get("priority", 0))
            template_mappings = best["template"].get("mappings") or {"properties": {}}
            base = {"properties": dict(template_mappings.get("properties", {})),
                    "dynamic": template_mappings.get("dynamic", "true")}
        if mappings:
            base["properties"] = {**base["properties"], **mappings.get("properties", {})}
            base["dynamic"] = mappings.get("dynamic", base["dynamic"])
        index = _Index(name, base)
        self._indices[name] = index
        return index

    def _put_doc(self, index: _Index, doc_id: str, source: dict) -> tuple[_Doc, bool]:
        index.check_and_map(source, doc_id)
        old = index.docs.get(doc_id)
        doc = _Doc(source, (old.version + 1) if old else 1, next(self._seq), old.shard_doc if old else next(self._seq))
        index.docs[doc_id] = doc
        return doc, old is None

    def _resolve(self, expression: str, must_exist: bool = True) -> list[_Index]:
        names: list[str] = []
        for part in expression.split(","):
            if any(c in part for c in "*?"):
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
        except EsHttpError as exc:
            status, payload, extra_headers = exc.status, exc.body(), exc.headers
        except Exception as exc:  # noqa: BLE001 -- a bug in the double must look like a server error, not hang the client
            status, payload = 500, EsHttpError(500, "double_internal_error", repr(exc)).body()
        record.status = status
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
    unknown = sorted(set(params) - allowed - COMMON_PARAMS)
    if unknown:
        raise _bad(f"request [{path}] contains unrecognized parameter{'s' if len(unknown) > 1 else ''}: "
                   f"[{', '.join(unknown)}]")


def _keep_alive_ms(value: Any) -> float:
    match = _KEEP_ALIVE_RE.match(str(value))
    if not match:
        raise _parsing(f"failed to parse setting [keep_alive] with value [{value}] as a time value")
    amount, unit = int(match.group(1)), match.group(2)
    return amount * {"ms": 1, "s": 1e3, "m": 6e4, "h": 3.6e6, "d": 8.64e7}[unit]


def _shards() -> dict:
    return {"total": 1, "successful": 1, "skipped": 0, "failed": 0}


def _route(double: EsDouble, method: str, path: str, params: dict, body: bytes, auth: str | None) -> tuple[int, Any]:
    with double._lock:
        if double._auth is not None and auth not in double._auth:
            offered = f" with [{auth}]" if double._echo_credentials and auth else ""
            reason = (f"unable to authenticate user{offered} for REST request [{path}]" if auth
                      else f"missing authentication credentials for REST request [{path}]")
            raise EsHttpError(401, "security_exception", reason,
                              headers={"WWW-Authenticate": 'Basic realm="security", ApiKey'})
        for fault in double._faults:
            if (fault.path is None or fault.path.search(path)) and (fault.method in (None, method)) and fault.take():
                type_, reason = _error_type_for(fault.status)
                raise EsHttpError(fault.status, fault.error_type or type_, fault.reason or reason)
        parts = [p for p in path.split("/") if p]
        key = (method, tuple(p if p.startswith("_") else "*" for p in parts))
        if key in (("GET", ()), ("HEAD", ())):
            return 200, _info(double)
        handlers = {
            ("PUT", ("_index_template", "*")): _put_template, ("POST", ("_index_template", "*")): _put_template,
            ("GET", ("_index_template", "*")): _get_template, ("DELETE", ("_index_template", "*")): _delete_template,
            ("POST", ("_bulk",)): _bulk, ("PUT", ("_bulk",)): _bulk,
            ("POST", ("*", "_bulk")): _bulk, ("PUT", ("*", "_bulk")): _bulk,
            ("POST", ("_refresh",)): _refresh, ("GET", ("_refresh",)): _refresh,
            ("POST", ("*", "_refresh")): _refresh, ("GET", ("*", "_refresh")): _refresh,
            ("POST", ("*", "_pit")): _open_pit, ("DELETE", ("_pit",)): _close_pit,
            ("POST", ("_search",)): _search, ("GET", ("_search",)): _search,
            ("POST", ("*", "_search")): _search, ("GET", ("*", "_search")): _search,
            ("POST", ("*", "_count")): _count, ("GET", ("*", "_count")): _count,
            ("PUT", ("_scripts", "*")): _stored_script(es_double_script.put_script),
            ("POST", ("_scripts", "*")): _stored_script(es_double_script.put_script),
            ("GET", ("_scripts", "*")): _stored_script(es_double_script.get_script),
            ("DELETE", ("_scripts", "*")): _stored_script(es_double_script.delete_script),
            ("PUT", ("*", "_mapping")): _put_mapping, ("POST", ("*", "_mapping")): _put_mapping,
            ("GET", ("*", "_mapping")): _get_mapping,
            ("PUT", ("*", "_doc", "*")): _index_doc, ("POST", ("*", "_doc", "*")): _index_doc,
            ("GET", ("*", "_doc", "*")): _get_doc,
            ("POST", ("*", "_mget")): _mget, ("GET", ("*", "_mget")): _mget,
            ("PUT", ("*",)): _create_index, ("DELETE", ("*",)): _delete_index, ("HEAD", ("*",)): _index_exists,
        }
        handler = handlers.get(key)
        if handler is None:
            raise _bad(f"no handler found for uri [{path}] and method [{method}]")
        return handler(double, parts, params, body)


def _script_call(function: Any, *args: Any) -> Any:
    """Run a hook of tests/es_double_script.py, turning its errors into the double's."""
    try:
        return function(*args)
    except es_double_script.ScriptError as exc:
        raise EsHttpError(exc.status, exc.type, exc.reason, **exc.extra) from None


def _stored_script(function: Any) -> Any:
    return lambda double, parts, params, body: _script_call(function, double._scripts, parts[1], params, body)


def _info(double: EsDouble) -> dict:
    major = max(double.compat)
    return {"name": "es-double", "cluster_name": "es-double", "cluster_uuid": "es-double-cluster",
            "version": {"number": f"{major}.0.0", "build_flavor": "default", "lucene_version": "10.0.0",
                        "minimum_wire_compatibility_version": f"{major - 1}.18.0",
                        "minimum_index_compatibility_version": f"{major - 1}.0.0"},
            "tagline": "You Know, for Search"}


def _put_template(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"create", "master_timeout", "cause"}, "/" + "/".join(parts))
    name = parts[1]
    spec = _json_body(body)
    unknown = set(spec) - {"index_patterns", "template", "priority", "composed_of", "version", "_meta",
                           "data_stream", "allow_auto_create"}
    if unknown:
        raise EsHttpError(400, "x_content_parse_exception", f"[1:2] [index_template] unknown field [{min(unknown)}]")
    patterns = spec.get("index_patterns")
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: index patterns are missing;")
    if spec.get("composed_of"):
        raise EsHttpError(400, "invalid_index_template_exception",
                          f"index_template [{name}] invalid, cause [component templates are not supported by the ES double]")
    template = spec.get("template") or {}
    unknown = set(template) - {"mappings", "settings", "aliases"}
    if unknown:
        raise EsHttpError(400, "x_content_parse_exception", f"[template] unknown field [{min(unknown)}]")
    mappings = _validate_mappings(template.get("mappings"), f"index template [{name}]")
    priority = int(spec.get("priority", 0))
    if params.get("create") == "true" and name in double._templates:
        raise _bad(f"index template [{name}] already exists")
    for other_name, other in double._templates.items():
        if other_name != name and other.get("priority", 0) == priority and any(
                fnmatch.fnmatchcase(p, q) or fnmatch.fnmatchcase(q, p) for p in patterns for q in other["index_patterns"]):
            raise _bad(f"index template [{name}] has index patterns {patterns} matching patterns from existing "
                       f"templates [{other_name}] with patterns ({other_name} => {other['index_patterns']}) that "
                       f"have the same priority [{priority}], multiple index templates may not match during index "
                       "creation, please use a different priority")
    double._templates[name] = {"index_patterns": list(patterns), "priority": priority,
                               "template": {**template, "mappings": mappings}}
    return 200, {"acknowledged": True}


def _get_template(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    name = parts[1]
    if name not in double._templates:
        raise EsHttpError(404, "resource_not_found_exception", f"index template matching [{name}] not found")
    return 200, {"index_templates": [{"name": name, "index_template": copy.deepcopy(double._templates[name])}]}


def _delete_template(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    if double._templates.pop(parts[1], None) is None:
        raise EsHttpError(404, "resource_not_found_exception", f"index_template [{parts[1]}] missing")
    return 200, {"acknowledged": True}


def _create_index(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"wait_for_active_shards", "timeout", "master_timeout"}, "/" + parts[0])
    spec = _json_body(body, required=False)
    unknown = set(spec) - {"mappings", "settings", "aliases"}
    if unknown:
        raise _parsing(f"unknown key [{min(unknown)}] for create index")
    mappings = _validate_mappings(spec.get("mappings"), f"index [{parts[0]}]") if "mappings" in spec else None
    double._create_index(parts[0], mappings)
    return 200, {"acknowledged": True, "shards_acknowledged": True, "index": parts[0]}


def _delete_index(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"ignore_unavailable", "allow_no_indices", "expand_wildcards", "timeout", "master_timeout"},
                  "/" + parts[0])
    indices = double._resolve(parts[0], must_exist=params.get("ignore_unavailable") != "true")
    for index in indices:
        del double._indices[index.name]
    return 200, {"acknowledged": True}


def _index_exists(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    return (200 if double._resolve(parts[0], must_exist=False) else 404), None


def _put_mapping(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"timeout", "master_timeout", "write_index_only", "ignore_unavailable",
                           "allow_no_indices", "expand_wildcards"}, "/" + "/".join(parts))
    indices = double._resolve(parts[0])
    if not indices:
        raise _index_missing(parts[0])
    mappings = _validate_mappings(_json_body(body), f"put mapping on [{parts[0]}]")
    merged = [(index, _merge_properties(index.mappings["properties"], mappings["properties"], index.name))
              for index in indices]  # validate all before changing any
    for index, properties in merged:
        index.mappings["properties"] = properties
    return 200, {"acknowledged": True}


def _get_mapping(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    return 200, {i.name: {"mappings": copy.deepcopy(i.mappings)} for i in double._resolve(parts[0])}


def _index_doc(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"refresh", "routing", "timeout", "op_type", "version", "version_type"},
                  "/" + "/".join(parts))
    name, doc_id = parts[0], parts[2]
    index = double._indices.get(name) or double._create_index(name, None)
    doc, created = double._put_doc(index, doc_id, _json_body(body))
    if params.get("refresh") in ("true", "", "wait_for"):
        index.refresh()
    return (201 if created else 200), {"_index": name, "_id": doc_id, "_version": doc.version,
                                       "result": "created" if created else "updated", "_shards": _shards(),
                                       "_seq_no": doc.seq_no, "_primary_term": 1}


def _get_doc(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"realtime", "refresh", "routing", "_source", "_source_includes", "_source_excludes"},
                  "/" + "/".join(parts))
    name, doc_id = parts[0], parts[2]
    if name not in double._indices:
        raise _index_missing(name)
    doc = double._indices[name].docs.get(doc_id)
    if doc is None:
        return 404, {"_index": name, "_id": doc_id, "found": False}
    return 200, {"_index": name, "_id": doc_id, "_version": doc.version, "_seq_no": doc.seq_no,
                 "_primary_term": 1, "found": True, "_source": copy.deepcopy(doc.source)}


def _mget(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    """``POST /idx/_mget`` with ``{"ids": [...]}``; ``_source_includes`` keeps top-level fields only."""
    _check_params(params, {"realtime", "refresh", "routing", "_source", "_source_includes", "_source_excludes"},
                  "/" + "/".join(parts))
    name = parts[0]
    if name not in double._indices:
        raise _index_missing(name)
    request = _json_body(body)
    ids = request.get("ids") if isinstance(request, dict) else None
    if not isinstance(ids, list) or not ids or set(request) - {"ids"}:
        raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: no documents to get;")
    includes = [f for f in params.get("_source_includes", "").split(",") if f]
    docs = []
    for doc_id in ids:
        doc = double._indices[name].docs.get(str(doc_id))
        if doc is None:
            docs.append({"_index": name, "_id": str(doc_id), "found": False})
            continue
        source = copy.deepcopy(doc.source)
        if includes:
            source = {k: v for k, v in source.items() if any(fnmatch.fnmatchcase(k, p) for p in includes)}
        docs.append({"_index": name, "_id": str(doc_id), "_version": doc.version, "_seq_no": doc.seq_no,
                     "_primary_term": 1, "found": True, "_source": source})
    return 200, {"docs": docs}


def _refresh(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    indices = double._resolve(parts[0]) if parts[0] != "_refresh" else list(double._indices.values())
    for index in indices:
        index.refresh()
    return 200, {"_shards": _shards()}


def _count(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"ignore_unavailable", "allow_no_indices", "expand_wildcards"}, "/" + "/".join(parts))
    spec = _json_body(body, required=False)
    if set(spec) - {"query"}:
        raise _parsing(f"request does not support [{min(set(spec) - {'query'})}]")
    match = compile_query(spec.get("query", {"match_all": {}}), None)
    total = sum(1 for index in double._resolve(parts[0]) for doc in index.searchable.values()
                if match(index, doc.source))
    return 200, {"count": total, "_shards": _shards()}


def _bulk(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"refresh", "timeout", "routing", "pipeline", "wait_for_active_shards", "require_alias"},
                  "/" + "/".join(parts))
    default_index = parts[0] if parts[0] != "_bulk" else None
    if not body.endswith(b"\n"):
        raise _bad("The bulk request must be terminated by a newline [\\n]")
    lines = body.split(b"\n")[:-1]
    started = time.monotonic()
    operations = []
    position = 0
    while position < len(lines):
        try:
            action = json.loads(lines[position])
        except ValueError:
            raise EsHttpError(400, "x_content_parse_exception", f"[{position + 1}:1] Malformed action/metadata line") from None
        if not isinstance(action, dict) or len(action) != 1:
            raise _bad(f"Malformed action/metadata line [{position + 1}], expected START_OBJECT or END_OBJECT")
        (op, meta), = action.items()
        if op not in ("update", "index"):
            raise _bad(f"Malformed action/metadata line [{position + 1}], expected one of [index, update] "
                       f"(the ES double supports no other) but found [{op}]")
        unknown = set(meta) - {"_index", "_id", "retry_on_conflict", "routing"}
        if unknown:
            raise _bad(f"Action/metadata line [{position + 1}] contains an unknown parameter [{min(unknown)}]")
        if position + 1 >= len(lines):
            raise _bad(f"Validation Failed: 1: no requests added or missing source for action line [{position + 1}];")
        try:
            source = json.loads(lines[position + 1])
        except ValueError:
            raise EsHttpError(400, "x_content_parse_exception", f"[{position + 2}:1] Unexpected character") from None
        if not isinstance(source, dict):
            raise EsHttpError(400, "x_content_parse_exception", f"[{position + 2}:1] expected a JSON object")
        if op == "update" and set(source) & es_double_script.UPDATE_FIELDS:
            _script_call(es_double_script.check_update_body, source, position + 2)
        elif op == "update":
            unknown = set(source) - {"doc", "detect_noop", "doc_as_upsert"}
            if unknown:
                raise EsHttpError(400, "x_content_parse_exception",
                                  f"[{position + 2}:2] [UpdateRequest] unknown field [{min(unknown)}]"
                                  " (the ES double supports only [doc] updates)")
            if not isinstance(source.get("doc"), dict):
                raise EsHttpError(400, "action_request_validation_exception",
                                  "Validation Failed: 1: script or doc is missing;")
        index_name = meta.get("_index", default_index)
        if not index_name or "_id" not in meta and op == "update":
            raise EsHttpError(400, "action_request_validation_exception",
                              "Validation Failed: 1: index is missing;" if not index_name else "Validation Failed: 1: id is missing;")
        operations.append((op, index_name, str(meta.get("_id") or uuid.uuid4().hex), source))
        position += 2
    items = [_bulk_item(double, *operation) for operation in operations]
    if params.get("refresh") in ("true", "", "wait_for"):
        for name in {name for _, name, _, _ in operations if name in double._indices}:
            double._indices[name].refresh()
    return 200, {"took": int((time.monotonic() - started) * 1000), "errors": any("error" in i[next(iter(i))] for i in items),
                 "items": items}


def _item_fault(double: EsDouble, doc_id: str) -> _Fault | None:
    for fault in double._item_faults:
        if (fault.ids is None or doc_id in fault.ids) and fault.take():
            return fault
    return None


def _bulk_item(double: EsDouble, op: str, index_name: str, doc_id: str, source: dict) -> dict:
    base = {"_index": index_name, "_id": doc_id}
    fault = _item_fault(double, doc_id)
    if fault is not None:
        type_, reason = _error_type_for(fault.status)
        return {op: {**base, "status": fault.status,
                     "error": {"type": fault.error_type or type_, "reason": fault.reason or reason}}}
    index = double._indices.get(index_name)
    try:
        if index is None:
            if op == "update":
                raise _index_missing(index_name)
            index = double._create_index(index_name, None)
        if op == "index":
            doc, created = double._put_doc(index, doc_id, source)
            return {op: {**base, "_version": doc.version, "result": "created" if created else "updated",
                         "_shards": _shards(), "_seq_no": doc.seq_no, "_primary_term": 1,
                         "status": 201 if created else 200}}
        old = index.docs.get(doc_id)
        if "script" in source:  # a scripted update, see tests/es_double_script.py
            result, new_source = _script_call(es_double_script.apply_update, double._scripts, doc_id,
                                              old.source if old else None, source)
            if result == "noop":
                return {op: {**base, "_version": old.version if old else -1, "result": "noop",
                             "_shards": {**_shards(), "total": 0, "successful": 0},
                             "_seq_no": old.seq_no if old else -2, "_primary_term": 1 if old else 0, "status": 200}}
            doc, created = double._put_doc(index, doc_id, new_source)
            return {op: {**base, "_version": doc.version, "result": result, "_shards": _shards(),
                         "_seq_no": doc.seq_no, "_primary_term": 1, "status": 201 if created else 200}}
        if old is None:
            if source.get("doc_as_upsert"):
                doc, _ = double._put_doc(index, doc_id, dict(source["doc"]))
                return {op: {**base, "_version": doc.version, "result": "created", "_shards": _shards(),
                             "_seq_no": doc.seq_no, "_primary_term": 1, "status": 201}}
            raise EsHttpError(404, "document_missing_exception", f"[{doc_id}]: document missing",
                              index_uuid=index.uuid, shard="0", index=index_name)
        merged = _deep_merge(old.source, source["doc"])
        if merged == old.source and source.get("detect_noop", True):
            return {op: {**base, "_version": old.version, "result": "noop", "_shards": {**_shards(), "total": 0,
                         "successful": 0}, "_seq_no": old.seq_no, "_primary_term": 1, "status": 200}}
        doc, _ = double._put_doc(index, doc_id, merged)
        return {op: {**base, "_version": doc.version, "result": "updated", "_shards": _shards(),
                     "_seq_no": doc.seq_no, "_primary_term": 1, "status": 200}}
    except EsHttpError as exc:
        error = {"type": exc.type, "reason": exc.reason, **exc.extra}
        if index is not None:
            error.setdefault("index_uuid", index.uuid)
            error.setdefault("index", index_name)
        return {op: {**base, "status": exc.status, "error": error}}


def _deep_merge(old: dict, new: dict) -> dict:
    merged = copy.deepcopy(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _open_pit(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"keep_alive", "ignore_unavailable", "expand_wildcards", "routing", "preference",
                           "allow_partial_search_results"}, "/" + "/".join(parts))
    if "keep_alive" not in params:
        raise EsHttpError(400, "action_request_validation_exception", "Validation Failed: 1: [keep_alive] is not specified;")
    keep_alive = _keep_alive_ms(params["keep_alive"])
    indices = double._resolve(parts[0])
    pit_id = base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode().rstrip("=")
    double._pits[pit_id] = {"indices": {i.name: (i, copy.deepcopy(i.searchable)) for i in indices},
                            "expires": time.monotonic() + keep_alive / 1000}
    return 200, {"id": pit_id, "_shards": _shards()}


def _close_pit(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    spec = _json_body(body)
    if set(spec) != {"id"}:
        raise _parsing("[close_point_in_time] expects exactly [id]")
    if double._pits.pop(spec["id"], None) is None:
        return 404, {"succeeded": True, "num_freed": 0}
    return 200, {"succeeded": True, "num_freed": 1}


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
                unknown = set(order) - {"order", "format", "missing", "unmapped_type"}
                if unknown:
                    raise _parsing(f"[field_sort] unknown field [{min(unknown)}]")
                order = order.get("order", "asc")
            if order not in ("asc", "desc"):
                raise _parsing(f"[{name}] sort order [{order}] is not one of [asc, desc]")
            spec.append((name, order))
        else:
            raise _parsing("malformed sort format, within the sort array, an object, or an actual string are allowed")
    return spec


def _sort_value(index: _Index, doc_id: str, doc: _Doc, name: str) -> Any:
    if name in ("_shard_doc", "_doc"):
        return doc.shard_doc
    if name == "_id":
        return doc_id
    values = _field_values(doc.source, name)
    if not values:
        return None
    value = values[0]
    type_ = index.field_type(name)
    if type_ == "date":
        return int(parse_date(value))
    if type_ in NUMERIC_TYPES:
        return float(value)
    return str(value)


def _search(double: EsDouble, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    _check_params(params, {"allow_partial_search_results", "ignore_unavailable", "expand_wildcards"},
                  "/" + "/".join(parts))
    started = time.monotonic()
    spec = _json_body(body, required=False)
    unknown = set(spec) - {"query", "size", "from", "sort", "search_after", "pit", "slice", "track_total_hits",
                           "_source"}
    if unknown:
        raise _parsing(f"Unknown key for a START_OBJECT in [{min(unknown)}].")
    pit = spec.get("pit")
    if pit is not None:
        if parts[0] != "_search":
            raise EsHttpError(400, "action_request_validation_exception",
                              "Validation Failed: 1: [indices] cannot be used with point in time. Do not specify "
                              "any index with point in time.;")
        if not isinstance(pit, dict) or set(pit) - {"id", "keep_alive"} or "id" not in pit:
            raise _parsing("[pit] malformed: expected [id] and optional [keep_alive]")
        state = double._pits.get(pit["id"])
        if state is None or state["expires"] < time.monotonic():
            double._pits.pop(pit["id"], None)
            raise EsHttpError(404, "search_context_missing_exception",
                              "No search context found for id [the point in time is closed or expired]")
        if "keep_alive" in pit:
            state["expires"] = time.monotonic() + _keep_alive_ms(pit["keep_alive"]) / 1000
        sources = [(index, docs) for index, docs in state["indices"].values()]
    else:
        if parts[0] == "_search":
            sources = [(i, i.searchable) for i in double._indices.values()]
        else:
            sources = [(i, i.searchable) for i in double._resolve(parts[0])]
    size = spec.get("size", 10)
    offset = spec.get("from", 0)
    if not isinstance(size, int) or size < 0 or not isinstance(offset, int) or offset < 0:
        raise _bad("[size] and [from] must be non-negative integers")
    if size + offset > 10_000:
        raise _bad(f"Result window is too large, from + size must be less than or equal to: [10000] but was "
                   f"[{size + offset}]. See the scroll api for a more efficient way to request large data sets.")
    query = compile_query(spec.get("query", {"match_all": {}}), None)
    sort = _sort_spec(spec.get("sort"))
    if pit is not None and not any(name == "_shard_doc" for name, _ in sort):
        sort.append(("_shard_doc", "asc"))  # Elasticsearch's implicit tiebreaker for PIT searches
    search_after = spec.get("search_after")
    if search_after is not None:
        if not sort:
            raise _bad("Sort must contain at least one field.")
        if not isinstance(search_after, list) or len(search_after) != len(sort):
            raise _bad(f"search_after has {len(search_after) if isinstance(search_after, list) else 1} value(s) "
                       f"but sort has {len(sort)}.")
        if offset:
            raise _bad("[from] parameter must be set to 0 when [search_after] is used.")
    slice_spec = spec.get("slice")
    if slice_spec is not None:
        if pit is None:
            raise EsHttpError(400, "action_request_validation_exception",
                              "Validation Failed: 1: [slice] can only be used with [scroll] or [point-in-time] requests;")
        if not isinstance(slice_spec, dict) or set(slice_spec) - {"id", "max", "field"} or \
                not isinstance(slice_spec.get("id"), int) or not isinstance(slice_spec.get("max"), int):
            raise _parsing("[slice] malformed: expected integer [id] and [max]")
        if slice_spec["max"] <= 1:
            raise _bad("max must be greater than 1")
        if not 0 <= slice_spec["id"] < slice_spec["max"]:
            raise _bad("id must be greater than or equal to 0 and lower than max")
    hits = []
    for index, docs in sources:
        for doc_id, doc in docs.items():
            if slice_spec is not None and zlib.crc32(doc_id.encode()) % slice_spec["max"] != slice_spec["id"]:
                continue
            if query(index, doc.source):
                hits.append((index, doc_id, doc, [_sort_value(index, doc_id, doc, name) for name, _ in sort]))

    def key(values: list) -> tuple:
        out = []
        for (name, order), value in zip(sort, values):
            missing = value is None
            if order == "desc" and not missing:
                value = _Desc(value)
            out.append((missing, value if not missing else 0))
        return tuple(out)

    if sort:
        hits.sort(key=lambda h: key(h[3]))
        if search_after is not None:
            after = key(search_after)
            hits = [h for h in hits if key(h[3]) > after]
    total = len(hits)
    page = hits[offset:offset + size]
    source_filter = spec.get("_source", True)
    result_hits = []
    for index, doc_id, doc, values in page:
        hit = {"_index": index.name, "_id": doc_id, "_score": None}
        if source_filter is True:
            hit["_source"] = copy.deepcopy(doc.source)
        elif isinstance(source_filter, list):
            hit["_source"] = {k: copy.deepcopy(v) for k, v in doc.source.items() if k in source_filter}
        if sort:
            hit["sort"] = values
        result_hits.append(hit)
    hits_body: dict[str, Any] = {"max_score": None, "hits": result_hits}
    if spec.get("track_total_hits", True) is not False:
        hits_body["total"] = {"value": total, "relation": "eq"}
    response: dict[str, Any] = {"took": int((time.monotonic() - started) * 1000), "timed_out": False,
                                "_shards": _shards(), "hits": hits_body}
    if pit is not None:
        response["pit_id"] = pit["id"]
    return 200, response


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
