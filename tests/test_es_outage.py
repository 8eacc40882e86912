"""The bulk writer waits out Elasticsearch outages within ``--es-unavailable-seconds``, then dead-letters.

The double sits behind a loopback TCP forwarder that refuses or drops connections for a
few seconds, the way a restarting cluster or a cut network does; 429/502/503/504 answers
are injected into the double. Budgets and backoffs are small, so each test takes seconds.
Nothing may be lost: every record ends written, or in ``failed`` with its reason.
"""
from __future__ import annotations

import logging
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from es.bulk_writer import FAILED, WRITTEN, WriteSettings, WriteToElasticsearch, _BulkWriteFn
from es.client import EsConfig
from pipelines.local_runner import local_runner
from pipelines.options import ElasticsearchOptions, job_options
from tests.fixtures.es import seed_items
from tests.fixtures.forwarder import TcpForwarder
from tests.test_es_writer import items, score

QUICK = {"initial_backoff": 0.05, "max_backoff": 0.4, "max_retry_time": 10.0}
OUTAGE_S = 2.0
STARTED = "is unavailable"
ENDED = "is back after an outage of"


@pytest.fixture
def behind(es_forwarder) -> EsConfig:
    """The double's config, reached through the forwarder."""
    return EsConfig(f"http://{es_forwarder.url}", request_timeout=5)


@pytest.fixture
def writer_logs(caplog):
    caplog.set_level(logging.INFO, logger="es.bulk_writer")
    return caplog


def outage_lines(caplog) -> tuple[list[str], list[str]]:
    messages = [r.getMessage() for r in caplog.records if r.name == "es.bulk_writer"]
    return [m for m in messages if STARTED in m], [m for m in messages if ENDED in m]


def restore_after_the_outage_began(es_forwarder: TcpForwarder, seconds: float) -> threading.Thread:
    """Bring the forwarder back ``seconds`` after the writer logged the outage, however long Beam took to start."""
    began = threading.Event()

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if STARTED in record.getMessage():
                began.set()

    handler = Signal()
    logging.getLogger("es.bulk_writer").addHandler(handler)

    def restore() -> None:
        try:
            began.wait(60)
            time.sleep(seconds)
        finally:
            logging.getLogger("es.bulk_writer").removeHandler(handler)
            es_forwarder.start()

    thread = threading.Thread(target=restore, daemon=True)
    thread.start()
    return thread


def counters_of(result) -> dict[str, int]:
    return {r.key.metric.name: r.committed
            for r in result.metrics().query(MetricsFilter().with_namespace("imagescore"))["counters"]}


def run_pipeline(config: EsConfig, index: str, records: list, **settings) -> dict[str, int]:
    """The transform on the local runner; returns the imagescore counters."""
    pipeline = BeamTestPipeline(runner=local_runner())
    _ = pipeline | beam.Create(records) | WriteToElasticsearch(config, index, mode="score", **settings)
    result = pipeline.run()
    result.wait_until_finish()
    return counters_of(result)


class Worker:
    """One writer DoFn driven bundle by bundle, as one worker thread runs it: its outage state carries over."""

    def __init__(self, config: EsConfig, index: str, **settings):
        self.fn = _BulkWriteFn(config, index, WriteSettings(**settings), "score")

    def __enter__(self) -> Worker:
        self.fn.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.fn.teardown()

    def bundle(self, records: list[dict]) -> dict[str, list]:
        """The bundle's outputs by tag."""
        self.fn.start_bundle()
        produced = [out for record in records for out in self.fn.process(record, timestamp=0, window=GlobalWindow())]
        produced += list(self.fn.finish_bundle())
        by_tag: dict[str, list] = {}
        for output in produced:
            value = output.value
            by_tag.setdefault(output.tag, []).append(value.value if isinstance(value, WindowedValue) else value)
        return by_tag


@pytest.mark.parametrize("how", ["refused", "dropped"])
def test_an_outage_shorter_than_the_budget_loses_nothing(how, es_double, es_client, es_index, es_forwarder, behind,
                                                         writer_logs):
    seed_items(es_client, es_index, items(6))
    records = [score(f"item-{i}", 0.6) for i in range(6)]
    if how == "refused":
        es_forwarder.stop()
    else:
        es_forwarder.drop()
    back = restore_after_the_outage_began(es_forwarder, OUTAGE_S)
    started = time.monotonic()
    try:
        pipeline = BeamTestPipeline(runner=local_runner())
        outputs = (pipeline | beam.Create(records)
                   | WriteToElasticsearch(behind, es_index, max_docs=2, unavailable_seconds=30, mode="score", **QUICK))
        assert_that(outputs.written, equal_to([r["id"] for r in records]), label="written")
        assert_that(outputs.failed, equal_to([]), label="failed")
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        back.join()
    assert time.monotonic() - started >= OUTAGE_S
    counters = counters_of(result)
    assert counters["es_written"] == 6 and counters.get("es_failed", 0) == 0
    assert counters["es_retried_requests"] > 0 and counters["es_retried"] > 0
    assert all(es_double.doc(es_index, r["id"])["image_score"] == 0.6 for r in records)
    starts, ends = outage_lines(writer_logs)
    assert len(starts) == 1 and len(ends) == 1, (starts, ends)
    assert "ConnectionError" in starts[0] and "30 s (--es-unavailable-seconds)" in starts[0]
    length = float(ends[0].split(ENDED)[1].split()[0])
    assert OUTAGE_S * 0.5 <= length <= OUTAGE_S + 5, ends[0]
    assert "0 document(s) were dead-lettered" in ends[0]


