"""Streaming indexing: Pub/Sub item updates -> aggregator -> analyzer -> feeder -> Elasticsearch.

    raw updates (Pub/Sub, JSON item records)
      -> ParseUpdates -> Aggregate (newest per item over --aggregate-seconds)
      -> Analyze (reuse the stored score | fetch, decode, score; deletes skip) -> documents
      -> Feed (GroupIntoBatches across bundles, then the backfill's writer) -> Elasticsearch
    every reject, per stage -> --deadletter-topic (original bytes + stage/reason/error attributes)

By default the three stages run in one job. ``--stage aggregator|analyzer|feeder`` runs
one alone, reading and writing Pub/Sub topics between them (``--output-topic``); the
message formats are in docs/streaming.md. Run it with ``python -m pipelines.streaming``
or ``imagescore stream`` and ordinary Beam flags. Without ``--runner`` it runs locally
on ``BundleBasedDirectRunner`` with ``--streaming`` (never a run-time download).
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub, WriteToPubSub
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from es.client import EsConfig, EsError, make_client, scrubbed_errors
from es.guard import DOCUMENT, ensure_guard_script
from es.mapping import document_properties, ensure_score_mapping
from cli_common import UsageError, job_main
from pipelines import local_streaming
from pipelines.flags import StreamingFlags, help_requested
from pipelines.options import ElasticsearchOptions, ImageOptions, ModelOptions, job_options
from pipelines.report import counters, ship_packages
from pipelines.runners import LOCAL_STREAMING_RUNNER
from transforms.aggregator import KeepNewest
from transforms.analyzer import Analyze, FeedRecord
from transforms.deadletter import DEAD_LETTER, Rejected, count_dead_letter, dead_letter
from transforms.deadletter_topic import PublishDeadLetters
from transforms.feeder import LATENCY_HISTOGRAM, Feed
from transforms.fetch import FetchPolicy
from transforms.inference import make_score_handler, score_model_info
from transforms.items import json_object
from transforms.updates import MESSAGE_ID, PUBLISH_TIME, ParseUpdates, iso, message_origin

log = logging.getLogger(__name__)

#: the outcomes every published message ends in exactly one of (score_reused is a kind of written)
OUTCOMES = ("superseded", "written", "stale", "deleted", "missing", "deadlettered")


class StreamingOptions(StreamingFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.StreamingFlags`."""


def _fail(message: str) -> UsageError:
    return UsageError(message)


def is_local(opts: PipelineOptions) -> bool:
    runner = opts.view_as(StandardOptions).runner
    return runner is None or "direct" in str(runner).lower()


def _validate(so: StreamingOptions, es_url: str | None, local: bool) -> None:
    if bool(so.input_subscription) == bool(so.input_topic):
        raise _fail("pass exactly one of --input-subscription projects/P/subscriptions/S "
                    "and --input-topic projects/P/topics/T")
    if not so.deadletter_topic:
        raise _fail("--deadletter-topic projects/P/topics/T is required, so that no rejected message is dropped")
    if so.stage in ("aggregator", "analyzer") and not so.output_topic:
        raise _fail(f"--stage {so.stage} needs --output-topic, the topic the next stage reads")
    if so.stage in ("all", "feeder") and so.output_topic:
        raise _fail(f"--output-topic is only for --stage aggregator or analyzer, not {so.stage}")
    if so.stage in ("all", "analyzer", "feeder") and not es_url:
        raise _fail("no --es-url and no $ES_URL: the analyzer reads stored scores and the feeder writes there")
    if so.id_attribute and local:
        raise _fail("--id-attribute is not supported on the local runner (BundleBasedDirectRunner refuses "
                    "id_label); drop it locally, or run on Dataflow, which deduplicates by it")
    if so.aggregate_seconds < 0 or so.es_max_buffer_seconds <= 0 or so.model_unavailable_seconds < 0:
        raise _fail("--aggregate-seconds and --model-unavailable-seconds must not be negative, "
                    "--es-max-buffer-seconds must be positive")


