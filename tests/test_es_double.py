"""The double must be strict: a request Elasticsearch would refuse fails here too."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import elasticsearch
import pytest
from elasticsearch import ApiError, BadRequestError, Elasticsearch

from tests.es_double import EsDouble

JSON9 = "application/vnd.elasticsearch+json; compatible-with=9"
REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("es_double")  # these test the double itself


def _raw(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Accept": JSON9, **({"Content-Type": JSON9} if body else {}),
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def _assert_es_error(payload: dict, status: int, type_: str) -> None:
    assert payload["status"] == status
    assert payload["error"]["type"] == type_
    assert payload["error"]["root_cause"][0]["type"] == type_ and payload["error"]["reason"]


def test_unknown_endpoint_is_an_es_shaped_error(es_double):
    status, headers, payload = _raw(es_double.url + "/_cat/indices")
    assert status == 400 and headers["X-Elastic-Product"] == "Elasticsearch"
    _assert_es_error(payload, 400, "illegal_argument_exception")
    assert "no handler found" in payload["error"]["reason"]


def test_every_response_carries_the_product_header(es_double):
    for path, method in (("/", "GET"), ("/nope/_doc/1", "GET"), ("/_pit", "DELETE")):
        _, headers, _ = _raw(es_double.url + path, method)
        assert headers["X-Elastic-Product"] == "Elasticsearch", path


def test_unsupported_query_is_a_parsing_exception(es_client, es_index):
    with pytest.raises(BadRequestError) as caught:
        es_client.search(index=es_index, query={"match": {"title": "x"}})
    _assert_es_error(caught.value.body, 400, "parsing_exception")


def test_unknown_search_key_and_query_parameter_are_refused(es_double, es_client, es_index):
    with pytest.raises(BadRequestError):
        es_client.search(index=es_index, highlight={"fields": {"title": {}}})  # aggs are implemented now
    status, _, payload = _raw(f"{es_double.url}/{es_index}/_search?scroll=1m", "POST", b"{}")
    assert status == 400 and "unrecognized parameter" in payload["error"]["reason"]


def test_slice_needs_a_pit_and_a_max_above_one(es_client, es_index):
    with pytest.raises(BadRequestError, match="point-in-time"):
        es_client.search(index=es_index, slice={"id": 0, "max": 2})
    pit = es_client.open_point_in_time(index=es_index, keep_alive="1m")["id"]
    with pytest.raises(BadRequestError):
        es_client.search(pit={"id": pit}, slice={"id": 0, "max": 1})
    es_client.close_point_in_time(id=pit)


class ManualClock:
    def __init__(self) -> None:
        self.now = time.monotonic()  # not earlier than indices made before the swap

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(es_double) -> ManualClock:
    """The double's clock, moved by hand (the es_url fixture puts the real one back)."""
    es_double.clock = ManualClock()
    return es_double.clock


def test_search_sees_only_refreshed_documents(es_client, es_index, clock):
    es_client.index(index=es_index, id="a", document={"title": "t"})
    assert es_client.count(index=es_index)["count"] == 0
    es_client.indices.refresh(index=es_index)
    assert es_client.count(index=es_index)["count"] == 1


def test_periodic_refresh_shows_what_was_written_before_the_last_tick(es_client, clock):
    """Refreshes run at creation + k * interval; a read sees the writes made before the latest one due."""
    start = clock.now
    es_client.indices.create(index="ticks", settings={"refresh_interval": "1s"})
    try:
        clock.now = start + 0.5
        es_client.index(index="ticks", id="a", document={"n": 1})
        clock.now = start + 0.9
        assert es_client.count(index="ticks")["count"] == 0
        clock.now = start + 1.2
        es_client.index(index="ticks", id="b", document={"n": 2})
        clock.now = start + 1.5  # the tick at start + 1 came after a and before b
        assert es_client.count(index="ticks")["count"] == 1
        assert es_client.get(index="ticks", id="b")["found"]  # GET is real time
        clock.now = start + 2.0
        assert es_client.count(index="ticks")["count"] == 2
    finally:
        es_client.indices.delete(index="ticks")