def test_a_budget_shorter_than_the_outage_dead_letters_each_batch_and_goes_on(es_double, es_client, es_index,
                                                                              es_forwarder, behind, writer_logs):
    seed_items(es_client, es_index, items(6))
    during = [score(f"item-{i}") for i in range(5)]
    es_forwarder.stop()  # down for longer than the budget
    with Worker(behind, es_index, max_docs=2, unavailable_seconds=0.6, **QUICK) as worker:
        started = time.monotonic()
        lost = worker.bundle(during)
        elapsed = time.monotonic() - started
        starts, ends = outage_lines(writer_logs)
        es_forwarder.start()
        kept = worker.bundle([score("item-5")])  # the same worker goes on once the cluster is back
    assert sorted((f[0]["id"], f[1]) for f in lost[FAILED]) == [(r["id"], "es_unavailable") for r in during]
    assert sorted((f[0] for f in lost[FAILED]), key=lambda r: r["id"]) == during  # the records as they came
    assert WRITTEN not in lost
    assert all("within 0.6 s" in f[2] and "Replay this dead letter" in f[2] for f in lost[FAILED])
    assert 3 * 0.6 <= elapsed < 3 * 0.6 + 5  # three batches (2 + 2 + 1), each waited the budget out
    assert len(starts) == 1 and ends == []  # one outage, however many batches it costs
    assert kept == {WRITTEN: ["item-5"]}
    _, ends = outage_lines(writer_logs)
    assert len(ends) == 1 and "5 document(s) were dead-lettered as es_unavailable" in ends[0]
    assert es_double.doc(es_index, "item-5")["image_score"] == 0.5
    assert "image_score" not in es_double.doc(es_index, "item-0")


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_unavailable_answers_for_the_whole_request_are_waited_out(status, es_double, es_config, es_client, es_index,
                                                                  writer_logs):
    seed_items(es_client, es_index, items(3))
    es_double.fail_requests(status, times=4, path=r"/_bulk$")
    # max_retries=1: the helper retries a 429 once per pass, so the writer's own retries carry it through
    counters = run_pipeline(es_config, es_index, [score(f"item-{i}") for i in range(3)], max_retries=1,
                            unavailable_seconds=30, **QUICK)
    assert counters["es_written"] == 3 and counters.get("es_failed", 0) == 0
    assert [r.status for r in es_double.bulk_requests()] == [status] * 4 + [200]
    assert counters["es_bulk_requests"] == 5 and counters["es_retried_requests"] == 4
    starts, ends = outage_lines(writer_logs)
    assert len(starts) == 1 and len(ends) == 1


def test_per_document_429_beyond_the_helpers_retries_is_waited_out(es_double, es_config, es_client, es_index,
                                                                   writer_logs):
    seed_items(es_client, es_index, items(3))
    es_double.fail_bulk_items(429, times=6, ids=["item-1"])  # 2 passes of the helper (1 + 2 retries), then a third
    counters = run_pipeline(es_config, es_index, [score(f"item-{i}") for i in range(3)], max_retries=2,
                            unavailable_seconds=30, **QUICK)
    assert counters["es_written"] == 3 and counters.get("es_failed", 0) == 0
    assert counters["es_retried"] == 6 and counters["es_retried_requests"] == 6
    starts, ends = outage_lines(writer_logs)
    assert starts == [] and ends == []  # the cluster answered every request: back-pressure, not an outage


def test_a_503_storm_longer_than_the_budget_is_dead_lettered(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(2))
    es_double.fail_requests(503, times=None, path=r"/_bulk$")
    records = [score("item-0"), score("item-1")]
    pipeline = BeamTestPipeline(runner=local_runner())
    outputs = pipeline | beam.Create(records) | WriteToElasticsearch(
        es_config, es_index, unavailable_seconds=0.5, mode="score", **QUICK)
    assert_that(outputs.failed | beam.Map(lambda f: (f[0], f[1], "unavailable_shards_exception" in f[2])),
                equal_to([(r, "es_unavailable", True) for r in records]))
    pipeline.run().wait_until_finish()


def test_a_whole_request_400_dead_letters_its_batch_with_the_reason(es_double, es_config, es_client, es_index):
    seed_items(es_client, es_index, items(4))
    reason = "Validation Failed: 1: an update needs a script or a doc;"
    es_double.fail_requests(400, times=1, path=r"/_bulk$", error_type="action_request_validation_exception",
                            reason=reason)
    records = [score(f"item-{i}") for i in range(4)]
    pipeline = BeamTestPipeline(runner=local_runner())
    outputs = pipeline | beam.Create(records) | WriteToElasticsearch(
        es_config, es_index, max_docs=2, unavailable_seconds=5, mode="score", **QUICK)
    assert_that(outputs.written, equal_to(["item-2", "item-3"]), label="written")
    assert_that(outputs.failed | beam.Map(lambda f: (f[0], f[1], "action_request_validation_exception" in f[2]
                                                     and reason in f[2] and "whole bulk request" in f[2])),
                equal_to([(records[0], "es_400", True), (records[1], "es_400", True)]), label="failed")
    result = pipeline.run()
    result.wait_until_finish()  # the job went on: the next batch was written
    assert counters_of(result)["es_failed"] == 2
    assert [r.status for r in es_double.bulk_requests()] == [400, 200]


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_the_budget_flag_refuses_what_is_not_a_number_of_seconds(value):
    from cli_common import UsageError
    with pytest.raises(UsageError, match="--es-unavailable-seconds"):
        job_options(["--es-unavailable-seconds", value])


def test_the_budget_flag_defaults_to_ten_minutes():
    assert job_options([]).view_as(ElasticsearchOptions).es_unavailable_seconds == 600
