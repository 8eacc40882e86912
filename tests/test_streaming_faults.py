"""The streaming job under faults: Triton gone mid-stream and back, Elasticsearch 429 storms and 503s.

Real services: the Pub/Sub emulator, the session's tritonserver behind a loopback
forwarder (taking the forwarder down refuses connections on Triton's address, as a
stopped or restarting server does; bringing it up serves again on the same address,
as a restarted one does), the Elasticsearch double with injected faults.
Nothing may be lost: every message is written; when the model stays down past
``--model-unavailable-seconds`` the item is written without a score and its image
dead-lettered as ``model_unavailable``, to be replayed.
"""
from __future__ import annotations

import dataclasses
import threading

import pytest

from pipelines import streaming
from tests.fixtures.forwarder import TcpForwarder
from tests.fixtures.pubsub import publish, pull_all, unique
from tests.test_streaming_e2e import V, jpeg, record, wait_accounted
from transforms.triton_handler import TritonModelHandler, grpc_code

# A few seconds: a batch is retried 0.5, 1.5 and 3.5 s after its first failure, then dead-lettered; gRPC
# reconnects to a server that is back about 1 s (then 2.6 s) after its refused connect. Each item past the
# budget costs 3.5 s, one after another.
BUDGET_S = 5


@pytest.fixture
def triton(triton_server):
    """The shared tritonserver, reached through a forwarder the test can take down and bring back."""
    forwarder = TcpForwarder(triton_server.grpc_url).start()
    try:
        yield forwarder
    finally:
        forwarder.stop()


@dataclasses.dataclass
class Refusals:
    """The gRPC code of every Triton request that failed, as it fails; ``seen`` is set at each one."""

    codes: list[str | None] = dataclasses.field(default_factory=list)
    seen: threading.Event = dataclasses.field(default_factory=threading.Event)


@pytest.fixture
def refusals(monkeypatch) -> Refusals:
    """Every failed Triton request of the job (the local runner scores in this process): the readiness
    signal that the job met the outage."""
    record = Refusals()
    infer = TritonModelHandler._infer

    def spied(self, model, part):
        try:
            return infer(self, model, part)
        except Exception as error:
            record.codes.append(grpc_code(error))
            record.seen.set()
            raise

    monkeypatch.setattr(TritonModelHandler, "_infer", spied)
    return record


def test_triton_outage_and_es_faults_lose_nothing(pubsub, es_double, es_url, es_index, es_client, image_server,
                                                  triton, refusals):
    raw_topic, (raw_sub,) = pubsub.create(unique("raw"), unique("job"))
    dlq_topic, (check_sub,) = pubsub.create(unique("dlq"), unique("check"))
    url = image_server.route("/p.jpg", body=jpeg((90, 160, 30), 40), content_type="image/jpeg")
    es_double.seed(es_index, {f"{p}{i}": {"created_at": "2026-01-01T00:00:00Z"} for p in "abc" for i in range(6)})
    _, job = streaming.launch([
        "--input-subscription", raw_sub, "--deadletter-topic", dlq_topic, "--es-url", es_url,
        "--es-index", es_index, "--allow-image-hosts", image_server.host_port, "--aggregate-seconds", "0.5",
        "--es-max-buffer-seconds", "0.5", "--model", f"triton://{triton.url}/image_score",
        "--model-unavailable-seconds", str(BUDGET_S), "--min-batch-size", "1", "--max-batch-size", "4"])
    try:
        es_double.fail_bulk_items(429, times=4)   # a storm of per-item rejections, within the writer's 5 retries
        es_double.fail_requests(503, times=2, path=r"/_bulk$")       # and whole requests refused
        publish(pubsub, raw_topic, [record(f"a{i}", V[1], url) for i in range(6)])
        wait_accounted(job, 6)
        assert refusals.codes == []

        triton.stop()                                                # Triton goes away mid-stream ...
        publish(pubsub, raw_topic, [record(f"b{i}", V[1], url) for i in range(6)])
        assert refusals.seen.wait(60), "the job never sent a request while Triton was down"
        triton.start()                                               # ... and is back within the budget
        during = wait_accounted(job, 12)
        assert during["written"] == 12 and during.get("deadlettered", 0) == 0, sorted(during.items())
        assert set(refusals.codes) == {"UNAVAILABLE"}, refusals.codes   # it was down, and gRPC reconnected on the same address

        triton.stop()                                                # down for longer than the budget
        publish(pubsub, raw_topic, [record(f"c{i}", V[1], url) for i in range(3)])
        totals = wait_accounted(job, 15, timeout=60)
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
