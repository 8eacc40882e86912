"""Reading many documents: ``_search`` (``pit``, ``slice``, ``sort``, ``search_after``, paging, ``_source``,
``track_total_hits``), ``_count``, and opening and closing points in time (``_pit``).

Scroll is not implemented: ``?scroll`` is refused as an unknown parameter, like any other.
Queries are compiled by ``queries.py``; a search sees what the last refresh made visible.
"""
from __future__ import annotations

import copy
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.es_double.aggregations import compile_aggs, run_aggs
from tests.es_double.errors import NOT_IMPLEMENTED, EsHttpError, illegal_argument, parsing_error, unknown_field
from tests.es_double.mappings import NUMERIC_TYPES, FieldRef
from tests.es_double.queries import compile_query
from tests.es_double.rest import Routes, check_params, expand_wildcards, flag, json_body, keep_alive_ms, shards, token
from tests.es_double.state import Cluster, Doc, Index, Pit

ROUTES = Routes()


@ROUTES.route("POST", path="/*/_pit")
def open_pit(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"keep_alive", "ignore_unavailable", "expand_wildcards", "preference",
                          "allow_partial_search_results"}, "/" + "/".join(parts))
    expand_wildcards(params)
    if body:
        raise parsing_error(f"a body for open point in time (index_filter): {NOT_IMPLEMENTED}")
    if "keep_alive" not in params:
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: [keep_alive] is not specified;")
    keep_alive = keep_alive_ms(params["keep_alive"])
    indices = cluster.resolve(parts[0], must_exist=not flag(params, "ignore_unavailable"))
    pit = cluster.open_pit(indices, keep_alive)
    return 200, {"id": pit.ids[0], "_shards": shards(len(indices))}


@ROUTES.route("DELETE", path="/_pit")
def close_pit(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, set(), "/_pit")
    spec = json_body(body)
    if set(spec) != {"id"}:
        raise parsing_error("[close_point_in_time] expects exactly [id]")
    pit = cluster.close_pit(spec["id"])  # every id handed out for it points at the same contexts
    if pit is None:
        return 404, {"succeeded": True, "num_freed": 0}
    return 200, {"succeeded": True, "num_freed": len(pit.indices)}


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
                            raise parsing_error(f"[field_sort] [{key}]: {NOT_IMPLEMENTED}")
                        raise parsing_error(unknown_field("field_sort", key, ["order", "format", "missing",
                                                                              "unmapped_type", "mode", "numeric_type"]))
                order = order.get("order", "asc")
            if order not in ("asc", "desc"):
                raise parsing_error(f"[{name}] sort order [{order}] is not one of [asc, desc]")
            spec.append((name, order))
        else:
            raise parsing_error("malformed sort format, within the sort array, an object, or an actual string are "
                                "allowed")
    if any(name == "_score" for name, _ in spec):
        raise parsing_error(f"sort on [_score]: the ES double does not score; {NOT_IMPLEMENTED}")
    return spec


def _resolve_sort(spec: list[tuple[str, str]], indices: list[Index], pit: bool) -> list[_SortKey]:
    keys = []
    for name, order in spec:
        if name == "_shard_doc" and not pit:
            raise illegal_argument("[_shard_doc] sort field cannot be used without [point in time]")
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
            raise illegal_argument("Text fields are not optimised for operations that require per-document field "
                                   "data like aggregations and sorting, so these operations are disabled by default. "
                                   "Please use a keyword field instead. Alternatively, set fielddata=true on "
                                   f"[{name}] in order to load field data by uninverting the inverted index. Note "
                                   "that this can use significant memory.")
        if ref.type == "object":
            raise illegal_argument(f"sort on the object field [{name}]")
        if ref.type == "rank_feature":
            raise illegal_argument("[rank_feature] fields do not support sorting, scripting or aggregating")
        keys.append(_SortKey(name, order, ref))
    return keys


