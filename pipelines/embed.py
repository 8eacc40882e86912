"""Embeddings job: one frozen-backbone embedding per (item_id, image_url).

    windows*.jsonl|parquet (collect) | JSONL {item_id, image_url}
      -> entries -> dedupe by (item_id, image_url), minus those already embedded
      -> ScoreImages (FetchImages -> DecodeImages(backbone.input_size) -> RunInference(BackboneModelHandler))
      -> DIR/embeddings-*.parquet
    every reject (a model error: its batch, stage ``inference``) -> DIR/deadletter-*.jsonl

Resumable: rows already in ``DIR/embeddings-*.parquet`` with this run's
``backbone_id`` are skipped (counted), so a rerun after a failure or with
more windows only embeds what is new. Each run writes its own file prefix, so
a rerun never overwrites an earlier run's output. Every unique image ends in
exactly one place: embedded, skipped, or dead-lettered.

Run it with ``imagescore embed`` or ``python -m pipelines.embed`` and
ordinary Beam flags (``--runner``, ``--project``, ...).
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from cli_common import UsageError, job_main
from pipelines.flags import EmbedFlags, help_requested
from pipelines.local_runner import runner_for
from pipelines.options import ImageOptions, JobIOOptions, ModelOptions, job_options, max_deadletter_share, require_files
from pipelines.report import finish, print_counters, ship_packages, top_reasons
from scoring.backbone import load_backbone
from transforms.deadletter import DEAD_LETTER, Rejected, to_dead_letter
from transforms.embed_handler import BackboneModelHandler
from transforms.items import Item, json_object, parse_time
from transforms.score_images import SCORED, ScoreImages

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("image_url", pa.string()),
    ("embedding", pa.list_(pa.float32())),
    ("backbone_id", pa.string()),
])
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class EmbedOptions(EmbedFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.EmbedFlags`."""


# --- reading ---------------------------------------------------------------------------------------------------

def _entry(item_id: Any, image_url: Any, ts: Any, payload: dict) -> Item:
    """One image to embed as an :class:`Item`; raises :class:`Rejected` naming the bad field."""
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not item_id.strip():
        raise Rejected("missing_id", "entry has no non-empty string 'item_id'")
    if not isinstance(image_url, str) or not image_url.strip():
        raise Rejected("no_images", f"item {item_id} has no non-empty string 'image_url'")
    try:
        created_at = parse_time(ts, "ts") if ts is not None else EPOCH
    except Rejected:
        created_at = EPOCH  # the window time is informational here; a bad one must not cost the image
    return Item(id=item_id.strip(), image_urls=(image_url.strip(),), created_at=created_at,
                payload=json.dumps(payload, sort_keys=True, default=str))


class _WindowEntriesFn(beam.DoFn):
    """A collect window -> one entry per listed item (bad items dead-lettered one by one)."""

    def __init__(self):
        self._read = beam.metrics.Metrics.counter("imagescore", "embed_entries_read")

    def process(self, record) -> Iterator:
        try:
            window = json_object(record, "window line")[0]
            items = window.get("items")
            if not isinstance(items, list):
                raise Rejected("bad_field", f"window {window.get('serp_id')!r} has no 'items' list")
        except Rejected as exc:
            self._read.inc()
            yield to_dead_letter("read", exc, record)
            return
        for entry in items:
            self._read.inc()
            payload = {"serp_id": window.get("serp_id"), "ts": window.get("ts"),
                       **(entry if isinstance(entry, dict) else {"entry": entry})}
            try:
                if not isinstance(entry, dict):
                    raise Rejected("bad_field", f"window {window.get('serp_id')!r}: item entry is not an object")
                yield _entry(entry.get("item_id"), entry.get("image_url"), window.get("ts"), payload)
            except Rejected as exc:
                yield to_dead_letter("read", exc, payload, id=payload.get("item_id"))


