"""The Beam jobs' flags, defined without Beam, so ``imagescore JOB --help`` prints them in well under a second.

Each group is a plain class with Beam's ``_add_argparse_args`` hook; the
``PipelineOptions`` subclass Beam parses (``pipelines.options.ImageOptions``,
``pipelines.backfill.BackfillOptions``, ...) is that class plus
``PipelineOptions``, so the flags are defined once. :data:`JOBS` says which
groups each job takes; :func:`help_requested` lays them out as its ``--help``.
Importing Beam takes seconds; this module imports nothing heavy.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os

from cli_common import ArgumentParser, DefaultsHelpFormatter
from es.names import DOCUMENT, WRITE_MODES
from scoring.specs import DEFAULT_MODEL
from transforms.limits import DEFAULT_MAX_MESSAGE_BYTES

#: the streaming job's stages: all in one job, or one alone between topics
STAGES = ("all", "aggregator", "analyzer", "feeder")


def _seconds(value: str) -> float:
    """A flag's number of seconds: a float that is not negative."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a number of seconds, 0 or more")
    return seconds


class JobIOFlags:
    """``--input``/``--output``, defined once: Beam parses every loaded options class, so two
    jobs defining the same flag in one process would conflict."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", dest="input",
                            help="input files, a glob (local or gs://); what they hold depends on the job")
        parser.add_argument("--output", dest="output", help="output directory (local or gs://)")


class ImageFlags:
    """How images are fetched and decoded: the hostile-input limits."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--allow-image-hosts", dest="allow_image_hosts", default="",
                            help="HOST[:PORT],... allowed even though they resolve to private/loopback addresses")
        parser.add_argument("--allow-image-schemes", dest="allow_image_schemes", default="",
                            help="Beam FileSystems schemes to read besides http(s), e.g. gs,file (off by default)")
        parser.add_argument("--max-image-bytes", dest="max_image_bytes", type=int, default=20_000_000,
                            help="refuse images larger than this many bytes (checked while streaming)")
        parser.add_argument("--max-image-pixels", dest="max_image_pixels", type=int, default=40_000_000,
                            help="refuse images with more pixels than this (decompression-bomb guard)")
        parser.add_argument("--fetch-concurrency", dest="fetch_concurrency", type=int, default=16,
                            help="concurrent image downloads per worker thread")
        parser.add_argument("--fetch-timeout", dest="fetch_timeout", type=float, default=30.0,
                            help="total seconds allowed for one image, retries included")


class ModelFlags:
    """Which model scores the images and how RunInference batches them."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--model", dest="model", default=DEFAULT_MODEL,
                            help="handcrafted (weight-free baseline, the default), clip-iqa:BACKBONE (zero-shot CLIP-IQA), "
                                 "a training run directory, or "
                                 "triton://HOST:PORT/NAME[/VERSION] to score on a Triton server (gRPC port)")
        parser.add_argument("--device", dest="device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
        parser.add_argument("--min-batch-size", dest="min_batch_size", type=int, default=8)
        parser.add_argument("--max-batch-size", dest="max_batch_size", type=int, default=64)
        parser.add_argument("--large-model", dest="large_model", action="store_true",
                            help="load one model per worker VM shared across processes (for GPU workers)")
        parser.add_argument("--triton-timeout", dest="triton_timeout", type=float, default=60.0,
                            help="seconds per Triton request")
        parser.add_argument("--triton-retries", dest="triton_retries", type=int, default=5,
                            help="retries of a batch on UNAVAILABLE/RESOURCE_EXHAUSTED/DEADLINE_EXCEEDED")


class ElasticsearchFlags:
    """Where scores go. Credentials come from ES_API_KEY or ES_USERNAME/ES_PASSWORD, never from flags."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--es-url", dest="es_url", default=os.environ.get("ES_URL"),
                            help="Elasticsearch URL (default: $ES_URL)")
        parser.add_argument("--es-index", dest="es_index", default="items", help="index holding the items")
        parser.add_argument("--es-no-verify-certs", dest="es_verify_certs", action="store_const", const=False,
                            default=None, help="do not verify TLS certificates (default: $ES_VERIFY_CERTS, else "
                                               "verify; CA bundle: $ES_CA_CERTS on the workers)")
        parser.add_argument("--es-max-docs", dest="es_max_docs", type=int, default=500,
                            help="documents per bulk request at most")
        parser.add_argument("--es-max-bytes", dest="es_max_bytes", type=int, default=5 * 1024 * 1024,
                            help="bytes per bulk request at most")
        parser.add_argument("--es-unavailable-seconds", dest="es_unavailable_seconds", type=_seconds, default=600.0,
                            help="how long a bulk request waits out an unreachable or overloaded cluster "
                                 "(connection errors, 429, 502, 503, 504), retrying with backoff, before its "
                                 "documents are dead-lettered as es_unavailable")