def test_a_second_backfill_read_skips_what_the_first_scored_without_an_explicit_refresh(
        es_double, es_config, es_client, es_index, clock):
    """The issue's symptom: a rerun re-read everything, because the double never refreshed on its own."""
    from es.bulk_writer import write_batch
    from tests.test_es_source import MODEL, read_and_check, seed_backfill_index
    expected = seed_backfill_index(es_client, es_index, n=10)
    out = write_batch(es_config, es_index, [{"id": i, "updated_at": "2025-01-01T00:00:00Z", "image_score": 0.5,
                                             "image_score_model": MODEL, "image_scored_at": "2025-01-01T00:00:00Z",
                                             "image_score_image_url": f"https://img.example/{i}.jpg"}
                                            for i in expected], mode="score")
    assert sorted(out["written"]) == sorted(expected)
    read_and_check(es_config, es_index, expected, slices=1)  # within the interval: the old view
    clock.now += 1.0
    read_and_check(es_config, es_index, set(), slices=1)


def test_pit_ids_rotate_and_any_of_them_closes_the_pit(es_double, es_client, es_index, clock):
    es_client.index(index=es_index, id="a", document={"title": "t"}, refresh=True)
    first = es_client.open_point_in_time(index=es_index, keep_alive="1m")["id"]
    second = es_client.search(pit={"id": first}, size=1)["pit_id"]
    third = es_client.search(pit={"id": first}, size=1)["pit_id"]  # an older id still reaches the PIT
    assert len({first, second, third}) == 3 and es_double.open_pits() >= {first}
    assert es_client.close_point_in_time(id=second)["num_freed"] == 1
    for pit_id in (first, third):
        with pytest.raises(ApiError) as caught:
            es_client.search(pit={"id": pit_id}, size=1)
        assert caught.value.meta.status == 404
        assert caught.value.body["error"]["type"] == "search_context_missing_exception"
    assert first not in es_double.open_pits()


def test_a_pit_expires_after_keep_alive_without_requests(es_double, es_client, es_index, clock):
    pit = es_client.open_point_in_time(index=es_index, keep_alive="1m")["id"]
    clock.now += 30
    pit = es_client.search(pit={"id": pit, "keep_alive": "1m"}, size=1)["pit_id"]  # extends it to +90 s
    clock.now += 59
    pit = es_client.search(pit={"id": pit}, size=1)["pit_id"]
    clock.now += 2
    with pytest.raises(ApiError) as caught:
        es_client.search(pit={"id": pit}, size=1)
    assert caught.value.body["error"]["type"] == "search_context_missing_exception"


def test_a_dropped_connection_reaches_the_client_as_a_connection_error(es_double, es_config, es_index):
    from elasticsearch import ConnectionError as EsConnectionError

    from es.client import make_client
    es_double.fail_connections(times=1, path=r"/_count$")
    client = make_client(es_config)  # no transport retries: the caller sees the drop
    try:
        with pytest.raises(EsConnectionError):
            client.count(index=es_index)
        assert client.count(index=es_index)["count"] == 0
    finally:
        client.close()
    assert [r.status for r in es_double.requests if r.path.endswith("/_count")] == [0, 200]


