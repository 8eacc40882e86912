"""The streaming job end to end: Google's Pub/Sub emulator, the Elasticsearch double (or $ES_URL),
a local image server, the local streaming runner. Then a replay of the dead letters.

Rounds are published one after another, each once the job has accounted for the one
before, so an update "older than the indexed document" arrives after that document
was written. Every published message must end in exactly one outcome.
"""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from pipelines import streaming
from pipelines.local_runner import accounted
from pipelines.replay import replay_subscription
from tests.fixtures.pubsub import publish, pull_all, unique

V = {n: f"2026-01-0{n}T00:00:00.000000Z" for n in range(1, 10)}
V15 = "2026-01-01T12:00:00.000000Z"   # between V[1] and V[2]
RANDOM_BYTES = bytes(range(256)) * 8


def jpeg(color: tuple[int, int, int], noise: int = 0) -> bytes:
    image = Image.new("RGB", (96, 96), color)
    for x in range(0, 96, 8):
        image.putpixel((x, x), (noise, 255 - noise, 128))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def record(item_id: str, version: str | None, url: str, **extra) -> bytes:
    fields = {"id": item_id, "image_urls": [url], "created_at": "2026-01-01T00:00:00Z", **extra}
    if version:
        fields["updated_at"] = version
    return json.dumps(fields).encode()


def expected_outcomes(totals: dict) -> dict:
    return {name: totals.get(name, 0) for name in
            ("messages_read", "superseded", "written", "stale", "deleted", "missing", "deadlettered",
             "image_deadlettered", "score_reused", "scored")}


@pytest.fixture
def streaming_env(pubsub, es_url, image_server):
    raw_topic, (raw_sub,) = pubsub.create(unique("raw-updates"), unique("job-input"))
    dlq_topic, (check_sub, replay_sub) = pubsub.create(unique("dead-letters"), unique("dlq-check"),
                                                       unique("dlq-replay"))
    return {"raw_topic": raw_topic, "raw_sub": raw_sub, "dlq_topic": dlq_topic, "check_sub": check_sub,
            "replay_sub": replay_sub}


def start_job(env, es_url, es_index, image_server):
    # 3 s windows: a burst published one message at a time must fall in one window on a loaded machine too
    _, job = streaming.launch([
        "--input-subscription", env["raw_sub"], "--deadletter-topic", env["dlq_topic"], "--es-url", es_url,
        "--es-index", es_index, "--allow-image-hosts", image_server.host_port, "--aggregate-seconds", "3",
        "--es-max-buffer-seconds", "0.5", "--min-batch-size", "1", "--max-batch-size", "8"])
    assert job is not None
    return job


def wait_accounted(job, published: int, timeout: float = 150.0) -> dict:
    totals = job.wait(stop=lambda t: accounted(t) >= published, max_seconds=timeout, every=0.5)
    assert accounted(totals) == published, f"not every message accounted for: {totals}"
    assert totals["messages_read"] == published
    return totals