def _sort_value(key: _SortKey, shard: int, doc_id: str, doc: Doc, index: Index) -> Any:
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
        raise parsing_error(f"[_source] {json.dumps(spec)}: the ES double takes true, false or field names without "
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


@ROUTES.route("POST", "GET", path="/_search")
@ROUTES.route("POST", "GET", path="/*/_search")
def search(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"allow_partial_search_results", "ignore_unavailable", "expand_wildcards"},
                 "/" + "/".join(parts))
    expand_wildcards(params)
    started = time.monotonic()
    spec = json_body(body, required=False)
    known = ["query", "size", "from", "sort", "search_after", "pit", "slice", "track_total_hits", "_source", "aggs",
             "aggregations"]
    for key in spec:
        if key not in known:
            raise parsing_error(f"Unknown key for a {token(spec[key])} in [{key}].")
    pit_spec = spec.get("pit")
    pit = _pit_for(cluster, parts, pit_spec) if pit_spec is not None else None
    if pit is not None:
        sources = pit.indices
    elif parts[0] == "_search":
        sources = [(i, cluster.visible(i)) for i in cluster.indices.values()]
    else:
        indices = cluster.resolve(parts[0], must_exist=not flag(params, "ignore_unavailable"))
        sources = [(i, cluster.visible(i)) for i in indices]
    size, offset = spec.get("size", 10), spec.get("from", 0)
    if not isinstance(size, int) or size < 0 or not isinstance(offset, int) or offset < 0:
        raise illegal_argument("[size] and [from] must be non-negative integers")
    if size + offset > 10_000:
        raise illegal_argument(f"Result window is too large, from + size must be less than or equal to: [10000] but "
                               f"was [{size + offset}]. See the scroll api for a more efficient way to request large "
                               "data sets.")
    query = compile_query(spec.get("query", {"match_all": {}}))
    if "aggs" in spec and "aggregations" in spec:
        raise parsing_error("Found two aggregation definitions: [aggs] and [aggregations]")
    aggs = compile_aggs(spec.get("aggs", spec.get("aggregations"))) if ("aggs" in spec or "aggregations" in spec) \
        else None
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
    aggregations = run_aggs(aggs, [(m[0], m[2].source) for m in matches]) if aggs is not None else None
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
        raise parsing_error(f"[track_total_hits] must be a boolean or a non-negative integer, got [{track}]")
    response: dict[str, Any] = {"took": int((time.monotonic() - started) * 1000), "timed_out": False,
                                "_shards": shards(len(sources)), "hits": hits_body}
    if aggregations is not None:
        response["aggregations"] = aggregations  # over every match, before search_after and paging
    if pit is not None:
        response["pit_id"] = cluster.next_pit_id(pit)  # Elasticsearch may answer with a new id; use the latest
    return 200, response


def _pit_for(cluster: Cluster, parts: list, pit_spec: Any) -> Pit:
    if parts[0] != "_search":
        raise EsHttpError(400, "action_request_validation_exception",
                          "Validation Failed: 1: [indices] cannot be used with point in time. Do not specify "
                          "any index with point in time.;")
    if not isinstance(pit_spec, dict) or set(pit_spec) - {"id", "keep_alive"} or "id" not in pit_spec:
        raise parsing_error("[pit] malformed: expected [id] and optional [keep_alive]")
    pit = cluster.pits.get(pit_spec["id"])
    if pit is None:
        raise EsHttpError(404, "search_context_missing_exception",
                          "No search context found for id [the point in time is closed or expired]")
    if "keep_alive" in pit_spec:
        pit.expires = cluster.clock() + keep_alive_ms(pit_spec["keep_alive"]) / 1000
    return pit


def _search_after(keys: list[_SortKey], search_after: Any, offset: int, indices: list[Index]) -> tuple | None:
    if search_after is None:
        return None
    if not keys:
        raise illegal_argument("Sort must contain at least one field.")
    if not isinstance(search_after, list) or len(search_after) != len(keys):
        count = len(search_after) if isinstance(search_after, list) else 1
        raise illegal_argument(f"search_after has {count} value(s) but sort has {len(keys)}.")
    if offset:
        raise illegal_argument("[from] parameter must be set to 0 when [search_after] is used.")
    values = []
    for key, value in zip(keys, search_after):
        ref = indices[0].field(key.name) if key.ref is not None and indices else key.ref
        try:
            values.append(None if value is None else _sort_input(key, ref, value))
        except (TypeError, ValueError) as exc:
            raise illegal_argument(str(exc) if "parse" in str(exc) else
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
        raise parsing_error("[slice] malformed: expected integer [id] and [max] (a [field] is not implemented)")
    if slice_spec["max"] <= 1:
        raise illegal_argument("max must be greater than 1")
    if not 0 <= slice_spec["id"] < slice_spec["max"]:
        raise illegal_argument("id must be greater than or equal to 0 and lower than max")
    return slice_spec


@ROUTES.route("POST", "GET", path="/*/_count")
def count(cluster: Cluster, parts: list, params: dict, body: bytes) -> tuple[int, Any]:
    check_params(params, {"ignore_unavailable", "expand_wildcards"}, "/" + "/".join(parts))
    expand_wildcards(params)
    spec = json_body(body, required=False)
    if set(spec) - {"query"}:
        raise parsing_error(f"request does not support [{min(set(spec) - {'query'})}]")
    match = compile_query(spec.get("query", {"match_all": {}}))
    indices = cluster.resolve(parts[0], must_exist=not flag(params, "ignore_unavailable"))
    total = sum(1 for index in indices for doc in cluster.visible(index).values() if match(index, doc.source))
    return 200, {"count": total, "_shards": shards(len(indices))}
