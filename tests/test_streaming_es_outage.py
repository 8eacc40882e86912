"""The whole streaming job through Elasticsearch outages: waited out within the budget, dead-lettered past it.

Real services: the Pub/Sub emulator, the local streaming runner, the Elasticsearch double
behind a loopback TCP forwarder that refuses connections (a cluster down or a cut network).
The budget and the outages are seconds here, not the 600 s default; ``bench/bench_stream.py``
measures a long outage. Nothing may be lost: every published message is written, or
dead-lettered ``es_unavailable`` with its original bytes and written when that letter is replayed.
"""
from __future__ import annotations

import logging

from pipelines import streaming
from pipelines.local_runner import accounted
from pipelines.replay import replay_subscription
from tests.fixtures.pubsub import publish, pull_all, unique
from tests.test_es_outage import STARTED, outage_lines, restore_after_the_outage_began
from tests.test_streaming_e2e import V, jpeg, record, wait_accounted

BUDGET_S = 8      # --es-unavailable-seconds
SHORT_S = 4       # an outage the budget covers


def test_es_outages_mid_backlog_lose_nothing(pubsub, es_double, es_index, es_client, image_server, es_forwarder,
                                             caplog):
    caplog.set_level(logging.INFO, logger="es.bulk_writer")
    raw_topic, (raw_sub,) = pubsub.create(unique("raw"), unique("job"))
    dlq_topic, (check_sub, replay_sub) = pubsub.create(unique("dlq"), unique("check"), unique("replay"))
    url = image_server.route("/p.jpg", body=jpeg((60, 120, 200), 30), content_type="image/jpeg")
    backlog = [record(f"a{i:02d}", V[1], url, price=i) for i in range(30)]
    late = [record(f"b{i}", V[1], url, price=i) for i in range(6)]
    _, job = streaming.launch([
        "--input-subscription", raw_sub, "--deadletter-topic", dlq_topic, "--es-url", f"http://{es_forwarder.url}",
        "--es-index", es_index, "--allow-image-hosts", image_server.host_port, "--aggregate-seconds", "0.5",
        "--es-max-buffer-seconds", "0.5", "--es-max-docs", "5", "--es-unavailable-seconds", str(BUDGET_S)])
    try:
        # 1. Elasticsearch goes down mid-backlog, for less than the budget: the batches wait, nothing is lost.
        publish(pubsub, raw_topic, backlog)
        job.wait(stop=lambda t: t.get("written", 0) >= 1, max_seconds=120, every=0.2)
        es_forwarder.stop()
        restore_after_the_outage_began(es_forwarder, SHORT_S)
        first = wait_accounted(job, len(backlog), timeout=120)
        # A bulk request whose answer the outage cut may have landed: its retry is then stale, not lost.
        landed = first["written"] + first.get("stale", 0)
        assert landed == len(backlog) and first.get("deadlettered", 0) == 0, sorted(first.items())
        started, ended = outage_lines(caplog)
        assert started and ended, "the writer did not log the outage: it ended before Elasticsearch went down"

        # 2. Down for longer than the budget: each batch is dead-lettered es_unavailable; the job goes on.
        es_forwarder.stop()
        publish(pubsub, raw_topic, late)
        second = wait_accounted(job, len(backlog) + len(late), timeout=BUDGET_S * 6 + 60)
        letters = pull_all(pubsub, check_sub, len(late))

        # 3. Back, and the letters replayed: every message is in the index.
        es_forwarder.start()
        replayed = replay_subscription(replay_sub, raw_topic, reasons=["es_unavailable"], stages=[], limit=None,
                                       dry_run=False, idle_seconds=3)
        third = job.wait(stop=lambda t: t.get("written", 0) + t.get("stale", 0) >= len(backlog) + len(late),
                         max_seconds=120, every=0.5)
    finally:
        totals = job.cancel()
    assert second["written"] + second.get("stale", 0) == len(backlog) and second["deadlettered"] == len(late)
    assert second["deadletter_feeder_es_unavailable"] == len(late)
    assert sorted(m.data for m in letters) == sorted(late)     # the original bytes, to be replayed
    assert {m.attributes["stage"] for m in letters} == {"feeder"}
    assert replayed == {"replayed": len(late), "skipped": 0, "failed": 0}
    assert third["written"] - second["written"] == len(late)   # the replayed letters: none had landed
    assert third.get("stale", 0) == second.get("stale", 0)
    assert totals["messages_read"] == len(backlog) + 2 * len(late) == accounted(totals)
    assert totals["es_retried_requests"] > 0
    messages = [r.getMessage() for r in caplog.records if r.name == "es.bulk_writer"]
    assert sum(STARTED in m for m in messages) >= 2   # each outage was logged (its end, by the worker that saw it)
    es_client.indices.refresh(index=es_index)
    found = es_client.mget(index=es_index, ids=[f"a{i:02d}" for i in range(30)] + [f"b{i}" for i in range(6)])
    assert all(doc["found"] and doc["_source"]["image_score"] is not None for doc in found["docs"])
