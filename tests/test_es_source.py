"""The backfill source: PIT + slices + search_after, against the ES double (or $ES_URL)."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from es.bulk_writer import write_batch
from es.client import EsError
from es.source import ReadItemsFromElasticsearch, backfill_query
from pipelines.local_runner import local_runner
from tests.fixtures.es import seed_items

MODEL = "handcrafted-v4"


def _ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")


def seed_backfill_index(client, index: str, n: int = 60) -> set[str]:
    """A mix of items; returns the ids the backfill must read."""
    docs, expected = {}, set()
    for i in range(n):
        kind = i % 5
        doc = {"title": f"listing {i}", "image_urls": [f"https://img.example/{i}.jpg"]}
        if kind == 0:  # too old
            doc["created_at"] = _ago(120)
        elif kind == 1:  # already scored by the current model
            doc.update(created_at=_ago(10), image_score=0.4, image_score_model=MODEL)
        elif kind == 2:  # scored by an older model
            doc.update(created_at=_ago(30), image_score=0.4, image_score_model="handcrafted-v1")
            expected.add(f"it-{i}")
        else:  # never scored
            doc["created_at"] = _ago(i % 80 + 1)
            expected.add(f"it-{i}")
        docs[f"it-{i}"] = doc
    seed_items(client, index, docs)
    return expected


def read_and_check(config, index: str, expected: set[str], **kwargs) -> None:
    """Run the source; the ids must equal ``expected`` as a multiset (a duplicate fails too)."""
    pipeline = BeamTestPipeline(runner=local_runner())
    read = pipeline | ReadItemsFromElasticsearch(config, index, model_id=MODEL, **kwargs)
    assert_that(read | beam.Map(lambda text: json.loads(text)["id"]), equal_to(sorted(expected)))
    pipeline.run().wait_until_finish()


@pytest.mark.parametrize("slices,page_size", [(1, 1000), (3, 7), (4, 2)])
def test_reads_exactly_the_unscored_recent_items(es_config, es_client, es_index, slices, page_size):
    expected = seed_backfill_index(es_client, es_index)
    assert len(expected) == 36
    read_and_check(es_config, es_index, expected, days=90, slices=slices, page_size=page_size)


def test_slices_partition_the_set_and_pages_chain(es_double, es_config, es_client, es_index):
    expected = seed_backfill_index(es_client, es_index, n=80)
    read_and_check(es_config, es_index, expected, slices=3, page_size=5)
    searches = [r for r in es_double.requests if r.path == "/_search"]
    per_slice: dict[int, list] = {}
    for request in searches:
        body = request.json
        assert body["sort"] == [{"_shard_doc": "asc"}] and body["size"] == 5
        assert body["query"]["bool"]["must_not"] == [{"term": {"image_score_model": MODEL}}]
        per_slice.setdefault(body["slice"]["id"], []).append(body.get("search_after"))
        assert body["slice"]["max"] == 3
    assert sorted(per_slice) == [0, 1, 2]
    for pages in per_slice.values():
        assert pages[0] is None and all(after is not None for after in pages[1:])
        assert len(pages) > 2  # 48 matches over 3 slices of 5 per page
    cutoffs = {json.dumps(r.json["query"]["bool"]["filter"]) for r in searches}
    assert len(cutoffs) == 1, "every slice must filter on the same cutoff"
    assert not opened_pits(es_double) & es_double.open_pits(), "the point in time was not closed"


def opened_pits(double) -> set[str]:
    """The ids of the PITs this test opened (the double lives for the module, so others may be open)."""
    return {r.response["id"] for r in double.requests if r.method == "POST" and r.path.endswith("/_pit")
            and r.status == 200}


def pit_chains(double) -> dict[int, list[tuple[str, str]]]:
    """Per slice, (pit id sent, pit id answered) of every search the double answered, in order."""
    chains: dict[int, list[tuple[str, str]]] = {}
    for request in double.requests:
        if request.path == "/_search" and request.status == 200:
            slice_id = request.json.get("slice", {}).get("id", 0)
            chains.setdefault(slice_id, []).append((request.json["pit"]["id"], request.response["pit_id"]))
    return chains


def test_each_page_and_the_close_use_the_newest_pit_id(es_double, es_config, es_client, es_index):
    """Elasticsearch may answer each page with a new pit_id; the double always does, so a stale id shows."""
    expected = seed_backfill_index(es_client, es_index, n=40)
    read_and_check(es_config, es_index, expected, slices=2, page_size=4)
    (opened,) = opened_pits(es_double)
    chains = pit_chains(es_double)
    assert sorted(chains) == [0, 1] and all(len(chain) > 2 for chain in chains.values())
    for chain in chains.values():
        sent = [s for s, _ in chain]
        answered = [a for _, a in chain]
        assert sent == [opened] + answered[:-1], "a page was searched with an id older than the newest one"
        assert len(set(answered)) == len(answered) and opened not in answered
    closed = sorted(r.json["id"] for r in es_double.requests if r.method == "DELETE" and r.path == "/_pit")
    assert closed == sorted(chain[-1][1] for chain in chains.values())
    assert opened not in es_double.open_pits()


def test_dropped_search_connections_are_retried_without_loss_or_duplicates(es_double, es_config, es_client,
                                                                           es_index):
    expected = seed_backfill_index(es_client, es_index, n=30)
    es_double.fail_connections(times=3, path=r"^/_search$")
    read_and_check(es_config, es_index, expected, slices=2, page_size=4)
    dropped = [r for r in es_double.requests if r.path == "/_search" and r.status == 0]
    assert len(dropped) == 3
    assert not opened_pits(es_double) & es_double.open_pits()


def test_search_connections_that_keep_dropping_fail_the_read_by_name(es_double, es_config, es_client, es_index):
    seed_backfill_index(es_client, es_index, n=10)
    es_double.fail_connections(times=None, path=r"^/_search$")
    pipeline = BeamTestPipeline(runner=local_runner())
    _ = pipeline | ReadItemsFromElasticsearch(es_config, es_index, model_id=MODEL, slices=2)
    with pytest.raises(Exception, match="searching slice"):
        pipeline.run().wait_until_finish()


@pytest.mark.parametrize("fault", ["error", "dropped"])
def test_a_failing_close_does_not_fail_the_read(es_double, es_config, es_client, es_index, fault, caplog):
    """The PIT then stays open until keep_alive runs out, as it would after a crash."""
    expected = seed_backfill_index(es_client, es_index, n=20)
    if fault == "error":
        es_double.fail_requests(500, times=None, path=r"^/_pit$", method="DELETE")
    else:
        es_double.fail_connections(times=None, path=r"^/_pit$", method="DELETE")
    with caplog.at_level("WARNING", logger="es.source"):
        read_and_check(es_config, es_index, expected, slices=2, page_size=5)
    (opened,) = opened_pits(es_double)
    assert opened in es_double.open_pits()
    closes = [r for r in es_double.requests if r.method == "DELETE" and r.path == "/_pit"]
    assert len(closes) == 3  # the first try and max_retries=2
    assert "could not close the point in time" in caplog.text


def test_a_close_that_fails_once_is_retried(es_double, es_config, es_client, es_index):
    expected = seed_backfill_index(es_client, es_index, n=10)
    es_double.fail_connections(times=1, path=r"^/_pit$", method="DELETE")
    read_and_check(es_config, es_index, expected, slices=1)
    (opened,) = opened_pits(es_double)
    assert opened not in es_double.open_pits()


def test_one_slice_sends_no_slice_clause(es_double, es_config, es_client, es_index):
    expected = seed_backfill_index(es_client, es_index, n=10)
    read_and_check(es_config, es_index, expected, slices=1)
    assert all("slice" not in r.json for r in es_double.requests if r.path == "/_search")


def test_elements_are_source_json_with_the_id(es_config, es_client, es_index):
    created = _ago(1)  # one timestamp: computing it twice can straddle a second boundary
    seed_items(es_client, es_index, {
        "a": {"title": "no id field", "created_at": created},
        "b": {"id": "b", "title": "has its own id", "created_at": created},
    })
    pipeline = BeamTestPipeline(runner=local_runner())
    read = pipeline | ReadItemsFromElasticsearch(es_config, es_index, model_id=MODEL, slices=2)
    assert_that(read | beam.Map(json.loads), equal_to([
        {"id": "a", "title": "no id field", "created_at": created},
        {"id": "b", "title": "has its own id", "created_at": created},
    ]))
    pipeline.run().wait_until_finish()


def test_a_rerun_after_scoring_reads_nothing(es_config, es_client, es_index):
    expected = seed_backfill_index(es_client, es_index, n=20)
    out = write_batch(es_config, es_index, [
        {"id": doc_id, "updated_at": _ago(1), "image_score": 0.5, "image_score_model": MODEL,
         "image_scored_at": _ago(0), "image_score_image_url": f"https://img.example/{doc_id}.jpg"}
        for doc_id in expected], mode="score")
    assert sorted(out["written"]) == sorted(expected)
    es_client.indices.refresh(index=es_index)
    read_and_check(es_config, es_index, set(), slices=2)


def test_missing_index_fails_with_its_name(es_config):
    pipeline = BeamTestPipeline(runner=local_runner())
    _ = pipeline | ReadItemsFromElasticsearch(es_config, "imagescore-test-absent", model_id=MODEL)
    with pytest.raises(Exception, match="imagescore-test-absent"):
        pipeline.run().wait_until_finish()


def test_query_treats_a_missing_model_as_different():
    query = backfill_query("2025-01-01T00:00:00+00:00", "m-v1")
    assert query["bool"]["must_not"] == [{"term": {"image_score_model": "m-v1"}}]
    assert query["bool"]["filter"][0]["range"]["created_at"]["gte"] == "2025-01-01T00:00:00+00:00"


def test_now_pins_the_window(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, {"old": {"created_at": "2024-01-05T00:00:00Z"},
                                     "new": {"created_at": "2024-03-20T00:00:00Z"},
                                     "later": {"created_at": "2024-12-01T00:00:00Z"}})
    now = datetime(2024, 4, 1, tzinfo=UTC)
    # "later" is after now: the window is [now - days, ...), like the query Elasticsearch gets.
    read_and_check(es_config, es_index, {"new", "later"}, days=30, now=now)
    cutoffs = {r.json["query"]["bool"]["filter"][0]["range"]["created_at"]["gte"]
               for r in es_double.requests if r.path == "/_search"}
    assert cutoffs == {"2024-03-02T00:00:00+00:00"}


def test_arguments_are_validated(es_config):
    with pytest.raises(ValueError, match="timezone"):
        ReadItemsFromElasticsearch(es_config, "items", model_id="m", now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="model_id"):
        ReadItemsFromElasticsearch(es_config, "items")
    with pytest.raises(ValueError, match="page_size"):
        ReadItemsFromElasticsearch(es_config, "items", model_id="m", page_size=20_000)


def test_search_5xx_is_retried(es_double, es_config, es_client, es_index):
    expected = seed_backfill_index(es_client, es_index, n=10)
    es_double.fail_requests(503, times=2, path=r"^/_search$")
    read_and_check(es_config, es_index, expected, slices=2)
    assert es_double.unfired_faults() == 0  # both 503s were answered, and retried past


def test_expired_pit_is_an_error_not_a_silent_short_read(es_double, es_config, es_client, es_index):
    seed_backfill_index(es_client, es_index, n=10)
    es_double.fail_requests(404, times=None, path=r"^/_search$", error_type="search_context_missing_exception")
    pipeline = BeamTestPipeline(runner=local_runner())
    _ = pipeline | ReadItemsFromElasticsearch(es_config, es_index, model_id=MODEL, slices=2)
    with pytest.raises(Exception, match="search_context_missing_exception"):
        pipeline.run().wait_until_finish()


def test_bad_credentials_error_is_scrubbed(es_double, es_config, monkeypatch):
    monkeypatch.setenv("ES_API_KEY", "fake-key-for-source-test")
    es_double.require_auth(api_key="the-right-key", echo_credentials=True)
    with pytest.raises(EsError) as caught:
        from es.source import _OpenPitFn
        list(_OpenPitFn(es_config, "items", 2, 90, "1m").process(None))
    assert "fake-key-for-source-test" not in str(caught.value) and caught.value.status == 401


def test_the_document_id_wins_over_an_id_field_in_the_source():
    from es.source import _source_text
    assert json.loads(_source_text({"_id": "m123", "_source": {"id": 123, "title": "t"}}))["id"] == "m123"
