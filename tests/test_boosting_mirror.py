"""The Python mirror of Elasticsearch's scoring arithmetic, on hand-computed documents, and its parity with the builders."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from es.boosting import Boost, build_query, search_body
from es.function_score import (
    ScoreError,
    UnsupportedQuery,
    combine,
    evaluate,
    function_factor,
    quantize_rank_feature,
    search_scores,
)

MATCH = {"match": {"title": {"query": "bag"}}}


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def leaf_scores(scores):
    """The base query's BM25 scores are given (as logged); the mirror evaluates everything around them."""
    scores = np.asarray(scores, np.float32)

    def leaf(query):
        assert query == MATCH or query == {"match": {"title": {"query": "bag", "_name": "relevance"}}}
        return np.ones(len(scores), bool), scores
    return leaf


def docs(image_score, **extra):
    return {"image_score": np.asarray(image_score, np.float32), **{k: np.asarray(v) for k, v in extra.items()}}


def test_multiplicative_on_hand_computed_documents_with_a_missing_score():
    existing, s, w, m = [2.0, 3.0, 1.5], [0.5, np.nan, 0.0], 0.3, 0.2
    _, scores = evaluate(build_query(MATCH, Boost("multiplicative", w, m)).to_dict(), docs(s), leaf_scores(existing))
    expected = [f32(2.0 * (1.0 + f32(0.5) * f32(0.3))), f32(3.0 * (1.0 + 0.2 * f32(0.3))), 1.5]
    assert scores.tolist() == expected


def test_power_additive_and_rank_feature_on_hand_computed_documents():
    rel, s = [2.0, 1.0], [0.25, np.nan]
    _, power = evaluate(build_query(MATCH, Boost("power", 0.5, 0.64)).to_dict(), docs(s), leaf_scores(rel))
    assert power.tolist() == [f32(2.0 * math.sqrt(0.25)), f32(1.0 * 0.8)]
    named = {"match": {"title": {"query": "bag", "_name": "relevance"}}}
    _, add = evaluate(build_query(named, Boost("additive", 2.0, 0.1)).to_dict(), docs(s), leaf_scores(rel))
    assert add.tolist() == [f32(2.0 + f32(0.25 * f32(2.0))), f32(1.0 + f32(0.1 * 2.0))]
    d = docs(s, image_score_rank=np.array([0.25, np.nan], np.float32))
    _, rf = evaluate(build_query(named, Boost("rank_feature", 2.0, rank_params={"pivot": 0.25})).to_dict(), d,
                     leaf_scores(rel))
    assert rf.tolist() == [f32(2.0 + 2.0 * (1 - 0.25 / (0.25 + 0.25))), 1.0]  # no field: no image term


def test_w_zero_is_exactly_the_identity():
    rng = np.random.default_rng(0)
    existing = rng.lognormal(0, 2, 5000).astype(np.float32)
    s = np.where(rng.random(5000) < 0.1, np.nan, rng.random(5000)).astype(np.float32)
    for formula in ("multiplicative", "power", "additive"):
        _, out = evaluate(build_query(MATCH, Boost(formula, 0.0, 0.5)).to_dict(), docs(s), leaf_scores(existing))
        assert np.array_equal(out, existing), formula


@pytest.mark.parametrize("mode", ["multiply", "sum", "avg", "max", "min", "first"])
def test_a_function_whose_filter_matches_nothing_gives_factor_one_in_every_score_mode(mode):
    d = docs([0.5, 0.5], color=np.array(["red", "blue"], dtype=object))
    never = {"filter": {"term": {"color": "green"}}, "weight": 7}
    assert function_factor([never], mode, d, np.ones(2, np.float32)).tolist() == [1.0, 1.0]
    # Matching functions still count; the unmatched one contributes nothing (not a factor of 1 in sum).
    matched = {"filter": {"term": {"color": "red"}}, "weight": 3}
    factor = function_factor([never, matched], mode, d, np.ones(2, np.float32)).tolist()
    assert factor == [1.0 if mode == "avg" else 3.0, 1.0]


def test_field_value_factor_without_missing_fails_the_query_on_a_document_lacking_the_field():
    query = {"function_score": {"query": {"match_all": {}},
                                "functions": [{"field_value_factor": {"field": "image_score", "factor": 0.3}}]}}
    with pytest.raises(ScoreError, match=r"Missing value for field \[image_score\] \(document #1\)"):
        evaluate(query, docs([0.5, np.nan]))
    query["function_score"]["functions"][0]["field_value_factor"]["missing"] = 0.0
    assert evaluate(query, docs([0.5, np.nan]))[1].tolist() == [f32(0.5 * f32(0.3)), 0.0]