def test_stream_end_to_end_then_replay(pubsub, streaming_env, es_client, es_url, es_index, image_server):
    env = streaming_env
    url = {name: image_server.route(f"/{name}.jpg", body=jpeg(color, noise), content_type="image/jpeg")
           for name, color, noise in (("a", (200, 40, 40), 10), ("b", (40, 200, 40), 90),
                                      ("c", (40, 40, 200), 170), ("new", (250, 250, 250), 250))}
    url["broken"] = image_server.route("/broken.jpg", body=RANDOM_BYTES, content_type="image/jpeg")
    url["missing"] = image_server.route("/missing.jpg", body=b"gone", status=404, content_type="text/plain")
    blocked = "http://169.254.169.254/latest/meta-data/"
    malformed, not_utf8 = b'{"id": "m1", "image_urls": [', b'{"id": "n1", "title": "caf\xe9"}'

    round1 = [
        record("g1", V[1], url["a"], price=10),
        record("b1", V[2], url["b"], price=2), record("b1", V[3], url["b"], price=3),   # burst, out of order
        record("b1", V[1], url["b"], price=1),
        record("t1", V[1], url["c"], price=1), record("t1", V[1], url["c"], price=2),   # tie: later publish wins
        record("d1", V[1], url["a"], price=5), record("d1", V[1], url["a"], price=5),   # delivered twice
        record("late", V[5], url["c"], price=50),
        record("x1", V[1], url["b"], price=7),
        record("r1", V[1], url["a"], price=100),
        malformed, not_utf8,
        record("br1", V[1], url["broken"]), record("bl1", V[1], blocked), record("nf1", V[1], url["missing"]),
        record("s1", V[1], url["a"], price=4),
    ]
    round2 = [
        record("late", V[3], url["c"], price=30),                  # older than the indexed V5: stale
        json.dumps({"id": "x1", "deleted": True, "updated_at": V[2]}).encode(),
        record("r1", V[2], url["a"], price=90),                    # price only: the stored score is reused
        record("g1", V[2], url["new"], price=10),                  # image change: scored again
        record("s1", V[2], url["missing"], price=3),               # new image that fails: indexed, score dropped
    ]
    round3 = [record("x1", V15, url["b"], price=8)]                # older than the delete: stale

    job = start_job(env, es_url, es_index, image_server)
    try:
        publish(pubsub, env["raw_topic"], round1)
        first = wait_accounted(job, len(round1))
        scored_at_r1 = es_client.get(index=es_index, id="r1")["_source"]["image_scored_at"]
        publish(pubsub, env["raw_topic"], round2)
        wait_accounted(job, len(round1) + len(round2))
        publish(pubsub, env["raw_topic"], round3)
        totals = wait_accounted(job, len(round1) + len(round2) + len(round3))
        letters = pull_all(pubsub, env["check_sub"], 6)   # while the job runs: it publishes them as it goes
    finally:
        totals = job.cancel()

    # A broken image never freezes a listing: br1, bl1, nf1 and s1's second version are written without a
    # score (their writes are the messages' outcomes) and their images dead-lettered beside them.
    assert first["superseded"] == 4 and first["deadlettered"] == 2 and first["image_deadlettered"] == 3
    assert expected_outcomes(totals) == {
        "messages_read": 23, "superseded": 4, "written": 14, "stale": 2, "deleted": 1, "missing": 0,
        "deadlettered": 2, "image_deadlettered": 4, "score_reused": 2, "scored": 10}  # reused: r1, "late"
    assert totals["indexed_without_score"] == 4
    assert totals["deadletter_aggregator_malformed_json"] == 1
    assert totals["deadletter_aggregator_bad_encoding"] == 1
    assert totals["deadletter_analyzer_not_an_image"] == 1
    assert totals["deadletter_analyzer_blocked_address"] == 1
    assert totals["deadletter_analyzer_http_404"] == 2

    es_client.indices.refresh(index=es_index)
    docs = {doc_id: es_client.get(index=es_index, id=doc_id)["_source"]
            for doc_id in ("g1", "b1", "t1", "d1", "late", "x1", "r1")}
    assert docs["g1"]["updated_at"] == V[2] and docs["g1"]["image_score_image_url"] == url["new"]
    assert docs["b1"]["updated_at"] == V[3] and docs["b1"]["price"] == 3
    assert docs["t1"]["price"] == 2
    assert docs["d1"]["updated_at"] == V[1] and 0.0 <= docs["d1"]["image_score"] <= 1.0
    assert docs["late"]["updated_at"] == V[5] and docs["late"]["price"] == 50
    assert docs["x1"]["deleted"] is True and docs["x1"]["updated_at"] == V[2] and "price" not in docs["x1"]
    assert docs["r1"]["updated_at"] == V[2] and docs["r1"]["price"] == 90
    assert docs["r1"]["image_scored_at"] == scored_at_r1          # reused, not scored again
    for doc_id, version in (("br1", V[1]), ("bl1", V[1]), ("nf1", V[1]), ("s1", V[2])):
        doc = es_client.get(index=es_index, id=doc_id)["_source"]
        assert doc["updated_at"] == version and doc["created_at"] == "2026-01-01T00:00:00Z", doc
        assert not [name for name in doc if name.startswith("image_score")], doc   # no score, old or new
    assert es_client.get(index=es_index, id="s1")["_source"]["price"] == 3

    assert sorted(m.attributes.get("item_id", "-") for m in letters) == ["-", "-", "bl1", "br1", "nf1", "s1"]
    by_reason = {m.attributes["reason"]: m for m in letters if m.attributes.get("item_id") != "s1"}
    assert sorted(by_reason) == ["bad_encoding", "blocked_address", "http_404", "malformed_json", "not_an_image"]
    assert {m.attributes.get("indexed_without_score") for m in letters if m.attributes["stage"] == "analyzer"} \
        == {"true"}
    assert by_reason["malformed_json"].data == malformed
    assert by_reason["bad_encoding"].data == not_utf8
    assert by_reason["not_an_image"].data == round1[13]
    assert by_reason["blocked_address"].data == round1[14]
    for reason, stage, item_id in (("malformed_json", "aggregator", None), ("bad_encoding", "aggregator", None),
                                   ("not_an_image", "analyzer", "br1"), ("blocked_address", "analyzer", "bl1"),
                                   ("http_404", "analyzer", "nf1")):
        attributes = dict(by_reason[reason].attributes)
        assert attributes["stage"] == stage and attributes.get("item_id") == item_id
        assert attributes["message_id"].isdigit() and attributes["publish_time"].endswith("Z")
        assert attributes["error"]

    # The operator fixes the broken image, then replays only that reason: the score lands on the document
    # indexed without it (same version: the guard lets a score complete its version), written, not stale.
    image_server.route("/broken.jpg", body=jpeg((120, 120, 20), 60), content_type="image/jpeg")
    replayed = replay_subscription(env["replay_sub"], env["raw_topic"], reasons=["not_an_image"], stages=[],
                                   limit=None, dry_run=False, idle_seconds=3)
    assert replayed == {"replayed": 1, "skipped": 5, "failed": 0}
    job = start_job(env, es_url, es_index, image_server)
    try:
        after = wait_accounted(job, 1)
    finally:
        after = job.cancel()
    assert after["written"] == 1 and after["scored"] == 1 and after.get("stale", 0) == 0
    assert after.get("deadlettered", 0) == 0 and after.get("image_deadlettered", 0) == 0
    es_client.indices.refresh(index=es_index)
    br1 = es_client.get(index=es_index, id="br1")["_source"]
    assert br1["updated_at"] == V[1] and br1["image_score_image_url"] == url["broken"]
    assert 0.0 <= br1["image_score"] <= 1.0 and br1["image_score_version"] == V[1]
    # the other five letters are still on the replay subscription, for later
    left = pull_all(pubsub, env["replay_sub"], 5, timeout_s=20)
    assert sorted(m.attributes["reason"] for m in left) == ["bad_encoding", "blocked_address", "http_404",
                                                            "http_404", "malformed_json"]


