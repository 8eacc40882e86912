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

import logging
import time
from collections.abc import Callable

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub, WriteToPubSub
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from cli_common import UsageError, job_main
from pipelines.flags import StreamingFlags, help_requested
from pipelines.local_runner import (
    LOCAL_STREAMING_RUNNER,
    DirectRunnerPatches,
    LocalRun,
    print_progress,
    print_summary,
    run_until,
)
from pipelines.options import ElasticsearchOptions, ImageOptions, ModelOptions, job_options
from pipelines.report import ship_packages
from transforms.aggregator import KeepNewest
from transforms.analyzer import Analyze
from transforms.deadletter import DEAD_LETTER
from transforms.deadletter_topic import PublishDeadLetters
from transforms.feeder import Feed
from transforms.messages import (
    ParseDocuments,
    ParseUpdates,
    document_message,
    update_message,
)

log = logging.getLogger(__name__)

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
    _check_paths(so)
    if so.max_message_bytes <= 0:
        raise _fail(f"--max-message-bytes must be positive, got {so.max_message_bytes}")
    if so.aggregate_seconds < 0 or so.es_max_buffer_seconds <= 0 or so.model_unavailable_seconds < 0:
        raise _fail("--aggregate-seconds and --model-unavailable-seconds must not be negative, "
                    "--es-max-buffer-seconds must be positive")
    if local and (so.local_pull_seconds <= 0 or so.local_max_messages < 1 or so.drain_seconds < 0):
        raise _fail(f"--local-pull-seconds must be positive (got {so.local_pull_seconds:g}), --local-max-messages "
                    f"at least 1 (got {so.local_max_messages}), --drain-seconds not negative "
                    f"(got {so.drain_seconds:g})")




def _pubsub_paths(so: StreamingOptions) -> list[tuple[str, str, str]]:
    """``(flag, kind, path)`` of every Pub/Sub resource the job's flags name."""
    named = [("--input-subscription", "subscription", so.input_subscription), ("--input-topic", "topic", so.input_topic),
             ("--output-topic", "topic", so.output_topic), ("--deadletter-topic", "topic", so.deadletter_topic)]
    return [(flag, kind, path) for flag, kind, path in named if path]


def _check_paths(so: StreamingOptions) -> None:
    """Each topic and subscription flag in Pub/Sub's own form (Beam's parser), refused by flag name."""
    from apache_beam.io.gcp.pubsub import parse_subscription, parse_topic
    for flag, kind, path in _pubsub_paths(so):
        try:
            (parse_subscription if kind == "subscription" else parse_topic)(path)
        except ValueError as exc:
            raise _fail(f"{flag} {path!r}: {str(exc).rstrip('.')}; give projects/PROJECT/{kind}s/NAME, where PROJECT is a Google "
                        f"Cloud project id (6-30 lowercase letters, digits and hyphens)") from None


