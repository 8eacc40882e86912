"""The stale-update guard: one table of cases, run through the real writer and client.

On the ES double the stored script runs as its Python rendering (tests/es_double/scripts.py);
with ``$ES_URL`` set the same table runs the real Painless script on a real cluster.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from es.bulk_writer import WriteToElasticsearch, update_action, write_batch
from es.client import EsConfig
from es.guard import (
    DOCUMENT,
    GUARD_SCRIPT_ID,
    GUARD_SCRIPT_SOURCE,
    SCORE,
    BadRecord,
    canonical_version,
    ensure_guard_script,
    guard_params,
    guard_script,
)
from es.mapping import ensure_score_mapping
from pipelines.local_runner import local_runner
from tests.es_double import scripts as es_double_script

FAST = {"initial_backoff": 0.01, "max_backoff": 0.05, "max_retry_time": 10.0}
V1, V2, V3, V4 = ("2026-11-20T10:00:00Z", "2026-11-20T11:00:00+01:00", "2026-11-20T10:30:00.5Z",
                  "2026-11-21T09:00:00+09:00")  # V2 is 10:00 UTC, the same instant as V1
OTHER_INDEXER = {"title": "from the item indexer", "created_at": "2026-11-01T00:00:00Z"}


def c(version: str) -> str:
    return canonical_version(version)


def item(version: str, title: str = "bag", score: float = 0.5, **extra) -> dict:
    """A processed item, as streaming's analyzer hands it to the feeder (document mode)."""
    return {"id": "it", "updated_at": version, "title": title, "created_at": "2026-11-01T00:00:00Z",
            "image_score": score, "image_score_model": "m1", "image_scored_at": "2026-11-21T00:00:00Z",
            "image_score_image_url": "http://img.test/it.jpg", **extra}


def stored_item(version: str, title: str = "bag", score: float = 0.5, score_version: str | None = None) -> dict:
    source = {k: v for k, v in item(version, title, score).items() if k != "id"}
    return {**source, "updated_at": c(version), "image_score_rank": max(score, 1e-4),
            "image_score_version": c(score_version or version)}


def unscored(version: str, title: str = "bag") -> dict:
    """A processed item whose image failed: indexed without the score fields (document mode)."""
    return {"id": "it", "updated_at": version, "title": title, "created_at": "2026-11-01T00:00:00Z"}


def stored_unscored(version: str, title: str = "bag") -> dict:
    return {**{k: v for k, v in unscored(version, title).items() if k != "id"}, "updated_at": c(version)}


def tombstone(version: str) -> dict:
    return {"id": "it", "updated_at": version, "deleted": True}


def score(version: str, value: float = 0.8, model: str = "m2") -> dict:
    """A score record, as the backfill writes it (score mode)."""
    return {"id": "it", "updated_at": version, "image_score": value, "image_score_model": model,
            "image_scored_at": "2026-11-22T00:00:00Z", "image_score_image_url": "http://img.test/it.jpg"}


def stored_score(version: str, value: float = 0.8, model: str = "m2") -> dict:
    return {**{k: v for k, v in score(version, value, model).items() if k not in ("id", "updated_at")},
            "image_score_rank": value, "image_score_version": c(version)}


@dataclass
class Case:
    name: str
    before: list[tuple[str, dict]]  # writes that went first, through the guard
    write: tuple[str, dict]
    outcome: str
    doc: dict | None  # the document afterwards; None: absent
    seed: dict | None = None  # a document another indexer wrote first
    before_outcomes: list[str] = field(default_factory=list)


