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
        es_client.search(index=es_index, aggs={"a": {"terms": {"field": "x"}}})
    status, _, payload = _raw(f"{es_double.url}/{es_index}/_search?scroll=1m", "POST", b"{}")
    assert status == 400 and "unrecognized parameter" in payload["error"]["reason"]


def test_slice_needs_a_pit_and_a_max_above_one(es_client, es_index):
    with pytest.raises(BadRequestError, match="point-in-time"):
        es_client.search(index=es_index, slice={"id": 0, "max": 2})
    pit = es_client.open_point_in_time(index=es_index, keep_alive="1m")["id"]
    with pytest.raises(BadRequestError):
        es_client.search(pit={"id": pit}, slice={"id": 0, "max": 1})
    es_client.close_point_in_time(id=pit)


def test_search_sees_only_refreshed_documents(es_client, es_index):
    es_client.index(index=es_index, id="a", document={"title": "t"})
    assert es_client.count(index=es_index)["count"] == 0
    es_client.indices.refresh(index=es_index)
    assert es_client.count(index=es_index)["count"] == 1


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
