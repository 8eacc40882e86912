"""ranking/query.py (``imagescore query``): flag defaults, bodies and printing (docs/testing.md, Mutation testing).

Expected bodies are written out by hand as Elasticsearch receives them; none comes from the code under test.
"""
from __future__ import annotations

import json

import pytest

from ranking import query as query_cli
from tests.es_double.canned_search import CannedSearch

TOMBSTONES = [{"term": {"deleted": True}}]
BAG = {"match": {"title": {"query": "bag", "_name": "relevance"}}}


def _printed(capsys, *argv: str) -> dict:
    assert query_cli.run(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_defaults_are_multiplicative_w_0_3_missing_0_5_on_title(capsys):
    assert _printed(capsys, "--match", "bag") == {"query": {"bool": {"must_not": TOMBSTONES, "must": [
        {"function_score": {"query": BAG, "score_mode": "sum", "boost_mode": "multiply", "functions": [
            {"weight": 1}, {"field_value_factor": {"field": "image_score", "factor": 0.3, "missing": 0.5}}]}}]}}}


def test_rank_feature_flags_reach_the_query(capsys):
    body = _printed(capsys, "--match", "bag", "--field", "name", "--formula", "rank_feature", "--w", "2",
                    "--rank-function", "log", "--rank-params", '{"scaling_factor": 2}')
    base = {"match": {"name": {"query": "bag", "_name": "relevance"}}}
    term = {"rank_feature": {"field": "image_score_rank", "boost": 2.0, "log": {"scaling_factor": 2}}}
    assert body == {"query": {"bool": {"must_not": TOMBSTONES, "must": [
        {"bool": {"must": [base], "should": [term]}}]}}}


def test_rank_feature_params_default_to_pivot_one_half(capsys):
    body = _printed(capsys, "--match", "bag", "--formula", "rank_feature")
    assert body["query"]["bool"]["must"][0]["bool"]["should"] == [
        {"rank_feature": {"field": "image_score_rank", "boost": 0.3, "saturation": {"pivot": 0.5}}}]


def test_missing_ai_factor_and_rescore_window_flags(capsys):
    body = _printed(capsys, "--match", "bag", "--formula", "power", "--w", "1", "--missing", "0.2",
                    "--ai-factor", "0.8", "--rescore-window", "3")
    script = {"source": "double s = doc[params.field].size() == 0 ? params.missing : doc[params.field].value; "
                        "return Math.pow(s, params.w);", "params": {"field": "image_score", "w": 1.0, "missing": 0.2}}
    inner = {"function_score": {"query": {"match_all": {}}, "score_mode": "sum", "boost_mode": "replace",
                                "functions": [{"script_score": {"script": script}}]}}
    ai = {"terms": {"image_provenance": ["c2pa_ai", "xmp_ai", "generator_metadata"]}}
    assert body == {"query": {"bool": {"must": [BAG], "must_not": TOMBSTONES}}, "rescore": {
        "window_size": 3, "query": {"query_weight": 1, "rescore_query_weight": 1, "score_mode": "multiply",
                                    "rescore_query": {"function_score": {"query": inner, "boost_mode": "multiply",
                                                                         "functions": [{"filter": ai, "weight": 0.8}]}}}}}


def test_a_whole_search_body_file_is_unwrapped(tmp_path, capsys):
    path = tmp_path / "base.json"
    path.write_text(json.dumps({"query": {"match_all": {}}}))
    body = _printed(capsys, "--base-query", str(path), "--w", "0")
    assert body["query"]["bool"]["must"][0]["function_score"]["query"] == {"match_all": {}}


@pytest.mark.parametrize("content, message", [
    ('{"match_all": {}, "match_none": {}}', r"^--base-query .*base\.json: expected one query object like "
                                            r"\{\"match\": \{\.\.\.\}\}$"),
    ("{nope", r"^--base-query .*base\.json: not JSON \(Expecting property name"),
    (None, r"^--base-query .*base\.json: No such file or directory$"),
])
def test_bad_base_query_files_are_named_exactly(tmp_path, content, message):
    path = tmp_path / "base.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(query_cli.UsageError, match=message):
        query_cli.body_for(query_cli._parser().parse_args(["--base-query", str(path)]))


def test_bad_flags_name_the_command():
    with pytest.raises(query_cli.UsageError, match=r"^imagescore query: --platform needs --platform-config \(the "
                                                   r"per-platform formulas and weights\)$"):
        query_cli.body_for(query_cli._parser().parse_args(["--match", "x", "--platform", "web"]))


def test_explain_lines_indent_two_spaces_per_level():
    tree = {"value": 1.5, "description": "sum of:", "details": [
        {"value": 1.0, "description": "a", "details": [{"value": 0.5}]}]}
    assert query_cli.explain_lines(tree) == ["1.5 = sum of:", "  1.0 = a", "    0.5 = "]


def test_es_url_defaults_to_the_items_index_and_five_hits_and_prints_what_a_hit_lacks(capsys):
    response = {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": 1.0, "hits": [
                    {"_index": "items", "_id": "item-2", "_score": 1.0}]}}
    with CannedSearch(response) as server:
        assert query_cli.run(["--match", "bag", "--es-url", server.url]) == 0
    (method, path, params, body), = server.requests
    assert path == "/items/_search" and body["size"] == 5 and body["explain"] is True
    assert capsys.readouterr().out == ("item-2  score 1.0  image_score missing  provenance unknown  matched {}\n"
                                       "    None = \n")