class OutcomeFlags:
    """When a run counts as failed: nothing succeeded, or too large a share of dead letters."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--max-deadletter-share", dest="max_deadletter_share", type=float, default=None,
                            help="exit 1 when more than this share (0-1) of the records read was dead-lettered "
                                 "(default: fail only when nothing succeeded)")


class BackfillFlags:
    """Flags of the backfill. ``--input`` (JSONL items, with --source files) and ``--output`` (write
    DIR/scores*.jsonl and DIR/bulk*.ndjson instead of Elasticsearch) come from ``JobIOOptions``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--source", choices=("es", "files"), default="es",
                            help="read items from the Elasticsearch index (default) or from JSONL files (--input)")
        parser.add_argument("--days", type=int, default=90, help="score items created in the last N days")
        parser.add_argument("--es-slices", dest="es_slices", type=int, default=8,
                            help="point-in-time slices, so the read splits across workers")
        parser.add_argument("--es-pit-keep-alive", dest="es_pit_keep_alive", default="10m",
                            help="how long the point in time lives between two page reads (Elasticsearch time unit)")
        parser.add_argument("--deadletter", help="directory or gs:// prefix for deadletter*.jsonl "
                                                 "(required when writing to Elasticsearch; default DIR/deadletter with --output)")
        parser.add_argument("--now", help="the reference time for --days (ISO 8601; default: now). For reproducible runs")


class CollectFlags:
    """Flags of ``imagescore collect`` besides ``--output`` (:class:`~pipelines.options.JobIOOptions`);
    ordinary Beam flags such as --runner pass through."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--logs", dest="logs", help="glob of JSONL search logs, one SERP per line (local or gs://)")
        parser.add_argument("--format", dest="output_format", choices=("jsonl", "parquet"), default="jsonl",
                            help="format of the windows (CTR, dead letters and summary are always JSON)")
        parser.add_argument("--max-price-diff", dest="max_price_diff", type=float, default=0.2,
                            help="keep items with |p - p_anchor| / p_anchor at most this (paper: similar price)")
        parser.add_argument("--before", dest="before", type=int, default=5, help="items kept above the anchor at most")
        parser.add_argument("--after", dest="after", type=int, default=2, help="items kept below the anchor at most")
        parser.add_argument("--min-items", dest="min_items", type=int, default=2,
                            help="drop windows with fewer items (a lone anchor gives no pair to learn from)")
        parser.add_argument("--train-fraction", dest="train_fraction", type=float, default=0.8)
        parser.add_argument("--validation-fraction", dest="validation_fraction", type=float, default=0.1,
                            help="the test split gets the rest")
        parser.add_argument("--split-salt", dest="split_salt", default="imagescore",
                            help="salt of the serp_id hash; change it to draw a different (still stable) split")
        parser.add_argument("--ctr-cutoff", dest="ctr_cutoff", default=None,
                            help="ISO timestamp: historical CTR uses only SERPs logged strictly before it; "
                                 "without it no ctr*.jsonl is written")


class EmbedFlags:
    """Flags of ``imagescore embed``; ``--input`` (JSONL of {item_id, image_url}) and ``--output`` (embeddings-*.parquet,
    deadletter-*.jsonl; existing embeddings there are skipped) come from :class:`~pipelines.options.JobIOOptions`."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--windows", help="glob of collect's windows*.jsonl (or *.parquet); every item is embedded")
        parser.add_argument("--backbone", help="backbone spec: hf:ID_OR_DIR, open_clip:ARCH/TAG, rinna:ID_OR_DIR, "
                                               "handcrafted (see scoring.backbone)")
        parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                            help="store raw projections instead of L2-normalised embeddings")