def document_message(record: FeedRecord) -> PubsubMessage:
    """Analyzer -> feeder: ``{"document": ..., "payload": original text}``, origin in the attributes."""
    data = json.dumps({"document": dict(record), "payload": record.payload}, sort_keys=True).encode("utf-8")
    return PubsubMessage(data, {MESSAGE_ID: record.message_id, PUBLISH_TIME: iso(record.publish_time),
                                "item_id": str(record.get("id"))})


class _ParseDocumentFn(beam.DoFn):
    """Feeder input (``--stage feeder``) -> :class:`FeedRecord`, or a dead letter with the exact bytes."""

    def __init__(self):
        self._read = beam.metrics.Metrics.counter("imagescore", "messages_read")

    def process(self, message: PubsubMessage, timestamp=beam.DoFn.TimestampParam):
        self._read.inc()
        message_id, published = message_origin(message, timestamp)
        try:
            envelope, _ = json_object(message.data or b"", f"document message {message_id}")
            document, payload = envelope.get("document"), envelope.get("payload")
            if not isinstance(document, dict) or not isinstance(document.get("id"), str) or \
                    not isinstance(payload, str):
                raise Rejected("malformed_document", f"document message {message_id} must hold "
                                                     "{'document': {'id': ...}, 'payload': '...'}")
        except Exception as exc:  # noqa: BLE001 -- a bad message never fails the bundle
            reason = exc.reason if isinstance(exc, Rejected) else "unexpected_error"
            count_dead_letter("feeder", reason)
            letter = dead_letter("feeder", reason, exc, message.data or b"",
                                 id=(message.attributes or {}).get("item_id"))
            letter.update(message_id=message_id, publish_time=iso(published))
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
            return
        yield FeedRecord(document, payload, message_id, published)


def _ensure_index(config: EsConfig, index: str, mode: str) -> None:
    """Map the fields and store the guard script before any write. In document mode the job owns
    its documents, so it also creates a missing index."""
    client = make_client(config)
    try:
        if mode == DOCUMENT:
            with scrubbed_errors(f"checking index {index!r} at {config.safe_url()}"):
                exists = client.indices.exists(index=index)
            if not exists:
                with scrubbed_errors(f"creating index {index!r}"):
                    client.options(ignore_status=400).indices.create(
                        index=index, mappings={"properties": document_properties()})
        ensure_score_mapping(client, index, owns_documents=mode == DOCUMENT)
        ensure_guard_script(client)
    finally:
        client.close()