def test_stages_run_apart_between_topics(pubsub, es_client, es_url, es_index, image_server):
    """--stage aggregator | analyzer | feeder as three jobs, with topics between them, as in the paper's system."""
    topics = {}
    for name in ("raw", "newest", "documents"):
        topics[name], (topics[f"{name}_sub"],) = pubsub.create(unique(name), unique(f"{name}-sub"))
    topics["dead"], (check_sub,) = pubsub.create(unique("dead"), unique("check"))
    url = image_server.route("/s.jpg", body=jpeg((10, 120, 220), 30), content_type="image/jpeg")
    common = ["--deadletter-topic", topics["dead"], "--es-url", es_url, "--es-index", es_index,
              "--allow-image-hosts", image_server.host_port, "--aggregate-seconds", "0.5",
              "--es-max-buffer-seconds", "0.5", "--min-batch-size", "1"]
    jobs = []
    try:
        for stage, source, target in (("aggregator", "raw", "newest"), ("analyzer", "newest", "documents"),
                                      ("feeder", "documents", None)):
            argv = ["--stage", stage, "--input-subscription", topics[f"{source}_sub"], *common]
            if target:
                argv += ["--output-topic", topics[target]]
            jobs.append(streaming.launch(argv)[1])
        publish(pubsub, topics["raw"], [record("s1", V[1], url, price=1), record("s1", V[2], url, price=2),
                                        b"not json", record("s2", V[1], "http://10.1.2.3/x.jpg")])
        publish(pubsub, topics["documents"], [b'{"document": "not an object"}'])
        totals = jobs[2].wait(stop=lambda t: accounted(t) >= 3, max_seconds=120, every=0.5)
        letters = pull_all(pubsub, check_sub, 3)
        upstream = [job.totals() for job in jobs[:2]]
    finally:
        for job in jobs:
            job.cancel()
    # s1's newest version, and s2 without a score (its image is refused; the analyzer indexes it anyway)
    assert totals["written"] == 2 and totals["deadletter_feeder_malformed_document"] == 1
    assert upstream[0]["messages_read"] == 4 and upstream[0]["superseded"] == 1
    assert upstream[1]["messages_read"] == 2 and upstream[1]["scored"] == 1
    es_client.indices.refresh(index=es_index)
    doc = es_client.get(index=es_index, id="s1")["_source"]
    assert doc["updated_at"] == V[2] and doc["price"] == 2 and doc["image_score_image_url"] == url
    unscored = es_client.get(index=es_index, id="s2")["_source"]
    assert unscored["updated_at"] == V[1] and "image_score" not in unscored
    assert sorted((m.attributes["stage"], m.attributes["reason"]) for m in letters) == [
        ("aggregator", "malformed_json"), ("analyzer", "blocked_address"), ("feeder", "malformed_document")]
    by_stage = {m.attributes["stage"]: m for m in letters}
    assert by_stage["analyzer"].data == record("s2", V[1], "http://10.1.2.3/x.jpg")   # the original bytes
    assert by_stage["analyzer"].attributes["indexed_without_score"] == "true"
    assert by_stage["feeder"].data == b'{"document": "not an object"}'

