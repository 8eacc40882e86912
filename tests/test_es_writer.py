"""The bulk writer against the ES double (or $ES_URL): batching, retries, skips, failures, idempotence."""
from __future__ import annotations

import socket
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from elasticsearch import ApiError

from es.bulk_writer import (
    WriteToElasticsearch,
    helper_retries_within,
    update_action,
    write_batch,
)
from es.client import EsConfig
from es.guard import GUARD_SCRIPT_ID, canonical_version
from pipelines.local_runner import local_runner
from tests.fixtures.es import seed_items

FAST = {"initial_backoff": 0.01, "max_backoff": 0.05, "max_retry_time": 10.0}


def score(doc_id: str, value: float | str = 0.5, model: str = "handcrafted-v1",
          version: str = "2025-05-02T00:00:00Z", scored_at: str = "2025-06-01T12:00:00+00:00") -> dict:
    return {"id": doc_id, "updated_at": version, "image_score": value, "image_score_model": model,
            "image_scored_at": scored_at, "image_score_image_url": f"http://img.test/{doc_id}.jpg"}


def stored(record: dict) -> dict:
    """The score fields a score record leaves in the document."""
    return {**{k: v for k, v in record.items() if k not in ("id", "updated_at")},
            "image_score_rank": max(record["image_score"], 1e-4),
            "image_score_version": canonical_version(record["updated_at"])}


def items(n: int, prefix: str = "item") -> dict[str, dict]:
    return {f"{prefix}-{i}": {"title": f"listing {i}", "created_at": "2025-05-01T00:00:00Z"} for i in range(n)}


def run_pipeline(config: EsConfig, index: str, records: list, **settings):
    """Run the transform on the local runner; returns the imagescore counters."""
    pipeline = BeamTestPipeline(runner=local_runner())
    _ = pipeline | beam.Create(records) | WriteToElasticsearch(config, index, mode="score", **settings)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query(MetricsFilter().with_namespace("imagescore"))["counters"]}
    return counters


def test_pipeline_routes_every_record_to_exactly_one_output(es_config, es_client, es_index):
    seed_items(es_client, es_index, items(4))
    records = [score("item-0", 0.1), score("item-1", 0.2), score("item-2", scored_at="yesterday"),
               score("gone", 0.9), score("item-3", 0.4), score("item-4", "not-a-number")]
    pipeline = BeamTestPipeline(runner=local_runner())
    outputs = (pipeline | beam.Create(records)
               | WriteToElasticsearch(es_config, es_index, mode="score", **FAST))
    assert_that(outputs.written, equal_to(["item-0", "item-1", "item-3"]), label="written")
    assert_that(outputs.missing, equal_to(["gone"]), label="missing")
    assert_that(outputs.failed | beam.Map(lambda f: (f[0]["id"], f[1], f[0] in records, f[2].split(":")[0])),
                equal_to([("item-2", "es_mapping_error", True, "document_parsing_exception"),
                          ("item-4", "es_bad_record", True, "record 'item-4'")]), label="failed")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query(MetricsFilter().with_namespace("imagescore"))["counters"]}
    assert counters["es_written"] == 3 and counters["es_missing"] == 1 and counters["es_failed"] == 2
    assert counters["es_bulk_requests"] >= 1 and counters["es_bulk_bytes"] > 0

    doc = es_client.get(index=es_index, id="item-1")["_source"]
    assert doc == {"title": "listing 1", "created_at": "2025-05-01T00:00:00Z", **stored(score("item-1", 0.2))}
    assert "image_score" not in es_client.get(index=es_index, id="item-2")["_source"]


