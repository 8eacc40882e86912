"""Poison messages: no element can fail a streaming job or the backfill's parse stage.

Each poison is fed to the parser and must end as exactly one dead letter that holds the
original bytes and a reason, and whose Pub/Sub message can be built; the valid messages
beside it must come through untouched. Property tests (hypothesis) feed arbitrary bytes
and arbitrary JSON; TestStream runs push a mix through the streaming stages.
"""
from __future__ import annotations

import io
import json
import pickle
from collections import Counter
from datetime import UTC, datetime

import apache_beam as beam
import pytest
from apache_beam.coders import StrUtf8Coder
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es.guard import GUARD_SCRIPT_SOURCE, BadRecord, canonical_version
from es.timestamps import ISO_LENGTH, iso, parse_iso
from tests.test_stream_units import counter, direct_runner_patches, streaming_pipeline, zero  # noqa: F401 (an autouse fixture)
from transforms.aggregator import KeepNewest
from transforms.deadletter import DEAD_LETTER, dead_letter
from transforms.deadletter_topic import PUBLISH_REQUEST_LIMIT, TRUNCATED, payload_bytes, to_message
from transforms.items import MAX_ID_BYTES, ParseItems, parse_item
from transforms.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ParseUpdates,
    Update,
    _ParseDocumentFn,
    _ParseUpdatesFn,
    parse_update,
)

PUBLISHED = datetime(2026, 1, 5, tzinfo=UTC)


def record(item_id, updated_at="2026-01-02T00:00:00Z", **extra) -> dict:
    fields = {"id": item_id, "image_urls": ["http://img.example/1.jpg"], "created_at": "2026-01-01T00:00:00Z",
              **extra}
    if updated_at is not None:
        fields["updated_at"] = updated_at
    return fields


def encoded(fields: dict) -> bytes:
    """JSON as producers send it: ``ensure_ascii`` writes a lone surrogate as the escape ``\\ud800``."""
    return json.dumps(fields).encode("ascii")


def message(data: bytes, message_id: str, published: datetime = PUBLISHED) -> PubsubMessage:
    msg = PubsubMessage(data, {}, message_id=message_id)
    msg.publish_time = published
    return msg


