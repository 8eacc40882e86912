"""The local runner module: its direct-runner patches (version check, undo), the latency histogram, the summary,
and reading from the Pub/Sub emulator that never stops silently (a 5 MB message, a subscription that goes away)."""
from __future__ import annotations

import logging

import apache_beam
import apache_beam as beam
import pytest
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct import executor, transform_evaluator
from apache_beam.transforms.window import TimestampedValue

from cli_common import UsageError
from pipelines import streaming
from pipelines.local_runner import DirectRunnerPatches, accounted, latency_ms, patches_installed, print_summary
from pipelines.pubsub_emulator import subscriber_client
from tests.fixtures.pubsub import publish, pull_all, unique
from tests.test_streaming_e2e import V, jpeg, record

READ = transform_evaluator._PubSubReadEvaluator
PATCHED = ((executor, "MetricsContainer"), (READ, "_get_subscriber_client_state_unlocked"),
           (READ, "_read_from_pubsub"), (READ, "finish_bundle"))


def originals() -> dict[str, object]:
    return {name: owner.__dict__[name] for owner, name in PATCHED}


def test_patches_undo_themselves_when_the_last_run_leaves():
    before = originals()
    assert before["MetricsContainer"] is MetricsContainer and not patches_installed()
    first, second = DirectRunnerPatches(PipelineOptions([])), DirectRunnerPatches()
    with first as reads:
        assert reads is not None and reads.max_messages == 20 and reads.pull_seconds == 1.0
        during = originals()
        assert all(during[name] is not before[name] for name in before)
        with second as none:
            assert none is None and originals() == during
        assert originals() == during and patches_installed()   # the first run still needs them
    assert originals() == before and not patches_installed()


@pytest.mark.parametrize("version", ["2.79.0", "2.76.0", "3.0.0"])
def test_an_unknown_beam_version_is_refused_in_one_line(monkeypatch, version):
    before = originals()
    monkeypatch.setattr(apache_beam, "__version__", version)
    with pytest.raises(UsageError) as refused:
        with DirectRunnerPatches():
            pass
    message = str(refused.value)
    assert "\n" not in message
    assert f"written for Apache Beam 2.77 and 2.78, and this is {version}" in message
    assert "pip install 'apache-beam[gcp]>=2.77,<2.79'" in message and "--runner DataflowRunner" in message
    assert originals() == before and not patches_installed()


@pytest.mark.parametrize("version", ["2.77.0", "2.78.0", "2.78.1"])
def test_the_releases_the_patches_were_read_against_are_accepted(monkeypatch, version):
    monkeypatch.setattr(apache_beam, "__version__", version)
    with DirectRunnerPatches():
        assert patches_installed()
    assert not patches_installed()


def test_latency_histogram_reaches_an_hour_without_inf_or_warnings(caplog):
    """Writes delayed by a backlog or an outage: 2, 5, 50 minutes and 2 hours after publishing."""
    from transforms.feeder import _CountOutcomeFn

    now = 10_000_000.0
    latencies = [1.5] * 80 + [120.5] * 10 + [300.0] * 5 + [3000.0] * 4 + [7200.0]
    opts = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    opts.view_as(StandardOptions).streaming = True
    caplog.set_level(logging.WARNING)
    with DirectRunnerPatches():
        p = beam.Pipeline(options=opts)
        _ = (p | beam.Create(list(enumerate(latencies)))
             | beam.Map(lambda pair: TimestampedValue(f"doc{pair[0]}", now - pair[1]))
             | beam.ParDo(_CountOutcomeFn("written", clock=lambda: now)))
        result = p.run()
        result.wait_until_finish()
    p50, p99 = latency_ms(result)
    assert 1_000 <= p50 <= 2_000
    assert 2_500_000 <= p99 < 3_600_000   # the 50-minute writes; the 2-hour one counts as the last bucket
    assert "out of upper bound" not in caplog.text


def test_the_summary_names_what_is_in_flight_and_the_failed_pulls(capsys):
    print_summary({"messages_read": 5, "messages_pulled": 7, "written": 2, "deadlettered": 1, "read_errors": 3})
    out = capsys.readouterr().out
    assert "stream: 7 read, 3 accounted for (4 still in flight when the job stopped" in out
    assert "stream: 3 Pub/Sub pulls failed and were retried (read_errors" in out
    print_summary({"messages_read": 4, "messages_pulled": 4, "written": 4, "read_errors": 0})
    out = capsys.readouterr().out
    assert "stream: 4 read, 4 accounted for\n" in out and "pulls failed" not in out


# -- reading from the emulator ---------------------------------------------------------------------------------

