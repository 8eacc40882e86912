"""es/boosting.py: the cases `make mutation` showed no test pinned (docs/testing.md, Mutation testing).

Expected queries are written out by hand as Elasticsearch receives them; none comes from the code under test.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from es.boosting import Boost, PlatformBoosts, additive, build_query, rescore_search, search_body
from es.function_score import evaluate

MATCH = {"match": {"title": "bag"}}
REL = {"match": {"title": {"query": "bag", "_name": "relevance"}}}
TOMBSTONES = [{"term": {"deleted": True}}]
AI = {"terms": {"image_provenance": ["c2pa_ai", "xmp_ai", "generator_metadata"]}}
IMAGE_TERM = {"function_score": {"query": {"match_all": {}}, "boost_mode": "replace", "functions": [
    {"field_value_factor": {"field": "image_score", "factor": 0.5, "missing": 0.5}}]}}


def test_ai_factor_wraps_the_query_in_a_filtered_weight():
    query = build_query(MATCH, Boost("power", 2.0, ai_factor=0.8), exclude_deleted=False).to_dict()
    power = {"function_score": {"query": MATCH, "boost_mode": "multiply", "functions": [{"script_score": {"script": {
        "source": "double s = doc[params.field].size() == 0 ? params.missing : doc[params.field].value; "
                  "return Math.pow(s, params.w);",
        "params": {"field": "image_score", "w": 2.0, "missing": 0.5}}}}]}}
    assert query == {"function_score": {"query": power, "boost_mode": "multiply",
                                        "functions": [{"filter": AI, "weight": 0.8}]}}


def test_ai_factor_scores_through_the_mirror():
    docs = {"image_score": np.array([0.5, 0.5], np.float32),
            "image_provenance": np.array(["c2pa_ai", "camera"], object)}
    query = build_query({"match_all": {}}, Boost("power", 1.0, ai_factor=0.5)).to_dict()
    # 1 * 0.5^1 = 0.5; the AI-made image: * 0.5 = 0.25
    assert evaluate(query, docs)[1].tolist() == [0.25, 0.5]


def test_search_body_without_rescore_is_the_boosted_query_without_tombstones():
    body = search_body(MATCH, Boost("multiplicative", 0.3, 0.5))
    assert body == {"query": {"bool": {"must_not": TOMBSTONES, "must": [{"function_score": {
        "query": MATCH, "score_mode": "sum", "boost_mode": "multiply", "functions": [
            {"weight": 1}, {"field_value_factor": {"field": "image_score", "factor": 0.3, "missing": 0.5}}]}}]}}}


def test_build_query_can_keep_tombstones():
    query = build_query(MATCH, Boost("power", 1.0), exclude_deleted=False).to_dict()
    assert list(query) == ["function_score"]


def test_rescore_of_the_power_formula():
    body = rescore_search(MATCH, Boost("power", 0.3, 0.5), 1).to_dict()  # a window of 1 is allowed
    assert body == {"query": {"bool": {"must": [MATCH], "must_not": TOMBSTONES}}, "rescore": {
        "window_size": 1, "query": {"query_weight": 1, "rescore_query_weight": 1, "score_mode": "multiply",
                                    "rescore_query": {"function_score": {
                                        "query": {"match_all": {}}, "score_mode": "sum", "boost_mode": "replace",
                                        "functions": [{"script_score": {"script": {
                                            "source": "double s = doc[params.field].size() == 0 ? params.missing : "
                                                      "doc[params.field].value; return Math.pow(s, params.w);",
                                            "params": {"field": "image_score", "w": 0.3, "missing": 0.5}}}}]}}}}}


def test_rescore_of_the_additive_formula():
    body = rescore_search(REL, Boost("additive", 0.5, 0.5), 4).to_dict()
    assert body["rescore"] == {"window_size": 4, "query": {
        "query_weight": 0, "rescore_query_weight": 1, "score_mode": "total",
        "rescore_query": {"bool": {"must": [REL], "should": [IMAGE_TERM]}}}}


def test_rescore_window_below_one_is_refused():
    with pytest.raises(ValueError, match=r"^window_size must be >= 1, got 0$"):
        rescore_search(MATCH, Boost(), 0)


# --------------------------------------------------------------------------- additive: where the term goes

def test_additive_through_a_function_score_without_boost_mode_and_a_lone_bool_clause():
    base = {"function_score": {"query": {"bool": {"must": [REL]}}, "functions": [{"weight": 2}]}}
    before = copy.deepcopy(base)
    query = additive(base, Boost("additive", 0.5, 0.5)).to_dict()
    assert base == before  # the caller's query is not changed
    assert query == {"function_score": {"functions": [{"weight": 2}], "query": {"bool": {"must": [
        {"bool": {"must": [REL], "should": [IMAGE_TERM]}}]}}}}


@pytest.mark.parametrize("bool_body", [
    {"must": [REL], "should": [MATCH]},
    {"should": [REL, MATCH]},
])
def test_additive_refuses_a_relevance_clause_beside_other_scoring_clauses(bool_body):
    with pytest.raises(ValueError, match=r"^the relevance clause shares a bool with other scoring clauses; mark the "
                                         r"whole sum as relevance \(put \"_name\": \"relevance\" on the bool\)$"):
        additive({"bool": bool_body}, Boost("additive", 0.5))


def test_additive_checks_every_level_of_a_nested_relevance_clause():
    with pytest.raises(ValueError, match=r"^the relevance clause shares a bool with other scoring clauses"):
        additive({"function_score": {"query": {"bool": {"must": [REL, MATCH]}}}}, Boost("additive", 0.5))


# --------------------------------------------------------------------------- Boost and PlatformBoosts checks

def test_unknown_formula_and_rank_function_are_named():
    with pytest.raises(ValueError, match=r"^formula 'sum' is not one of multiplicative, power, additive, rank_feature$"):
        Boost("sum")
    with pytest.raises(ValueError, match=r"^rank_function 'exp' is not one of saturation, log, sigmoid, linear$"):
        Boost(rank_function="exp")


@pytest.mark.parametrize("factor", [True, "0.8", float("inf"), 0, -0.5])
def test_ai_factor_must_be_a_finite_positive_number(factor):
    with pytest.raises(ValueError, match=r"^ai_factor must be a finite number > 0 \(e\.g\. 0\.8 to demote AI-made "
                                         r"images by 20%\), got "):
        Boost(ai_factor=factor)


def test_an_empty_platform_name_is_the_default():
    boosts = PlatformBoosts.from_dict({"": {"w": 0.9}, "web": {"w": 0.2}})
    assert boosts.for_platform("") == Boost()
    assert boosts.for_platform("web") == Boost(w=0.2)


def test_default_entry_is_the_base_not_a_platform():
    boosts = PlatformBoosts.from_dict({"default": {"w": 0.4}, "web": {"formula": "power"}})
    assert "default" not in boosts.platforms
    assert boosts.default == Boost(w=0.4) and boosts.platforms["web"] == Boost("power", 0.4)


def test_bad_platform_entries_are_named():
    with pytest.raises(ValueError, match=r"^platform 'default': expected an object like \{\"formula\": \.\.\., "
                                         r"\"w\": \.\.\.\}, got 3$"):
        PlatformBoosts.from_dict({"default": 3})
    with pytest.raises(ValueError, match=r"^platform 'default': unknown keys \['x'\]"):
        PlatformBoosts.from_dict({"default": {"x": 1}})


def test_from_json_keeps_the_given_default_and_names_a_non_object(tmp_path):
    path = tmp_path / "boosts.json"
    path.write_text(json.dumps({"web": {"formula": "power"}}))
    boosts = PlatformBoosts.from_json(str(path), Boost(w=0.2))
    assert boosts.platforms["web"] == Boost("power", 0.2)
    path.write_text("[1]")
    with pytest.raises(ValueError, match=r"expected a JSON object keyed by platform, got list$"):
        PlatformBoosts.from_json(str(path))