class StreamingFlags:
    """Flags of the streaming job (Beam, image, model and Elasticsearch flags come from their own groups)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input-subscription", dest="input_subscription",
                            help="projects/P/subscriptions/S to read (Dataflow acknowledges after the first "
                                 "fused stage has durably stored its results)")
        parser.add_argument("--input-topic", dest="input_topic",
                            help="projects/P/topics/T to read through a temporary subscription instead")
        parser.add_argument("--output-topic", dest="output_topic",
                            help="with --stage aggregator|analyzer: the topic the next stage reads")
        parser.add_argument("--deadletter-topic", dest="deadletter_topic",
                            help="projects/P/topics/T for every stage's dead letters (required)")
        parser.add_argument("--stage", dest="stage", choices=STAGES, default="all",
                            help="run every stage in one job (default) or one stage alone, between topics")
        parser.add_argument("--write", dest="write", choices=WRITE_MODES, default=DOCUMENT,
                            help="document (default): upsert the whole processed item, deletes leave tombstones; "
                                 "score: write only the score fields to documents another indexer owns")
        parser.add_argument("--max-message-bytes", dest="max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                            help="dead-letter a message larger than this as message_too_large (Pub/Sub allows 10 MB)")
        parser.add_argument("--aggregate-seconds", dest="aggregate_seconds", type=float, default=5.0,
                            help="keep only the newest update per item over this many seconds")
        parser.add_argument("--es-max-buffer-seconds", dest="es_max_buffer_seconds", type=float, default=1.0,
                            help="the longest a document waits for its bulk request to fill (--es-max-docs)")
        parser.add_argument("--model-unavailable-seconds", dest="model_unavailable_seconds", type=float,
                            default=300.0, help="retry a Triton model that is down this long, then dead-letter "
                                                "the batch as model_unavailable")
        parser.add_argument("--max-run-seconds", dest="max_run_seconds", type=float,
                            help="drain a local run after this many seconds and print the counters")
        parser.add_argument("--local-pull-seconds", dest="local_pull_seconds", type=float, default=1.0,
                            help="local runner only: longest Pub/Sub pull; timers fire between pulls "
                                 "(Beam's direct runner waits 30 s, apache/beam#25442)")
        parser.add_argument("--local-max-messages", dest="local_max_messages", type=int, default=20,
                            help="local runner only: the most messages one Pub/Sub pull takes (acknowledged at "
                                 "once, so what a SIGKILL can lose beyond what is being processed)")
        parser.add_argument("--drain-seconds", dest="drain_seconds", type=float, default=60.0,
                            help="local runner only: on SIGTERM, Ctrl-C or --max-run-seconds, stop pulling and "
                                 "finish what was read for up to this long; what is left is reported in flight")
        parser.add_argument("--id-attribute", dest="id_attribute",
                            help="message attribute with a unique id, for Dataflow's exactly-once dedup "
                                 "(refused on the local runner, which does not support it)")


#: command -> (the module whose docstring describes it, the flag groups its --help shows in order)
JOBS: dict[str, tuple[str, tuple[type, ...]]] = {
    "backfill": ("pipelines.backfill", (BackfillFlags, JobIOFlags, ImageFlags, ModelFlags, ElasticsearchFlags,
                                        OutcomeFlags)),
    "collect": ("pipelines.collect", (CollectFlags, JobIOFlags, OutcomeFlags)),
    "embed": ("pipelines.embed", (EmbedFlags, JobIOFlags, ImageFlags, ModelFlags, OutcomeFlags)),
    "stream": ("pipelines.streaming", (StreamingFlags, ImageFlags, ModelFlags, ElasticsearchFlags)),
}


def _description(module: str) -> str:
    """The first paragraph of ``module``'s docstring, read from its source without importing it (Beam)."""
    origin = importlib.util.find_spec(module).origin
    with open(origin, encoding="utf-8") as handle:
        return (ast.get_docstring(ast.parse(handle.read(), origin)) or "").split("\n\n")[0]


def help_requested(argv: list[str] | None, command: str) -> bool:
    """Print the job's flags for ``-h``/``--help`` and return True.

    Beam's own parser only knows ``-h`` when it parses, so the job's flag
    groups are laid out here in one help text.
    """
    if not argv or not {"-h", "--help"} & set(argv):
        return False
    module, groups = JOBS[command]
    parser = ArgumentParser(
        prog=f"imagescore {command}", description=_description(module), formatter_class=DefaultsHelpFormatter,
        epilog="Beam flags (--runner, --project, --region, --temp_location, --direct_running_mode, ...) "
               "pass through unchanged.")
    for group in groups:
        # titled as the PipelineOptions class Beam parses, which is what the docs and error messages name
        group._add_argparse_args(parser.add_argument_group(group.__name__.removesuffix("Flags") + "Options"))
    parser.print_help()
    return True