def test_log_is_log10_and_ln_is_the_natural_log():
    def factor(modifier, value):
        fn = {"field_value_factor": {"field": "image_score", "modifier": modifier}}
        return function_factor([fn], "multiply", docs([value]), np.ones(1, np.float32))[0]
    assert factor("log", 100.0) == pytest.approx(2.0)
    assert factor("ln", math.e ** 2) == pytest.approx(2.0, rel=1e-6)
    assert factor("log1p", 9.0) == pytest.approx(1.0)
    assert factor("ln2p", 0.0) == pytest.approx(math.log(2.0))


def test_factor_and_scores_are_float32():
    fn = {"field_value_factor": {"field": "image_score", "factor": 0.1}}
    factor = function_factor([fn], "multiply", docs([1.0]), np.ones(1, np.float32))[0]
    assert factor == f32(0.1) != 0.1  # factor is parsed as a float, widened to double
    out = combine(np.array([1.0], np.float32), np.array([1.0 + 1e-9]), "multiply")
    assert out.dtype == np.float32 and out[0] == 1.0  # the product is rounded to float32


def test_negative_scores_are_errors():
    with pytest.raises(ScoreError, match="must not produce negative scores.*ln1p or ln2p"):
        function_factor([{"field_value_factor": {"field": "image_score", "modifier": "ln"}}], "multiply",
                        docs([0.5]), np.ones(1, np.float32))
    with pytest.raises(ScoreError, match="invalid score"):
        evaluate({"function_score": {"query": {"match_all": {}}, "functions": [{"weight": -2}]}}, docs([0.5]))


def test_rank_feature_keeps_nine_significant_bits():
    values = np.array([0.123456, 1.0, 3.14159, 1000.7], np.float32)
    q = quantize_rank_feature(values)
    assert q[1] == 1.0 and np.all(q <= values) and np.all((values - q) / values < 2 ** -8)
    assert len({float(x) for x in quantize_rank_feature(np.linspace(1.0, 1.003, 50, dtype=np.float32))}) == 1
    with pytest.raises(ScoreError, match="value <= 0"):
        evaluate({"rank_feature": {"field": "r", "linear": {}}}, {"r": np.array([0.0], np.float32)})


def test_rescore_multiplies_in_float32():
    body = search_body(MATCH, Boost("multiplicative", 0.3, 0.5), rescore_window=2)
    existing = np.array([3.0, 2.0, 1.0], np.float32)
    _, scores, rescored = search_scores(body, docs([0.2, 0.9, 1.0]), leaf_scores(existing))
    assert rescored.tolist() == [True, True, False]
    assert scores.tolist() == [f32(3.0 * f32(1 + f32(0.2) * f32(0.3))), f32(2.0 * f32(1 + f32(0.9) * f32(0.3))), 1.0]


def test_unknown_queries_and_scripts_are_refused_not_guessed():
    with pytest.raises(UnsupportedQuery, match="does not evaluate 'match'"):
        evaluate(MATCH, docs([0.5]))
    with pytest.raises(UnsupportedQuery, match="power variant's script"):
        function_factor([{"script_score": {"script": {"source": "_score * 2"}}}], "multiply", docs([0.5]),
                        np.ones(1, np.float32))
    with pytest.raises(UnsupportedQuery, match=r"function_score options \['min_score'\]"):
        evaluate({"function_score": {"query": {"match_all": {}}, "min_score": 2}}, docs([0.5]))
    with pytest.raises(UnsupportedQuery, match=r"bool options \['minimum_should_match'\]"):
        evaluate({"bool": {"should": [{"match_all": {}}], "minimum_should_match": 1}}, docs([0.5]))
    with pytest.raises(UnsupportedQuery, match="score_mode 'median'"):
        function_factor([{"weight": 1}], "median", docs([0.5]), np.ones(1, np.float32))


def test_tombstones_do_not_match_and_do_not_change_scores():
    d = docs([0.5, 0.5, 0.5], deleted=np.array([None, True, False], dtype=object))
    matches, scores = evaluate(build_query(MATCH, Boost(w=0.2)).to_dict(), d, leaf_scores([1.0, 1.0, 2.0]))
    assert matches.tolist() == [True, False, True]
    assert scores.tolist() == [f32(1.1), 0.0, f32(2 * 1.1)]
