"""Boosting query builders: JSON structure as Elasticsearch documents it, DSL round trips, options, bad input."""
from __future__ import annotations

import json

import pytest
from elasticsearch.dsl import Q
from elasticsearch.dsl import function as F

from es.boosting import (
    FORMULAS,
    Boost,
    PlatformBoosts,
    additive,
    build_query,
    rescore_search,
    search_body,
)
from es.function_score import POWER_SCRIPT

MATCH = {"match": {"title": {"query": "leather bag"}}}
TOMBSTONE = {"term": {"deleted": True}}


def _inner(query) -> dict:
    """The boosted query inside the tombstone filter."""
    body = query.to_dict()["bool"]
    assert body["must_not"] == [TOMBSTONE] and len(body["must"]) == 1
    return body["must"][0]


def test_multiplicative_is_the_documented_function_score():
    q = build_query(MATCH, Boost("multiplicative", w=0.3, missing=0.2))
    assert _inner(q) == {"function_score": {
        "query": MATCH,
        "functions": [{"weight": 1},
                      {"field_value_factor": {"field": "image_score", "factor": 0.3, "missing": 0.2}}],
        "score_mode": "sum", "boost_mode": "multiply"}}


def test_power_variant_is_a_script_score_with_the_mirrored_script():
    fs = _inner(build_query(MATCH, Boost("power", w=0.7, missing=0.4)))["function_score"]
    assert fs["boost_mode"] == "multiply" and fs["query"] == MATCH
    assert fs["functions"] == [{"script_score": {"script": {
        "source": POWER_SCRIPT, "params": {"field": "image_score", "w": 0.7, "missing": 0.4}}}}]


@pytest.mark.parametrize("formula", FORMULAS)
def test_every_query_round_trips_through_the_dsl_and_keeps_w_out_of_top_level_boost(formula):
    q = build_query(MATCH, Boost(formula, w=0.3))
    d = q.to_dict()
    assert Q(d).to_dict() == d
    assert json.loads(json.dumps(d)) == d
    assert "boost" not in d["bool"] and "boost" not in next(iter(_inner(q).values()))
    assert TOMBSTONE in d["bool"]["must_not"]


def test_additive_adds_the_image_term_to_the_named_relevance_clause_in_place():
    relevance = {"match": {"title": {"query": "bag", "_name": "relevance"}}}
    freshness = {"gauss": {"created_at": {"origin": "now", "scale": "7d"}}}
    base = {"function_score": {"query": relevance, "functions": [freshness], "boost_mode": "multiply"}}
    fs = _inner(build_query(base, Boost("additive", w=0.5, missing=0.1)))["function_score"]
    assert fs["functions"] == [freshness] and fs["boost_mode"] == "multiply"  # other factors untouched
    assert fs["query"] == {"bool": {
        "must": [relevance],
        "should": [{"function_score": {"query": {"match_all": {}}, "boost_mode": "replace", "functions": [
            {"field_value_factor": {"field": "image_score", "factor": 0.5, "missing": 0.1}}]}}]}}


def test_additive_without_a_named_clause_names_the_whole_base():
    d = additive(MATCH, Boost("additive", w=0.2)).to_dict()
    assert d["bool"]["must"] == [{"bool": {"must": [MATCH], "_name": "relevance"}}]
    assert len(d["bool"]["should"]) == 1


def test_rank_feature_variant_is_the_documented_rank_feature_query():
    relevance = {"match": {"title": {"query": "bag", "_name": "relevance"}}}
    for function, params in (("saturation", {"pivot": 0.4}), ("log", {"scaling_factor": 1.0}),
                             ("sigmoid", {"pivot": 0.5, "exponent": 0.6}), ("linear", {})):
        boost = Boost("rank_feature", w=2.0, rank_function=function, rank_params=params)
        should = _inner(build_query(relevance, boost))["bool"]["should"]
        assert should == [{"rank_feature": {"field": "image_score_rank", function: params, "boost": 2.0}}]