class _ImageEntriesFn(beam.DoFn):
    """A ``{item_id, image_url}`` JSONL line -> one entry."""

    def __init__(self):
        self._read = beam.metrics.Metrics.counter("imagescore", "embed_entries_read")

    def process(self, line) -> Iterator:
        self._read.inc()
        try:
            record = json_object(line, "image list line")[0]
            yield _entry(record.get("item_id"), record.get("image_url"), record.get("ts"), record)
        except Rejected as exc:
            yield to_dead_letter("read", exc, line)


def _key(item: Item) -> tuple[str, str]:
    return item.id, item.image_urls[0]


class _PendingFn(beam.DoFn):
    """Per unique (item_id, image_url): the one entry to embed, or a counted skip if already embedded."""

    def __init__(self):
        self._unique = beam.metrics.Metrics.counter("imagescore", "embed_unique_images")
        self._duplicates = beam.metrics.Metrics.counter("imagescore", "embed_duplicates_merged")
        self._skipped = beam.metrics.Metrics.counter("imagescore", "embed_skipped_already_embedded")

    def process(self, element) -> Iterator[Item]:
        _, groups = element
        entries = list(groups["todo"])  # empty: embedded earlier, not asked for this time
        if entries:
            self._unique.inc()
            self._duplicates.inc(len(entries) - 1)
            if list(groups["done"]):
                self._skipped.inc()
            else:
                # the earliest window, then the payload text: the same choice on every run and runner
                yield min(entries, key=lambda item: (item.created_at, item.payload))


def already_embedded_files(output: str) -> list[str]:
    """The embeddings files an earlier run left in ``output``."""
    pattern = f"{output.rstrip('/')}/embeddings-*.parquet"
    return [m.path for result in FileSystems.match([pattern]) for m in result.metadata_list]


def _to_row(item: Item, result) -> dict:
    item_id, image_url = _key(item)
    return {"item_id": item_id, "image_url": image_url,
            "embedding": result.inference.astype("float32").tolist(), "backbone_id": result.model_id}


class _CountEmbedded(beam.DoFn):
    def __init__(self):
        self._embedded = beam.metrics.Metrics.counter("imagescore", "embed_embedded")

    def process(self, row):
        self._embedded.inc()
        yield row


def _validate(opts: EmbedOptions, io_opts: JobIOOptions) -> None:
    if bool(opts.windows) == bool(io_opts.input):
        raise UsageError("pass exactly one of --windows GLOB (collect's windows) or --input GLOB "
                         "(JSONL {item_id, image_url})")
    if not opts.backbone:
        raise UsageError("--backbone is required, e.g. --backbone hf:openai/clip-vit-base-patch16, "
                         "--backbone hf:/models/clip or --backbone handcrafted")
    if not io_opts.output:
        raise UsageError("--output DIR is required (embeddings-*.parquet and deadletter-*.jsonl go there)")


