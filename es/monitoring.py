"""The score monitor's one search: histograms, quantiles and coverage of ``image_score``, all as aggregations.

Everything comes back in **one** ``_search`` with ``size: 0`` over the live documents
(tombstones, ``deleted: true``, excluded), whatever the number of documents: the groups are
nested ``terms`` aggregations (one level per ``--by`` field, ``size`` = the group cap) whose
leaves hold a ``histogram`` and ``percentiles`` of the score; the coverage figures sit beside them.

**Bins.** Elasticsearch stores ``image_score`` as a ``float`` (32 bits): a score written as
0.35 is held as 0.3499999940. A ``histogram`` on the field with ``interval: 1/N`` would divide
that by 1/N in doubles and put it in the bin below, and the division's rounding moves other
edges too. So the histogram runs on :data:`BIN_SCRIPT`, which returns each document's bin
index (``interval: 1``, ``extended_bounds`` 0..N-1, ``min_doc_count: 0``, so every run has
the same N bins): bin ``i`` holds ``f32(i/N) <= s < f32((i+1)/N)``, the last bin also
``s = 1``, where ``s`` is the stored score and ``f32`` rounds to the nearest float32, as the
index did when it stored the score. A score written as exactly ``i/N`` is stored as
``f32(i/N)`` and so lands in bin ``i``. The offline path (``ranking.monitor``) bins the same way.

**Stale scores.** A score is stale when it belongs to an older item version than the
document's: ``image_score_version < updated_at``. No query compares two fields of one document,
so this one count uses a ``script`` query (:data:`STALE_SCRIPT`) inside a ``filter``
aggregation; an index that does not map one of the two fields has no stale scores. ``date`` doc values have millisecond resolution, so versions less than a
millisecond apart compare equal (not stale).

**Quantiles** are Elasticsearch's ``percentiles`` (TDigest): exact (linear interpolation
between the sorted values) up to 20 x compression = 2,000 values per group, approximate
(typically within 1%) beyond that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from es.names import DELETED_FIELD, MODEL_FIELD, SCORE_FIELD, SCORE_VERSION_FIELD, SCORED_AT_FIELD, VERSION_FIELD

# The key a ``terms`` aggregation gives documents without the grouping field: reported as null.
MISSING_KEY = "__imagescore_missing__"
PERCENTS = (5.0, 50.0, 95.0)

BIN_SCRIPT = (
    f"double s = doc['{SCORE_FIELD}'].value; int n = params.bins; "
    "int b = (int) Math.floor(s * n); if (b > n - 1) { b = n - 1; } if (b < 0) { b = 0; } "
    "if (b < n - 1 && s >= (double) (float) ((b + 1) / (double) n)) { b += 1; } "
    "else if (b > 0 && s < (double) (float) (b / (double) n)) { b -= 1; } "
    "return b;"
)
STALE_SCRIPT = (
    f"doc.containsKey('{SCORE_VERSION_FIELD}') && doc.containsKey('{VERSION_FIELD}') && "
    f"doc['{SCORE_VERSION_FIELD}'].size() != 0 && doc['{VERSION_FIELD}'].size() != 0 && "
    f"doc['{SCORE_VERSION_FIELD}'].value.toInstant().toEpochMilli() < "
    f"doc['{VERSION_FIELD}'].value.toInstant().toEpochMilli()"
)


def live_query() -> dict[str, Any]:
    """Every document but tombstones."""
    return {"bool": {"must_not": [{"term": {DELETED_FIELD: True}}]}}


def _leaf(bins: int) -> dict[str, Any]:
    return {
        "histogram": {"histogram": {"script": {"source": BIN_SCRIPT, "lang": "painless", "params": {"bins": bins}},
                                    "interval": 1, "min_doc_count": 0,
                                    "extended_bounds": {"min": 0, "max": bins - 1}}},
        "quantiles": {"percentiles": {"field": SCORE_FIELD, "percents": list(PERCENTS)}},
    }


def _groups(fields: list[str], bins: int, max_groups: int) -> dict[str, Any]:
    aggs = _leaf(bins)
    for field in reversed(fields):
        aggs = {"group": {"terms": {"field": field, "size": max_groups, "missing": MISSING_KEY}, "aggs": aggs}}
    return aggs


def search_body(fields: list[str], bins: int, max_groups: int) -> dict[str, Any]:
    """The monitor's one search body: groups (histogram + percentiles per group) and coverage."""
    return {
        "size": 0,
        "track_total_hits": True,
        "query": live_query(),
        "aggs": {
            "scored": {"value_count": {"field": SCORE_FIELD}},
            "in_range": {"filter": {"range": {SCORE_FIELD: {"gte": 0, "lte": 1}}},
                         "aggs": _groups(fields, bins, max_groups)},
            "models": {"filter": {"exists": {"field": SCORE_FIELD}}, "aggs": {"model": {
                "terms": {"field": MODEL_FIELD, "size": max_groups, "missing": MISSING_KEY},
                "aggs": {"newest": {"max": {"field": SCORED_AT_FIELD}}}}}},
            "scored_at": {"percentiles": {"field": SCORED_AT_FIELD, "percents": [50.0]}},
            "oldest": {"min": {"field": SCORED_AT_FIELD}},
            "stale": {"filter": {"script": {"script": {"source": STALE_SCRIPT, "lang": "painless"}}}},
        },
    }