@pytest.mark.parametrize("base, message", [
    ({"bool": {"must": [{"match": {"a": {"query": "x", "_name": "relevance"}}}, {"match": {"b": "y"}}]}},
     "shares a bool"),
    ({"function_score": {"query": {"match": {"a": {"query": "x", "_name": "relevance"}}}, "boost_mode": "sum",
                         "functions": [{"weight": 2}]}}, "boost_mode 'sum'"),
    ({"bool": {"must": [{"match": {"a": {"query": "x", "_name": "relevance"}}}],
               "filter": [{"match": {"b": {"query": "y", "_name": "relevance"}}}]}}, "names 2 clauses"),
    ({"bool": {"must": [{"match": {"a": "x"}}], "filter": [{"match": {"b": {"query": "y", "_name": "relevance"}}}]}},
     "sits in a bool's 'filter', which does not score"),
    ({"bool": {"must_not": [{"match": {"b": {"query": "y", "_name": "relevance"}}}]}},
     "sits in a bool's 'must_not', which does not score"),
    ({"function_score": {"query": {"match_all": {}}, "functions": [
        {"filter": {"match": {"b": {"query": "y", "_name": "relevance"}}}, "weight": 2}]}},
     "sits in a function_score's 'functions', which does not score"),
])
def test_additive_refuses_a_relevance_clause_it_cannot_boost_additively(base, message):
    with pytest.raises(ValueError, match=message):
        build_query(base, Boost("additive", w=0.3))


def test_rescore_multiplies_the_window_or_recomputes_the_additive_query():
    d = rescore_search(MATCH, Boost("multiplicative", w=0.3), window_size=100).to_dict()
    assert d["query"] == {"bool": {"must": [MATCH], "must_not": [TOMBSTONE]}}
    assert d["rescore"]["window_size"] == 100
    spec = d["rescore"]["query"]
    assert spec["score_mode"] == "multiply" and spec["query_weight"] == 1
    assert spec["rescore_query"]["function_score"]["boost_mode"] == "replace"
    assert spec["rescore_query"]["function_score"]["functions"][0] == {"weight": 1}
    d = search_body(MATCH, Boost("additive", w=0.3), rescore_window=50)
    assert d["rescore"]["query"]["score_mode"] == "total" and d["rescore"]["query"]["query_weight"] == 0
    with pytest.raises(ValueError, match="window_size"):
        rescore_search(MATCH, Boost(), window_size=0)


def test_dsl_objects_and_dicts_build_the_same_query():
    assert build_query(Q(MATCH), Boost(w=0.1)).to_dict() == build_query(MATCH, Boost(w=0.1)).to_dict()
    assert F.SF({"weight": 1}).to_dict() == {"weight": 1}


@pytest.mark.parametrize("kwargs, message", [
    ({"formula": "sum"}, "formula 'sum'"), ({"w": -0.1}, "w must be"), ({"missing": float("nan")}, "missing must be"),
    ({"rank_function": "cube"}, "rank_function"),
])
def test_bad_boosts_are_refused_with_the_input_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Boost(**kwargs)


def test_per_platform_weights_and_formulas(tmp_path):
    path = tmp_path / "boosts.json"
    path.write_text(json.dumps({"default": {"w": 0.1}, "web": {"w": 0.4},
                                "ios": {"formula": "additive", "w": 0.2}}))
    boosts = PlatformBoosts.from_json(str(path))
    assert boosts.for_platform("web") == Boost("multiplicative", 0.4)
    assert boosts.for_platform("ios") == Boost("additive", 0.2)
    assert boosts.for_platform("android") == Boost("multiplicative", 0.1)
    assert boosts.for_platform(None) == Boost("multiplicative", 0.1)
    path.write_text(json.dumps({"web": {"weight": 0.4}}))
    with pytest.raises(ValueError, match=r"platform 'web': unknown keys \['weight'\]"):
        PlatformBoosts.from_json(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="keyed by platform"):
        PlatformBoosts.from_json(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        PlatformBoosts.from_json(str(path))