CASES = [
    Case("newer document replaces", [(DOCUMENT, item(V1, "old"))], (DOCUMENT, item(V3, "new", 0.6)),
         "written", stored_item(V3, "new", 0.6)),
    Case("older document is stale", [(DOCUMENT, item(V3, "new"))], (DOCUMENT, item(V1, "old")),
         "stale", stored_item(V3, "new")),
    Case("equal version is stale", [(DOCUMENT, item(V1, "first"))], (DOCUMENT, item(V2, "second")),
         "stale", stored_item(V1, "first")),
    Case("missing document is created", [], (DOCUMENT, item(V1)), "written", stored_item(V1)),
    Case("score onto a missing document is a skip", [], (SCORE, score(V1)), "missing", None),
    Case("delete leaves a tombstone", [(DOCUMENT, item(V1))], (DOCUMENT, tombstone(V3)), "deleted",
         {"updated_at": c(V3), "deleted": True}),
    Case("delete of an unknown item leaves a tombstone", [], (DOCUMENT, tombstone(V1)), "deleted",
         {"updated_at": c(V1), "deleted": True}),
    Case("tombstone then stale update", [(DOCUMENT, item(V1)), (DOCUMENT, tombstone(V4))],
         (DOCUMENT, item(V3, "late")), "stale", {"updated_at": c(V4), "deleted": True}),
    Case("tombstone then newer update relists", [(DOCUMENT, tombstone(V3))], (DOCUMENT, item(V4, "relisted")),
         "written", stored_item(V4, "relisted")),
    Case("stale delete after a newer update", [(DOCUMENT, item(V4))], (DOCUMENT, tombstone(V3)), "stale",
         stored_item(V4)),
    Case("score onto another indexer's document", [], (SCORE, score(V1)), "written",
         {**OTHER_INDEXER, **stored_score(V1)}, seed=OTHER_INDEXER),
    Case("newer score replaces an older one", [(SCORE, score(V1, 0.1))], (SCORE, score(V3, 0.9)), "written",
         {**OTHER_INDEXER, **stored_score(V3, 0.9)}, seed=OTHER_INDEXER),
    Case("older score is stale", [(SCORE, score(V3, 0.9))], (SCORE, score(V1, 0.1)), "stale",
         {**OTHER_INDEXER, **stored_score(V3, 0.9)}, seed=OTHER_INDEXER),
    Case("score mode onto a newer streamed document", [(DOCUMENT, item(V3, score=0.4))],
         (SCORE, score(V1, 0.9, "m9")), "stale", stored_item(V3, score=0.4)),
    Case("score mode onto an older streamed document", [(DOCUMENT, item(V1, score=0.4))],
         (SCORE, score(V3, 0.9, "m9")), "written", {**stored_item(V1, score=0.4), **stored_score(V3, 0.9, "m9")}),
    Case("score never lands on a tombstone", [(DOCUMENT, tombstone(V1))], (SCORE, score(V4)), "stale",
         {"updated_at": c(V1), "deleted": True}),
    Case("a score of zero is ranked at the floor", [], (SCORE, score(V1, 0.0)), "written",
         {**OTHER_INDEXER, **stored_score(V1, 0.0), "image_score_rank": 1e-4}, seed=OTHER_INDEXER),
    Case("reused score keeps its version", [], (DOCUMENT, {**item(V3), "image_score_version": V1}), "written",
         stored_item(V3, score_version=V1)),
    Case("replay of a document", [(DOCUMENT, item(V3))], (DOCUMENT, item(V3)), "stale", stored_item(V3)),
    Case("replay of a tombstone", [(DOCUMENT, tombstone(V3))], (DOCUMENT, tombstone(V3)), "stale",
         {"updated_at": c(V3), "deleted": True}),
    # A delete wins a tie (V2 is V1's instant written another way): update then delete deletes,
    # delete then delete and delete then update leave the tombstone.
    Case("delete with the live document's version deletes it", [(DOCUMENT, item(V1))], (DOCUMENT, tombstone(V2)),
         "deleted", {"updated_at": c(V2), "deleted": True}),
    Case("delete onto a tombstone of the same version is stale", [(DOCUMENT, tombstone(V1))],
         (DOCUMENT, tombstone(V2)), "stale", {"updated_at": c(V1), "deleted": True}),
    Case("update with the tombstone's version stays deleted", [(DOCUMENT, item(V1)), (DOCUMENT, tombstone(V1))],
         (DOCUMENT, item(V2, "relisted?")), "stale", {"updated_at": c(V1), "deleted": True}),
    Case("score with a tombstone's version is stale", [(DOCUMENT, tombstone(V1))], (SCORE, score(V2)), "stale",
         {"updated_at": c(V1), "deleted": True}),
    # A score completes its version: the item was indexed without its score (its image failed),
    # and the replayed dead letter brings the score for that same version.
    Case("a scored document completes its unscored version", [(DOCUMENT, unscored(V1))], (DOCUMENT, item(V2)),
         "written", stored_item(V2)),
    Case("an unscored document onto its scored version is stale", [(DOCUMENT, item(V1))],
         (DOCUMENT, unscored(V2, "other")), "stale", stored_item(V1)),
    Case("an unscored replay onto its unscored version is stale", [(DOCUMENT, unscored(V1))],
         (DOCUMENT, unscored(V2, "other")), "stale", stored_unscored(V1)),
    Case("a scored document onto an older version replaces it", [(DOCUMENT, unscored(V1))],
         (DOCUMENT, item(V3, "new")), "written", stored_item(V3, "new")),
    Case("a newer unscored document drops the old image's score", [(DOCUMENT, item(V1))],
         (DOCUMENT, unscored(V3, "new")), "written", stored_unscored(V3, "new")),
    Case("replay of a score", [(SCORE, score(V3))], (SCORE, score(V3)), "stale",
         {**OTHER_INDEXER, **stored_score(V3)}, seed=OTHER_INDEXER),
]