@dataclass
class IndexSummary:
    """What the search answered, as plain numbers: per group the histogram and quantiles; the coverage counts."""

    groups: list[tuple[dict[str, Any], list[int], dict[str, float | None]]]
    live: int
    scored: int
    in_range: int
    models: dict[str | None, tuple[int, float | None]]  # model -> (scores, newest image_scored_at in epoch ms)
    median_scored_at_ms: float | None
    oldest_scored_at_ms: float | None
    stale: int


class TooManyGroups(ValueError):
    """A ``terms`` level left documents out: there are more values than the group cap."""


def _key(bucket: dict) -> Any:
    """A bucket's key as the report shows it: null for the missing bucket, true/false for a boolean field."""
    if bucket["key"] == MISSING_KEY:
        return None
    as_string = bucket.get("key_as_string")
    return {"true": True, "false": False}[as_string] if as_string in ("true", "false") else bucket["key"]


def _walk(agg: dict, fields: list[str], prefix: dict, bins: int, max_groups: int, out: list) -> None:
    if not fields:
        counts = [0] * bins
        for bucket in agg["histogram"]["buckets"]:
            index = int(bucket["key"])
            if not 0 <= index < bins:
                raise ValueError(f"histogram bucket {bucket['key']} outside 0..{bins - 1}: the bin script misbehaved")
            counts[index] += int(bucket["doc_count"])
        values = agg["quantiles"]["values"]
        quantiles = {f"p{int(p):02d}": values.get(f"{p:.1f}") for p in PERCENTS}
        out.append((dict(prefix), counts, quantiles))
        return
    group = agg["group"]
    if group.get("sum_other_doc_count"):
        raise TooManyGroups(f"--by {fields[0]} has more than --max-groups {max_groups} values "
                            f"({group['sum_other_doc_count']} documents left out); raise --max-groups")
    for bucket in group["buckets"]:
        _walk(bucket, fields[1:], {**prefix, fields[0]: _key(bucket)}, bins, max_groups, out)


def parse_response(response: dict, fields: list[str], bins: int, max_groups: int) -> IndexSummary:
    """The :class:`IndexSummary` of an answer to :func:`search_body`."""
    aggs = response["aggregations"]
    groups: list = []
    _walk(aggs["in_range"], fields, {}, bins, max_groups, groups)
    models_agg = aggs["models"]["model"]
    if models_agg.get("sum_other_doc_count"):
        raise TooManyGroups(f"the index holds more than --max-groups {max_groups} values of {MODEL_FIELD}; "
                            "raise --max-groups")
    models = {_key(b): (int(b["doc_count"]), b["newest"]["value"]) for b in models_agg["buckets"]}
    return IndexSummary(
        groups=groups, live=int(response["hits"]["total"]["value"]), scored=int(aggs["scored"]["value"]),
        in_range=int(aggs["in_range"]["doc_count"]), models=models,
        median_scored_at_ms=aggs["scored_at"]["values"].get("50.0"), oldest_scored_at_ms=aggs["oldest"]["value"],
        stale=int(aggs["stale"]["doc_count"]))


if TYPE_CHECKING:  # the client takes a second to import; the report and --help need none of it
    from elasticsearch import Elasticsearch


def summarize_index(client: Elasticsearch, index: str, fields: list[str], bins: int,
                    max_groups: int) -> IndexSummary:
    """Run the one search on ``index`` and parse it; errors come out as scrubbed :class:`es.client.EsError`."""
    from es.client import scrubbed_errors
    with scrubbed_errors(f"aggregating image scores of index {index!r}"):
        response = client.search(index=index, **search_body(fields, bins, max_groups)).body
    return parse_response(response, fields, bins, max_groups)
