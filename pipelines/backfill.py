"""Backfill: score every recent item's thumbnail and write ``image_score``.

    items (Elasticsearch PIT slices | JSONL files)
      -> ParseItems -> window filter -> FetchImages -> DecodeImages
      -> RunInference(ScoreModelHandler) -> score records
      -> WriteToElasticsearch (score mode, through the stale-update guard) | scores*.jsonl + bulk*.ndjson
    every reject -> deadletter*.jsonl

Every input record ends in exactly one place: a score, a counted skip, or a
dead letter. Run it with ``python -m pipelines.backfill`` or ``imagescore
backfill``; both take ordinary Beam flags (``--runner``, ``--project``, ...).
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timedelta, timezone

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from es.bulk_writer import WriteToElasticsearch, bulk_lines, update_action
from es.client import EsConfig, EsError, make_client
from es.guard import SCORE, ensure_guard_script
from es.mapping import ensure_score_mapping
from es.source import ReadItemsFromElasticsearch
from cli_common import UsageError, job_main
from pipelines.flags import BackfillFlags, help_requested
from pipelines.options import (ElasticsearchOptions, ImageOptions, JobIOOptions, ModelOptions, job_options,
                               max_deadletter_share, require_files)
from pipelines.report import finish, print_counters, ship_packages, top_reasons
from pipelines.runners import runner_for
from transforms.deadletter import DEAD_LETTER, Rejected, count_dead_letter, dead_letter
from transforms.decode import DecodeImages
from transforms.fetch import FetchImages, FetchPolicy
from transforms.inference import make_score_handler, score_model_info
from transforms.items import Item, ParseItems, parse_time

log = logging.getLogger(__name__)


class BackfillOptions(BackfillFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.BackfillFlags`."""


def _scored_at() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def score_record(item: Item, score: float, model_id: str) -> dict:
    """The record written to ``scores*.jsonl`` and, through the stale-update guard, to Elasticsearch.

    ``updated_at`` is the item version the score was computed from (``created_at`` for an
    item that was never updated), so the guard keeps a score streaming wrote from a newer one.
    """
    return {"id": item.id, "updated_at": (item.updated_at or item.created_at).isoformat(),
            "image_score": float(score), "image_score_model": model_id, "image_scored_at": _scored_at(),
            "image_score_image_url": item.thumbnail}


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


class _ToScoreRecord(beam.DoFn):
    def __init__(self):
        self._scored = beam.metrics.Metrics.counter("imagescore", "scored")

    def process(self, keyed_result):
        item, result = keyed_result
        self._scored.inc()
        yield score_record(item, result.inference, result.model_id)


def _bulk_lines(record: dict, index: str) -> str:
    return bulk_lines(update_action(record, index, SCORE))


def _dead_letter_from_write(failure) -> dict:
    record, reason, error = failure
    count_dead_letter("index", reason)
    return dead_letter("index", reason, error, record, id=record.get("id"))


def _ensure_mapping(config: EsConfig, index: str) -> None:
    """Map the score fields and store the guard script before any write.

    The mapping makes ``image_score_model`` a keyword the source can filter on; every write
    runs the stored guard script (``es/guard.py``). It is also the job's first request, so a
    cluster that is not there, a missing index or refused credentials stop the job here with
    one line naming the URL and the index."""
    client = make_client(config)
    try:
        ensure_score_mapping(client, index)
        ensure_guard_script(client)
    except EsError as exc:
        if exc.status is None:
            raise UsageError(f"Elasticsearch is not reachable at {config.safe_url()} ({exc}); check --es-url "
                             "(or $ES_URL) and that the cluster is up") from None
        if exc.status in (400, 401, 403, 404):
            hint = {401: "; check ES_API_KEY or ES_USERNAME/ES_PASSWORD",
                    403: "; the credentials need the manage privilege on the index"}.get(exc.status, "")
            raise UsageError(f"Elasticsearch at {config.safe_url()}: {exc}{hint}") from None
        raise
    finally:
        client.close()


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


def build(pipeline: beam.Pipeline, opts: PipelineOptions) -> None:
    """Add the backfill to ``pipeline``; split out of :func:`run` so tests can drive it with TestPipeline."""
    bo, jo, io, mo, eo = (opts.view_as(c) for c in (
        BackfillOptions, JobIOOptions, ImageOptions, ModelOptions, ElasticsearchOptions))
    _validate(bo, jo, eo.es_url)
    try:
        now = parse_time(bo.now, "--now") if bo.now else datetime.now(timezone.utc)
    except Rejected as exc:
        raise UsageError(str(exc)) from None
    try:
        model_id, input_size = score_model_info(mo.model)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    if bo.source == "files":
        require_files(jo.input, "--input", jsonl=True)
    since = now - timedelta(days=bo.days)
    es_config = EsConfig.from_env(url=eo.es_url, **(
        {} if eo.es_verify_certs is None else {"verify_certs": False})) if eo.es_url else None

    if bo.source == "files":
        # Bytes, not text: one line in another encoding is a dead letter, not a failed job.
        payloads = pipeline | "ReadFiles" >> beam.io.ReadFromText(jo.input, coder=beam.coders.BytesCoder())
    else:
        payloads = pipeline | "ReadIndex" >> ReadItemsFromElasticsearch(
            es_config, eo.es_index, days=bo.days, model_id=model_id, slices=bo.es_slices, now=now,
            keep_alive=bo.es_pit_keep_alive)

    parsed = payloads | "Parse" >> ParseItems()
    recent = parsed.items | "KeepRecent" >> beam.ParDo(_KeepRecent(since))
    policy = FetchPolicy(allowed_hosts=io.allow_image_hosts, allowed_schemes=io.allow_image_schemes,
                         max_bytes=io.max_image_bytes, total_timeout=io.fetch_timeout,
                         concurrency=io.fetch_concurrency)
    fetched = recent | "Fetch" >> FetchImages(policy)
    decoded = fetched.images | "Decode" >> DecodeImages(input_size, max_pixels=io.max_image_pixels)
    handler = KeyedModelHandler(make_score_handler(
        mo.model, mo.device, min_batch_size=mo.min_batch_size, max_batch_size=mo.max_batch_size,
        large_model=mo.large_model, triton_timeout_s=mo.triton_timeout, triton_retries=mo.triton_retries))
    records = (decoded.decoded
               | "Score" >> RunInference(handler)
               | "ToRecord" >> beam.ParDo(_ToScoreRecord()))

    dead = [parsed[DEAD_LETTER], fetched[DEAD_LETTER], decoded[DEAD_LETTER]]
    if jo.output:
        out = jo.output.rstrip("/")
        _ = (records | "ScoresJson" >> beam.Map(json.dumps, sort_keys=True)
             | "WriteScores" >> beam.io.WriteToText(f"{out}/scores", file_name_suffix=".jsonl"))
        _ = (records | "BulkLines" >> beam.Map(_bulk_lines, eo.es_index)
             | "WriteBulk" >> beam.io.WriteToText(f"{out}/bulk", file_name_suffix=".ndjson"))
        deadletter_dir = (bo.deadletter or f"{out}/deadletter").rstrip("/")
    else:
        _ensure_mapping(es_config, eo.es_index)
        written = records | "WriteIndex" >> WriteToElasticsearch(
            es_config, eo.es_index, max_docs=eo.es_max_docs, max_bytes=eo.es_max_bytes, mode=SCORE)
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