@pytest.fixture
def guarded_index(es_client, es_index):
    """What a job does at start-up: map the fields (``updated_at`` too: it owns documents), store the guard."""
    ensure_score_mapping(es_client, es_index, owns_documents=True)
    ensure_guard_script(es_client)
    return es_index


def _write(es_config, index, mode, records):
    return write_batch(es_config, index, records, mode=mode, **FAST)


def _outcome(out: dict) -> str:
    ((tag, values),) = [(tag, values) for tag, values in out.items() if values]
    assert len(values) == 1, out
    return tag


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_guard_case(case, es_config, es_client, guarded_index):
    if case.seed is not None:
        es_client.index(index=guarded_index, id="it", document=case.seed)
    for mode, record in case.before:
        out = _write(es_config, guarded_index, mode, [record])
        assert not out["failed"] and not out["missing"], out
    out = _write(es_config, guarded_index, *[case.write[0], [case.write[1]]])
    assert _outcome(out) == case.outcome
    found = es_client.options(ignore_status=404).get(index=guarded_index, id="it")
    assert (found["_source"] if found["found"] else None) == case.doc


def test_a_stale_write_leaves_the_document_version_alone(es_config, es_client, guarded_index):
    _write(es_config, guarded_index, DOCUMENT, [item(V3)])
    before = es_client.get(index=guarded_index, id="it")
    out = _write(es_config, guarded_index, DOCUMENT, [item(V3), item(V1)])
    assert out["stale"] == ["it", "it"]
    after = es_client.get(index=guarded_index, id="it")
    assert (after["_version"], after["_seq_no"], after["_source"]) == (
        before["_version"], before["_seq_no"], before["_source"])


def test_out_of_order_in_one_bundle_keeps_the_newest(es_config, es_client, guarded_index):
    out = _write(es_config, guarded_index, DOCUMENT, [item(V3, "mid"), item(V4, "new"), item(V1, "old"),
                                                      tombstone(V2), item(V4, "new")])
    assert out["written"] == ["it", "it"] and out["stale"] == ["it", "it", "it"]
    assert es_client.get(index=guarded_index, id="it")["_source"] == stored_item(V4, "new")


def test_the_pipeline_tags_and_counts_every_outcome(es_config, es_client, guarded_index):
    es_client.index(index=guarded_index, id="old", document={"updated_at": c(V4), "title": "newer already"},
                    refresh=True)
    records = [{**item(V1), "id": "new"}, {**item(V1), "id": "old"}, {**tombstone(V1), "id": "gone"},
               {**item(V1), "id": "bad", "updated_at": "yesterday"}]
    pipeline = BeamTestPipeline(runner=local_runner())
    outputs = pipeline | beam.Create(records) | WriteToElasticsearch(es_config, guarded_index, mode=DOCUMENT, **FAST)
    assert_that(outputs.written, equal_to(["new"]), label="written")
    assert_that(outputs.stale, equal_to(["old"]), label="stale")
    assert_that(outputs.deleted, equal_to(["gone"]), label="deleted")
    assert_that(outputs.missing, equal_to([]), label="missing")
    assert_that(outputs.failed | beam.Map(lambda f: (f[0]["id"], f[1])), equal_to([("bad", "es_bad_record")]),
                label="failed")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query(MetricsFilter().with_namespace("imagescore"))["counters"]}
    assert {k: counters.get(f"es_{k}", 0) for k in ("written", "stale", "deleted", "missing", "failed")} == {
        "written": 1, "stale": 1, "deleted": 1, "missing": 0, "failed": 1}


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("mode,record,message", [
    (DOCUMENT, {k: v for k, v in item(V1).items() if k != "updated_at"}, "has no 'updated_at'"),
    (DOCUMENT, {**item(V1), "updated_at": None}, "has no 'updated_at'"),
    (DOCUMENT, {**item(V1), "updated_at": "last tuesday"}, "'last tuesday' is not an ISO 8601"),
    (DOCUMENT, {**item(V1), "updated_at": 1764000000000}, "must be an ISO 8601 string"),
    (DOCUMENT, {**item(V1), "image_score": float("nan")}, "image_score must be a finite number"),
    (DOCUMENT, {**item(V1), "image_score_version": "soon"}, "image_score_version 'soon' is not an ISO 8601"),
    (DOCUMENT, {**item(V1), "deleted": "yes"}, "deleted must be true or false"),
    (DOCUMENT, {**item(V1), "price": float("inf")}, "cannot be sent as JSON"),
    (SCORE, {k: v for k, v in score(V1).items() if k != "updated_at"}, "has no 'updated_at'"),
    (SCORE, {**score(V1), "updated_at": "2026-13-01"}, "is not an ISO 8601"),
    (SCORE, {**score(V1), "image_score": "0.9"}, "image_score must be a finite number"),
    (SCORE, {k: v for k, v in score(V1).items() if k != "image_score_image_url"}, "missing ['image_score_image_url']"),
    (SCORE, {**score(V1), "title": "not a score field"}, "unexpected ['title']"),
])
def test_a_bad_record_is_a_dead_letter_and_nothing_else_is_lost(mode, record, message, es_config, es_client,
                                                                guarded_index):
    if mode == SCORE:
        for doc_id in ("before", "after"):
            es_client.index(index=guarded_index, id=doc_id, document=OTHER_INDEXER)
    good = [{**(item(V1) if mode == DOCUMENT else score(V1)), "id": doc_id} for doc_id in ("before", "after")]
    out = _write(es_config, guarded_index, mode, [good[0], record, good[1]])
    assert sorted(out["written"]) == ["after", "before"]
    ((failed_record, reason, error),) = out["failed"]
    assert failed_record == record and reason == "es_bad_record"
    assert message in error and "it" in error


