"""Backfill: score every recent item's thumbnail and write ``image_score``.

    items (Elasticsearch PIT slices | JSONL files)
      -> ParseItems -> window filter
      -> ScoreImages (FetchImages -> DecodeImages -> RunInference(--model handler)) -> score records
      -> WriteToElasticsearch (score mode, through the stale-update guard) | scores*.jsonl + bulk*.ndjson
    every reject -> deadletter*.jsonl

Every input record ends in exactly one place: a score, a counted skip, or a
dead letter (a model error dead-letters its batch, stage ``inference``; the other
batches go on). The shared options build the fetch policy, the model handler and
the Elasticsearch config, and prepare the index (``es.index_setup.prepare_index``).
Run it with ``python -m pipelines.backfill`` or ``imagescore backfill``; both take
ordinary Beam flags (``--runner``, ``--project``, ...).
"""
from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import PipelineOptions

from cli_common import UsageError, job_main
from es.bulk_writer import WriteToElasticsearch, bulk_lines, update_action
from es.guard import WriteMode
from es.mapping import VERSION_FIELD
from es.source import ReadItemsFromElasticsearch
from pipelines.flags import BackfillFlags, help_requested
from pipelines.local_runner import runner_for
from pipelines.options import (
    ElasticsearchOptions,
    ImageOptions,
    JobIOOptions,
    ModelOptions,
    job_options,
    max_deadletter_share,
    require_files,
)
from pipelines.report import finish, print_counters, ship_packages, top_reasons
from transforms.deadletter import DEAD_LETTER, Rejected, count_dead_letter, dead_letter
from transforms.items import Item, ParseItems, parse_time
from transforms.provenance import ProvenanceLimits
from transforms.score_images import SCORED, ScoreImages, ScoreRecordFn

log = logging.getLogger(__name__)