def test_flags_defaults_types_choices_and_help():
    parser = query_cli._parser()
    assert parser.prog == "imagescore query"
    assert parser.description == ("``imagescore query``: print the boosted search, or run it and show "
                                  "Elasticsearch's ``explain`` tree per hit.")
    table = {(a.dest, a.default, a.type, a.required, a.choices, a.help) for a in parser._actions
             if a.dest not in ("help", "verbose")}
    assert table == {
        ("base_query", None, None, False, None, "JSON file holding the query to boost"),
        ("match", None, None, False, None, "boost a match query on --field for this text"),
        ("field", "title", None, False, None, "field of --match"),
        ("formula", "multiplicative", None, False, ("multiplicative", "power", "additive", "rank_feature"), None),
        ("w", 0.3, float, False, None, "weight of the image score"),
        ("missing", 0.5, float, False, None, "image score of documents without one"),
        ("ai_factor", 1.0, float, False, None, "multiply the score of listings whose image says AI made it "
                                               "(image_provenance) by this, e.g. 0.8; 1 leaves them alone"),
        ("rank_function", "saturation", None, False, ("saturation", "log", "sigmoid", "linear"), None),
        ("rank_params", '{"pivot": 0.5}', None, False, None, "rank_feature function parameters (JSON)"),
        ("platform", None, None, False, ("web", "ios", "android"),
         "use this platform's formula and w from --platform-config"),
        ("platform_config", None, None, False, None, "JSON of per-platform boosts (see the module help)"),
        ("rescore_window", None, int, False, None, "apply the boost as a rescore of this many top hits"),
        ("es_url", None, None, False, None, "run the search on this cluster and print the hits with explain "
                                            "(credentials from the environment)"),
        ("es_index", "items", None, False, None, "index (or pattern) to search"),
        ("size", 5, int, False, None, "hits to show"),
    }
    (group,) = parser._mutually_exclusive_groups
    assert group.required and [a.dest for a in group._group_actions] == ["base_query", "match"]


def test_platform_config_entries_start_from_the_flags(tmp_path, capsys):
    config = tmp_path / "boosts.json"
    config.write_text(json.dumps({"web": {"formula": "power"}}))
    body = _printed(capsys, "--match", "bag", "--w", "0.7", "--platform-config", str(config), "--platform", "web")
    (function,) = body["query"]["bool"]["must"][0]["function_score"]["functions"]
    assert function["script_score"]["script"]["params"] == {"field": "image_score", "w": 0.7, "missing": 0.5}


def test_the_body_is_printed_indented_by_two(capsys):
    assert query_cli.run(["--match", "bag"]) == 0
    assert capsys.readouterr().out.startswith('{\n  "query": {\n    "bool": {\n')


def test_es_url_prints_the_provenance(capsys):
    response = {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": 1.0, "hits": [
                    {"_index": "items", "_id": "item-3", "_score": 1.0,
                     "_source": {"image_score": 0.25, "image_provenance": "c2pa_ai"}}]}}
    with CannedSearch(response) as server:
        assert query_cli.run(["--match", "bag", "--es-url", server.url]) == 0
    assert capsys.readouterr().out.startswith("item-3  score 1.0  image_score 0.25  provenance c2pa_ai  matched {}\n")


def test_an_unreachable_cluster_is_a_usage_error_naming_the_url():
    with pytest.raises(query_cli.UsageError, match=r"^Elasticsearch is not reachable at http://127\.0\.0\.1:9 "
                                                   r"\(search of 'items' failed: .*\); check --es-url"):
        query_cli.run(["--match", "bag", "--es-url", "http://127.0.0.1:9"])
