"""Search queries that boost listings by their image score, built with ``elasticsearch.dsl``.

Every builder wraps a query the caller passes in; ``s`` is a document's
``image_score`` or the configured ``missing`` value when it has none (so new
listings are not buried while they wait for scoring).

* ``multiplicative``: ``existing * (1 + w*s)``. ``function_score`` with
  ``{weight: 1}`` and ``field_value_factor{factor: w, missing: m}``,
  ``score_mode: sum``, ``boost_mode: multiply``. At w = 0 the factor is 1.0
  exactly, so scores are bit-for-bit the base query's.
* ``power``: ``existing * s**w`` through ``script_score``. Scale-free (only
  ratios of image scores matter), but a score of 0 zeroes the document.
* ``additive``: ``(relevance + w*s) * other factors``. The caller marks the
  relevance clause with ``"_name": "relevance"``; it becomes
  ``bool{must: [relevance], should: [image term]}`` in place, so the caller's
  outer ``function_score`` (category, freshness, ...) still multiplies.
* ``rank_feature``: the additive formula with a ``rank_feature`` query on
  ``image_score_rank`` as the image term. It lets Lucene skip non-competitive
  hits, but only when no outer ``function_score`` wraps it; it has no
  ``missing`` (an unscored listing gets no image term).

``ai_factor`` (default 1: off) multiplies the final score of documents whose
``image_provenance`` says AI made the image (``es.mapping.AI_PROVENANCE_VALUES``): an
outer ``function_score`` with one ``{filter: {terms: ...}, weight: ai_factor}`` function,
``boost_mode: multiply``; a document the filter does not match gets factor 1. Vision-LLM
judges may prefer AI-generated images, and this is the lever that takes that back.

w lives inside the function (``factor`` / ``boost`` of the image clause),
never in a query's top-level ``boost``. Every query excludes tombstones
(``deleted: true``) in a non-scoring ``must_not``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from elasticsearch.dsl import Q, Search
from elasticsearch.dsl import function as F
from elasticsearch.dsl.query import Query

from es.function_score import POWER_SCRIPT, as_dict
from es.mapping import AI_PROVENANCE_VALUES, PROVENANCE_FIELD, SCORE_FIELD
from es.mapping import DELETED_FIELD as TOMBSTONE_FIELD
from es.mapping import RANK_FIELD as RANK_FEATURE_FIELD
from es.names import FORMULAS, PLATFORMS, RANK_FUNCTIONS, RELEVANCE_NAME  # noqa: F401  (part of this interface)


@dataclasses.dataclass(frozen=True)
class Boost:
    """One boosting choice: the formula, its weight and the value that stands in for a missing score."""

    formula: str = "multiplicative"
    w: float = 0.0
    missing: float = 0.5
    # rank_feature only: the function and its parameters, as Elasticsearch spells them.
    rank_function: str = "saturation"
    rank_params: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"pivot": 0.5})
    # multiplies the final score of documents whose image says AI made it; 1 leaves them alone
    ai_factor: float = 1.0

    def __post_init__(self):
        if self.formula not in FORMULAS:
            raise ValueError(f"formula {self.formula!r} is not one of {', '.join(FORMULAS)}")
        factor = self.ai_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) \
                or factor <= 0:
            raise ValueError(f"ai_factor must be a finite number > 0 (e.g. 0.8 to demote AI-made images by 20%), "
                             f"got {factor!r}")
        for name in ("w", "missing"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r} "
                                 f"(a negative score is an Elasticsearch error)")
        if self.rank_function not in RANK_FUNCTIONS:
            raise ValueError(f"rank_function {self.rank_function!r} is not one of {', '.join(RANK_FUNCTIONS)}")


def not_deleted(query: Query) -> Query:
    """``query`` without tombstones; ``must_not`` does not score, so scores are unchanged."""
    return Q("bool", must=[query], must_not=[Q("term", **{TOMBSTONE_FIELD: True})])


def image_factor(boost: Boost) -> F.ScoreFunction:
    """``w * s`` with the missing value, as a ``field_value_factor`` function."""
    return F.SF("field_value_factor", field=SCORE_FIELD, factor=boost.w, missing=boost.missing)


def power_function(boost: Boost) -> F.ScoreFunction:
    """``s ** w`` with the missing value, as a ``script_score`` function (mirrored by POWER_SCRIPT)."""
    return F.SF("script_score", script={"source": POWER_SCRIPT,
                                        "params": {"field": SCORE_FIELD, "w": boost.w, "missing": boost.missing}})


def multiplicative(base: Query, boost: Boost) -> Query:
    """``existing * (1 + w*s)``."""
    return Q("function_score", query=base, functions=[F.SF({"weight": 1}), image_factor(boost)],
             score_mode="sum", boost_mode="multiply")


def power(base: Query, boost: Boost) -> Query:
    """``existing * s**w``."""
    return Q("function_score", query=base, functions=[power_function(boost)], boost_mode="multiply")


def image_term(boost: Boost) -> Query:
    """The query clause that adds ``w*s`` (or the rank_feature function) to a bool's score."""
    if boost.formula == "rank_feature":
        return Q("rank_feature", field=RANK_FEATURE_FIELD, boost=boost.w,
                 **{boost.rank_function: dict(boost.rank_params)})
    return Q("function_score", query=Q("match_all"), functions=[image_factor(boost)], boost_mode="replace")