def outcomes(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list:
    fn = _ParseUpdatesFn("aggregator", True, max_bytes)
    return list(fn.process(message(data, "m1"), timestamp=Timestamp(10)))


def assert_one_dead_letter(data: bytes, reason: str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict:
    """Exactly one outcome, a dead letter of ``reason`` whose message carries ``data`` byte for byte."""
    out = outcomes(data, max_bytes)
    assert len(out) == 1 and isinstance(out[0], TaggedOutput) and out[0].tag == DEAD_LETTER, out
    letter = out[0].value
    assert letter["reason"] == reason, letter["error"]
    assert letter["stage"] == "aggregator" and letter["message_id"] == "m1"
    assert payload_bytes(letter) == data
    sent = to_message(letter)
    assert sent.data == data and sent.attributes["reason"] == reason
    sent._to_proto_str(for_publish=True)  # what WriteToPubSub does: refuses bad sizes or text
    json.dumps(letter, ensure_ascii=False).encode("utf-8")  # the dead-letter file line encodes too
    return letter


# --------------------------------------------------------------------------- one test per poison

def test_lone_surrogate_id_is_bad_id_and_its_dead_letter_encodes():
    data = encoded(record("a\ud800b", price=12.5, title="the same message that once killed the job"))
    assert b"\\ud800" in data and len(data) > 140
    letter = assert_one_dead_letter(data, "bad_id")
    assert "surrogate" in letter["error"] and letter["id"] is None


def test_id_over_512_utf8_bytes_is_bad_id():
    assert_one_dead_letter(encoded(record("x" * 600)), "bad_id")
    assert_one_dead_letter(encoded(record("é" * 257)), "bad_id")          # 514 bytes, 257 characters
    assert isinstance(outcomes(encoded(record("é" * 256)))[0], Update)    # 512 bytes: the limit itself
    assert MAX_ID_BYTES == 512


@pytest.mark.parametrize("item_id", ["", "   "])
def test_empty_id_is_bad_id(item_id):
    assert_one_dead_letter(encoded(record(item_id)), "bad_id")


def test_missing_id_stays_missing_id():
    assert_one_dead_letter(encoded({k: v for k, v in record("a").items() if k != "id"}), "missing_id")


@pytest.mark.parametrize("version", ["0999-01-01T00:00:00Z", "0001-01-01", "1969-12-31T23:59:59Z",
                                     "10000-01-01T00:00:00Z", "9999-12-31T23:00:00-05:00", "yesterday", 1700000000])
def test_versions_outside_1970_to_9999_or_unparseable_are_bad_version(version):
    letter = assert_one_dead_letter(encoded(record("a", version)), "bad_version")
    assert letter["id"] == "a"


def test_bad_version_of_a_delete_is_bad_version_too():
    assert_one_dead_letter(encoded({"id": "a", "deleted": True, "updated_at": "0999-01-01"}), "bad_version")


def test_versions_at_the_edges_of_the_range_are_canonical_27_characters():
    for version, canonical in (("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000000Z"),
                               ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z")):
        (update,) = outcomes(encoded(record("a", version)))
        assert iso(update.version) == canonical and len(canonical) == ISO_LENGTH


def test_message_over_max_bytes_is_message_too_large_with_all_its_bytes():
    data = encoded(record("big", title="x" * (5 * 1024 * 1024)))
    assert len(data) > 5 * 1024 * 1024
    letter = assert_one_dead_letter(data, "message_too_large")
    assert "--max-message-bytes" in letter["error"]
    assert isinstance(outcomes(data, max_bytes=len(data))[0], Update)  # the flag raises the limit


def test_not_utf8_is_bad_encoding_kept_as_bytes():
    data = b'{"id": "caf\xe9", "image_urls": ["http://img.example/1.jpg"]}'
    letter = assert_one_dead_letter(data, "bad_encoding")
    assert letter["payload_encoding"] == "base64"


def test_lone_surrogate_in_another_field_is_bad_field():
    letter = assert_one_dead_letter(encoded(record("a", title="caf\udce9")), "bad_field")
    assert "title" in letter["error"] and letter["id"] == "a"


def test_json_nested_past_the_parser_stack_is_malformed_json():
    assert_one_dead_letter(b"[" * 100_000, "malformed_json")


def test_the_backfill_parse_stage_rejects_the_same_poisons(tmp_path):
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipelines.local_runner import local_runner

    poisons = {"s": encoded(record("a\ud800b")).decode(), "l": json.dumps(record("x" * 600)),
               "v": json.dumps(record("old", "0999-01-01")), "e": json.dumps(record(""))}
    good = json.dumps(record("fine"))
    with TestPipeline(runner=local_runner()) as p:
        parsed = p | beam.Create([*poisons.values(), good]) | ParseItems("parse")
        assert_that(parsed.items | "Ids" >> beam.Map(lambda item: item.id), equal_to(["fine"]), label="items")
        assert_that(parsed[DEAD_LETTER] | "Reasons" >> beam.Map(lambda d: (d["reason"], d["payload"])),
                    equal_to([("bad_id", poisons["s"]), ("bad_id", poisons["l"]), ("bad_version", poisons["v"]),
                              ("bad_id", poisons["e"])]), label="dead")


# --------------------------------------------------------------------------- dates and dead letters

def test_one_iso_parser_and_a_zero_padded_canonical_form():
    assert iso(datetime(999, 1, 1, tzinfo=UTC)) == "0999-01-01T00:00:00.000000Z"
    assert canonical_version("0999-01-01") == "0999-01-01T00:00:00.000000Z"   # was 26 characters
    assert "v.length() == 27" in GUARD_SCRIPT_SOURCE and ISO_LENGTH == 27
    assert parse_iso("2026-11-20T19:00:00+09:00", "t") == datetime(2026, 11, 20, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="outside the years"):
        parse_iso("0001-01-01T00:00:00+01:00", "t")
    with pytest.raises(BadRecord, match="updated_at '10000-01-01' is not an ISO 8601 timestamp"):
        canonical_version("10000-01-01")
    from pipelines.collect import parse_ts
    from transforms.deadletter import Rejected
    with pytest.raises(Rejected) as caught:
        parse_ts("13/01/2024")
    assert caught.value.reason == "bad_timestamp"


def test_dead_letter_building_never_raises_on_lone_surrogates_anywhere():
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    letter = dead_letter("s\ud800", "r", ValueError("bad \udc80 value"), "payload \ud800", id="a\ud800b")
    assert letter["id"] == "a\\ud800b" and letter["error"] == "bad \\udc80 value"
    assert letter["payload"] == "payload \\ud800"
    json.dumps(letter, ensure_ascii=False).encode("utf-8")
    to_message(letter)._to_proto_str(for_publish=True)
    assert "Unprintable" in dead_letter("s", "r", Unprintable(), {"k": "\ud800"})["error"]


def test_a_payload_that_would_not_fit_a_publish_request_is_clipped_and_marked():
    data = b"\xff" * PUBLISH_REQUEST_LIMIT          # not UTF-8: stored as base64 in the record
    sent = to_message(dead_letter("aggregator", "message_too_large", "too large", data, id="a"))
    assert sent.attributes[TRUNCATED] == str(PUBLISH_REQUEST_LIMIT)
    assert data.startswith(sent.data) and len(sent._to_proto_str(for_publish=True)) < PUBLISH_REQUEST_LIMIT
    small = to_message(dead_letter("aggregator", "bad_id", "x", b"\xff\x00", id=None))
    assert small.data == b"\xff\x00" and TRUNCATED not in small.attributes


def test_feeder_parse_applies_the_id_and_version_rules():
    fn = _ParseDocumentFn()

    def parse(document: dict) -> list:
        data = json.dumps({"document": document, "payload": "{}"}).encode("ascii")
        return list(fn.process(message(data, "d1"), timestamp=Timestamp(10)))

    for document, reason in (({"id": "a\ud800", "updated_at": "2026-01-01T00:00:00Z"}, "bad_id"),
                             ({"id": "a", "updated_at": "0999-01-01"}, "bad_version"),
                             ({"id": "a"}, "bad_version")):
        (out,) = parse(document)
        assert isinstance(out, TaggedOutput) and out.value["reason"] == reason
        to_message(out.value)._to_proto_str(for_publish=True)
    (good,) = parse({"id": "a", "updated_at": "2026-01-01T00:00:00.000000Z"})
    assert good["id"] == "a"


# --------------------------------------------------------------------------- properties

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.text(alphabet=st.one_of(st.characters(), SURROGATES), max_size=12)
IDS = st.one_of(TEXT, st.integers(), st.none(), st.booleans(), st.floats(),
                st.integers(min_value=500, max_value=700).map(lambda n: "x" * n),
                st.sampled_from(["a", "b", "c", "a\ud800b", "", " "]))
DATES = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(["0999-01-01", "10000-01-01", "1969-12-31T23:59:59Z", "2026-01-02T00:00:00Z", "2026-13-01",
                     "9999-12-31T23:00:00-05:00", "2026-W01-1", "yesterday", ""]),
    TEXT, st.integers(), st.none())
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
RECORDS = st.fixed_dictionaries(
    {}, optional={"id": IDS, "updated_at": DATES, "created_at": DATES, "deleted": st.one_of(st.booleans(), TEXT),
                  "image_urls": st.one_of(st.lists(TEXT, max_size=2), st.just(["http://img.example/1.jpg"]), TEXT),
                  "price": JSON_VALUES, "title": JSON_VALUES, "extra": JSON_VALUES})
# a record that is valid but for its id, version, deleted flag or an extra field
NEAR_VALID = st.fixed_dictionaries(
    {"id": st.one_of(st.sampled_from(["a", "b", "c"]), IDS), "image_urls": st.just(["http://img.example/1.jpg"]),
     "created_at": st.just("2026-01-01T00:00:00Z"),
     "updated_at": st.one_of(st.sampled_from(["2026-01-02T00:00:00Z", "2026-01-03T00:00:00+09:00"]), DATES)},
    optional={"deleted": st.one_of(st.booleans(), st.booleans(), TEXT), "title": st.one_of(st.text(max_size=8), JSON_VALUES)})
MESSAGES = st.one_of(st.binary(max_size=200), RECORDS.map(encoded), JSON_VALUES.map(encoded),
                     RECORDS.map(lambda r: encoded(r)[:-3]), NEAR_VALID.map(encoded), NEAR_VALID.map(encoded))
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_outcome(data: bytes, out: list, max_bytes: int) -> Update | None:
    """Exactly one outcome: an Update every later stage can key, store and write, or one dead letter."""
    assert len(out) == 1, out
    (result,) = out
    if isinstance(result, TaggedOutput):
        assert result.tag == DEAD_LETTER and result.value["reason"]
        assert payload_bytes(result.value) == data
        to_message(result.value)._to_proto_str(for_publish=True)
        json.dumps(result.value, ensure_ascii=False).encode("utf-8")
        return None
    assert isinstance(result, Update) and len(data) <= max_bytes
    StrUtf8Coder().encode(result.id)
    assert 0 < len(result.id.encode("utf-8")) <= MAX_ID_BYTES
    assert len(iso(result.version)) == ISO_LENGTH and 1970 <= result.version.year <= 9999
    pickle.loads(pickle.dumps(result))
    json.dumps(result.fields, ensure_ascii=False).encode("utf-8")
    return result


@PROPERTY
@given(data=MESSAGES, max_bytes=st.sampled_from([64, DEFAULT_MAX_MESSAGE_BYTES]))
def test_property_every_message_ends_in_exactly_one_outcome(data, max_bytes):
    check_outcome(data, outcomes(data, max_bytes), max_bytes)


@PROPERTY
@given(data=MESSAGES)
def test_property_the_backfill_parser_never_raises_anything_but_rejected(data):
    from transforms.deadletter import Rejected
    try:
        item = parse_item(data)
    except Rejected as exc:
        letter = dead_letter("parse", exc.reason, exc, data, id=exc.id)
        assert payload_bytes(letter) == data
        to_message(letter)._to_proto_str(for_publish=True)
        return
    StrUtf8Coder().encode(item.id)


# --------------------------------------------------------------------------- TestStream runs

def newest_by_id(batch: list[tuple[bytes, str, datetime]]) -> tuple[dict[str, str], int]:
    """The reference: parse each message alone; per id, the message id of the newest; and the dead count."""
    newest: dict[str, Update] = {}
    dead = 0
    for data, message_id, published in batch:
        try:
            update = parse_update(data, message_id, published)
        except Exception:  # noqa: BLE001 -- the reference counts every failure as one dead letter
            dead += 1
            continue
        if update.id not in newest or update.order_key > newest[update.id].order_key:
            newest[update.id] = update
    return {item_id: update.message_id for item_id, update in newest.items()}, dead


def exactly_one_outcome_each(batch: list[tuple[bytes, str, datetime]], expected_letters: list | None = None):
    """An ``assert_that`` matcher over the run's outcomes (("emitted", item id, message id) and
    ("dead", message id, reason, original bytes)): the newest per item as the reference says, one
    dead letter with the original bytes for each message the reference refuses, no message twice."""
    def check(outcomes_seen: list) -> None:
        newest, dead = newest_by_id(batch)
        emitted = [(o[1], o[2]) for o in outcomes_seen if o[0] == "emitted"]
        letters = [o[1:] for o in outcomes_seen if o[0] == "dead"]
        assert sorted(emitted) == sorted(newest.items())
        assert len(letters) == dead
        by_id = {message_id: data for data, message_id, _ in batch}
        assert all(by_id[message_id] == data for message_id, _, data in letters)   # the original bytes
        ids = [message_id for _, message_id in emitted] + [message_id for message_id, _, _ in letters]
        assert len(ids) == len(set(ids))
        if expected_letters is not None:
            assert sorted((m, r) for m, r, _ in letters) == sorted(expected_letters)
    return check


def run_parse_and_aggregate(batch: list[tuple[bytes, str, datetime]], expected_letters: list | None = None) -> None:
    """Half the batch, a wait, the other half; past every timer; then the matcher and the superseded count."""
    half = len(batch) // 2
    stream = (TestStream()
              .add_elements([message(*m) for m in batch[:half]])
              .advance_processing_time(2)
              .add_elements([message(*m) for m in batch[half:]])
              .advance_processing_time(10)       # past every aggregation timer
              .advance_watermark_to_infinity())
    p = streaming_pipeline()
    parsed = p | stream | ParseUpdates("aggregator")
    aggregated = parsed.updates | KeepNewest(5.0, clock=zero)
    seen = ((aggregated.updates | "Emitted" >> beam.Map(lambda u: ("emitted", u.id, u.message_id)),
             (parsed[DEAD_LETTER], aggregated[DEAD_LETTER]) | "Letters" >> beam.Flatten()
             | "Dead" >> beam.Map(lambda d: ("dead", d["message_id"], d["reason"], payload_bytes(d))))
            | "Outcomes" >> beam.Flatten())
    assert_that(seen, exactly_one_outcome_each(batch, expected_letters))
    result = p.run()
    result.wait_until_finish()
    newest, dead = newest_by_id(batch)
    assert counter(result, "superseded") == len(batch) - len(newest) - dead
    assert counter(result, "messages_read") == len(batch)


def test_stream_mix_of_valid_and_poison_messages_through_parse_and_aggregate():
    poisons = {"p-surrogate": encoded(record("a\ud800b")), "p-long": encoded(record("x" * 600)),
               "p-999": encoded(record("a", "0999-01-01")), "p-10000": encoded(record("a", "10000-01-01")),
               "p-utf8": b'{"id": "caf\xe9"}', "p-empty": encoded(record("")),
               "p-big": encoded(record("a", title="x" * (DEFAULT_MAX_MESSAGE_BYTES + 1)))}
    valid = [(encoded(record(f"v{n % 12}", f"2026-01-0{1 + n % 9}T00:00:00Z", price=n)), f"{n}",
              PUBLISHED) for n in range(35)]
    batch = valid[:20] + [(data, message_id, PUBLISHED) for message_id, data in poisons.items()] + valid[20:]
    assert len(newest_by_id(batch)[0]) == 12
    run_parse_and_aggregate(batch, [
        ("p-surrogate", "bad_id"), ("p-long", "bad_id"), ("p-999", "bad_version"), ("p-10000", "bad_version"),
        ("p-utf8", "bad_encoding"), ("p-empty", "bad_id"), ("p-big", "message_too_large")])


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(MESSAGES, min_size=5, max_size=25))
def test_property_stream_of_arbitrary_messages_ends_in_exactly_one_outcome_each(batch):
    messages = [(data, f"{n}", PUBLISHED) for n, data in enumerate(batch)]
    messages += [(encoded(record(["a", "b"][n % 2], f"2026-01-0{1 + n}T00:00:00Z")), f"ok{n}", PUBLISHED)
                 for n in range(4)]
    run_parse_and_aggregate(messages)


def test_stream_poison_and_valid_messages_through_the_whole_job(es_config, es_index, es_client, image_server):
    """Parse, aggregate, analyze (a real fetch and the handcrafted scorer) and feed (the ES double):
    every message is written, superseded or one dead letter; none fails the job."""
    from PIL import Image

    from es.guard import DOCUMENT
    from transforms.analyzer import Analyze
    from transforms.feeder import Feed
    from transforms.fetch import FetchPolicy
    from transforms.inference import make_score_handler, score_model_info

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, "JPEG")
    url = image_server.route("/photo.jpg", body=buffer.getvalue(), content_type="image/jpeg")

    def item(item_id, version, **extra) -> bytes:
        return encoded({**record(item_id, version, **extra), "image_urls": [url]})

    batch = [(item("g1", "2026-01-02T00:00:00Z", price=1), "1"), (item("g1", "2026-01-03T00:00:00Z", price=2), "2"),
             (item("a\ud800b", "2026-01-02T00:00:00Z"), "3"), (item("x" * 600, "2026-01-02T00:00:00Z"), "4"),
             (item("g2", "0999-01-01"), "5"), (b'{"id": "g3", "title": "caf\xe9"}', "6"),
             (item("g3", "2026-01-02T00:00:00Z", title="t\udc80"), "7"), (item("", "2026-01-02T00:00:00Z"), "8"),
             (encoded({"id": "g4", "deleted": True, "updated_at": "2026-01-02T00:00:00Z"}), "9"),
             (item("g5", "2026-01-02T00:00:00Z", title="x" * 3000), "10"),
             (item("g2", "9999-12-31T23:59:59Z"), "11")]
    stream = (TestStream()
              .add_elements([message(data, message_id) for data, message_id in batch])
              .advance_processing_time(10)       # the aggregator's timers
              .advance_processing_time(10)       # the feeder's buffer timers
              .advance_watermark_to_infinity())
    p = streaming_pipeline()
    parsed = p | stream | ParseUpdates("aggregator", max_bytes=2048)
    aggregated = parsed.updates | KeepNewest(5.0, clock=zero)
    model_id, input_size = score_model_info("handcrafted")
    analyzed = aggregated.updates | Analyze(make_score_handler("handcrafted"), model_id, input_size,
                                            FetchPolicy(allowed_hosts=frozenset({image_server.host_port})), 40_000_000,
                                            es_config, es_index)
    fed = analyzed["documents"] | Feed(es_config, es_index, max_docs=10, buffer_seconds=1.0, clock=zero,
                                       mode=DOCUMENT)
    letters = (parsed[DEAD_LETTER], aggregated[DEAD_LETTER], analyzed[DEAD_LETTER], fed) | beam.Flatten()
    assert_that(letters | beam.Map(lambda d: (d["message_id"], d["stage"], d["reason"])), equal_to([
        ("3", "aggregator", "bad_id"), ("4", "aggregator", "bad_id"), ("5", "aggregator", "bad_version"),
        ("6", "aggregator", "bad_encoding"), ("7", "aggregator", "bad_field"), ("8", "aggregator", "bad_id"),
        ("10", "aggregator", "message_too_large")]))
    result = p.run()
    result.wait_until_finish()
    totals = Counter({name: counter(result, name) for name in
                      ("messages_read", "superseded", "written", "stale", "deleted", "missing", "deadlettered")})
    assert totals == Counter(messages_read=11, superseded=1, written=2, deleted=1, deadlettered=7)
    es_client.indices.refresh(index=es_index)
    assert es_client.get(index=es_index, id="g1")["_source"]["price"] == 2
    assert es_client.get(index=es_index, id="g2")["_source"]["updated_at"] == "9999-12-31T23:59:59.000000Z"
    assert es_client.get(index=es_index, id="g4")["_source"]["deleted"] is True
