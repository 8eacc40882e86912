"""``imagescore query``: the printed search, per-platform choice, bad input, the --es-url plumbing; and,
when ``$ES_URL`` points at a real cluster, the mirror against Elasticsearch's own scores and explain values."""
from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

from es.boosting import Boost, search_body
from es.function_score import evaluate, search_scores
from ranking import query as query_cli
from tests.es_double.canned_search import CannedSearch


def test_prints_the_boosted_search(capsys):
    assert query_cli.run(["--match", "leather bag", "--formula", "multiplicative", "--w", "0.3"]) == 0
    body = json.loads(capsys.readouterr().out)
    base = {"match": {"title": {"query": "leather bag", "_name": "relevance"}}}
    assert body == search_body(base, Boost("multiplicative", 0.3))


def test_platform_config_picks_the_platforms_formula_and_weight(tmp_path, capsys):
    config = tmp_path / "boosts.json"
    config.write_text(json.dumps({"default": {"w": 0.1}, "web": {"formula": "additive", "w": 0.6}}))
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"query": {"match": {"title": {"query": "bag", "_name": "relevance"}}}}))
    assert query_cli.run(["--base-query", str(base), "--platform", "web", "--platform-config", str(config)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body == search_body({"match": {"title": {"query": "bag", "_name": "relevance"}}}, Boost("additive", 0.6))
    assert query_cli.run(["--base-query", str(base), "--platform", "ios", "--platform-config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out) == search_body(
        {"match": {"title": {"query": "bag", "_name": "relevance"}}}, Boost("multiplicative", 0.1))


@pytest.mark.parametrize("content, message", [
    ("{nope", "not JSON"), ("[1]", "expected one query object"), (None, "No such file"),
])
def test_bad_base_query_files_are_named(tmp_path, content, message):
    path = tmp_path / "base.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=message):
        query_cli.run(["--base-query", str(path)])


def test_bad_boost_flags_are_named():
    with pytest.raises(SystemExit, match="w must be a finite number >= 0"):
        query_cli.run(["--match", "x", "--w", "-1"])
    with pytest.raises(SystemExit, match="--platform needs --platform-config"):
        query_cli.run(["--match", "x", "--platform", "web"])


def test_es_url_sends_the_search_with_explain_and_prints_the_tree(capsys):
    response = {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": 2.6, "hits": [
                    {"_index": "items", "_id": "item-1", "_score": 2.6, "_source": {"image_score": 0.5},
                     "matched_queries": {"relevance": 2.0},
                     "_explanation": {"value": 2.6, "description": "function score, product of:", "details": [
                         {"value": 2.0, "description": "weight(title:bag)", "details": []},
                         {"value": 1.3, "description": "min of:", "details": []}]}}]}}
    with CannedSearch(response) as server:
        assert query_cli.run(["--match", "bag", "--w", "0.6", "--es-url", server.url, "--es-index", "items",
                              "--size", "3"]) == 0
    (method, path, params, body), = server.requests
    assert method == "POST" and path == "/items/_search"
    assert body["explain"] is True and body["size"] == 3
    assert params.get("include_named_queries_score") == "true"
    assert body["query"] == search_body({"match": {"title": {"query": "bag", "_name": "relevance"}}},
                                        Boost("multiplicative", 0.6))["query"]
    out = capsys.readouterr().out
    assert "item-1  score 2.6  image_score 0.5" in out and '"relevance": 2.0' in out
    assert "    2.6 = function score, product of:\n      2.0 = weight(title:bag)" in out


# --------------------------------------------------------------------------- a real cluster

live = pytest.mark.skipif(not os.environ.get("ES_URL"), reason="compares with Elasticsearch itself: set $ES_URL")

DOCS = {  # relevance and other factors are fields, so the mirror can compute the base query too
    "a": {"relevance": 2.0, "other": 1.5, "image_score": 0.8, "image_score_rank": 0.8},
    "b": {"relevance": 3.0, "other": 1.0, "image_score": 0.1, "image_score_rank": 0.1},
    "c": {"relevance": 2.5, "other": 1.2},                                   # not scored yet: missing value
    "d": {"relevance": 2.2, "other": 0.9, "image_score": 0.55, "image_score_rank": 0.55},
    "e": {"relevance": 9.0, "other": 2.0, "image_score": 1.0, "image_score_rank": 1.0, "deleted": True},
}
BASE = {"function_score": {"query": {"function_score": {
    "query": {"match_all": {}}, "functions": [{"field_value_factor": {"field": "relevance"}}],
    "boost_mode": "replace", "_name": "relevance"}},
    "functions": [{"field_value_factor": {"field": "other", "missing": 1}}], "boost_mode": "multiply"}}


def _mirror_docs(ids):
    def column(name, dtype):
        return np.array([DOCS[i].get(name, np.nan) for i in ids], dtype)
    return {"relevance": column("relevance", np.float32), "other": column("other", np.float32),
            "image_score": column("image_score", np.float32), "image_score_rank": column("image_score_rank", np.float32),
            "deleted": np.array([DOCS[i].get("deleted") for i in ids], dtype=object)}


@live
@pytest.mark.parametrize("boost, rescore", [
    (Boost("multiplicative", 0.7, 0.3), None), (Boost("power", 0.7, 0.3), None), (Boost("additive", 0.7, 0.3), None),
    (Boost("rank_feature", 0.7, rank_params={"pivot": 0.5}), None), (Boost("multiplicative", 0.7, 0.3), 3),
    (Boost("additive", 0.7, 0.3), 10),
])
def test_mirror_matches_elasticsearch_scores_and_explain(boost, rescore):
    from es.client import EsConfig, make_client
    client = make_client(EsConfig.from_env())
    index = f"imagescore-boost-{uuid.uuid4().hex[:10]}"
    client.indices.create(index=index, mappings={"properties": {
        "relevance": {"type": "float"}, "other": {"type": "float"}, "image_score": {"type": "float"},
        "image_score_rank": {"type": "rank_feature"}, "deleted": {"type": "boolean"}}})
    try:
        for doc_id, source in DOCS.items():
            client.index(index=index, id=doc_id, document=source)
        client.indices.refresh(index=index)
        body = search_body(BASE, boost, rescore_window=rescore)
        hits = client.search(index=index, **body, size=10, explain=True)["hits"]["hits"]
        ids = list(DOCS)
        matches, scores, _ = search_scores(body, _mirror_docs(ids))
        mirrored = {i: float(s) for i, s, m in zip(ids, scores, matches) if m}
        assert {h["_id"] for h in hits} == set(mirrored) == {"a", "b", "c", "d"}  # the tombstone is filtered out
        for hit in hits:
            assert np.float32(hit["_score"]) == np.float32(mirrored[hit["_id"]]), hit["_id"]
            if not rescore:
                assert np.float32(hit["_explanation"]["value"]) == np.float32(mirrored[hit["_id"]])
        _, plain = evaluate(search_body(BASE, Boost(boost.formula, 0.0, boost.missing))["query"], _mirror_docs(ids))
        assert plain[:4].tolist() == [np.float32(DOCS[i]["relevance"] * DOCS[i]["other"]) for i in "abcd"]
    finally:
        client.options(ignore_status=404).indices.delete(index=index)