def start(pubsub, es_url, es_index, image_server, subscription: str, dead_topic: str):
    _, job = streaming.launch([
        "--input-subscription", subscription, "--deadletter-topic", dead_topic, "--es-url", es_url,
        "--es-index", es_index, "--allow-image-hosts", image_server.host_port, "--aggregate-seconds", "0.5",
        "--es-max-buffer-seconds", "0.5", "--min-batch-size", "1"])
    assert job is not None
    return job


def wait_for(job, what, timeout: float = 120.0) -> dict:
    totals = job.wait(stop=what, max_seconds=timeout, every=0.5)
    assert what(totals), f"timed out: {sorted(totals.items())}"
    return totals


def test_a_5mb_message_is_read_and_reading_goes_on(pubsub, es_url, es_index, image_server):
    """The emulator's client refuses a pull over 4 MiB by default; Pub/Sub allows 10 MB per message."""
    topic, (subscription,) = pubsub.create(unique("big"), unique("big-job"))
    dead, (check,) = pubsub.create(unique("big-dead"), unique("big-check"))
    url = image_server.route("/big.jpg", body=jpeg((30, 90, 200), 20), content_type="image/jpeg")
    big = b"not json " + b"x" * (5_000_000 - 9)
    job = start(pubsub, es_url, es_index, image_server, subscription, dead)
    try:
        publish(pubsub, topic, [big, record("after-big", V[1], url)])
        wait_for(job, lambda t: accounted(t) >= 2)
        publish(pubsub, topic, [record("later", V[1], url)])
        totals = wait_for(job, lambda t: accounted(t) >= 3)
        letters = pull_all(pubsub, check, 1)
    finally:
        totals = job.cancel()
    assert totals["read_errors"] == 0
    assert totals["messages_pulled"] == totals["messages_read"] == 3 and accounted(totals) == 3
    assert totals["written"] == 2 and totals["deadlettered"] == 1
    assert [m.data for m in letters] == [big]   # dead-lettered with its bytes, not skipped


def test_failed_pulls_are_logged_counted_and_retried(pubsub, es_url, es_index, image_server, caplog):
    """The subscription disappears mid-run: every pull fails until it is back, then reading resumes."""
    topic, (subscription,) = pubsub.create(unique("gone"), unique("gone-job"))
    dead, _ = pubsub.create(unique("gone-dead"))
    url = image_server.route("/gone.jpg", body=jpeg((200, 90, 30), 20), content_type="image/jpeg")
    caplog.set_level(logging.WARNING, logger="pipelines.local_runner")
    job = start(pubsub, es_url, es_index, image_server, subscription, dead)
    admin = subscriber_client()
    try:
        publish(pubsub, topic, [record("before", V[1], url)])
        wait_for(job, lambda t: accounted(t) >= 1)
        admin.delete_subscription(subscription=subscription)
        wait_for(job, lambda t: t["read_errors"] >= 2, timeout=60)
        admin.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
        publish(pubsub, topic, [record("after", V[1], url)])
        totals = wait_for(job, lambda t: accounted(t) >= 2)
    finally:
        admin.close()
        totals = job.cancel()
    assert totals["written"] == 2 and totals["read_errors"] >= 2
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failed and subscription in failed[0] and "NotFound" in failed[0] and "retrying in" in failed[0]
    assert any("works again after" in r.getMessage() for r in caplog.records)


def test_a_drain_that_runs_out_names_what_is_still_in_flight(pubsub, es_url, es_index, image_server, capsys):
    """With no time to drain, what was pulled (and so acknowledged) and not yet written is counted in flight."""
    topic, (subscription,) = pubsub.create(unique("short"), unique("short-job"))
    dead, _ = pubsub.create(unique("short-dead"))
    url = image_server.route("/short.jpg", body=jpeg((20, 200, 90), 20), content_type="image/jpeg")
    _, job = streaming.launch([
        "--input-subscription", subscription, "--deadletter-topic", dead, "--es-url", es_url,
        "--es-index", es_index, "--allow-image-hosts", image_server.host_port, "--aggregate-seconds", "30"])
    try:
        publish(pubsub, topic, [record(f"s{n}", V[1], url) for n in range(3)])
        wait_for(job, lambda t: t["messages_pulled"] >= 3)   # held by the 30 s aggregation window
    finally:
        totals = job.drain(0)
    assert totals["messages_pulled"] == 3 and accounted(totals) == 0
    print_summary(totals, job.result)
    assert "stream: 3 read, 0 accounted for (3 still in flight when the job stopped" in capsys.readouterr().out
    assert not patches_installed()