@pytest.mark.parametrize("mode,stored", [
    (DOCUMENT, {"updated_at": 1764000000000}),  # an epoch number another tool wrote
    (DOCUMENT, {"updated_at": "2026-11-21T19:00:00+09:00"}),  # an offset: as a string it would sort wrongly
    (DOCUMENT, {"updated_at": "2026-11-20T10:00:00Z"}),  # no fraction: ties would sort wrongly
    (SCORE, {"image_score_version": "2026-11-21T19:00:00+09:00"}),
])
def test_a_stored_version_in_another_form_fails_loudly(mode, stored, es_config, es_client, guarded_index):
    es_client.index(index=guarded_index, id="it", document={**stored, "title": "foreign"})
    es_client.index(index=guarded_index, id="fine", document=OTHER_INDEXER)
    record = item(V1) if mode == DOCUMENT else score(V1)
    out = _write(es_config, guarded_index, mode, [record, {**record, "id": "fine"}])
    assert out["written"] == ["fine"]
    ((failed, reason, error),) = out["failed"]
    assert failed == record and reason == "es_script_error" and "failed to execute script" in error
    assert "is not in the canonical form" in error  # the cause, two levels down
    assert es_client.get(index=guarded_index, id="it")["_source"] == {**stored, "title": "foreign"}


def test_a_tie_with_no_fields_to_read_fails_that_document_only(es_config, es_client, guarded_index):
    """At a tie the script reads ``params.fields.deleted``; without ``fields`` that is a script error."""
    _write(es_config, guarded_index, DOCUMENT, [item(V3)])

    def update(doc_id: str, params: dict) -> list[dict]:
        return [{"update": {"_index": guarded_index, "_id": doc_id}},
                {"script": guard_script(params), "scripted_upsert": True, "upsert": {}}]
    _, params = guard_params(item(V3), DOCUMENT)
    _, other = guard_params({**item(V3), "id": "other"}, DOCUMENT)
    broken = {k: v for k, v in params.items() if k != "fields"}
    failed, written = (i["update"] for i in es_client.bulk(operations=update("it", broken) + update("other", other))
                       ["items"])
    assert failed["status"] == 400 and failed["error"]["reason"] == "failed to execute script"
    assert written["result"] == "created"
    assert es_client.get(index=guarded_index, id="it")["_source"] == stored_item(V3)


def test_guard_params_refuse_bad_modes_and_ids():
    with pytest.raises(ValueError, match="write mode"):
        guard_params(item(V1), "upsert")
    with pytest.raises(BadRecord, match="no string 'id'"):
        guard_params({"updated_at": V1}, DOCUMENT)
    with pytest.raises(ValueError, match="write mode"):
        WriteToElasticsearch(EsConfig(), "items", mode="partial")


def test_canonical_version_is_utc_with_microseconds_and_sorts_in_time_order():
    assert canonical_version("2026-11-20T19:00:00+09:00") == "2026-11-20T10:00:00.000000Z"
    assert canonical_version("2026-11-20T10:00:00") == "2026-11-20T10:00:00.000000Z"  # naive: UTC
    versions = ["2026-11-20T10:00:00.000001Z", "2026-11-20T09:59:59.999999+00:01", "2026-11-20T11:00:00+02:00"]
    assert sorted(map(canonical_version, versions)) == [canonical_version(v) for v in (versions[2], versions[1],
                                                                                       versions[0])]


