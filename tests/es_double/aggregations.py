"""Search aggregations: ``terms``, ``histogram``, ``percentiles``, ``filter``, ``value_count``, ``min`` and ``max``.

Each is compiled (and every option checked) before a document is read; an aggregation type
or option Elasticsearch knows but the double does not implement is refused by name. They run
over every match of the query (before paging) on *doc values* (``painless.doc_values``: a
``float`` field's value is the float32 it is stored as). What each follows:

* ``terms``: ``field``, ``size`` (10), ``missing``; buckets by ``doc_count`` descending, then key
  ascending; ``sum_other_doc_count`` counts the documents of the buckets past ``size``. One
  shard, so ``doc_count_error_upper_bound`` is 0. A boolean key is 0/1 with ``key_as_string``.
* ``histogram``: ``field`` or ``script``, ``interval``, ``offset``, ``min_doc_count`` (0),
  ``extended_bounds``; key ``floor((v - offset) / interval) * interval + offset``; with
  ``min_doc_count: 0`` every key between the first and last (and the bounds) is a bucket.
* ``percentiles``: ``field``, ``percents`` (1, 5, 25, 50, 75, 95, 99), ``keyed``. Elasticsearch's
  default TDigest (``HybridDigest``, 8.9 on) keeps every value up to 20 x compression = 2,000
  values and answers ``Dist.quantile``: linear interpolation at ``q * (n - 1)`` of the sorted
  values. The double answers that for any n; Elasticsearch approximates beyond 2,000 values.
* ``min``/``max``/``value_count``: over all values; a ``date`` field adds ``value_as_string``.
* ``filter``: any query ``queries.py`` compiles.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.es_double.errors import NOT_IMPLEMENTED, EsHttpError, illegal_argument, parsing_error
from tests.es_double.mappings import NUMERIC_TYPES
from tests.es_double.painless import compile_script, doc_values
from tests.es_double.queries import compile_query
from tests.es_double.state import Index

Docs = list[tuple[Index, dict]]
Runner = Callable[[Docs], dict]

# Aggregation types Elasticsearch has that the double refuses by name.
ES_AGGREGATIONS = {"avg", "sum", "stats", "extended_stats", "cardinality", "percentile_ranks", "top_hits", "range",
                   "date_range", "date_histogram", "auto_date_histogram", "filters", "composite", "nested",
                   "reverse_nested", "global", "missing", "significant_terms", "rare_terms", "multi_terms",
                   "weighted_avg", "median_absolute_deviation", "scripted_metric", "top_metrics", "sampler",
                   "variable_width_histogram", "bucket_script", "bucket_selector", "bucket_sort", "avg_bucket",
                   "max_bucket", "min_bucket", "sum_bucket", "stats_bucket", "percentiles_bucket", "cumulative_sum",
                   "derivative", "moving_fn", "serial_diff", "geo_bounds", "geo_centroid", "ip_range", "adjacency_matrix"}
DEFAULT_PERCENTS = [1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0]


def _options(kind: str, body: Any, allowed: set[str], known: set[str] = frozenset()) -> dict:
    if not isinstance(body, dict):
        raise parsing_error(f"[{kind}] expects an object")
    for key in sorted(body):
        if key not in allowed:
            if key in known:
                raise parsing_error(f"[{kind}] option [{key}]: {NOT_IMPLEMENTED}")
            raise parsing_error(f"[{kind}] unknown field [{key}]")
    return body


def _field(body: dict, kind: str) -> str:
    name = body.get("field")
    if not isinstance(name, str):
        raise illegal_argument(f"Required one of fields [field, script], but none were specified. ([{kind}])")
    return name


def _values_of(name: str, kind: str, numeric: bool) -> Callable[[Index, dict], list]:
    """Doc values of ``name`` for an aggregation; text and (for metrics) keyword fields are refused as ES does."""
    def values(index: Index, source: dict) -> list:
        ref = index.field(name)
        if ref is None:
            return []
        if ref.type == "text":
            raise illegal_argument("Text fields are not optimised for operations that require per-document field data "
                                   "like aggregations and sorting, so these operations are disabled by default. Please "
                                   "use a keyword field instead. Alternatively, set fielddata=true on "
                                   f"[{name}] in order to load field data by uninverting the inverted index. Note that "
                                   "this can use significant memory.")
        if ref.type in ("rank_feature", "object"):
            raise illegal_argument(f"Field [{name}] of type [{ref.type}] is not supported for aggregation [{kind}]")
        if numeric and ref.type not in NUMERIC_TYPES and ref.type not in ("date", "boolean"):
            raise illegal_argument(f"Field [{name}] of type [{ref.type}] is not supported for aggregation [{kind}]")
        return doc_values(ref, source)
    return values


def _is_date(name: str, docs: Docs) -> bool:
    refs = [index.field(name) for index, _ in docs[:1]]
    return bool(refs) and refs[0] is not None and refs[0].type == "date"


def _date_string(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _metric(kind: str, body: Any) -> Runner:
    body = _options(kind, body, {"field"}, {"missing", "script", "format", "value_type"})
    name = _field(body, kind)
    values = _values_of(name, kind, numeric=kind != "value_count")

    def run(docs: Docs) -> dict:
        found = [v for index, source in docs for v in values(index, source)]
        if kind == "value_count":
            return {"value": len(found)}
        if not found:
            return {"value": None}
        value = float(min(found) if kind == "min" else max(found))
        return {"value": value, **({"value_as_string": _date_string(value)} if _is_date(name, docs) else {})}
    return run


def quantile(q: float, ordered: list[float]) -> float | None:
    """Elasticsearch's ``Dist.quantile`` (libs/tdigest): linear interpolation at ``q * (n - 1)``."""
    if not ordered:
        return None
    index = q * (len(ordered) - 1)
    low = min(max(math.floor(index), 0), len(ordered) - 1)
    high = min(low + 1, len(ordered) - 1)
    weight = 0.0 if index <= 0 or index >= len(ordered) - 1 else index - low
    return ordered[low] + weight * (ordered[high] - ordered[low])


