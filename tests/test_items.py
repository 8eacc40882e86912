"""Item validation: every bad record is rejected with its reason, the good ones pass untouched."""
import base64
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from es.secrets import scrub
from pipelines.local_runner import local_runner
from transforms.deadletter import Rejected, dead_letter
from transforms.items import ParseItems, parse_item

GOOD = {"id": "m1", "image_urls": ["https://cdn.example.com/a.jpg", "https://cdn.example.com/b.jpg"],
        "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-02T10:00:00+09:00", "price": 1200, "title": "bag"}


def test_good_record_parses_with_utc_times_and_keeps_payload():
    item = parse_item(json.dumps(GOOD))
    assert item.id == "m1" and item.thumbnail == "https://cdn.example.com/a.jpg"
    assert item.created_at.isoformat() == "2026-11-01T10:00:00+00:00"
    assert item.updated_at.isoformat() == "2026-11-02T01:00:00+00:00"
    assert item.price == 1200.0 and json.loads(item.payload) == GOOD


def test_numeric_id_and_naive_time_are_accepted():
    item = parse_item({**GOOD, "id": 42, "created_at": "2026-11-01T10:00:00"})
    assert item.id == "42" and item.created_at.tzinfo is not None


@pytest.mark.parametrize("payload, reason, record_id", [
    ("{not json", "malformed_json", None),
    ("[1, 2]", "malformed_json", None),
    (json.dumps({**GOOD, "id": ""}), "bad_id", None),
    (json.dumps({k: v for k, v in GOOD.items() if k != "id"}), "missing_id", None),
    (json.dumps({**GOOD, "id": True}), "missing_id", None),
    (json.dumps({**GOOD, "image_urls": []}), "no_images", "m1"),
    (json.dumps({**GOOD, "image_urls": "https://x/a.jpg"}), "no_images", "m1"),
    (json.dumps({**GOOD, "image_urls": ["", "https://x"]}), "bad_field", "m1"),
    (json.dumps({**GOOD, "created_at": "yesterday"}), "bad_date", "m1"),
    (json.dumps({**GOOD, "created_at": 1700000000}), "bad_date", "m1"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "created_at"}), "bad_date", "m1"),
    (json.dumps({**GOOD, "updated_at": "2026-13-01"}), "bad_version", "m1"),
    (json.dumps({**GOOD, "price": "cheap"}), "bad_field", "m1"),
])
def test_bad_records_are_rejected_with_reason(payload, reason, record_id):
    with pytest.raises(Rejected) as info:
        parse_item(payload)
    assert info.value.reason == reason
    assert info.value.id == record_id
    assert str(info.value)  # a message a person can act on


def test_parse_items_routes_every_record_exactly_once():
    good = [json.dumps({**GOOD, "id": f"g{i}"}) for i in range(5)]
    bad = ["{oops", json.dumps({**GOOD, "id": "b1", "image_urls": []}), json.dumps({**GOOD, "id": "b2", "created_at": "x"})]
    with TestPipeline(runner=local_runner()) as p:
        out = p | beam.Create(good + bad) | ParseItems()
        assert_that(out.items | "ids" >> beam.Map(lambda i: i.id), equal_to([f"g{i}" for i in range(5)]), label="good")
        assert_that(out.deadletter | "dl" >> beam.Map(lambda d: (d["id"], d["stage"], d["reason"], d["payload"])),
                    equal_to([(None, "parse", "malformed_json", "{oops"),
                              ("b1", "parse", "no_images", bad[1]),
                              ("b2", "parse", "bad_date", bad[2])]), label="dead")


def test_dead_letter_errors_never_carry_secrets_and_payloads_stay_replayable(monkeypatch):
    monkeypatch.setenv("ES_API_KEY", "s3cr3t-api-key-value")
    monkeypatch.setenv("ES_PASSWORD", "2026")
    payload = '{"id": "m1", "created_at": "2026-01-01T00:00:00Z"}'
    record = dead_letter("index", "es_401", "auth failed with s3cr3t-api-key-value", payload, id="m1")
    assert "s3cr3t-api-key-value" not in record["error"]
    assert record["payload"] == payload  # seller data, kept byte for byte so it can be replayed
    assert scrub("x s3cr3t-api-key-value y") == "x <ES_API_KEY redacted> y"


def test_undecodable_bytes_are_rejected_and_kept_recoverably():
    raw = b'{"id": "m1", "title": "caf\xe9", "image_urls": ["https://x/a.jpg"], "created_at": "2026-01-01"}'
    with pytest.raises(Rejected) as info:
        parse_item(raw)
    assert info.value.reason == "bad_encoding"
    record = dead_letter("parse", info.value.reason, info.value, raw)
    assert record["payload_encoding"] == "base64" and base64.b64decode(record["payload"]) == raw