def _find_relevance(node: Any, path: tuple = ()) -> list[tuple]:
    """Paths (tuples of keys/indices) to every clause named ``relevance`` inside a query dict."""
    found = []
    if isinstance(node, dict):
        if len(node) == 1:
            (kind, body), = node.items()
            if isinstance(body, dict) and (body.get("_name") == RELEVANCE_NAME or any(
                    isinstance(v, dict) and v.get("_name") == RELEVANCE_NAME for v in body.values())):
                return [path]
        for key, value in node.items():
            found += _find_relevance(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _find_relevance(value, path + (i,))
    return found


def _check_multiplying_path(root: dict, path: tuple) -> None:
    """The marked clause must reach the top only through multiplying ``function_score``s or sole bool clauses."""
    node: Any = root
    for i, key in enumerate(path):
        if isinstance(node, dict) and len(node) == 1 and key in ("function_score", "bool"):
            kind, body = key, node[key]
            nxt = path[i + 1] if i + 1 < len(path) else None
            if kind == "function_score" and nxt == "query" and body.get("boost_mode", "multiply") != "multiply":
                raise ValueError(f"the relevance clause sits in a function_score with boost_mode "
                                 f"{body['boost_mode']!r}; the additive formula needs the outer factors to multiply")
            if (kind == "bool" and nxt in ("filter", "must_not")) or (kind == "function_score" and nxt != "query"):
                raise ValueError(f"the relevance clause sits in a {kind}'s {nxt!r}, which does not score, so the "
                                 "image term would do nothing there; name a scoring clause (a bool's must or "
                                 "should, or a function_score's query) \"relevance\"")
            if kind == "bool" and nxt in ("should", "must"):
                scoring = len(body.get("must", [])) + len(body.get("should", []))
                if scoring > 1:
                    raise ValueError("the relevance clause shares a bool with other scoring clauses; mark the "
                                     "whole sum as relevance (put \"_name\": \"relevance\" on the bool)")
        node = node[key]


def additive(base: Query | dict, boost: Boost) -> Query:
    """``(relevance + w*s) * other factors``: the clause named ``relevance`` gains the image term in place.

    Without a named clause the whole base query is the relevance, and gets named
    so that searches can log its score (``include_named_queries_score``).
    """
    root = copy.deepcopy(as_dict(base))
    paths = _find_relevance(root)
    if len(paths) > 1:
        raise ValueError(f"the base query names {len(paths)} clauses {RELEVANCE_NAME!r}; mark exactly one")
    if not paths:
        relevance = Q("bool", must=[Q(root)], _name=RELEVANCE_NAME)
        return Q("bool", must=[relevance], should=[image_term(boost)])
    path = paths[0]
    _check_multiplying_path(root, path)
    parent: Any = root
    for key in path[:-1]:
        parent = parent[key]
    marked = parent[path[-1]] if path else root
    combined = Q("bool", must=[Q(marked)], should=[image_term(boost)]).to_dict()
    if not path:
        return Q(combined)
    parent[path[-1]] = combined
    return Q(root)


def ai_discounted(query: Query, boost: Boost) -> Query:
    """``query`` with its score times ``boost.ai_factor`` where the image says AI made it; ``query`` at 1."""
    if boost.ai_factor == 1:
        return query
    ai = F.SF({"filter": Q("terms", **{PROVENANCE_FIELD: list(AI_PROVENANCE_VALUES)}).to_dict(),
               "weight": boost.ai_factor})
    return Q("function_score", query=query, functions=[ai], boost_mode="multiply")


def build_query(base: Query | dict, boost: Boost, *, exclude_deleted: bool = True) -> Query:
    """The boosted query for ``boost.formula`` around ``base`` (a DSL query or its dict)."""
    base_q = Q(as_dict(base)) if isinstance(base, dict) else base
    if boost.formula == "multiplicative":
        query = multiplicative(base_q, boost)
    elif boost.formula == "power":
        query = power(base_q, boost)
    else:
        query = additive(base_q, boost)
    query = ai_discounted(query, boost)
    return not_deleted(query) if exclude_deleted else query


def rescore_search(base: Query | dict, boost: Boost, window_size: int) -> Search:
    """The boost as a ``rescore`` of the top ``window_size`` hits of the unboosted base query.

    Multiplicative and power multiply the first-pass score by the factor
    (``score_mode: multiply``); additive and rank_feature recompute the whole
    additive query on the window (``query_weight: 0``, ``score_mode: total``),
    since the relevance part is not visible to a rescorer otherwise.
    """
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    base_q = Q(as_dict(base)) if isinstance(base, dict) else base
    if boost.formula in ("multiplicative", "power"):
        functions = ([F.SF({"weight": 1}), image_factor(boost)] if boost.formula == "multiplicative"
                     else [power_function(boost)])
        rescore_query = Q("function_score", query=Q("match_all"), functions=functions,
                          score_mode="sum", boost_mode="replace")
        spec = {"rescore_query": ai_discounted(rescore_query, boost).to_dict(), "query_weight": 1,
                "rescore_query_weight": 1, "score_mode": "multiply"}
    else:
        spec = {"rescore_query": ai_discounted(additive(base_q, boost), boost).to_dict(), "query_weight": 0,
                "rescore_query_weight": 1, "score_mode": "total"}
    return Search().query(not_deleted(base_q)).extra(rescore={"window_size": window_size, "query": spec})


def search_body(base: Query | dict, boost: Boost, *, rescore_window: int | None = None) -> dict:
    """The JSON body of a search with the boost, inline or as a rescore."""
    if rescore_window:
        return rescore_search(base, boost, rescore_window).to_dict()
    return Search().query(build_query(base, boost)).to_dict()


@dataclasses.dataclass(frozen=True)
class PlatformBoosts:
    """The boost per platform (web, iOS and Android users respond differently), with a default."""

    default: Boost
    platforms: Mapping[str, Boost] = dataclasses.field(default_factory=dict)

    def for_platform(self, platform: str | None) -> Boost:
        return self.platforms.get(platform, self.default) if platform else self.default

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], default: Boost | None = None) -> PlatformBoosts:
        """``{"default": {...}, "web": {"formula": ..., "w": ...}, ...}``; unknown keys are errors."""
        allowed = {f.name for f in dataclasses.fields(Boost)}

        def boost(name: str, spec: Any, base: Boost) -> Boost:
            if not isinstance(spec, Mapping):
                raise ValueError(f"platform {name!r}: expected an object like {{\"formula\": ..., \"w\": ...}}, "
                                 f"got {spec!r}")
            unknown = set(spec) - allowed
            if unknown:
                raise ValueError(f"platform {name!r}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
            return dataclasses.replace(base, **spec)

        base = default or Boost()
        if "default" in raw:
            base = boost("default", raw["default"], base)
        platforms = {name: boost(name, spec, base) for name, spec in raw.items() if name != "default"}
        return cls(base, platforms)

    @classmethod
    def from_json(cls, path: str, default: Boost | None = None) -> PlatformBoosts:
        with open(path) as fh:
            try:
                raw = json.load(fh)
            except ValueError as exc:
                raise ValueError(f"{path}: not JSON ({exc}); expected {{\"web\": {{\"w\": 0.3}}, ...}}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object keyed by platform, got {type(raw).__name__}")
        return cls.from_dict(raw, default)
