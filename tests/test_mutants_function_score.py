"""es/function_score.py: the cases `make mutation` showed no test pinned (docs/testing.md, Mutation testing).

Expected values are written by hand, with the arithmetic in a comment; none comes from the code under test.
Float32 values are written as the exact decimal of the float32 (e.g. f32(0.3) = 0.30000001192092896).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from es.function_score import ScoreError, UnsupportedQuery, combine, evaluate, search_scores

F32 = np.float32
RED_RED_BLUE = {"color": np.array(["red", "red", "blue"], object)}


def _leaf(table: dict[str, list[float]]):
    """A leaf for ``{"match": {"title": TEXT}}``: the scores ``table[TEXT]``; a document matches when its score is > 0."""
    def leaf(query):
        scores = np.asarray(table[query["match"]["title"]], np.float64)
        return scores > 0, scores
    return leaf


def _match(text: str) -> dict:
    return {"match": {"title": text}}


def _errors_on_warnings():
    catcher = warnings.catch_warnings()
    catcher.__enter__()
    warnings.simplefilter("error")
    return catcher


# --------------------------------------------------------------------------- evaluate: the simple queries

def test_a_query_must_be_a_one_key_object():
    with pytest.raises(UnsupportedQuery, match=r"^a query must be an object with one key, got \[\{'match_all': \{\}\}\]$"):
        evaluate([{"match_all": {}}], RED_RED_BLUE)


def test_match_all_scores_its_boost_and_match_none_nothing():
    matches, scores = evaluate({"match_all": {"boost": 2.5}}, RED_RED_BLUE)
    assert matches.dtype == bool and matches.tolist() == [True, True, True]
    assert scores.dtype == np.float32 and scores.tolist() == [2.5, 2.5, 2.5]
    assert evaluate({"match_all": {}}, RED_RED_BLUE)[1].tolist() == [1.0, 1.0, 1.0]  # boost defaults to 1
    matches, scores = evaluate({"match_none": {}}, RED_RED_BLUE)
    assert matches.dtype == bool and matches.tolist() == [False, False, False]
    assert scores.dtype == np.float32 and scores.tolist() == [0.0, 0.0, 0.0]


def test_term_matches_exactly_and_scores_one():
    for query in ({"term": {"color": "red", "boost": 2.0}}, {"term": {"color": {"value": "red"}}}):
        matches, scores = evaluate(query, RED_RED_BLUE)
        assert matches.dtype == bool and matches.tolist() == [True, True, False]
        assert scores.dtype == np.float32 and scores.tolist() == [1.0, 1.0, 0.0]
    matches, scores = evaluate({"term": {"size": "red"}}, RED_RED_BLUE)  # no such field: nothing matches
    assert matches.dtype == bool and matches.tolist() == [False, False, False]
    assert scores.tolist() == [0.0, 0.0, 0.0]


def test_terms_matches_any_listed_value_but_never_a_missing_one():
    docs = {"prov": np.array(["ai", "camera", None, "edited"], object)}
    query = {"terms": {"prov": ["ai", "edited", None], "boost": 1.0, "_name": "ai"}}
    matches, scores = evaluate(query, docs)
    assert matches.dtype == bool and matches.tolist() == [True, False, False, True]  # None never matches
    assert scores.dtype == np.float32 and scores.tolist() == [1.0, 0.0, 0.0, 1.0]
    matches, _ = evaluate({"terms": {"origin": ["ai"]}}, docs)
    assert matches.dtype == bool and matches.tolist() == [False, False, False, False]
    with pytest.raises(UnsupportedQuery, match=r"^terms on 'prov' must list its values; a terms lookup is not mirrored$"):
        evaluate({"terms": {"prov": {"index": "x", "id": "1", "path": "p"}}}, docs)


def test_filters_on_no_documents_are_empty_bool_masks():
    empty = {"prov": np.array([], object)}
    for query in ({"term": {"prov": "ai"}}, {"terms": {"prov": ["ai"]}}):
        matches, scores = evaluate(query, empty)
        assert matches.dtype == bool and matches.shape == (0,)
        assert scores.dtype == np.float32 and scores.shape == (0,)


def test_exists_on_numbers_keywords_and_an_absent_field():
    docs = {"image_score": np.array([0.5, np.nan, 0.0], np.float32), "prov": np.array(["ai", None, "camera"], object)}
    assert evaluate({"exists": {"field": "image_score"}}, docs)[0].tolist() == [True, False, True]  # NaN: missing
    matches, scores = evaluate({"exists": {"field": "prov"}}, docs)
    assert matches.tolist() == [True, False, True] and scores.tolist() == [1.0, 0.0, 1.0]
    matches, _ = evaluate({"exists": {"field": "nope"}}, docs)
    assert matches.dtype == bool and matches.tolist() == [False, False, False]


def test_leaf_results_are_cast_to_bool_and_float32():
    matches, scores = evaluate(_match("x"), RED_RED_BLUE, lambda query: ([1, 0, 1], [1.5, 0.0, 2.0]))
    assert matches.dtype == bool and matches.tolist() == [True, False, True]
    assert scores.dtype == np.float32 and scores.tolist() == [1.5, 0.0, 2.0]


# --------------------------------------------------------------------------- bool

def test_bool_must_filter_must_not_and_boost():
    docs = {"color": np.array(["red", "red", "red", "blue"], object), "size": np.array([1.0, np.nan, 2.0, 3.0]),
            "tag": np.array(["x", "x", "y", "x"], object)}
    query = {"bool": {"must": [{"term": {"color": "red"}}, {"match_all": {"boost": 2.0}}],
                      "filter": [{"exists": {"field": "size"}}], "must_not": [{"term": {"tag": "y"}}], "boost": 1.5}}
    matches, scores = evaluate(query, docs)
    # must: red [T, T, T, F] and match_all; filter: size present [T, F, T, T]; must_not: tag y [F, F, T, F]
    assert matches.tolist() == [True, False, False, False]
    # (1 + 2) * 1.5 = 4.5 for the one match; 0 elsewhere
    assert scores.dtype == np.float32 and scores.tolist() == [4.5, 0.0, 0.0, 0.0]


def test_bool_single_clause_objects_count_like_lists():
    matches, scores = evaluate({"bool": {"must": {"term": {"color": "red"}}}}, RED_RED_BLUE)
    assert matches.tolist() == [True, True, False] and scores.tolist() == [1.0, 1.0, 0.0]


def test_bool_should_alone_must_match_one_clause():
    docs = {"color": np.array(["red", "blue", "green", "red"], object), "tag": np.array(["x", "x", "x", "y"], object)}
    query = {"bool": {"should": [{"term": {"color": "red"}}, {"term": {"color": "blue"}}],
                      "must_not": [{"term": {"tag": "y"}}]}}
    matches, scores = evaluate(query, docs)
    # red or blue [T, T, F, T], and not tag y [T, T, T, F]
    assert matches.tolist() == [True, True, False, False]
    assert scores.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_bool_should_beside_a_filter_only_adds_score():
    docs = {"color": np.array(["red", "blue"], object), "size": np.array([1.0, 2.0])}
    query = {"bool": {"filter": [{"exists": {"field": "size"}}], "should": [{"term": {"color": "red"}}]}}
    matches, scores = evaluate(query, docs)
    assert matches.tolist() == [True, True]  # the filter decides; should only scores
    assert scores.tolist() == [1.0, 0.0]


def test_bool_passes_the_leaf_to_every_clause():
    leaf = _leaf({"a": [1, 1, 1, 0], "b": [0, 1, 0, 0], "c": [0, 0, 2, 0]})
    docs = {"color": np.array(["r", "r", "b", "b"], object)}
    query = {"bool": {"filter": [_match("a")], "must_not": [_match("b")], "should": [_match("c")]}}
    matches, scores = evaluate(query, docs, leaf)
    # a [T, T, T, F] and not b [T, F, T, T]; should c (score 2 on doc 2) only adds, beside the filter
    assert matches.tolist() == [True, False, True, False]
    assert scores.tolist() == [0.0, 0.0, 2.0, 0.0]


def test_bool_casts_the_double_sum_to_float32_before_the_boost():
    query = {"bool": {"must": [{"match_all": {"boost": 0.1}}, {"match_all": {"boost": 0.7}}], "boost": 3.0}}
    _, scores = evaluate(query, {"x": np.zeros(1)})
    # f32(0.1) + f32(0.7) in double = 0.10000000149011612 + 0.699999988079071 = 0.7999999895691872;
    # as float32 0.800000011920929; times 3 in float32 = 2.4000000953674316 (in double first: 2.3999998569488525)
    assert scores.tolist() == [2.4000000953674316]


# --------------------------------------------------------------------------- function_score

def test_function_score_defaults_to_match_all_and_multiply():
    matches, scores = evaluate({"function_score": {"functions": [{"weight": 2.0}]}}, RED_RED_BLUE)
    assert matches.tolist() == [True, True, True] and scores.tolist() == [2.0, 2.0, 2.0]  # 1 * 2


def test_function_score_without_functions_is_its_query():
    _, scores = evaluate({"function_score": {"query": {"match_all": {"boost": 3.0}}}}, RED_RED_BLUE)
    assert scores.tolist() == [3.0, 3.0, 3.0]  # factor 1


@pytest.mark.parametrize("single, expected", [
    ({"weight": 3.0}, [3.0, 3.0]),                                                          # 1 * 3
    ({"field_value_factor": {"field": "image_score", "factor": 2.0, "missing": 0.5}}, [0.5, 1.0]),  # 0.25*2, 0.5*2
    ({"script_score": {"script": {"source": (
        "double s = doc[params.field].size() == 0 ? params.missing : doc[params.field].value; "
        "return Math.pow(s, params.w);"), "params": {"field": "image_score", "w": 2.0, "missing": 0.5}}}},
     [0.0625, 0.25]),                                                                       # 0.25^2, 0.5^2
])
def test_function_score_single_function_shorthand(single, expected):
    docs = {"image_score": np.array([0.25, np.nan], np.float32)}
    _, scores = evaluate({"function_score": single}, docs)
    assert scores.tolist() == expected


def test_function_score_boost_mode_max_boost_boost_and_unmatched_documents():
    body = {"query": {"term": {"color": "red"}}, "functions": [{"weight": 4.0}], "boost_mode": "sum", "max_boost": 2.5,
            "boost": 2.0}
    matches, scores = evaluate({"function_score": body}, RED_RED_BLUE)
    # factor min(4, 2.5) = 2.5; sum: 1 + 2.5 = 3.5; boost 2: 7; the blue document does not match: 0
    assert matches.tolist() == [True, True, False]
    assert scores.dtype == np.float32 and scores.tolist() == [7.0, 7.0, 0.0]


def test_function_score_passes_the_leaf_to_function_filters():
    leaf = _leaf({"a": [1, 1, 1, 0], "c": [0, 0, 2, 0]})
    body = {"query": _match("a"), "functions": [{"filter": _match("c"), "weight": 3.0}]}
    matches, scores = evaluate({"function_score": body}, {"x": np.zeros(4)}, leaf)
    # query a [1, 1, 1, unmatched]; the function applies to doc 2 only: 1 * 3
    assert scores.tolist() == [1.0, 1.0, 3.0, 0.0]


def test_a_negative_final_score_names_the_first_document_with_it():
    body = {"functions": [{"filter": {"term": {"color": "blue"}}, "weight": -2.0}]}
    docs = {"color": np.array(["red", "blue", "blue"], object)}
    with pytest.raises(ScoreError, match=r"^function score query returned an invalid score: -2\.0 for doc: 1$"):
        evaluate({"function_score": body}, docs)


# --------------------------------------------------------------------------- score functions

def test_field_value_factor_on_an_absent_field_uses_missing():
    body = {"functions": [{"field_value_factor": {"field": "nope", "factor": 2.0, "missing": 0.75}}]}
    assert evaluate({"function_score": body}, RED_RED_BLUE)[1].tolist() == [1.5, 1.5, 1.5]  # 0.75 * 2


def test_absent_field_functions_combine_with_others_per_document():
    # score_mode sum: 0.5 (missing, factor 1) + 3 = 3.5 and 0.5^2 (missing, power 2) + 3 = 3.25 on every document
    functions = [{"field_value_factor": {"field": "nope", "missing": 0.5}}, {"weight": 3.0}]
    body = {"functions": functions, "score_mode": "sum"}
    assert evaluate({"function_score": body}, RED_RED_BLUE)[1].tolist() == [3.5, 3.5, 3.5]
    power = _power(2.0, 0.5, "nope")["function_score"]["functions"] + [{"weight": 3.0}]
    body = {"functions": power, "score_mode": "sum"}
    assert evaluate({"function_score": body}, RED_RED_BLUE)[1].tolist() == [3.25, 3.25, 3.25]


def test_unknown_modifier_is_named():
    body = {"functions": [{"field_value_factor": {"field": "x", "modifier": "cube"}}]}
    with pytest.raises(UnsupportedQuery, match=r"^field_value_factor modifier 'cube' is not one of \['ln', 'ln1p', "):
        evaluate({"function_score": body}, {"x": np.ones(1)})


@pytest.mark.parametrize("modifier, value, message", [
    ("log", 0.5, r"^field value function must not produce negative scores, but got: \[-0\.3010299956639812\] for "
                 r"field value: \[0\.5\] \(document #1\); consider using log1p or log2p instead of log to avoid "
                 r"negative scores$"),                                        # log10(0.5) = -0.30103
    ("ln", 0.5, r"^.*\(document #1\); consider using ln1p or ln2p instead of ln to avoid negative scores$"),
    ("sqrt", -4.0, r"^field value function must not produce negative scores, but got: \[nan\] for field value: "
                   r"\[-4\.0\] \(document #1\)$"),                             # no hint for sqrt
])
def test_negative_field_values_name_the_document_and_the_hint(modifier, value, message):
    body = {"functions": [{"field_value_factor": {"field": "x", "modifier": modifier}}]}
    with pytest.raises(ScoreError, match=message):
        evaluate({"function_score": body}, {"x": np.array([1.0, value])})


def test_field_value_division_by_zero_and_invalid_values_raise_no_warning():
    catcher = _errors_on_warnings()
    try:
        body = {"functions": [{"field_value_factor": {"field": "x", "modifier": "reciprocal"}}]}
        # 1 / 0 = inf, capped at max_boost's default, the largest float32 3.4028234663852886e+38
        assert evaluate({"function_score": body}, {"x": np.array([0.0])})[1].tolist() == [3.4028234663852886e+38]
        body = {"functions": [{"field_value_factor": {"field": "x", "modifier": "sqrt"}}]}
        with pytest.raises(ScoreError):
            evaluate({"function_score": body}, {"x": np.array([-1.0])})  # sqrt(-1) = nan
    finally:
        catcher.__exit__(None, None, None)


POWER = ("double s = doc[params.field].size() == 0 ? params.missing : doc[params.field].value; "
         "return Math.pow(s, params.w);")


def _power(w: float, missing: float = 0.5, field: str = "image_score") -> dict:
    return {"function_score": {"functions": [{"script_score": {"script": {
        "source": POWER, "params": {"field": field, "w": w, "missing": missing}}}}]}}


def test_power_script_on_an_absent_field_and_a_zero_score():
    assert evaluate(_power(2.0, 0.5, "nope"), RED_RED_BLUE)[1].tolist() == [0.25, 0.25, 0.25]  # 0.5^2
    assert evaluate(_power(1.0), {"image_score": np.array([0.0, 0.5])})[1].tolist() == [0.0, 0.5]  # 0 is allowed


@pytest.mark.parametrize("scores, w, message", [
    ([1.0, -2.0], 1.0, r"^script score function must not produce negative scores, but got: \[-2\.0\] "
                       r"\(image score -2\.0 \^ w 1\.0, document #1\)$"),          # (-2)^1 = -2
    ([1.0, -1.0], 0.5, r"^script score function must not produce negative scores, but got: \[nan\] "
                       r"\(image score -1\.0 \^ w 0\.5, document #1\)$"),          # (-1)^0.5 = nan
])
def test_power_script_negative_or_nan_results_name_the_document(scores, w, message):
    catcher = _errors_on_warnings()  # the nan must come without a RuntimeWarning
    try:
        with pytest.raises(ScoreError, match=message):
            evaluate(_power(w), {"image_score": np.array(scores)})
    finally:
        catcher.__exit__(None, None, None)


def test_power_script_zero_to_a_negative_power_raises_no_warning():
    catcher = _errors_on_warnings()
    try:
        # 0^-1 = inf, capped at max_boost's default, the largest float32
        assert evaluate(_power(-1.0), {"image_score": np.array([0.0])})[1].tolist() == [3.4028234663852886e+38]
    finally:
        catcher.__exit__(None, None, None)


def test_other_scripts_and_functions_are_named():
    other = {"function_score": {"functions": [{"script_score": {"script": {"source": "return 1;"}}}]}}
    with pytest.raises(UnsupportedQuery, match=r"^the mirror evaluates only the power variant's script "
                                               r"\(es\.function_score\.POWER_SCRIPT\); other scripts have no Python mirror$"):
        evaluate(other, RED_RED_BLUE)
    with pytest.raises(UnsupportedQuery, match=r"^function \{'filter': \{'match_all': \{\}\}\} has neither a score "
                                               r"function nor a weight$"):
        evaluate({"function_score": {"functions": [{"filter": {"match_all": {}}}]}}, RED_RED_BLUE)
    gauss = {"gauss": {"x": {"origin": 0}}, "filter": {"match_all": {}}, "weight": 2.0}
    with pytest.raises(UnsupportedQuery, match=r"^the mirror evaluates weight, field_value_factor and the power "
                                               r"script, not \['gauss'\]$"):
        evaluate({"function_score": {"functions": [gauss]}}, RED_RED_BLUE)


# --------------------------------------------------------------------------- score modes

def test_avg_counts_an_unweighted_function_as_weight_one():
    fn = {"field_value_factor": {"field": "x"}}
    _, scores = evaluate({"function_score": {"functions": [fn], "score_mode": "avg"}}, {"x": np.array([3.0])})
    assert scores.tolist() == [3.0]  # 3 / 1


def test_avg_with_weights_summing_to_zero_is_one_and_warns_nothing():
    # doc 0: both functions apply, weights 2 and -2 sum to 0, values 3*2 + (-2) = 4: 4 / 0 -> factor 1;
    # doc 1: no function applies, 0 / 0 -> factor 1.
    functions = [{"filter": {"term": {"c": "a"}}, "field_value_factor": {"field": "x"}, "weight": 2.0},
                 {"filter": {"term": {"c": "a"}}, "weight": -2.0}]
    docs = {"c": np.array(["a", "b"], object), "x": np.array([3.0, 3.0])}
    catcher = _errors_on_warnings()
    try:
        _, scores = evaluate({"function_score": {"functions": functions, "score_mode": "avg"}}, docs)
    finally:
        catcher.__exit__(None, None, None)
    assert scores.tolist() == [1.0, 1.0]


def test_min_is_per_document():
    functions = [{"field_value_factor": {"field": "x"}}, {"weight": 5.0}]
    _, scores = evaluate({"function_score": {"functions": functions, "score_mode": "min"}}, {"x": np.array([2.0, 7.0])})
    assert scores.tolist() == [2.0, 5.0]  # min(2, 5), min(7, 5)


# --------------------------------------------------------------------------- rank_feature

def test_rank_feature_without_boost_and_on_an_absent_field():
    docs = {"image_score_rank": np.array([0.75, np.nan], np.float32)}
    matches, scores = evaluate({"rank_feature": {"field": "image_score_rank", "saturation": {"pivot": 0.5}}}, docs)
    # 1 - 0.5 / (0.75 + 0.5) = 0.6 (float32 0.6000000238418579); the missing document: no match, 0
    assert matches.tolist() == [True, False]
    assert scores.dtype == np.float32 and scores.tolist() == [0.6000000238418579, 0.0]
    matches, scores = evaluate({"rank_feature": {"field": "nope", "linear": {}}}, docs)
    assert matches.tolist() == [False, False]
    assert scores.dtype == np.float32 and scores.tolist() == [0.0, 0.0]


def test_rank_feature_reads_a_double_as_float32():
    # 1e-50 as a float32 is 0.0, a value Elasticsearch refuses
    with pytest.raises(ScoreError, match=r"^rank_feature field \[r\] holds a value <= 0; "):
        evaluate({"rank_feature": {"field": "r", "linear": {}}}, {"r": np.array([1e-50])})


def test_rank_feature_without_a_usable_function_is_named():
    docs = {"r": np.array([0.5], np.float32)}
    with pytest.raises(UnsupportedQuery, match=r"^rank_feature saturation without a pivot uses an index-wide "
                                               r"statistic the mirror cannot see; give the pivot$"):
        evaluate({"rank_feature": {"field": "r", "saturation": {}}}, docs)
    with pytest.raises(UnsupportedQuery, match=r"^rank_feature without a function needs an index-wide pivot; "
                                               r"give saturation\.pivot$"):
        evaluate({"rank_feature": {"field": "r"}}, docs)


# --------------------------------------------------------------------------- combine

def test_combine_rounds_the_query_score_to_float32_first():
    # f32(0.3) = 0.30000001192092896; * 3 = 0.9000000357627869, a float32 (0.3 * 3 in double rounds to 0.9 instead)
    assert combine(np.array([0.3]), np.array([3.0]), "multiply").tolist() == [0.9000000357627869]


def test_combine_caps_a_float32_factor_in_double():
    # max_boost 0.3 caps the factor 1 in double: 3 * 0.3 = 0.8999999999999999, as float32 0.8999999761581421
    # (capped in float32 it would be f32(0.3) * 3 = 0.9000000357627869)
    factor = np.array([1.0], np.float32)
    assert combine(np.array([3.0]), factor, "multiply", max_boost=0.3).tolist() == [0.8999999761581421]


def test_combine_names_an_unknown_boost_mode():
    with pytest.raises(UnsupportedQuery, match=r"^boost_mode 'mean' is not one of \['avg', 'max', 'min', "
                                               r"'multiply', 'replace', 'sum'\]$"):
        combine(np.ones(1), np.ones(1), "mean")


# --------------------------------------------------------------------------- search_scores: rescore

THREE = {"color": np.array(["red", "red", "blue"], object)}
BASE = _leaf({"bag": [4.0, 2.0, 1.0]})


def _rescored(**query) -> list[float]:
    body = {"query": _match("bag"),
            "rescore": {"window_size": 3, "query": {"rescore_query": {"term": {"color": "red"}}, **query}}}
    return search_scores(body, THREE, BASE)[1].tolist()


@pytest.mark.parametrize("mode, expected", [
    # primary = base * 0.5 = [2, 1, 0.5]; secondary = red * 3 = [3, 3, -]; the blue one keeps its primary 0.5
    ("total", [5.0, 4.0, 0.5]),      # 2 + 3, 1 + 3
    ("multiply", [6.0, 3.0, 0.5]),   # 2 * 3, 1 * 3
    ("avg", [2.5, 2.0, 0.5]),        # (2 + 3) / 2, (1 + 3) / 2
    ("max", [3.0, 3.0, 0.5]),
    ("min", [2.0, 1.0, 0.5]),
])
def test_rescore_score_modes_and_weights(mode, expected):
    assert _rescored(query_weight=0.5, rescore_query_weight=3.0, score_mode=mode) == expected


def test_rescore_defaults_weights_one_and_mode_total():
    assert _rescored() == [5.0, 3.0, 1.0]  # 4 + 1, 2 + 1; blue keeps 1


def test_rescore_names_an_unknown_mode():
    with pytest.raises(UnsupportedQuery, match=r"^rescore score_mode 'sum' is not one of \['avg', 'max', 'min', "
                                               r"'multiply', 'total'\]$"):
        _rescored(score_mode="sum")


def test_rescore_window_defaults_to_ten_and_a_list_of_rescores_accumulates():
    docs = {"x": np.zeros(11)}
    leaf = _leaf({"bag": [11.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]})
    body = {"query": _match("bag"), "rescore": {"query": {"rescore_query": {"match_all": {}}}}}
    _, scores, rescored = search_scores(body, docs, leaf)
    assert rescored.tolist() == [True] * 10 + [False]  # the top 10 only
    assert scores.dtype == np.float32 and scores.tolist() == [12.0, 11.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 1.0]
    body = {"query": _match("bag"), "rescore": [
        {"window_size": 3, "query": {"rescore_query": {"match_all": {}}}},
        {"window_size": 1, "query": {"rescore_query": {"match_all": {}}}}]}
    _, scores, rescored = search_scores(body, docs, leaf)
    assert rescored.tolist() == [True, True, True] + [False] * 8  # both windows, not only the last
    assert scores.tolist()[:4] == [13.0, 11.0, 10.0, 8.0]  # 11 + 1 + 1, 10 + 1, 9 + 1, 8


def test_rescore_window_breaks_ties_in_document_order():
    # 17 documents (numpy's default sort is not stable from 17 on); five tie at 2: the window of 2 takes docs 0 and 9
    base = [2.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2.0, 1.0, 2.0, 1.0, 1.0, 2.0, 2.0, 1.0]
    body = {"query": _match("bag"), "rescore": {"window_size": 2, "query": {"rescore_query": {"match_all": {}}}}}
    _, _, rescored = search_scores(body, {"x": np.zeros(17)}, _leaf({"bag": base}))
    assert np.flatnonzero(rescored).tolist() == [0, 9]


def test_rescore_passes_the_leaf_and_the_query_defaults_to_match_all():
    leaf = _leaf({"boost": [0.0, 2.0]})
    body = {"rescore": {"window_size": 2, "query": {"rescore_query": _match("boost")}}}
    matches, scores, _ = search_scores(body, {"x": np.zeros(2)}, leaf)
    assert matches.tolist() == [True, True] and scores.tolist() == [1.0, 3.0]  # match_all 1; + 2 where matched
    assert search_scores({}, {"x": np.zeros(2)})[1].tolist() == [1.0, 1.0]
