"""Unit tests of the streaming stages on TestStream, with an injected clock.

The runner's test clock starts at 0, and the stages read ``clock=lambda: 0.0``,
so a timer set for ``seconds`` fires once processing time passes ``seconds``.
Every test advances the watermark to infinity, so every timer has fired before
the assertions.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from pipelines.local_runner import DirectRunnerPatches
from transforms.aggregator import KeepNewest
from transforms.deadletter import DEAD_LETTER
from transforms.messages import ParseUpdates


def zero() -> float:
    return 0.0


def message(record, message_id: str, published: float) -> PubsubMessage:
    data = record if isinstance(record, bytes) else json.dumps(record).encode()
    msg = PubsubMessage(data, {}, message_id=message_id)
    msg.publish_time = datetime.fromtimestamp(published, UTC)
    return msg


def item(item_id: str, updated_at: str | None, price: float = 1.0, **extra) -> dict:
    record = {"id": item_id, "image_urls": [f"http://img.example/{item_id}.jpg"],
              "created_at": "2026-01-01T00:00:00Z", "price": price, **extra}
    if updated_at is not None:
        record["updated_at"] = updated_at
    return record


@pytest.fixture(autouse=True)
def direct_runner_patches():
    """The direct runner's counter fix, for each test's pipelines; undone after."""
    with DirectRunnerPatches():
        yield


def streaming_pipeline() -> beam.Pipeline:
    opts = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    opts.view_as(StandardOptions).streaming = True
    return beam.Pipeline(options=opts)


def counter(result, name: str) -> int:
    found = result.metrics().query(beam.metrics.MetricsFilter().with_name(name))["counters"]
    return sum(c.committed or 0 for c in found)


def test_aggregator_keeps_newest_by_version_then_publish_time_then_message_id():
    stream = (TestStream()
              .add_elements([message(item("a", "2026-01-02T00:00:00Z", 1), "5", 10),
                             message(item("a", "2026-01-03T00:00:00Z", 2), "6", 11),
                             message(item("a", "2026-01-01T00:00:00Z", 3), "7", 12),   # older version
                             message(item("b", "2026-01-02T00:00:00Z", 1), "8", 10),
                             message(item("b", "2026-01-02T00:00:00Z", 2), "9", 11),   # tie: later publish
                             message(item("c", "2026-01-02T00:00:00Z", 1), "100", 10),
                             message(item("c", "2026-01-02T00:00:00Z", 2), "99", 10),  # tie: smaller id
                             message(item("d", None, 1), "20", 10),                    # versions from publish time
                             message(item("d", None, 2), "21", 12)])
              .advance_processing_time(6)
              # a second round for "a": its first window has been emitted, a new one starts
              .add_elements([message(item("a", "2026-01-04T00:00:00Z", 9), "30", 20)])
              .advance_processing_time(6)
              .advance_watermark_to_infinity())
    p = streaming_pipeline()
    parsed = p | stream | ParseUpdates("aggregator")
    newest = (parsed.updates | KeepNewest(5.0, clock=zero)).updates
    assert_that(newest | beam.Map(lambda u: (u.id, u.fields["price"], u.message_id)),
                equal_to([("a", 2, "6"), ("b", 2, "9"), ("c", 1, "100"), ("d", 2, "21"), ("a", 9, "30")]))
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "superseded") == 5
    assert counter(result, "messages_read") == 10
    assert counter(result, "version_from_publish_time") == 2


def test_aggregator_lets_a_delete_win_a_version_tie_whichever_was_published_last():
    version = "2026-01-02T00:00:00Z"
    stream = (TestStream()
              .add_elements([message({"id": "a", "deleted": True, "updated_at": version}, "1", 10),
                             message(item("a", version, 2), "2", 11),    # published after the delete
                             message(item("b", version, 3), "3", 10),
                             message({"id": "b", "deleted": True, "updated_at": version}, "4", 11)])
              .advance_processing_time(6)
              .advance_watermark_to_infinity())
    p = streaming_pipeline()
    parsed = p | stream | ParseUpdates("aggregator")
    newest = (parsed.updates | KeepNewest(5.0, clock=zero)).updates
    assert_that(newest | beam.Map(lambda u: (u.id, u.deleted, u.message_id)),
                equal_to([("a", True, "1"), ("b", True, "4")]))
    p.run().wait_until_finish()


def test_parse_routes_bad_messages_to_dead_letters_with_exact_bytes():
    bad_utf8 = b'{"id": "x\xff"}'
    stream = (TestStream()
              .add_elements([message(b"{not json", "1", 10), message(bad_utf8, "2", 10),
                             message({"image_urls": ["http://x/1.jpg"]}, "3", 10),
                             message(item("e", "yesterday"), "4", 10),
                             message({"id": "f", "deleted": "yes"}, "5", 10),
                             message({"id": "g", "deleted": True, "updated_at": "2026-01-02T00:00:00Z"}, "6", 10),
                             message(item("h", "2026-01-02T00:00:00Z"), "7", 10)])
              .advance_watermark_to_infinity())
    p = streaming_pipeline()
    parsed = p | stream | ParseUpdates("aggregator")
    assert_that(parsed[DEAD_LETTER] | "Dead" >> beam.Map(
        lambda r: (r["reason"], r["id"], r["message_id"], r.get("payload_encoding"))),
        equal_to([("malformed_json", None, "1", None), ("bad_encoding", None, "2", "base64"),
                  ("missing_id", None, "3", None), ("bad_version", "e", "4", None), ("bad_field", "f", "5", None)]),
        label="dead")
    assert_that(parsed.updates | "Good" >> beam.Map(lambda u: (u.id, u.deleted)),
                equal_to([("g", True), ("h", False)]), label="good")
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "deadletter_aggregator_malformed_json") == 1


def test_feeder_batches_across_bundles_by_size_and_buffer_time(es_double, es_config, es_index, es_client):
    from es.guard import ensure_guard_script
    from transforms.feeder import Feed
    from transforms.messages import FeedRecord

    ensure_guard_script(es_client)
    def doc(n: int) -> FeedRecord:
        fields = {"id": f"f{n}", "updated_at": "2026-01-02T00:00:00.000000Z", "image_score": 0.5,
                  "image_score_model": "m", "image_scored_at": "2026-01-02T00:00:00.000000Z",
                  "image_score_image_url": "http://x/1.jpg", "image_score_version": "2026-01-02T00:00:00.000000Z",
                  "created_at": "2026-01-01T00:00:00Z"}
        return FeedRecord(fields, json.dumps({"id": f"f{n}"}), str(n), datetime.fromtimestamp(0, UTC))

    es_double.seed(es_index, {f"f{n}": {"created_at": "2026-01-01T00:00:00Z"} for n in range(8)})
    es_double.requests.clear()
    stream = (TestStream()
              .add_elements([doc(0), doc(1)])           # bundles on each side of a short wait ...
              .advance_processing_time(0.5)
              .add_elements([doc(2)])                   # ... within the 1 s buffer: one batch
              .add_elements([doc(3), doc(4), doc(5)])   # full at 4 (--es-max-docs): 0-3 flushed; 4, 5 wait
              .advance_processing_time(2)               # the buffer timer flushes 4 and 5
              .add_elements([doc(6)])                   # a new batch, flushed by its own timer
              .advance_processing_time(2)
              .advance_watermark_to_infinity())
    p = streaming_pipeline()
    dead = p | stream | Feed(es_config, es_index, max_docs=4, buffer_seconds=1.0, clock=zero)
    assert_that(dead, equal_to([]))
    result = p.run()
    result.wait_until_finish()
    sizes = [sum(1 for line in r.ndjson if "update" in line or "index" in line) for r in es_double.bulk_requests()]
    assert sorted(sizes) == [1, 2, 4]
    assert counter(result, "written") == 7


@pytest.mark.parametrize("mode", ["document", "score"])
def test_dead_letters_route_per_stage_with_original_bytes_and_origin(mode):
    """Document mode indexes the item whose image failed without a score, and its image letter is marked;
    score mode leaves the fields to their indexer, so the image letter is the message's outcome."""
    from transforms.analyzer import Analyze
    from transforms.deadletter_topic import to_message
    from transforms.fetch import FetchPolicy
    from transforms.inference import make_score_handler

    blocked = item("meta", "2026-01-02T00:00:00Z")
    blocked["image_urls"] = ["http://169.254.169.254/latest/meta-data/"]
    raw_blocked = json.dumps(blocked).encode()
    stream = (TestStream()
              .add_elements([message(raw_blocked, "41", 100), message(b"\xff\xfe not json", "42", 101),
                             message({"id": "gone", "deleted": True, "updated_at": "2026-01-02T00:00:00Z"}, "43", 102)])
              .advance_watermark_to_infinity())
    p = streaming_pipeline()
    parsed = p | stream | ParseUpdates("aggregator")
    analyzed = parsed.updates | Analyze(make_score_handler("handcrafted"), "handcrafted-v1", 224, FetchPolicy(),
                                        40_000_000, None, "items", mode=mode)
    letters = (parsed[DEAD_LETTER], analyzed[DEAD_LETTER]) | beam.Flatten() | beam.Map(to_message)
    indexed = {"indexed_without_score": "true"} if mode == "document" else {}
    assert_that(letters | "Msg" >> beam.Map(lambda m: (m.data, dict(m.attributes))), equal_to([
        (raw_blocked, {"stage": "analyzer", "reason": "blocked_address", "item_id": "meta", "message_id": "41",
                       "publish_time": "1970-01-01T00:01:40.000000Z",
                       "error": Contains("169.254.169.254"), **indexed}),
        (b"\xff\xfe not json", {"stage": "aggregator", "reason": "bad_encoding", "message_id": "42",
                                "publish_time": "1970-01-01T00:01:41.000000Z", "error": Contains("not UTF-8")}),
    ]), label="letters")
    # the item whose image failed: its newest fields, not one score field
    unscored = [("meta", sorted(k for k in blocked if k != "image_score"), "2026-01-02T00:00:00.000000Z")]
    assert_that(analyzed["documents"] | "Docs" >> beam.Map(
        lambda d: (d["id"], True, d["updated_at"]) if d.get("deleted") else (d["id"], sorted(d), d["updated_at"])),
                equal_to([("gone", True, "2026-01-02T00:00:00.000000Z")] + (unscored if mode == "document" else [])),
                label="documents")
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "deadletter_analyzer_blocked_address") == 1
    assert counter(result, "deadletter_aggregator_bad_encoding") == 1
    assert counter(result, "deadlettered") == (1 if mode == "document" else 2)
    assert counter(result, "image_deadlettered") == (1 if mode == "document" else 0)
    assert counter(result, "indexed_without_score") == (1 if mode == "document" else 0)