def build(pipeline: beam.Pipeline, opts: PipelineOptions, clock: Callable[[], float] = time.time) -> None:
    """Add the streaming job (or one ``--stage``) to ``pipeline``. ``clock`` is what the processing-time
    timers and the latency read; tests inject the runner's test clock."""
    so, io, mo, eo = (opts.view_as(c) for c in (StreamingOptions, ImageOptions, ModelOptions, ElasticsearchOptions))
    _validate(so, eo.es_url, is_local(opts))
    es_config = EsConfig.from_env(url=eo.es_url, **(
        {} if eo.es_verify_certs is None else {"verify_certs": False})) if eo.es_url else None

    def read(label: str):
        return label >> ReadFromPubSub(topic=so.input_topic, subscription=so.input_subscription,
                                       with_attributes=True, id_label=so.id_attribute)

    dead = []
    if so.stage in ("all", "aggregator"):
        parsed = pipeline | read("ReadUpdates") | "ParseUpdates" >> ParseUpdates("aggregator")
        dead.append(parsed[DEAD_LETTER])
        newest = parsed.updates | "Aggregate" >> KeepNewest(so.aggregate_seconds, clock)
        if so.stage == "aggregator":
            _ = (newest | "ToNewestMessage" >> beam.Map(lambda update: update.original_message())
                 | "PublishNewest" >> WriteToPubSub(so.output_topic, with_attributes=True))
    if so.stage == "analyzer":
        parsed = pipeline | read("ReadNewest") | "ParseNewest" >> ParseUpdates("analyzer")
        dead.append(parsed[DEAD_LETTER])
        newest = parsed.updates
    if so.stage in ("all", "analyzer"):
        try:
            model_id, input_size = score_model_info(mo.model)
        except (ValueError, ConnectionError, OSError) as exc:
            raise _fail(f"--model {mo.model!r}: {exc}") from None
        handler = make_score_handler(
            mo.model, mo.device, min_batch_size=mo.min_batch_size, max_batch_size=mo.max_batch_size,
            large_model=mo.large_model, triton_timeout_s=mo.triton_timeout, triton_retries=mo.triton_retries,
            model_unavailable_s=so.model_unavailable_seconds)
        policy = FetchPolicy(allowed_hosts=io.allow_image_hosts, allowed_schemes=io.allow_image_schemes,
                             max_bytes=io.max_image_bytes, total_timeout=io.fetch_timeout,
                             concurrency=io.fetch_concurrency)
        analyzed = newest | "Analyze" >> Analyze(handler, model_id, input_size, policy, io.max_image_pixels,
                                                 es_config, eo.es_index)
        dead.append(analyzed[DEAD_LETTER])
        documents = analyzed["documents"]
        if so.stage == "analyzer":
            _ = (documents | "ToDocumentMessage" >> beam.Map(document_message)
                 | "PublishDocuments" >> WriteToPubSub(so.output_topic, with_attributes=True))
    if so.stage == "feeder":
        parsed = (pipeline | read("ReadDocuments")
                  | "ParseDocuments" >> beam.ParDo(_ParseDocumentFn()).with_outputs(DEAD_LETTER, main="documents"))
        dead.append(parsed[DEAD_LETTER])
        documents = parsed.documents
    if so.stage in ("all", "feeder"):
        try:
            _ensure_index(es_config, eo.es_index, so.write)
        except EsError as exc:
            raise _fail(str(exc)) from None
        dead.append(documents | "Feed" >> Feed(es_config, eo.es_index, max_docs=eo.es_max_docs,
                                               max_bytes=eo.es_max_bytes, buffer_seconds=so.es_max_buffer_seconds,
                                               clock=clock, mode=so.write))
    _ = dead | "AllDeadLetters" >> beam.Flatten() | "PublishDeadLetters" >> PublishDeadLetters(so.deadletter_topic)


def prepare(argv: list[str]) -> PipelineOptions:
    """Options with ``--streaming`` set and the local runner chosen explicitly when none was given."""
    opts = job_options(argv)
    std = opts.view_as(StandardOptions)
    std.streaming = True
    if std.runner in (None, "DirectRunner"):
        std.runner = LOCAL_STREAMING_RUNNER  # DirectRunner would try to download Prism first
    if is_local(opts):
        local_streaming.install(pull_seconds=opts.view_as(StreamingOptions).local_pull_seconds)
    ship_packages(opts)
    return opts


def launch(argv: list[str], clock: Callable[[], float] = time.time):
    """Build and start the job; returns ``(result, local)``."""
    opts = prepare(argv)
    pipeline = beam.Pipeline(options=opts)
    build(pipeline, opts, clock)
    return pipeline.run(), is_local(opts)


def latency_ms(result) -> tuple[float | None, float | None]:
    """``(p50, p99)`` publish-to-write latency in ms from the job's histogram, ``None`` before any write."""
    histograms = result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace("imagescore").with_name(LATENCY_HISTOGRAM))
    for found in histograms.get("histograms", []):
        data = found.committed if found.committed is not None else found.attempted
        histogram = getattr(data, "histogram", None)
        if histogram is not None and histogram.total_count():
            return histogram.p50(), histogram.p99()
    return None, None


def progress_line(totals: dict[str, int], p50: float | None, p99: float | None) -> str:
    latency = f"p50 {p50 / 1000:.1f}s p99 {p99 / 1000:.1f}s" if p50 is not None else "p50 - p99 -"
    return (f"read {totals.get('messages_read', 0)}  scored {totals.get('scored', 0)}  "
            f"reused {totals.get('score_reused', 0)}  written {totals.get('written', 0)}  "
            f"stale {totals.get('stale', 0)}  deleted {totals.get('deleted', 0)}  "
            f"superseded {totals.get('superseded', 0)}  dead-lettered {totals.get('deadlettered', 0)}  {latency}")