def test_batches_are_capped_by_count(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(10))
    out = write_batch(es_config, es_index, [score(f"item-{i}") for i in range(10)], max_docs=4, mode="score", **FAST)
    assert sorted(out["written"]) == sorted(f"item-{i}" for i in range(10))
    sizes = [len(r.ndjson) // 2 for r in es_double.bulk_requests()]
    assert sizes == [4, 4, 2]


def test_batches_are_capped_by_bytes(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(12))
    max_bytes = 700
    out = write_batch(es_config, es_index, [score(f"item-{i}") for i in range(12)], max_bytes=max_bytes, mode="score",
                      **FAST)
    assert len(out["written"]) == 12 and not out["failed"] and not out["missing"]
    requests = es_double.bulk_requests()
    assert len(requests) > 2
    assert all(len(r.body) <= max_bytes for r in requests), [len(r.body) for r in requests]
    assert sum(len(r.ndjson) // 2 for r in requests) == 12


def test_per_item_429_storm_is_retried_to_success(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(5))
    es_double.fail_bulk_items(429, times=8)  # the first request fails all 5, the second 3 of them
    counters = run_pipeline(es_config, es_index, [score(f"item-{i}", 0.3) for i in range(5)], max_retries=4, **FAST)
    assert counters["es_written"] == 5 and counters.get("es_failed", 0) == 0
    assert counters["es_retried"] == 8
    assert counters["es_bulk_requests"] == 3
    assert all(es_client.get(index=es_index, id=f"item-{i}")["_source"]["image_score"] == 0.3 for i in range(5))


def test_whole_request_429_is_retried_by_the_helper(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(3))
    es_double.fail_requests(429, times=2, path=r"/_bulk$")
    out = write_batch(es_config, es_index, [score(f"item-{i}") for i in range(3)], max_retries=3, mode="score", **FAST)
    assert sorted(out["written"]) == ["item-0", "item-1", "item-2"]
    assert [r.status for r in es_double.bulk_requests()] == [429, 429, 200]


def test_persistent_429_is_dead_lettered_after_the_unavailable_budget(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(3))
    es_double.fail_bulk_items(429, times=None, ids=["item-1"])
    records = [score(f"item-{i}") for i in range(3)]
    started = time.monotonic()
    out = write_batch(es_config, es_index, records, max_retries=3, unavailable_seconds=0.5, mode="score", **FAST)
    assert 0.5 <= time.monotonic() - started < 0.5 + 2
    assert sorted(out["written"]) == ["item-0", "item-2"]
    assert [(f[0], f[1]) for f in out["failed"]] == [(records[1], "es_unavailable")]
    assert "es_rejected_execution_exception" in out["failed"][0][2]
    assert "--es-unavailable-seconds 0.5" in out["failed"][0][2]
    # the helper's own 3 retries per pass, and passes of the writer's until the budget was spent
    assert len(es_double.bulk_requests()) > 4


def test_the_helpers_429_retries_fit_the_budget(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(1))
    es_double.fail_bulk_items(429, times=None)
    out = write_batch(es_config, es_index, [score("item-0")], max_retries=50, initial_backoff=0.05,
                      max_backoff=0.2, max_retry_time=10, unavailable_seconds=0.5, mode="score")
    assert [f[1] for f in out["failed"]] == ["es_unavailable"]
    fits = helper_retries_within(50, 0.05, 0.2, 0.5)
    assert fits < 10
    # Unbounded, the helper would send 51 requests and sleep about 10 s. Counted, not timed: a loaded machine
    # makes fewer passes within the 0.5 s, never more, and each pass is the first try plus the retries that fit.
    assert 1 + fits <= len(es_double.bulk_requests()) <= 2 * (1 + fits)


def test_helper_retries_fit_the_time_budget():
    assert helper_retries_within(5, 1.0, 30.0, 120.0) == 5  # 1+2+4+8+16 = 31s
    assert helper_retries_within(10, 1.0, 4.0, 10.0) == 3  # 1+2+4 = 7; one more (4) would make 11 > 10
    assert helper_retries_within(3, 0.5, 1.0, 0.0) == 0


@pytest.mark.parametrize("status", [500, 503])
def test_per_item_5xx_is_retried(es_double, es_config, es_client, es_index, status):
    seed_items(es_client, es_index, items(3))
    es_double.fail_bulk_items(status, times=2, ids=["item-2"])
    out = write_batch(es_config, es_index, [score(f"item-{i}") for i in range(3)], max_retries=3, mode="score", **FAST)
    assert sorted(out["written"]) == ["item-0", "item-1", "item-2"] and not out["failed"]
    sent = [sorted(line["update"]["_id"] for line in r.ndjson if "update" in line) for r in es_double.bulk_requests()]
    assert sent == [["item-0", "item-1", "item-2"], ["item-2"], ["item-2"]]  # only the failed one goes again


def test_whole_request_502_is_retried(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(2))
    es_double.fail_requests(502, times=2, path=r"/_bulk$")
    out = write_batch(es_config, es_index, [score("item-0"), score("item-1")], max_retries=3, mode="score", **FAST)
    assert sorted(out["written"]) == ["item-0", "item-1"]
    assert [r.status for r in es_double.bulk_requests()] == [502, 502, 200]


def test_persistent_500_goes_to_failed_after_retries(es_double, es_config, es_client, es_index):
    """A 500 is not an outage (502, 503 and 504 are): it is retried a bounded number of times."""
    seed_items(es_client, es_index, items(2))
    es_double.fail_bulk_items(500, times=None, ids=["item-0"])
    records = [score("item-0"), score("item-1")]
    out = write_batch(es_config, es_index, records, max_retries=2, mode="score", **FAST)
    assert out["written"] == ["item-1"]
    assert [(f[0], f[1]) for f in out["failed"]] == [(records[0], "es_500")]
    assert "gave up after 3 attempts" in out["failed"][0][2]
    assert len(es_double.bulk_requests()) == 3


def test_missing_document_is_a_counted_skip(es_config, es_client, es_index):
    seed_items(es_client, es_index, items(1))
    counters = run_pipeline(es_config, es_index, [score("item-0"), score("deleted-1"), score("deleted-2")], **FAST)
    assert counters["es_missing"] == 2 and counters["es_written"] == 1 and counters.get("es_failed", 0) == 0
    assert es_client.options(ignore_status=404).get(index=es_index, id="deleted-1")["found"] is False


def test_mapping_error_keeps_the_record_and_the_error(es_config, es_client, es_index):
    seed_items(es_client, es_index, items(3))
    bad = score("item-1", scored_at="the day before yesterday")
    out = write_batch(es_config, es_index, [score("item-0"), bad, score("item-2")], mode="score", **FAST)
    assert sorted(out["written"]) == ["item-0", "item-2"] and not out["missing"]
    ((record, reason, error),) = out["failed"]
    assert record == bad and reason == "es_mapping_error"
    assert "image_scored_at" in error and "parsing_exception" in error


def test_id_over_512_bytes_refuses_the_whole_bulk_request(es_client, es_index):
    """What a real cluster does (``DocWriteRequest.validateDocIdLength``), and the double with it."""
    long_id = "é" * 257  # 514 UTF-8 bytes
    with pytest.raises(ApiError) as caught:
        es_client.bulk(operations=[{"update": {"_index": es_index, "_id": "ok"}}, {"doc": {"title": "t"}},
                                   {"update": {"_index": es_index, "_id": long_id}}, {"doc": {"title": "t"}}])
    assert caught.value.meta.status == 400
    assert caught.value.body["error"]["type"] == "action_request_validation_exception"
    assert caught.value.body["error"]["reason"] == (
        f"Validation Failed: 1: id [{long_id}] is too long, must be no longer than 512 bytes but was: 514;")


def test_record_with_an_id_over_512_bytes_fails_without_losing_the_rest(es_config, es_client, es_index):
    seed_items(es_client, es_index, items(2))
    long_one = score("x" * 513)
    out = write_batch(es_config, es_index, [score("item-0"), long_one, score("item-1")], mode="score", **FAST)
    assert sorted(out["written"]) == ["item-0", "item-1"]
    assert [(f[0], f[1]) for f in out["failed"]] == [(long_one, "es_bad_record")]
    assert "513 bytes long" in out["failed"][0][2] and "at most 512 bytes" in out["failed"][0][2]


def test_record_without_id_fails_without_losing_the_rest(es_config, es_client, es_index):
    seed_items(es_client, es_index, items(1))
    no_id = {k: v for k, v in score("x").items() if k != "id"}
    out = write_batch(es_config, es_index, [no_id, score("item-0")], mode="score", **FAST)
    assert out["written"] == ["item-0"]
    assert [(f[0], f[1]) for f in out["failed"]] == [(no_id, "es_bad_record")]
    assert "no string 'id'" in out["failed"][0][2]


def test_index_missing_goes_to_failed(es_double, es_config):
    es_double.auto_create_index = False  # the cluster setting action.auto_create_index: false
    out = write_batch(es_config, "no-such-index", [score("a")], mode="score", **FAST)
    assert [(f[0]["id"], f[1]) for f in out["failed"]] == [("a", "es_index_not_found")]


def test_update_to_a_missing_index_creates_it_and_counts_missing(es_double, es_config):
    """Elasticsearch auto-creates the index of any bulk action but a delete; the update then finds no document."""
    out = write_batch(es_config, "no-such-index-yet", [score("a")], mode="score", **FAST)
    assert out["missing"] == ["a"] and out["failed"] == []
    assert es_double.docs("no-such-index-yet") == {}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_dead_lettered_after_the_budget():
    config = EsConfig(f"http://127.0.0.1:{_closed_port()}", request_timeout=10)
    record = score("a")
    started = time.monotonic()
    out = write_batch(config, "items", [record], max_retries=2, unavailable_seconds=0.5, mode="score", **FAST)
    assert 0.5 <= time.monotonic() - started < 0.5 + 2
    ((failed, reason, error),) = out["failed"]
    assert failed == record and reason == "es_unavailable"
    assert "ConnectionError" in error and "within 0.5 s (--es-unavailable-seconds 0.5)" in error


def test_connection_refused_does_not_fail_the_beam_bundle():
    config = EsConfig(f"http://127.0.0.1:{_closed_port()}", request_timeout=2)
    pipeline = BeamTestPipeline(runner=local_runner())
    outputs = pipeline | beam.Create([score("a")]) | WriteToElasticsearch(
        config, "items", max_retries=1, unavailable_seconds=0.3, mode="score", **FAST)
    assert_that(outputs.failed | beam.Map(lambda f: (f[0]["id"], f[1])), equal_to([("a", "es_unavailable")]))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query(MetricsFilter().with_namespace("imagescore"))["counters"]}
    assert counters["es_failed"] == 1 and counters["es_retried_requests"] > 0


def test_writing_twice_gives_the_same_documents(es_config, es_client, es_index):
    seed_items(es_client, es_index, items(3))
    records = [score(f"item-{i}", i / 10) for i in range(3)]
    first = write_batch(es_config, es_index, records, mode="score", **FAST)
    after_first = {i: es_client.get(index=es_index, id=f"item-{i}") for i in range(3)}
    second = write_batch(es_config, es_index, records, mode="score", **FAST)
    after_second = {i: es_client.get(index=es_index, id=f"item-{i}") for i in range(3)}
    assert sorted(first["written"]) == sorted(second["stale"]) == ["item-0", "item-1", "item-2"]
    assert not second["written"]
    assert {i: d["_source"] for i, d in after_first.items()} == {i: d["_source"] for i, d in after_second.items()}
    assert {i: d["_version"] for i, d in after_first.items()} == {i: d["_version"] for i, d in after_second.items()}


def test_repeated_id_in_a_bundle_keeps_the_newest_score(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(1))
    out = write_batch(es_config, es_index, [score("item-0", 0.1), score("item-0", 0.7, version="2025-05-03T00:00:00Z"),
                                            score("item-0", 0.3)], mode="score", **FAST)
    assert out["written"] == ["item-0", "item-0"] and out["stale"] == ["item-0"]
    assert es_client.get(index=es_index, id="item-0")["_source"]["image_score"] == 0.7
    assert len(es_double.bulk_requests()) == 3  # never two updates of one id in one request


def test_update_action_is_a_guarded_score_update():
    record = score("item-7", 0.25)
    assert update_action(record, "items", "score") == {
        "_op_type": "update", "_index": "items", "_id": "item-7", "retry_on_conflict": 3,
        "script": {"id": GUARD_SCRIPT_ID, "params": {"score": True, "version": "2025-05-02T00:00:00.000000Z",
                                                     "fields": stored(record)}}}


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_docs"):
        WriteToElasticsearch(EsConfig(), "items", max_docs=0, mode="score")
    with pytest.raises(ValueError, match="concrete index"):
        WriteToElasticsearch(EsConfig(), "items-*", mode="score")