def build(pipeline: beam.Pipeline, opts: PipelineOptions, run_id: str | None = None) -> dict[str, Any]:
    """Add the job to ``pipeline``; returns what it decided up front (backbone id, files skipped from)."""
    eo, io, mo, jo = (opts.view_as(c) for c in (EmbedOptions, ImageOptions, ModelOptions, JobIOOptions))
    _validate(eo, jo)
    max_deadletter_share(opts)
    # Loaded once here for its id and input size; workers load their own copy through the handler.
    try:
        backbone = load_backbone(eo.backbone, device="cpu", normalize=eo.normalize)
    except (ValueError, OSError) as exc:
        raise UsageError(f"--backbone {eo.backbone!r}: {exc}") from None
    if eo.windows:
        require_files(eo.windows, "--windows", jsonl=not eo.windows.endswith(".parquet"))
    else:
        require_files(jo.input, "--input", jsonl=True)
    backbone_id, input_size = backbone.backbone_id, backbone.input_size
    del backbone
    out = jo.output.rstrip("/")
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]

    if eo.windows:
        reader = (beam.io.ReadFromParquet(eo.windows) if eo.windows.endswith(".parquet")
                  else beam.io.ReadFromText(eo.windows))
        read = (pipeline | "ReadWindows" >> reader
                | "Entries" >> beam.ParDo(_WindowEntriesFn()).with_outputs(DEAD_LETTER, main="entries"))
    else:
        read = (pipeline | "ReadInput" >> beam.io.ReadFromText(jo.input)
                | "Entries" >> beam.ParDo(_ImageEntriesFn()).with_outputs(DEAD_LETTER, main="entries"))

    previous = already_embedded_files(out)
    if previous:
        done = (pipeline | "PreviousFiles" >> beam.Create(previous)
                | "ReadPrevious" >> beam.io.ReadAllFromParquet(columns=["item_id", "image_url", "backbone_id"])
                | "SameBackbone" >> beam.Filter(lambda row, bid: row["backbone_id"] == bid, backbone_id)
                | "DoneKeys" >> beam.Map(lambda row: ((row["item_id"], row["image_url"]), None)))
    else:
        done = pipeline | "NothingDone" >> beam.Create([])
    todo = read.entries | "Key" >> beam.Map(lambda item: (_key(item), item))
    pending = ({"todo": todo, "done": done} | "Join" >> beam.CoGroupByKey()
               | "Pending" >> beam.ParDo(_PendingFn()))

    handler = BackboneModelHandler(eo.backbone, mo.device, eo.normalize, **mo.batching())
    embedded = pending | "Embed" >> ScoreImages(handler, input_size, io.fetch_policy(), io.max_image_pixels)
    _ = (embedded[SCORED]
         | "ToRow" >> beam.MapTuple(_to_row)
         | "CountEmbedded" >> beam.ParDo(_CountEmbedded())
         | "WriteEmbeddings" >> beam.io.WriteToParquet(f"{out}/embeddings-{run_id}", SCHEMA,
                                                       file_name_suffix=".parquet"))
    _ = ((read[DEAD_LETTER], embedded[DEAD_LETTER]) | "AllDeadLetters" >> beam.Flatten()
         | "DeadLetterJson" >> beam.Map(json.dumps, sort_keys=True)
         | "WriteDeadLetters" >> beam.io.WriteToText(f"{out}/deadletter-{run_id}", file_name_suffix=".jsonl"))
    return {"backbone_id": backbone_id, "input_size": input_size, "previous_files": previous, "run_id": run_id}


def summarize(totals: dict[str, int]) -> dict[str, int]:
    """The job's accounting: every unique image is embedded, skipped or dead-lettered."""
    dead = sum(value for name, value in totals.items() if name.startswith("deadletter_"))
    return {"entries_read": totals.get("embed_entries_read", 0),
            "unique_images": totals.get("embed_unique_images", 0),
            "duplicates_merged": totals.get("embed_duplicates_merged", 0),
            "embedded": totals.get("embed_embedded", 0),
            "skipped_already_embedded": totals.get("embed_skipped_already_embedded", 0),
            "dead_letters": dead}


def run(argv: list[str] | None = None):
    """Parse flags, run the job to completion, print what happened."""
    if help_requested(argv, "embed"):
        return None
    opts = job_options(argv)
    ship_packages(opts)
    pipeline = beam.Pipeline(runner=runner_for(opts), options=opts)
    plan = build(pipeline, opts)
    print(f"embed: backbone {plan['backbone_id']} (input {plan['input_size']}px); "
          f"{len(plan['previous_files'])} earlier embeddings file(s) checked for rows to skip")
    result = pipeline.run()
    result.wait_until_finish()
    totals = print_counters(result, title="embed")
    summary = summarize(totals)
    print("embed: " + ", ".join(f"{name}={value}" for name, value in summary.items()) + top_reasons(totals))
    finish(result, "embed", summary["entries_read"], summary["embedded"] + summary["skipped_already_embedded"],
           summary["dead_letters"], max_deadletter_share(opts))
    return result


if __name__ == "__main__":
    job_main("python -m pipelines.embed", run)