def _percentiles(body: Any) -> Runner:
    body = _options("percentiles", body, {"field", "percents", "keyed"},
                    {"tdigest", "hdr", "missing", "script", "format", "value_type"})
    name = _field(body, "percentiles")
    percents = body.get("percents", DEFAULT_PERCENTS)
    if not isinstance(percents, list) or not percents:
        raise illegal_argument("[percents] must not be empty")
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 100 for p in percents):
        raise parsing_error(f"[percents] must be numbers between 0 and 100, got {percents}")
    keyed = body.get("keyed", True)
    values = _values_of(name, "percentiles", numeric=True)

    def run(docs: Docs) -> dict:
        ordered = sorted(float(v) for index, source in docs for v in values(index, source))
        date = _is_date(name, docs)
        answers = [(float(p), quantile(p / 100, ordered)) for p in percents]
        if not keyed:
            return {"values": [{"key": p, "value": v, **({"value_as_string": _date_string(v)} if date and v is not None
                                                            else {})} for p, v in answers]}
        out: dict[str, Any] = {}
        for p, v in answers:
            out[str(p)] = v
            if date and v is not None:
                out[f"{p}_as_string"] = _date_string(v)
        return {"values": out}
    return run


def _terms(body: Any, sub: dict[str, Runner]) -> Runner:
    body = _options("terms", body, {"field", "size", "missing"},
                    {"order", "min_doc_count", "shard_size", "include", "exclude", "script", "execution_hint",
                     "collect_mode", "show_term_doc_count_error", "value_type", "format", "shard_min_doc_count"})
    name = _field(body, "terms")
    size = body.get("size", 10)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise illegal_argument(f"[size] must be greater than 0. Found [{size}] in [terms]")
    missing = body.get("missing")
    values = _values_of(name, "terms", numeric=False)

    def run(docs: Docs) -> dict:
        buckets: dict[Any, Docs] = {}
        boolean = False
        for index, source in docs:
            ref = index.field(name)
            boolean = boolean or (ref is not None and ref.type == "boolean")
            found = sorted(set(values(index, source)))
            if not found and missing is not None:
                found = [_missing_value(ref, missing)]
            for value in found:
                buckets.setdefault(value, []).append((index, source))
        ordered = sorted(buckets.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        out = []
        for key, members in ordered[:size]:
            bucket: dict[str, Any] = {"key": key, "doc_count": len(members)}
            if boolean:
                bucket["key_as_string"] = "true" if key == 1 else "false"
            bucket.update({n: r(members) for n, r in sub.items()})
            out.append(bucket)
        return {"doc_count_error_upper_bound": 0, "sum_other_doc_count": sum(len(m) for _, m in ordered[size:]),
                "buckets": out}
    return run


def _missing_value(ref, missing: Any) -> Any:
    if ref is None or ref.type in ("keyword", "text"):
        return str(missing)
    try:
        return doc_values(ref, _place(ref.path, missing))[0]
    except (TypeError, ValueError, IndexError):
        raise illegal_argument(f"[missing] value [{missing}] does not fit the [{ref.type}] field [{ref.path}]") from None


def _place(path: str, value: Any) -> dict:
    out: dict = {}
    target = out
    *outer, last = path.split(".")
    for part in outer:
        target = target.setdefault(part, {})
    target[last] = value
    return out


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise parsing_error(f"[histogram] [{what}] must be a number, got [{value}]")
    return float(value)


def _histogram(body: Any, sub: dict[str, Runner]) -> Runner:
    body = _options("histogram", body, {"field", "script", "interval", "offset", "min_doc_count", "extended_bounds"},
                    {"hard_bounds", "missing", "order", "keyed", "format", "value_type"})
    if ("field" in body) == ("script" in body):
        raise illegal_argument("Required one of fields [field, script], but none were specified. ([histogram])")
    interval = _number(body.get("interval"), "interval")
    if interval <= 0:
        raise illegal_argument(f"[interval] must be >0 for histogram aggregation [{interval}]")
    offset = _number(body.get("offset", 0), "offset")
    min_doc_count = body.get("min_doc_count", 0)
    if not isinstance(min_doc_count, int) or isinstance(min_doc_count, bool) or min_doc_count < 0:
        raise illegal_argument(f"[min_doc_count] must be greater than or equal to 0. Found [{min_doc_count}] "
                               "in [histogram]")
    bounds = body.get("extended_bounds")
    if bounds is not None:
        if not isinstance(bounds, dict) or set(bounds) - {"min", "max"}:
            raise parsing_error("[extended_bounds] takes [min] and [max]")
        low, high = (_number(bounds[k], f"extended_bounds.{k}") if k in bounds else None for k in ("min", "max"))
        if low is not None and high is not None and low > high:
            raise illegal_argument(f"[extended_bounds.min][{low}] cannot be greater than [extended_bounds.max][{high}] "
                                   "for histogram aggregation [histogram]")
    else:
        low = high = None
    if "script" in body:
        script = compile_script(body["script"], "histogram")

        def values(index: Index, source: dict) -> list:
            value = script(index, source)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise illegal_argument(f"the histogram script returned [{value}], not a number")
            return [float(value)]
    else:
        values = _values_of(body["field"], "histogram", numeric=True)

    def key_of(value: float) -> float:
        return math.floor((value - offset) / interval) * interval + offset

    def run(docs: Docs) -> dict:
        buckets: dict[float, Docs] = {}
        for index, source in docs:
            for key in sorted({key_of(float(v)) for v in values(index, source)}):
                buckets.setdefault(key, []).append((index, source))
        keys = sorted(buckets)
        if min_doc_count == 0:  # empty buckets between the first and last key, stepped as Elasticsearch does
            stops = sorted(set(keys) | {key_of(b) for b in (low, high) if b is not None})
            filled = []
            for current, following in zip(stops, stops[1:] + [None]):
                filled.append(current)
                step = current + interval
                while following is not None and step < following - interval * 1e-9:
                    filled.append(step)
                    step += interval
            keys = filled
        out = []
        for key in keys:
            members = buckets.get(key, [])
            if len(members) < min_doc_count:
                continue
            out.append({"key": key, "doc_count": len(members), **{n: r(members) for n, r in sub.items()}})
        return {"buckets": out}
    return run


def _filter(body: Any, sub: dict[str, Runner]) -> Runner:
    match = compile_query(body)

    def run(docs: Docs) -> dict:
        members = [(index, source) for index, source in docs if match(index, source)]
        return {"doc_count": len(members), **{n: r(members) for n, r in sub.items()}}
    return run


BUCKETS = {"terms": _terms, "histogram": _histogram, "filter": _filter}
METRICS = {"value_count": lambda b: _metric("value_count", b), "min": lambda b: _metric("min", b),
           "max": lambda b: _metric("max", b), "percentiles": _percentiles}


def compile_aggs(spec: Any) -> dict[str, Runner]:
    """Validate an ``aggs`` object and return ``{name: run(docs) -> answer}``; anything outside the subset raises."""
    if not isinstance(spec, dict):
        raise parsing_error("Expected [START_OBJECT] under [aggregations], but got a [" + type(spec).__name__ + "]")
    compiled = {}
    for name, definition in spec.items():
        if not isinstance(definition, dict):
            raise parsing_error(f"Expected [START_OBJECT] under [{name}], but got a [{type(definition).__name__}]")
        sub_spec = {}
        kinds = []
        for key, value in definition.items():
            if key in ("aggs", "aggregations"):
                if sub_spec:
                    raise parsing_error(f"Found two sub aggregation definitions under [{name}]")
                sub_spec = value
            elif key == "meta":
                raise parsing_error(f"[{name}] [meta]: {NOT_IMPLEMENTED}")
            else:
                kinds.append(key)
        if len(kinds) != 1:
            if not kinds:
                raise parsing_error(f"Missing definition for aggregation [{name}]")
            raise parsing_error(f"Found two aggregation type definitions in [{name}]: [{kinds[0]}] and [{kinds[1]}]")
        kind = kinds[0]
        if kind in BUCKETS:
            compiled[name] = BUCKETS[kind](definition[kind], compile_aggs(sub_spec) if sub_spec else {})
        elif kind in METRICS:
            if sub_spec:
                raise EsHttpError(400, "aggregation_initialization_exception",
                                  f"Aggregator [{name}] of type [{kind}] cannot accept sub-aggregations")
            compiled[name] = METRICS[kind](definition[kind])
        elif kind in ES_AGGREGATIONS:
            raise parsing_error(f"aggregation [{kind}] (in [{name}]): {NOT_IMPLEMENTED}")
        else:
            raise parsing_error(f"Unknown aggregation type [{kind}]")
    return compiled


def run_aggs(compiled: dict[str, Runner], docs: Docs) -> dict:
    return {name: run(docs) for name, run in compiled.items()}
