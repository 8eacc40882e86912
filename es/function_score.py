"""A Python mirror of Elasticsearch's scoring arithmetic for the queries ``es.boosting`` builds.

Offline replay must rank a logged SERP exactly as Elasticsearch would rank it
under a new formula, so this module evaluates the query JSON itself, vectorised
over documents with numpy, following Elasticsearch's ``FunctionScoreQuery``,
``FieldValueFactorFunction``, ``ScriptScoreFunction``, Lucene's boolean
scorers, ``FeatureField`` and ``QueryRescorer``:

* scores are float32; function factors are doubles; ``factor`` and ``weight``
  are parsed as float32 and widened, ``missing`` and script params are doubles;
* a function whose filter does not match a document contributes nothing, and
  when no function matches the factor is 1 in every ``score_mode``;
* ``field_value_factor`` without ``missing`` fails on a document that lacks the
  field; ``log`` is log10 and ``ln`` the natural log;
* a negative (or NaN) function result or final score is an error;
* ``term``/``terms`` filters match keyword values exactly (``terms`` is what the
  ``ai_factor`` function filters on).

Documents are a mapping of field name to a 1-d numpy array (NaN where a
numeric field is missing; float32 arrays hold ``float`` fields, float64 arrays
``double`` ones; bool/object arrays hold keyword fields with ``None`` where
missing). Only the query subset the builders emit is supported; anything else
raises :class:`UnsupportedQuery` rather than guessing.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

FLOAT_MAX = float(np.finfo(np.float32).max)
# The one script the power variant sends; recognised here by its exact source.
POWER_SCRIPT = ("double s = doc[params.field].size() == 0 ? params.missing : doc[params.field].value; "
                "return Math.pow(s, params.w);")
RANK_FEATURE_SIGNIFICANT_BITS = 9  # Lucene's FeatureField keeps the top 9 bits of a float's value

Docs = Mapping[str, np.ndarray]
Leaf = Callable[[dict], tuple[np.ndarray, np.ndarray]]


class ScoreError(ValueError):
    """What Elasticsearch would answer with a search failure (e.g. a negative score)."""


class UnsupportedQuery(ValueError):
    """A query shape the mirror does not evaluate."""


_MODIFIERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda v: v,
    "log": np.log10, "log1p": lambda v: np.log10(v + 1.0), "log2p": lambda v: np.log10(v + 2.0),
    "ln": np.log, "ln1p": np.log1p, "ln2p": lambda v: np.log1p(1.0 + v),
    "square": np.square, "sqrt": np.sqrt, "reciprocal": lambda v: 1.0 / v,
}


def _n(docs: Docs) -> int:
    return len(next(iter(docs.values())))


def _f32(x: float) -> float:
    return float(np.float32(x))


def _field(docs: Docs, name: str) -> np.ndarray | None:
    return docs.get(name)


def _numeric_present(values: np.ndarray) -> np.ndarray:
    return ~np.isnan(values) if values.dtype.kind == "f" else np.array([v is not None for v in values])


def quantize_rank_feature(values) -> np.ndarray:
    """The value Lucene stores for a ``rank_feature``: the float's top 9 significant bits (truncated)."""
    bits = np.asarray(values, dtype=np.float32).view(np.int32)
    shift = 32 - RANK_FEATURE_SIGNIFICANT_BITS - 8  # = 15, as in FeatureField
    return ((bits >> shift) << shift).view(np.float32)


# --------------------------------------------------------------------------- queries

