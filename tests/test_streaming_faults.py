"""The streaming job under faults: Triton stopped mid-stream and restarted, Elasticsearch 429 storms and 503s.

Real services: the Pub/Sub emulator, a tritonserver of our own (so the test can stop
and restart it on the same ports), the Elasticsearch double with injected faults.
Nothing may be lost: every message is written; when the model stays down past
``--model-unavailable-seconds`` the item is written without a score and its image
dead-lettered as ``model_unavailable``, to be replayed.
"""
from __future__ import annotations

import time

import pytest

from pipelines import streaming
from scoring.export_triton import export_triton
from scoring.triton_server import distribution, start_triton, stop_triton
from tests.fixtures.pubsub import publish, pull_all, unique
from tests.fixtures.tools import missing_tool
from tests.test_streaming_e2e import V, jpeg, record, wait_accounted

BUDGET_S = 40  # longer than a restart of tritonserver on a loaded 2-core machine


@pytest.fixture
def own_triton(tmp_path):
    if distribution() is None:
        missing_tool("tritonserver", "pip install 'imagescore[triton]'")
    repository = str(tmp_path / "models")
    export_triton("handcrafted", repository, name="image_score", backend="python")
    process, grpc_url, http_url, _ = start_triton(repository, str(tmp_path), ("image_score",))
    state = {"process": process, "grpc": grpc_url, "http": http_url, "repository": repository, "dir": str(tmp_path)}
    try:
        yield state
    finally:
        stop_triton(state["process"])


def restart(state) -> None:
    grpc_port = int(state["grpc"].rsplit(":", 1)[1])
    http_port = int(state["http"].rsplit(":", 1)[1])
    state["process"], _, _, _ = start_triton(state["repository"], state["dir"], ("image_score",),
                                             grpc_port=grpc_port, http_port=http_port)


def test_triton_restart_and_es_faults_lose_nothing(pubsub, es_double, es_url, es_index, es_client, image_server,
                                                    own_triton):
    raw_topic, (raw_sub,) = pubsub.create(unique("raw"), unique("job"))
    dlq_topic, (check_sub,) = pubsub.create(unique("dlq"), unique("check"))
    url = image_server.route("/p.jpg", body=jpeg((90, 160, 30), 40), content_type="image/jpeg")
    es_double.seed(es_index, {f"{p}{i}": {"created_at": "2026-01-01T00:00:00Z"} for p in "abc" for i in range(6)})
    _, job = streaming.launch([
        "--input-subscription", raw_sub, "--deadletter-topic", dlq_topic, "--es-url", es_url,
        "--es-index", es_index, "--allow-image-hosts", image_server.host_port, "--aggregate-seconds", "0.5",
        "--es-max-buffer-seconds", "0.5", "--model", f"triton://{own_triton['grpc']}/image_score",
        "--model-unavailable-seconds", str(BUDGET_S), "--min-batch-size", "1", "--max-batch-size", "4"])
    try:
        es_double.fail_bulk_items(429, times=4)   # a storm of per-item rejections, within the writer's 5 retries
        es_double.fail_requests(503, times=2, path=r"/_bulk$")       # and whole requests refused
        publish(pubsub, raw_topic, [record(f"a{i}", V[1], url) for i in range(6)])
        wait_accounted(job, 6)

        stop_triton(own_triton["process"])                           # Triton goes away mid-stream ...
        publish(pubsub, raw_topic, [record(f"b{i}", V[1], url) for i in range(6)])
        time.sleep(4)
        restart(own_triton)                                          # ... and is back within the budget
        during = wait_accounted(job, 12)
        assert during["written"] == 12 and during.get("deadlettered", 0) == 0, sorted(during.items())

        stop_triton(own_triton["process"])                           # down for longer than the budget
        publish(pubsub, raw_topic, [record(f"c{i}", V[1], url) for i in range(3)])
        totals = wait_accounted(job, 15, timeout=BUDGET_S * 4)
        letters = pull_all(pubsub, check_sub, 3)   # while the job runs: it publishes dead letters as it goes
    finally:
        totals = job.cancel()
    assert totals["written"] == 15 and totals.get("missing", 0) == 0
    assert totals["deadletter_analyzer_model_unavailable"] == 3 and totals.get("deadlettered", 0) == 0
    assert totals["image_deadlettered"] == 3 and totals["indexed_without_score"] == 3
    assert totals["es_retried"] > 0
    assert sorted(m.attributes["item_id"] for m in letters) == ["c0", "c1", "c2"]
    assert {m.attributes["reason"] for m in letters} == {"model_unavailable"}
    assert {m.data for m in letters} == {record(f"c{i}", V[1], url) for i in range(3)}
    es_client.indices.refresh(index=es_index)
    for i in range(6):
        for prefix in "ab":
            assert es_client.get(index=es_index, id=f"{prefix}{i}")["_source"]["image_score_model"]
    for i in range(3):   # the fields are in search; the score comes with the replay
        source = es_client.get(index=es_index, id=f"c{i}")["_source"]
        assert source["updated_at"] == V[1] and "image_score" not in source