def test_dynamic_strings_get_a_keyword_sub_field(es_double, es_client, es_index):
    """Elasticsearch's default dynamic mapping for a string: text, with a keyword ``.keyword`` (ignore_above 256)."""
    long_value = "x" * 300
    es_client.index(index=es_index, id="a", document={"colour": "Red"}, refresh=True)
    es_client.index(index=es_index, id="b", document={"colour": long_value}, refresh=True)
    properties = es_client.indices.get_mapping(index=es_index)[es_index]["mappings"]["properties"]
    assert properties["colour"] == {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
    assert es_client.count(index=es_index, query={"term": {"colour.keyword": "Red"}})["count"] == 1
    assert es_client.count(index=es_index, query={"term": {"colour.keyword": long_value}})["count"] == 0
    assert es_client.count(index=es_index, query={"term": {"colour": "red"}})["count"] == 1


def test_auto_create_off_makes_a_write_to_a_missing_index_an_item_error(es_double, es_client):
    es_double.auto_create_index = False
    response = es_client.bulk(operations=[{"index": {"_index": "never-made", "_id": "a"}}, {"f": 1}])
    item = response["items"][0]["index"]
    assert item["status"] == 404 and item["error"]["type"] == "index_not_found_exception"
    assert "[action.auto_create_index] is [false]" in item["error"]["reason"]
    assert not es_client.indices.exists(index="never-made")


def test_op_type_create_refuses_an_existing_document(es_client, es_index):
    es_client.index(index=es_index, id="a", document={"title": "t"})
    with pytest.raises(ApiError) as caught:
        es_client.index(index=es_index, id="a", document={"title": "u"}, op_type="create")
    assert caught.value.meta.status == 409
    assert es_client.get(index=es_index, id="a")["_source"] == {"title": "t"}


NOT_IMPLEMENTED = "the ES double does not implement it"


@pytest.mark.parametrize("request_args,named", [
    # Elasticsearch accepts each of these; the double would have to fake them, so it refuses them by name.
    (("PUT", "/refused-1", {"aliases": {"items": {}}}), "[aliases]"),
    (("PUT", "/_index_template/refused", {"index_patterns": ["refused-*"],
                                          "template": {"aliases": {"items": {}}}}), "[aliases]"),
    (("PUT", "/refused-1", {"mappings": {"subobjects": False}}), "[subobjects]"),
    (("PUT", "/refused-1", {"mappings": {"properties": {"o": {"type": "object", "subobjects": False}}}}),
     "[subobjects]"),
    (("PUT", "/refused-1", {"mappings": {"properties": {"d": {"type": "date", "format": "EEE, d MMM"}}}}),
     "EEE, d MMM"),
    (("PUT", "/refused-1", {"mappings": {"properties": {"k": {"type": "keyword", "index": False}}}}), "[index]"),
    (("PUT", "/refused-1", {"mappings": {"properties": {"n": {"type": "nested"}}}}), "[nested]"),
    (("PUT", "/refused-1", {"mappings": {"_source": {"enabled": False}}}), "[_source]"),
    (("PUT", "/refused-1", {"settings": {"index": {"number_of_shards": 3}}}), "number_of_shards"),
    (("PUT", "/refused-1", {"settings": {"analysis": {"analyzer": {"a": {"type": "standard"}}}}}),
     "index.analysis.analyzer.a.type"),
    (("POST", "/_search", {"sort": [{"n": {"order": "asc", "missing": "_first"}}]}), "[missing]"),
    (("POST", "/_search", {"_source": ["ti*"]}), "[_source]"),
    (("POST", "/_search", {"query": {"range": {"d": {"gte": "now", "time_zone": "+01:00"}}}}), "[time_zone]"),
])
def test_what_the_double_does_not_implement_is_refused_by_name(es_double, request_args, named):
    method, path, body = request_args
    status, _, payload = _raw(es_double.url + path, method, json.dumps(body).encode())
    assert status == 400, payload
    _assert_es_error(payload, 400, payload["error"]["type"])
    assert named in payload["error"]["reason"]
    if "[missing]" not in named and "number_of_shards" not in named and "analysis" not in named:
        assert NOT_IMPLEMENTED in payload["error"]["reason"]
    assert es_double.template("refused") is None and "refused-1" not in es_double._indices


@pytest.mark.parametrize("path,line,named", [
    ("/_bulk?pipeline=p", b'{"index": {"_index": "x", "_id": "a"}}\n{"f": 1}\n', "[pipeline]"),
    ("/_bulk?filter_path=items", b'{"index": {"_index": "x", "_id": "a"}}\n{"f": 1}\n', "[filter_path]"),
    ("/_bulk", b'{"delete": {"_index": "x", "_id": "a"}}\n', "[delete]"),
    ("/_bulk", b'{"update": {"_index": "x", "_id": "a"}}\n{"script": {"source": "ctx._source.f = 1"}}\n',
     "[script]"),
    ("/_bulk", b'{"update": {"_index": "x", "_id": "a"}}\n{"doc": {}, "upsert": {}}\n', "[upsert]"),
    ("/_bulk", b'{"index": {"_index": "x", "_id": "a", "version": 3}}\n{"f": 1}\n', "[version]"),
])
def test_bulk_requests_the_double_does_not_implement_are_refused_whole(es_double, path, line, named):
    status, _, payload = _raw(es_double.url + path, "POST", line,
                              headers={"Content-Type": "application/vnd.elasticsearch+x-ndjson; compatible-with=9"})
    assert status == 400 and named in payload["error"]["reason"], payload
    assert "x" not in es_double._indices


def test_bulk_update_semantics(es_double, es_client, es_index):
    es_client.index(index=es_index, id="a", document={"title": "t", "image_score": 0.1})
    body = [
        {"update": {"_id": "a", "_index": es_index}}, {"doc": {"image_score": 0.9}},
        {"update": {"_id": "a", "_index": es_index}}, {"doc": {"image_score": 0.9}},
        {"update": {"_id": "zz", "_index": es_index}}, {"doc": {"image_score": 0.9}},
        {"update": {"_id": "a", "_index": es_index}}, {"doc": {"image_score": "high"}},
    ]
    response = es_client.bulk(operations=body)
    results = [item["update"] for item in response["items"]]
    assert response["errors"] is True
    assert [r.get("result") for r in results[:2]] == ["updated", "noop"]
    assert [r["_version"] for r in results[:2]] == [2, 2]
    assert results[2]["status"] == 404 and results[2]["error"]["type"] == "document_missing_exception"
    assert results[3]["status"] == 400 and results[3]["error"]["type"] == "document_parsing_exception"
    assert es_double.doc(es_index, "a") == {"title": "t", "image_score": 0.9}


def test_malformed_bulk_is_refused_whole(es_client, es_index):
    with pytest.raises(BadRequestError):
        es_client.bulk(operations=[{"delete": {"_id": "a", "_index": es_index}}])
    with pytest.raises(ApiError):
        es_client.bulk(operations=[{"update": {"_id": "a", "_index": es_index}}, {"script": "ctx._source.x=1"}])


def test_an_older_major_double_refuses_a_newer_client():
    """Like an 8.x cluster refusing a 9.x client's ``compatible-with=9``."""
    client_major = int(elasticsearch.__versionstr__.split(".")[0])
    with EsDouble(compat=[client_major - 1]) as double:
        client = Elasticsearch(double.url)
        with pytest.raises(BadRequestError) as caught:
            client.info()
        assert caught.value.body["error"]["type"] == "media_type_header_exception"
        client.close()


def test_compat_8_headers_are_accepted(es_double):
    json8 = "application/vnd.elasticsearch+json; compatible-with=8"
    status, headers, _ = _raw(es_double.url + "/", headers={"Accept": json8})
    assert status == 200 and "compatible-with=8" in headers["Content-Type"]


def test_auth_is_checked_when_required(es_double):
    es_double.require_auth(api_key="right")
    assert _raw(es_double.url + "/")[0] == 401
    assert _raw(es_double.url + "/", headers={"Authorization": "ApiKey wrong"})[0] == 401
    assert _raw(es_double.url + "/", headers={"Authorization": "ApiKey right"})[0] == 200
    assert "right" not in repr([r.headers for r in es_double.requests])


def test_runs_by_hand_from_the_command_line(tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tests.es_double", "--port", str(port)],
                               stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert f"127.0.0.1:{port}" in process.stdout.readline()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert _raw(f"http://127.0.0.1:{port}/")[2]["tagline"] == "You Know, for Search"
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_rank_feature_mapping_flags_values_and_range_are_checked(es_double, es_client):
    status, _, payload = _raw(es_double.url + "/rf-bad", "PUT", json.dumps(
        {"mappings": {"properties": {"r": {"type": "rank_feature", "positive_score_impact": "yes"}}}}).encode())
    assert status == 400 and "[positive_score_impact]" in payload["error"]["reason"], payload
    assert "rf-bad" not in es_double._indices
    es_double.create_index("rf", {"r": {"type": "rank_feature"}})
    for bad in (b'{"r": Infinity}', b'{"r": "0.5"}', b'{"r": true}'):
        status, _, payload = _raw(es_double.url + "/rf/_doc/a", "PUT", bad)
        assert status == 400 and payload["error"]["caused_by"]["reason"].startswith("featureValue must be"), payload
    es_client.index(index="rf", id="a", document={"r": 0.5}, refresh=True)
    status, _, payload = _raw(es_double.url + "/rf/_search", "POST",
                              json.dumps({"query": {"range": {"r": {"gte": 0.1}}}}).encode())
    assert status == 400 and "does not support range queries" in payload["error"]["reason"], payload
    assert es_double.docs("rf") == {"a": {"r": 0.5}}