def evaluate(query: dict, docs: Docs, leaf: Leaf | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(matches, scores)`` of ``query`` on every document: a bool mask and float32 scores (0 where unmatched).

    ``leaf`` evaluates query types the mirror does not know (e.g. a full-text
    ``match`` whose score was logged); without it they raise :class:`UnsupportedQuery`.
    """
    if not isinstance(query, dict) or len(query) != 1:
        raise UnsupportedQuery(f"a query must be an object with one key, got {query!r}")
    (kind, body), = query.items()
    n = _n(docs)
    if kind == "match_all":
        return np.ones(n, bool), np.full(n, np.float32(body.get("boost", 1.0)), np.float32)
    if kind == "match_none":
        return np.zeros(n, bool), np.zeros(n, np.float32)
    if kind in ("term", "terms", "exists"):
        mask = _filter_mask(query, docs, leaf)
        return mask, np.where(mask, np.float32(1.0), np.float32(0.0)).astype(np.float32)
    if kind == "bool":
        return _bool(body, docs, leaf)
    if kind == "function_score":
        return _function_score(body, docs, leaf)
    if kind == "rank_feature":
        return _rank_feature(body, docs)
    if leaf is not None:
        matches, scores = leaf(query)
        return np.asarray(matches, bool), np.asarray(scores, np.float32)
    raise UnsupportedQuery(f"the scoring mirror does not evaluate {kind!r} queries; pass a leaf evaluator "
                           f"for the base query or use match_all/function_score/bool/rank_feature")


def _filter_mask(query: dict, docs: Docs, leaf: Leaf | None) -> np.ndarray:
    (kind, body), = query.items()
    n = _n(docs)
    if kind == "term":
        (name, value), = ((k, v) for k, v in body.items() if k != "boost")
        value = value["value"] if isinstance(value, dict) else value
        values = _field(docs, name)
        if values is None:
            return np.zeros(n, bool)
        return np.array([v is not None and v == value for v in values.tolist()], dtype=bool)
    if kind == "terms":
        (name, wanted), = ((k, v) for k, v in body.items() if k not in ("boost", "_name"))
        if not isinstance(wanted, list):
            raise UnsupportedQuery(f"terms on {name!r} must list its values; a terms lookup is not mirrored")
        values = _field(docs, name)
        if values is None:
            return np.zeros(n, bool)
        allowed = set(wanted)
        return np.array([v is not None and v in allowed for v in values.tolist()], dtype=bool)
    if kind == "exists":
        values = _field(docs, body["field"])
        return np.zeros(n, bool) if values is None else _numeric_present(values)
    return evaluate(query, docs, leaf)[0]


def _clauses(body: dict, key: str) -> list[dict]:
    value = body.get(key, [])
    return value if isinstance(value, list) else [value]


_KNOWN_KEYS = {
    "bool": {"must", "should", "filter", "must_not", "boost", "_name"},
    "function_score": {"query", "functions", "score_mode", "boost_mode", "max_boost", "boost", "_name",
                       "field_value_factor", "script_score", "weight"},
}


def _check_keys(kind: str, body: dict) -> None:
    unknown = set(body) - _KNOWN_KEYS[kind]
    if unknown:
        raise UnsupportedQuery(f"the scoring mirror does not evaluate {kind} options {sorted(unknown)}")


def _bool(body: dict, docs: Docs, leaf: Leaf | None):
    _check_keys("bool", body)
    n = _n(docs)
    matches = np.ones(n, bool)
    total = np.zeros(n, np.float64)  # Lucene sums clause scores in double and casts once
    for clause in _clauses(body, "must"):
        m, s = evaluate(clause, docs, leaf)
        matches &= m
        total += s
    for clause in _clauses(body, "filter"):
        matches &= _filter_mask(clause, docs, leaf)
    for clause in _clauses(body, "must_not"):
        matches &= ~_filter_mask(clause, docs, leaf)
    should = _clauses(body, "should")
    any_should = np.zeros(n, bool)
    for clause in should:
        m, s = evaluate(clause, docs, leaf)
        any_should |= m
        total += np.where(m, s, np.float32(0)).astype(np.float64)
    if should and not (_clauses(body, "must") or _clauses(body, "filter")):
        matches &= any_should
    scores = total.astype(np.float32) * np.float32(body.get("boost", 1.0))
    return matches, np.where(matches, scores, np.float32(0)).astype(np.float32)


def _function_value(fn: dict, docs: Docs, sub_scores: np.ndarray) -> np.ndarray:
    """One function's double result on every document (before its filter is applied)."""
    n = _n(docs)
    weight = fn.get("weight")
    if "field_value_factor" in fn:
        spec = fn["field_value_factor"]
        field, missing = spec["field"], spec.get("missing")
        modifier = spec.get("modifier", "none")
        if modifier not in _MODIFIERS:
            raise UnsupportedQuery(f"field_value_factor modifier {modifier!r} is not one of {sorted(_MODIFIERS)}")
        raw = _field(docs, field)
        values = np.full(n, np.nan) if raw is None else raw.astype(np.float64)  # float32 widened exactly
        absent = np.isnan(values)
        if absent.any():
            if missing is None:
                raise ScoreError(f"Missing value for field [{field}] (document #{int(np.argmax(absent))}); "
                                 f"set field_value_factor.missing or index the field on every document")
            values = np.where(absent, float(missing), values)
        with np.errstate(divide="ignore", invalid="ignore"):
            result = _MODIFIERS[modifier](values * _f32(spec.get("factor", 1.0)))
        bad = (result < 0) | np.isnan(result)
        if bad.any():
            i = int(np.argmax(bad))
            hint = {"ln": "; consider using ln1p or ln2p instead of ln to avoid negative scores",
                    "log": "; consider using log1p or log2p instead of log to avoid negative scores"}.get(modifier, "")
            raise ScoreError(f"field value function must not produce negative scores, but got: [{result[i]}] "
                             f"for field value: [{values[i]}] (document #{i}){hint}")
    elif "script_score" in fn:
        script = fn["script_score"]["script"]
        if script.get("source") != POWER_SCRIPT:
            raise UnsupportedQuery("the mirror evaluates only the power variant's script (es.function_score."
                                   "POWER_SCRIPT); other scripts have no Python mirror")
        params = script["params"]
        raw = _field(docs, params["field"])
        values = np.full(n, np.nan) if raw is None else raw.astype(np.float64)
        values = np.where(np.isnan(values), float(params["missing"]), values)
        with np.errstate(divide="ignore", invalid="ignore"):
            result = np.power(values, float(params["w"]))
        bad = (result < 0) | np.isnan(result)
        if bad.any():
            i = int(np.argmax(bad))
            raise ScoreError(f"script score function must not produce negative scores, but got: [{result[i]}] "
                             f"(image score {values[i]} ^ w {params['w']}, document #{i})")
    elif set(fn) <= {"weight", "filter"}:
        if weight is None:
            raise UnsupportedQuery(f"function {fn!r} has neither a score function nor a weight")
        result = np.ones(n)
    else:
        raise UnsupportedQuery(f"the mirror evaluates weight, field_value_factor and the power script, "
                               f"not {sorted(set(fn) - {'filter', 'weight'})}")
    if weight is not None:
        result = result * _f32(weight)
    return result


def function_factor(functions: list[dict], score_mode: str, docs: Docs, sub_scores: np.ndarray,
                    leaf: Leaf | None = None) -> np.ndarray:
    """The double factor of ``FunctionScoreQuery.computeScore``; 1 where no function matches."""
    n = _n(docs)
    values, masks, weights = [], [], []
    for fn in functions:
        values.append(_function_value(fn, docs, sub_scores))
        masks.append(np.ones(n, bool) if "filter" not in fn else _filter_mask(fn["filter"], docs, leaf))
        weights.append(_f32(fn["weight"]) if fn.get("weight") is not None else 1.0)
    factor = np.ones(n)
    if not functions:
        return factor
    v, m = np.array(values), np.array(masks)
    any_match = m.any(axis=0)
    if score_mode == "multiply":
        factor = np.prod(np.where(m, v, 1.0), axis=0)
    elif score_mode in ("sum", "avg"):
        total = np.where(m, v, 0.0).sum(axis=0)
        weight_sum = np.where(m, np.array(weights)[:, None], 0.0).sum(axis=0)
        if score_mode == "avg":
            with np.errstate(divide="ignore", invalid="ignore"):
                total = total / weight_sum
        factor = np.where(weight_sum != 0, total, 1.0)
    elif score_mode == "max":
        factor = np.where(any_match, np.where(m, v, -np.inf).max(axis=0), 1.0)
    elif score_mode == "min":
        factor = np.where(any_match, np.where(m, v, np.inf).min(axis=0), 1.0)
    elif score_mode == "first":
        first = np.argmax(m, axis=0)
        factor = np.where(any_match, v[first, np.arange(n)], 1.0)
    else:
        raise UnsupportedQuery(f"score_mode {score_mode!r} is not one of multiply, sum, avg, max, min, first")
    return factor


def combine(sub_scores: np.ndarray, factor: np.ndarray, boost_mode: str, max_boost: float = FLOAT_MAX) -> np.ndarray:
    """``CombineFunction``: the float32 score from the query's float32 score and the double factor."""
    q = np.asarray(sub_scores, np.float32).astype(np.float64)
    f = np.minimum(np.asarray(factor, np.float64), max_boost)
    ops = {"multiply": lambda: q * f, "replace": lambda: f, "sum": lambda: q + f,
           "avg": lambda: (q + f) / 2.0, "max": lambda: np.maximum(q, f), "min": lambda: np.minimum(q, f)}
    if boost_mode not in ops:
        raise UnsupportedQuery(f"boost_mode {boost_mode!r} is not one of {sorted(ops)}")
    return ops[boost_mode]().astype(np.float32)


def _function_score(body: dict, docs: Docs, leaf: Leaf | None):
    _check_keys("function_score", body)
    matches, sub = evaluate(body.get("query", {"match_all": {}}), docs, leaf)
    functions = list(body.get("functions", []))
    for single in ("field_value_factor", "script_score", "weight"):
        if single in body:  # the single-function shorthand
            functions.append({single: body[single]})
    factor = function_factor(functions, body.get("score_mode", "multiply"), docs, sub, leaf)
    scores = combine(sub, factor, body.get("boost_mode", "multiply"), float(body.get("max_boost", FLOAT_MAX)))
    bad = matches & ((scores < 0) | np.isnan(scores))
    if bad.any():
        i = int(np.argmax(bad))
        raise ScoreError(f"function score query returned an invalid score: {scores[i]} for doc: {i}")
    scores = scores * np.float32(body.get("boost", 1.0))
    return matches, np.where(matches, scores, np.float32(0)).astype(np.float32)


def _rank_feature(body: dict, docs: Docs):
    n = _n(docs)
    raw = _field(docs, body["field"])
    values = np.full(n, np.nan, np.float32) if raw is None else raw.astype(np.float32)
    present = ~np.isnan(values)
    if (values[present] <= 0).any():
        raise ScoreError(f"rank_feature field [{body['field']}] holds a value <= 0; Elasticsearch refuses those "
                         f"at index time, write a positive value (es.mapping.rank_feature_value does)")
    f = quantize_rank_feature(np.where(present, values, 1.0))  # float32, as Lucene decodes it
    boost = np.float32(body.get("boost", 1.0))
    one = np.float32(1.0)
    # Lucene's FeatureField functions: float arithmetic, except the log and pow taken in double.
    if "saturation" in body:
        pivot = body["saturation"].get("pivot")
        if pivot is None:
            raise UnsupportedQuery("rank_feature saturation without a pivot uses an index-wide statistic the "
                                   "mirror cannot see; give the pivot")
        pivot = np.float32(pivot)
        s = boost * (one - pivot / (f + pivot))
    elif "log" in body:
        s = (float(boost) * np.log((np.float32(body["log"]["scaling_factor"]) + f).astype(np.float64)))
    elif "sigmoid" in body:
        pivot, exp = np.float32(body["sigmoid"]["pivot"]), np.float32(body["sigmoid"]["exponent"])
        s = float(boost) * (1.0 - 1.0 / (1.0 + np.power((f / pivot).astype(np.float64), float(exp))))
    elif "linear" in body:
        s = boost * f
    else:
        raise UnsupportedQuery("rank_feature without a function needs an index-wide pivot; give saturation.pivot")
    scores = np.where(present, s, 0.0).astype(np.float32)
    return present, scores


def search_scores(body: dict, docs: Docs, leaf: Leaf | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(matches, scores, rescored)`` of a search body with ``query`` and optional ``rescore``.

    A rescore re-scores the top ``window_size`` hits (by first-pass score) as
    ``QueryRescorer`` does, in float32: ``query_weight * score (op) rescore_query_weight * rescore``.
    ``rescored`` marks them: Elasticsearch sorts them above every hit outside the window.
    """
    matches, scores = evaluate(body.get("query", {"match_all": {}}), docs, leaf)
    rescored = np.zeros(len(scores), bool)
    rescores = body.get("rescore", [])
    for spec in rescores if isinstance(rescores, list) else [rescores]:
        window = int(spec.get("window_size", 10))
        q = spec["query"]
        order = np.argsort(-scores.astype(np.float64), kind="stable")
        order = order[matches[order]][:window]
        in_window = np.zeros(len(scores), bool)
        in_window[order] = True
        r_matches, r_scores = evaluate(q["rescore_query"], docs, leaf)
        primary = scores * np.float32(q.get("query_weight", 1.0))
        secondary = r_scores * np.float32(q.get("rescore_query_weight", 1.0))
        mode = q.get("score_mode", "total")
        ops = {"total": primary + secondary, "multiply": primary * secondary, "avg": (primary + secondary) / np.float32(2),
               "max": np.maximum(primary, secondary), "min": np.minimum(primary, secondary)}
        if mode not in ops:
            raise UnsupportedQuery(f"rescore score_mode {mode!r} is not one of {sorted(ops)}")
        new = np.where(r_matches, ops[mode], primary).astype(np.float32)
        scores = np.where(in_window, new, scores).astype(np.float32)
        rescored |= in_window
    return matches, scores, rescored


def as_dict(query: Any) -> dict:
    """A DSL object or a plain dict, as the JSON Elasticsearch receives."""
    return query.to_dict() if hasattr(query, "to_dict") else query