def accounted(totals: dict[str, int]) -> int:
    """How many read messages have reached a final outcome (the accounting invariant's right side)."""
    return sum(totals.get(name, 0) for name in OUTCOMES)


class LocalRun:
    """A started local streaming run: wait on its counters, then cancel it.

    The direct runner never finishes a streaming pipeline by itself; this is how the
    CLI, the demo, tests and benchmarks stop it. A pipeline failure is raised from
    :meth:`wait`.
    """

    def __init__(self, result):
        self.result = result
        self._failure: list[BaseException] = []
        self._waiter = threading.Thread(target=self._wait_for_result, name="stream-wait", daemon=True)
        self._waiter.start()

    def _wait_for_result(self) -> None:
        try:
            self.result.wait_until_finish()
        except BaseException as exc:  # noqa: BLE001 -- raised in the caller's thread by wait()
            self._failure.append(exc)

    def totals(self) -> dict[str, int]:
        return counters(self.result)

    def wait(self, *, stop: Callable[[dict], bool] | None = None, max_seconds: float | None = None,
             progress: Callable[[dict], None] | None = None, every: float = 1.0) -> dict[str, int]:
        """Until ``stop(totals)``, ``max_seconds``, Ctrl-C/SIGTERM (KeyboardInterrupt) or the end of the run."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            while self._waiter.is_alive():
                self._waiter.join(every)
                totals = self.totals()
                if progress is not None:
                    progress(totals)
                if (stop is not None and stop(totals)) or (deadline is not None and time.monotonic() >= deadline):
                    return totals
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if self._failure:
            raise self._failure[0]
        return self.totals()

    def cancel(self) -> dict[str, int]:
        self.result.cancel()
        self._waiter.join(5)
        return self.totals()


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def run_until(result, *, max_seconds: float | None = None, stop: Callable[[dict], bool] | None = None,
              progress: Callable[[dict], None] | None = None, every: float = 1.0) -> dict[str, int]:
    """Watch a local run until ``max_seconds``, ``stop(totals)``, Ctrl-C or SIGTERM; cancel it; return the counters."""
    watched = LocalRun(result)
    try:
        watched.wait(stop=stop, max_seconds=max_seconds, progress=progress, every=every)
    except KeyboardInterrupt:
        print("\nstream: stopping (Ctrl-C / SIGTERM)", file=sys.stderr)
    finally:
        totals = watched.cancel()
    return totals


def print_summary(totals: dict[str, int], result=None) -> None:
    print("\n== stream: counters ==")
    width = max((len(name) for name in totals), default=0)
    for name in sorted(totals):
        print(f"  {name.ljust(width)}  {totals[name]:>10,}")
    p50, p99 = latency_ms(result) if result is not None else (None, None)
    print(f"stream: {progress_line(totals, p50, p99)}")
    read, done = totals.get("messages_read", 0), accounted(totals)
    print(f"stream: {read:,} read, {done:,} accounted for"
          + ("" if read == done else f" ({read - done:,} still in flight when the job stopped)"))


def run(argv: list[str] | None = None):
    """Parse flags, start the job; locally, watch it until --max-run-seconds or Ctrl-C, then print counters."""
    if help_requested(argv, "stream"):
        return None
    argv = list(argv or [])
    result, local = launch(argv)
    if not local:
        print(f"stream: launched on {PipelineOptions(argv).view_as(StandardOptions).runner}; "
              "drain it to stop (see docs/streaming.md)")
        return result
    max_seconds = PipelineOptions(argv).view_as(StreamingOptions).max_run_seconds
    totals = run_until(result, max_seconds=max_seconds)
    print_summary(totals, result)
    return result


if __name__ == "__main__":
    job_main("python -m pipelines.streaming", run)