class Contains(str):
    """Equal to any string that contains it (for error texts)."""

    def __eq__(self, other):
        return isinstance(other, str) and str.__contains__(other, str(self))

    def __hash__(self):
        return 0


def test_an_image_that_fails_after_a_failed_lookup_keeps_the_reusable_score(es_double, es_config, es_index,
                                                                            es_client):
    """The first stored-score lookup fails, so the update is fetched; its image fails too. The second lookup
    finds the stored score of the same thumbnail and model: the document keeps it (score reuse)."""
    from transforms.analyzer import Analyze
    from transforms.fetch import FetchPolicy
    from transforms.inference import make_score_handler, score_model_info

    model_id, input_size = score_model_info("handcrafted")
    thumbnail = "http://169.254.169.254/keep.jpg"   # refused by the address policy: the fetch fails
    stored = {"updated_at": "2026-01-01T00:00:00.000000Z", "image_score": 0.42, "image_score_model": model_id,
              "image_scored_at": "2026-01-01T00:00:01.000000Z", "image_score_image_url": thumbnail,
              "image_score_version": "2026-01-01T00:00:00.000000Z"}
    es_double.seed(es_index, {"keep": stored})
    es_double.fail_requests(400, times=1, path=r"/_mget$")   # not retried: the first lookup fails at once
    update = {**item("keep", "2026-01-03T00:00:00Z", price=9.0), "image_urls": [thumbnail]}
    stream = TestStream().add_elements([message(update, "1", 100)]).advance_watermark_to_infinity()
    p = streaming_pipeline()
    parsed = p | stream | ParseUpdates("aggregator")
    analyzed = parsed.updates | Analyze(make_score_handler("handcrafted"), model_id, input_size, FetchPolicy(),
                                        40_000_000, es_config, es_index)
    assert_that(analyzed["documents"] | beam.Map(
        lambda d: (d["id"], d["price"], d["updated_at"], d["image_score"], d["image_score_version"])),
                equal_to([("keep", 9.0, "2026-01-03T00:00:00.000000Z", 0.42, "2026-01-01T00:00:00.000000Z")]))
    result = p.run()
    result.wait_until_finish()
    assert es_double.unfired_faults() == 0
    assert counter(result, "score_lookup_failed") == 1 and counter(result, "score_reused") == 1
    assert counter(result, "image_deadlettered") == 1 and counter(result, "deadletter_analyzer_blocked_address") == 1
    assert counter(result, "deadlettered") == 0