def build(pipeline: beam.Pipeline, opts: PipelineOptions, clock: Callable[[], float] = time.time) -> None:
    """Add the streaming job (or one ``--stage``) to ``pipeline``. ``clock`` is what the processing-time
    timers and the latency read; tests inject the runner's test clock."""
    so, io, mo, eo = (opts.view_as(c) for c in (StreamingOptions, ImageOptions, ModelOptions, ElasticsearchOptions))
    _validate(so, eo.es_url, is_local(opts))
    es_config = eo.es_config()

    def read(label: str):
        return label >> ReadFromPubSub(topic=so.input_topic, subscription=so.input_subscription,
                                       with_attributes=True, id_label=so.id_attribute)

    dead = []
    if so.stage in ("all", "aggregator"):
        parsed = pipeline | read("ReadUpdates") | "ParseUpdates" >> ParseUpdates(
            "aggregator", max_bytes=so.max_message_bytes)
        dead.append(parsed[DEAD_LETTER])
        aggregated = parsed.updates | "Aggregate" >> KeepNewest(so.aggregate_seconds, clock)
        dead.append(aggregated[DEAD_LETTER])
        newest = aggregated.updates
        if so.stage == "aggregator":
            _ = (newest | "ToNewestMessage" >> beam.Map(update_message)
                 | "PublishNewest" >> WriteToPubSub(so.output_topic, with_attributes=True))
    if so.stage == "analyzer":
        parsed = pipeline | read("ReadNewest") | "ParseNewest" >> ParseUpdates(
            "analyzer", max_bytes=so.max_message_bytes)
        dead.append(parsed[DEAD_LETTER])
        newest = parsed.updates
    if so.stage in ("all", "analyzer"):
        model_id, input_size = mo.model_info()
        handler = mo.score_handler(model_unavailable_s=so.model_unavailable_seconds)
        analyzed = newest | "Analyze" >> Analyze(handler, model_id, input_size, io.fetch_policy(),
                                                 io.max_image_pixels, es_config, eo.es_index, mode=so.write)
        dead.append(analyzed[DEAD_LETTER])
        documents = analyzed["documents"]
        if so.stage == "analyzer":
            _ = (documents | "ToDocumentMessage" >> beam.Map(document_message)
                 | "PublishDocuments" >> WriteToPubSub(so.output_topic, with_attributes=True))
    if so.stage == "feeder":
        parsed = pipeline | read("ReadDocuments") | "ParseDocuments" >> ParseDocuments()
        dead.append(parsed[DEAD_LETTER])
        documents = parsed.documents
    if so.stage in ("all", "feeder"):
        eo.prepare_index(so.write)
        dead.append(documents | "Feed" >> Feed(es_config, eo.es_index, max_docs=eo.es_max_docs,
                                               max_bytes=eo.es_max_bytes, buffer_seconds=so.es_max_buffer_seconds,
                                               clock=clock, mode=so.write,
                                               unavailable_seconds=eo.es_unavailable_seconds))
    _ = dead | "AllDeadLetters" >> beam.Flatten() | "PublishDeadLetters" >> PublishDeadLetters(so.deadletter_topic)


def prepare(argv: list[str]) -> PipelineOptions:
    """Options with ``--streaming`` set and the local runner chosen explicitly when none was given."""
    opts = job_options(argv)
    std = opts.view_as(StandardOptions)
    std.streaming = True
    if std.runner in (None, "DirectRunner"):
        std.runner = LOCAL_STREAMING_RUNNER  # DirectRunner would try to download Prism first
    ship_packages(opts)
    return opts


def launch(argv: list[str], clock: Callable[[], float] = time.time) -> tuple[beam.runners.runner.PipelineResult,
                                                                              LocalRun | None]:
    """Build and start the job; returns ``(result, job)``, where ``job`` watches a local run (it holds the
    direct runner's patches until it is cancelled or drained) and is None on any other runner."""
    opts = prepare(argv)
    so = opts.view_as(StreamingOptions)
    patches = DirectRunnerPatches(opts, pull_seconds=so.local_pull_seconds, max_messages=so.local_max_messages) \
        if is_local(opts) else None   # made before the Pipeline, which copies the options it tags
    pipeline = beam.Pipeline(options=opts)
    build(pipeline, opts, clock)
    if patches is not None:  # Dataflow checks them itself when the job is submitted
        from pipelines.pubsub_emulator import check_pubsub
        check_pubsub(_pubsub_paths(so))
    if patches is None:
        return pipeline.run(), None
    patches.__enter__()
    try:
        result = pipeline.run()
    except BaseException:
        patches.__exit__(None, None, None)
        raise
    return result, LocalRun(result, patches)


def run(argv: list[str] | None = None):
    """Parse flags, start the job; locally, watch it until --max-run-seconds, SIGTERM or Ctrl-C, drain it, and
    print the counters."""
    if help_requested(argv, "stream"):
        return None
    argv = list(argv or [])
    result, job = launch(argv)
    if job is None:
        print(f"stream: launched on {PipelineOptions(argv).view_as(StandardOptions).runner}; "
              "drain it to stop (see docs/streaming.md)")
        return result
    so = PipelineOptions(argv).view_as(StreamingOptions)
    totals = run_until(job, max_seconds=so.max_run_seconds, drain_seconds=so.drain_seconds,
                       progress=lambda t: print_progress(job, t))
    print_summary(totals, result)
    return result


if __name__ == "__main__":
    job_main("python -m pipelines.streaming", run)