class BackfillOptions(BackfillFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.BackfillFlags`."""


def score_record(item: Item, score_fields: dict) -> dict:
    """The record written to ``scores*.jsonl`` and, through the stale-update guard, to Elasticsearch:
    ``id``, ``updated_at`` and the score fields (:func:`es.guard.score_fields`).

    ``updated_at`` is the item version the score was computed from (``created_at`` for an
    item that was never updated), so the guard keeps a score streaming wrote from a newer one.
    """
    return {"id": item.id, VERSION_FIELD: (item.updated_at or item.created_at).isoformat(), **score_fields}


class _KeepRecent(beam.DoFn):
    """Counted skip for items created before the window (the ES source filters them in the query)."""

    def __init__(self, since: datetime):
        self._since = since
        self._skipped = beam.metrics.Metrics.counter("imagescore", "skipped_outside_window")

    def process(self, item: Item):
        if item.created_at >= self._since:
            yield item
        else:
            self._skipped.inc()


def _bulk_lines(record: dict, index: str) -> str:
    return bulk_lines(update_action(record, index, WriteMode.SCORE))


def _dead_letter_from_write(failure) -> dict:
    record, reason, error = failure
    count_dead_letter("index", reason)
    return dead_letter("index", reason, error, record, id=record.get("id"))


def _validate(opts: BackfillOptions, io_opts: JobIOOptions, es_url: str | None) -> None:
    if opts.source == "files" and not io_opts.input:
        raise UsageError("--source files needs --input GLOB (JSONL item records)")
    if io_opts.output is None:
        if not es_url:
            raise UsageError("no --es-url and no $ES_URL; pass one, or --output DIR to write files instead")
        if not opts.deadletter:
            raise UsageError("writing to Elasticsearch needs --deadletter DIR_OR_GS_PREFIX, so that no "
                             "rejected item is dropped silently")
    if not re.fullmatch(r"\d+(d|h|m|s|ms|micros|nanos)", opts.es_pit_keep_alive or ""):
        raise UsageError(f"--es-pit-keep-alive {opts.es_pit_keep_alive!r} is not an Elasticsearch time "
                         "value such as 10m or 1h")
    if opts.source == "es" and not es_url:
        raise UsageError("--source es needs --es-url (or $ES_URL); use --source files --input GLOB otherwise")
    if opts.days < 0:
        raise UsageError(f"--days must be at least 0, got {opts.days}")
    max_deadletter_share(opts)


def build(pipeline: beam.Pipeline, opts: PipelineOptions, handler: ModelHandler | None = None) -> None:
    """Add the backfill to ``pipeline``; split out of :func:`run` so tests can drive it with TestPipeline.

    ``handler`` replaces the one ``--model`` names (tests use it to make a model fail)."""
    bo, jo, io, mo, eo = (opts.view_as(c) for c in (
        BackfillOptions, JobIOOptions, ImageOptions, ModelOptions, ElasticsearchOptions))
    _validate(bo, jo, eo.es_url)
    try:
        now = parse_time(bo.now, "--now") if bo.now else datetime.now(UTC)
    except Rejected as exc:
        raise UsageError(str(exc)) from None
    model_id, input_size = mo.model_info()
    if bo.source == "files":
        require_files(jo.input, "--input", jsonl=True)
    since = now - timedelta(days=bo.days)
    es_config = eo.es_config()

    if bo.source == "files":
        # Bytes, not text: one line in another encoding is a dead letter, not a failed job.
        payloads = pipeline | "ReadFiles" >> beam.io.ReadFromText(jo.input, coder=beam.coders.BytesCoder())
    else:
        payloads = pipeline | "ReadIndex" >> ReadItemsFromElasticsearch(
            es_config, eo.es_index, days=bo.days, model_id=model_id, slices=bo.es_slices, now=now,
            keep_alive=bo.es_pit_keep_alive)

    parsed = payloads | "Parse" >> ParseItems()
    recent = parsed.items | "KeepRecent" >> beam.ParDo(_KeepRecent(since))
    scored = recent | "Score" >> ScoreImages(handler or mo.score_handler(), input_size, io.fetch_policy(),
                                             io.max_image_pixels, provenance=ProvenanceLimits())
    to_records = scored[SCORED] | "ToRecord" >> ScoreRecordFn.apply(score_record, "score")
    records = to_records.records

    dead = [parsed[DEAD_LETTER], scored[DEAD_LETTER], to_records[DEAD_LETTER]]
    if jo.output:
        out = jo.output.rstrip("/")
        _ = (records | "ScoresJson" >> beam.Map(json.dumps, sort_keys=True)
             | "WriteScores" >> beam.io.WriteToText(f"{out}/scores", file_name_suffix=".jsonl"))
        _ = (records | "BulkLines" >> beam.Map(_bulk_lines, eo.es_index)
             | "WriteBulk" >> beam.io.WriteToText(f"{out}/bulk", file_name_suffix=".ndjson"))
        deadletter_dir = (bo.deadletter or f"{out}/deadletter").rstrip("/")
    else:
        eo.prepare_index(WriteMode.SCORE)
        written = records | "WriteIndex" >> WriteToElasticsearch(
            es_config, eo.es_index, max_docs=eo.es_max_docs, max_bytes=eo.es_max_bytes, mode=WriteMode.SCORE,
            unavailable_seconds=eo.es_unavailable_seconds)
        dead.append(written.failed | "WriteFailures" >> beam.Map(_dead_letter_from_write))
        deadletter_dir = bo.deadletter.rstrip("/")
    _ = (dead | "AllDeadLetters" >> beam.Flatten()
         | "DeadLetterJson" >> beam.Map(json.dumps, sort_keys=True)
         | "WriteDeadLetters" >> beam.io.WriteToText(f"{deadletter_dir}/deadletter", file_name_suffix=".jsonl"))


def run(argv: list[str] | None = None) -> beam.runners.runner.PipelineResult:
    """Parse flags, run the backfill to completion, print what happened."""
    if help_requested(argv, "backfill"):
        return None
    opts = job_options(argv)
    ship_packages(opts)
    pipeline = beam.Pipeline(runner=runner_for(opts), options=opts)
    build(pipeline, opts)
    result = pipeline.run()
    result.wait_until_finish()
    totals = print_counters(result, title="backfill")
    to_files = opts.view_as(JobIOOptions).output is not None
    written = totals.get("scored", 0) if to_files else totals.get("es_written", 0)
    skipped = sum(v for k, v in totals.items() if k.startswith("skipped_")) + totals.get("es_missing", 0)
    read, dead = totals.get("items_read", 0), totals.get("deadlettered", 0)
    print(f"backfill: read {read:,}, scored {totals.get('scored', 0):,}, "
          f"written {written:,}, stale {totals.get('es_stale', 0):,} (a newer score was already there), "
          f"skipped {skipped:,}, dead-lettered {dead:,}{top_reasons(totals)}")
    finish(result, "backfill", read, written + skipped + totals.get("es_stale", 0), dead, max_deadletter_share(opts))
    return result


if __name__ == "__main__":
    job_main("python -m pipelines.backfill", run)