def test_update_actions_are_scripted_and_only_documents_upsert():
    score_action = update_action(score(V1), "items", SCORE)
    assert score_action["script"]["id"] == GUARD_SCRIPT_ID and "upsert" not in score_action
    assert score_action["script"]["params"] == {"score": True, "version": c(V1), "fields": stored_score(V1)}
    doc_action = update_action(item(V1), "items", DOCUMENT)
    assert doc_action["scripted_upsert"] is True and doc_action["upsert"] == {}
    assert doc_action["script"]["params"] == {"score": False, "version": c(V1), "fields": stored_item(V1)}


# ---------------------------------------------------------------------------- the double's stored scripts


def test_ensure_guard_script_is_idempotent_and_stores_the_exact_source(es_client):
    assert ensure_guard_script(es_client) == ensure_guard_script(es_client) == GUARD_SCRIPT_ID
    stored = es_client.get_script(id=GUARD_SCRIPT_ID)
    assert stored["found"] is True and stored["script"]["source"] == GUARD_SCRIPT_SOURCE


def test_the_double_knows_exactly_the_guard_script():
    assert es_double_script.source_sha256(GUARD_SCRIPT_SOURCE) == es_double_script.GUARD_SCRIPT_SHA256


def test_the_double_refuses_another_script_source_naming_it(es_double, es_client):
    with pytest.raises(Exception) as caught:
        es_client.put_script(id="my-script", script={"lang": "painless", "source": GUARD_SCRIPT_SOURCE + " "})
    assert caught.value.meta.status == 400 and "[my-script]" in str(caught.value)
    assert es_client.options(ignore_status=404).get_script(id="my-script")["found"] is False


def test_the_double_deletes_scripts_and_a_missing_one_fails_each_document(es_double, es_config, es_client,
                                                                          guarded_index):
    es_client.delete_script(id=GUARD_SCRIPT_ID)
    with pytest.raises(Exception) as caught:
        es_client.delete_script(id=GUARD_SCRIPT_ID)
    assert caught.value.meta.status == 404
    out = _write(es_config, guarded_index, DOCUMENT, [item(V3)])
    assert [(f[1], "unable to find script" in f[2]) for f in out["failed"]] == [("es_script_missing", True)]


@pytest.mark.parametrize("body,message", [
    ({"script": {"source": "ctx.op = 'noop'"}}, "no inline scripts"),
    ({"script": {"id": GUARD_SCRIPT_ID, "lang": "painless"}}, "lang cannot be specified"),
    ({"script": {"id": GUARD_SCRIPT_ID}, "doc": {"a": 1}}, "both script and doc"),
    ({"script": {"id": GUARD_SCRIPT_ID}, "detect_noop": True}, "unknown field [detect_noop]"),
    ({"script": {"id": GUARD_SCRIPT_ID, "parms": {}}}, "unknown field [parms]"),
    ({"script": {"id": GUARD_SCRIPT_ID}, "scripted_upsert": True}, "needs an [upsert]"),
    ({"upsert": {}}, "script or doc is missing"),
])
def test_the_double_refuses_update_bodies_outside_its_subset(es_double, es_client, guarded_index, body, message):
    with pytest.raises(Exception) as caught:
        es_client.bulk(operations=[{"update": {"_index": guarded_index, "_id": "x"}}, body])
    assert caught.value.meta.status == 400 and message in str(caught.value)


def test_the_backfill_query_never_reads_a_tombstone(es_config, es_client, guarded_index):
    from es.source import backfill_query
    _write(es_config, guarded_index, DOCUMENT, [{**item(V1), "id": "live"}, {**tombstone(V3), "id": "gone"}])
    es_client.indices.refresh(index=guarded_index)
    hits = es_client.search(index=guarded_index, query=backfill_query("2026-01-01T00:00:00Z", "m-new"))["hits"]
    assert [h["_id"] for h in hits["hits"]] == ["live"]  # a tombstone has no created_at left to match


def test_the_double_refuses_unknown_script_parameters(es_double, es_client):
    with pytest.raises(Exception) as caught:
        es_client.perform_request("GET", f"/_scripts/{GUARD_SCRIPT_ID}", params={"flat": "true"},
                                  headers={"accept": "application/json"})
    assert caught.value.meta.status == 400 and "[flat]" in str(caught.value)
