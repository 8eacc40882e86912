"""Collect: turn search logs (one SERP per line) into the paper's SERP windows, plus historical CTR.

The paper (Sec. 3.1) keeps, per SERP, the first clicked item (the *anchor*),
drops items whose price is too far from the anchor's (so the judge compares
like with like), and then keeps at most 5 items above and 2 below the anchor:
up to 8 images per SERP. This module does exactly that as a Beam batch job
that scales from a laptop (DirectRunner) to Dataflow: lines are read with
``ReadFromText``, every SERP is handled by pure per-element code, and the
historical CTR is a ``CombinePerKey``. Nothing is held in memory globally.

Every input line ends in exactly one place: a window, a counted drop (no
click, unusable anchor price, window too small, blank line) or a dead letter
with the reason and the original line. The counts are Beam metrics and are
written to ``summary.json`` with the invariants they satisfy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from cli_common import UsageError, job_main, run_outcome
from pipelines.flags import CollectFlags, help_requested
from pipelines.local_runner import runner_for
from pipelines.options import JobIOOptions, job_options, max_deadletter_share, require_files
from pipelines.report import counters, top_reasons
from transforms.deadletter import DEAD_LETTER, Rejected, to_dead_letter
from transforms.items import json_object, parse_time

log = logging.getLogger("imagescore.collect")
STAGE = "collect"
NAMESPACE = "imagescore"

# Counter names (also the keys of summary.json "counts"). SERP-level drops:
SERPS_IN = "serps_in"                              # well-formed SERPs (after parsing)
LINES_BLANK = "lines_blank"                        # empty lines: not SERPs, skipped and counted
SERPS_NO_CLICK = "serps_no_click"
SERPS_ANCHOR_PRICE_UNUSABLE = "serps_anchor_price_unusable"  # anchor price 0/null: relative difference undefined
SERPS_TOO_SMALL = "serps_too_small"                # fewer than --min-items items left in the window
WINDOWS = "windows"
# Item-level drops (items of SERPs that became windows):
ITEMS_IN = "items_in"
ITEMS_OTHER_CLICKS = "items_other_clicks"          # clicked, but not the anchor: neither anchor nor negative
ITEMS_PRICE_MISSING = "items_price_missing"        # price null/0: cannot be compared with the anchor's price
ITEMS_PRICE_FILTERED = "items_price_filtered"      # |p - p_anchor| / p_anchor > --max-price-diff
ITEMS_OUTSIDE_WINDOW = "items_outside_window"      # more than --before above or --after below the anchor
ITEMS_IN_DROPPED_SERPS = "items_in_dropped_serps"
WINDOW_ITEMS = "window_items"

_SERP_FIELDS = {"serp_id": str, "query": str, "platform": str, "ts": str, "items": list}
_ITEM_FIELDS = ("item_id", "position", "price", "image_url", "clicked")
ENGINE_FIELDS = ("score", "relevance_score")  # optional per item; carried into windows when logged
PROVENANCE = "image_provenance"  # optional per item: the indexed image_provenance, for analyze's AI click-through


# --------------------------------------------------------------------------- parsing

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_ts(value: str, what: str = "ts") -> datetime:
    """An ISO-8601 timestamp as an aware UTC datetime; a naive one is taken as UTC (logs are UTC by convention)."""
    return parse_time(value, what, reason="bad_timestamp")


def _parse_item(raw: Any, serp_id: str, index: int) -> dict:
    where = f"SERP {serp_id!r} item #{index}"
    if not isinstance(raw, dict):
        raise Rejected("bad_field", f"{where} is {type(raw).__name__}, expected an object")
    missing = [f for f in _ITEM_FIELDS if f not in raw]
    if missing:
        raise Rejected("missing_field", f"{where} lacks {', '.join(missing)} (required: {', '.join(_ITEM_FIELDS)})")
    item_id, position, price = raw["item_id"], raw["position"], raw["price"]
    if not isinstance(item_id, str) or not item_id:
        raise Rejected("bad_field", f"{where}: item_id must be a non-empty string, got {item_id!r}")
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise Rejected("bad_field", f"{where}: position must be an integer >= 0, got {position!r}")
    if price is not None and (not _is_number(price) or price < 0 or math.isnan(price)):
        raise Rejected("bad_field", f"{where}: price must be a number >= 0 or null, got {price!r}")
    if not isinstance(raw["image_url"], str) or not raw["image_url"].strip():
        raise Rejected("bad_field", f"{where}: image_url must be a non-empty string, got {raw['image_url']!r}")
    flags = {}
    for name in ("clicked", "liked", "purchased"):
        value = raw.get(name, False)
        if value is None and name != "clicked":
            value = False
        if not isinstance(value, bool):
            raise Rejected("bad_field", f"{where}: {name} must be true or false, got {value!r}")
        flags[name] = value
    engine = {}
    for name in ENGINE_FIELDS:  # optional: the engine's logged score and its named relevance clause's score
        value = raw.get(name)
        if value is None:
            continue
        if not _is_number(value) or value < 0 or not math.isfinite(value):
            raise Rejected("bad_field", f"{where}: {name} must be a finite number >= 0 or absent, got {value!r}")
        engine[name] = float(value)
    provenance = raw.get(PROVENANCE)
    if provenance is not None:
        if not isinstance(provenance, str) or not provenance:
            raise Rejected("bad_field", f"{where}: {PROVENANCE} must be a non-empty string or absent, "
                                        f"got {provenance!r}")
        engine[PROVENANCE] = provenance
    return {"item_id": item_id, "position": position, "price": None if price is None else float(price),
            "image_url": raw["image_url"].strip(), **flags, **engine}  # one spelling for every later join


def parse_serp(line: str | bytes) -> dict:
    """One log line -> a validated SERP dict (items sorted by position, ts normalised to UTC ISO).

    Raises :class:`Rejected` with reason malformed_json, missing_field, bad_field,
    bad_timestamp, duplicate_position or duplicate_item.
    """
    raw, _ = json_object(line, "log line (one SERP)")
    missing = [f for f in _SERP_FIELDS if f not in raw]
    if missing:
        raise Rejected("missing_field", f"SERP {raw.get('serp_id')!r} lacks {', '.join(missing)}")
    for name, kind in _SERP_FIELDS.items():
        if not isinstance(raw[name], kind):
            raise Rejected("bad_field", f"SERP {raw.get('serp_id')!r}: {name} must be a {kind.__name__}, "
                                        f"got {type(raw[name]).__name__}")
    serp_id = raw["serp_id"]
    if not serp_id:
        raise Rejected("bad_field", "SERP has an empty serp_id")
    ts = parse_ts(raw["ts"], f"SERP {serp_id!r} ts")
    items = [_parse_item(item, serp_id, i) for i, item in enumerate(raw["items"])]
    positions = Counter(item["position"] for item in items)
    dup_positions = sorted(p for p, n in positions.items() if n > 1)
    if dup_positions:
        raise Rejected("duplicate_position", f"SERP {serp_id!r} has several items at position(s) {dup_positions}")
    ids = Counter(item["item_id"] for item in items)
    dup_ids = sorted(i for i, n in ids.items() if n > 1)
    if dup_ids:
        raise Rejected("duplicate_item", f"SERP {serp_id!r} lists item(s) {dup_ids[:5]} more than once")
    return {"serp_id": serp_id, "query": raw["query"], "platform": raw["platform"], "ts": ts.isoformat(),
            "items": sorted(items, key=lambda item: item["position"])}


# --------------------------------------------------------------------------- windowing (pure)

def make_window(serp: dict, max_price_diff: float = 0.2, before: int = 5, after: int = 2,
                min_items: int = 1) -> tuple[dict | None, Counter]:
    """The paper's window around the first clicked item, or None, plus what was dropped and why.

    ``serp`` is a parsed SERP (see :func:`parse_serp`). Rules, in order:
    the anchor is the clicked item with the smallest position (no click -> None);
    other clicked items are removed (they are neither anchor nor negatives);
    an anchor without a positive price makes the relative price difference
    undefined, so the SERP is dropped (``serps_anchor_price_unusable``) rather
    than silently skipping the price filter; items without a positive price, or
    with ``|p - p_anchor| / p_anchor > max_price_diff``, are removed; of the
    rest, the nearest ``before`` items above and ``after`` below the anchor
    stay. Fewer than ``min_items`` items left -> None (``serps_too_small``).
    The window has no ``split``: that is assigned by :func:`assign_split`.
    """
    drops: Counter = Counter()
    items = sorted(serp["items"], key=lambda item: item["position"])
    n_items = len(items)
    clicked = [item for item in items if item["clicked"]]
    if not clicked:
        drops[SERPS_NO_CLICK] += 1
        drops[ITEMS_IN_DROPPED_SERPS] += n_items
        return None, drops
    anchor = clicked[0]
    anchor_price = anchor["price"]
    if anchor_price is None or anchor_price <= 0:
        drops[SERPS_ANCHOR_PRICE_UNUSABLE] += 1
        drops[ITEMS_IN_DROPPED_SERPS] += n_items
        return None, drops

    above: list[dict] = []
    below: list[dict] = []
    for item in items:
        if item is anchor:
            continue
        if item["clicked"]:
            drops[ITEMS_OTHER_CLICKS] += 1
        elif item["price"] is None or item["price"] <= 0:
            drops[ITEMS_PRICE_MISSING] += 1
        elif abs(item["price"] - anchor_price) / anchor_price > max_price_diff:
            drops[ITEMS_PRICE_FILTERED] += 1
        elif item["position"] < anchor["position"]:
            above.append(item)
        else:
            below.append(item)
    kept_above = above[max(0, len(above) - before):] if before > 0 else []
    kept_below = below[:after] if after > 0 else []
    drops[ITEMS_OUTSIDE_WINDOW] += (len(above) - len(kept_above)) + (len(below) - len(kept_below))
    window_items = kept_above + [anchor] + kept_below
    if len(window_items) < min_items:
        drops[SERPS_TOO_SMALL] += 1
        drops[ITEMS_IN_DROPPED_SERPS] += n_items
        for key in (ITEMS_OTHER_CLICKS, ITEMS_PRICE_MISSING, ITEMS_PRICE_FILTERED, ITEMS_OUTSIDE_WINDOW):
            drops.pop(key, None)  # the whole SERP is accounted for as dropped
        return None, drops
    drops[WINDOWS] += 1
    drops[WINDOW_ITEMS] += len(window_items)
    drops[ITEMS_IN] += n_items
    window = {
        "serp_id": serp["serp_id"], "query": serp["query"], "platform": serp["platform"], "ts": serp["ts"],
        "anchor_item_id": anchor["item_id"],
        "items": [{k: item[k] for k in ("item_id", "position", "price", "image_url", "clicked", "liked", "purchased")
                   + ENGINE_FIELDS + (PROVENANCE,) if k in item}
                  for item in window_items],
    }
    return window, drops


def assign_split(serp_id: str, train: float = 0.8, validation: float = 0.1, salt: str = "imagescore") -> str:
    """train/validation/test from a SHA-1 of the serp id: stable across runs, machines and Python versions."""
    digest = hashlib.sha1(f"{salt}:{serp_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < train:
        return "train"
    if u < train + validation:
        return "validation"
    return "test"


# --------------------------------------------------------------------------- Beam pieces

def _counter(cache: dict, name: str):
    if name not in cache:
        cache[name] = beam.metrics.Metrics.counter(NAMESPACE, name)
    return cache[name]


class ParseSerpFn(beam.DoFn):
    """Log line -> parsed SERP; bad lines -> tagged dead letters with the reason and the line."""

    def setup(self):
        self._counters: dict = {}

    def process(self, line: str) -> Iterable:
        if not line.strip():
            _counter(self._counters, LINES_BLANK).inc()
            return
        try:
            serp = parse_serp(line)
        except Rejected as exc:
            serp_id = None
            try:
                raw = json.loads(line)
                serp_id = raw.get("serp_id") if isinstance(raw, dict) and isinstance(raw.get("serp_id"), str) else None
            except ValueError:
                pass
            yield to_dead_letter(STAGE, exc, line, id=serp_id)
            return
        _counter(self._counters, SERPS_IN).inc()
        yield serp


class WindowFn(beam.DoFn):
    """Parsed SERP -> window with its split; every drop is counted under its reason."""

    def __init__(self, max_price_diff: float, before: int, after: int, min_items: int,
                 train_fraction: float, validation_fraction: float, split_salt: str):
        self._args = (max_price_diff, before, after, min_items)
        self._split = (train_fraction, validation_fraction, split_salt)

    def setup(self):
        self._counters: dict = {}

    def process(self, serp: dict) -> Iterable[dict]:
        window, drops = make_window(serp, *self._args)
        for name, count in drops.items():
            if count:
                _counter(self._counters, name).inc(count)
        if window is not None:
            split = assign_split(window["serp_id"], *self._split)
            _counter(self._counters, f"windows_{split}").inc()
            yield {**window, "split": split}


def impressions(serp: dict, cutoff: datetime, split_args: tuple) -> Iterable[tuple[str, tuple[int, int]]]:
    """(item_id, (1, clicked)) for every item of a train-split SERP logged strictly before ``cutoff``.

    Validation and test SERPs never count, whatever their time: otherwise the
    CTR-highest baseline would be graded on clicks it has already seen.
    """
    if parse_ts(serp["ts"]) >= cutoff or assign_split(serp["serp_id"], *split_args) != "train":
        return
    for item in serp["items"]:
        yield item["item_id"], (1, int(item["clicked"]))


class SumPairs(beam.CombineFn):
    """Element-wise sum of (impressions, clicks): associative, so Dataflow combines before the shuffle."""

    def create_accumulator(self):
        return 0, 0

    def add_input(self, acc, value):
        return acc[0] + value[0], acc[1] + value[1]

    def merge_accumulators(self, accs):
        shown = clicks = 0
        for a, c in accs:
            shown += a
            clicks += c
        return shown, clicks

    def extract_output(self, acc):
        return acc


def ctr_record(kv: tuple[str, tuple[int, int]]) -> dict:
    item_id, (shown, clicks) = kv
    return {"item_id": item_id, "impressions": shown, "clicks": clicks, "ctr": clicks / shown}


def parquet_schema():
    import pyarrow as pa
    item = pa.struct([("item_id", pa.string()), ("position", pa.int64()), ("price", pa.float64()),
                      ("image_url", pa.string()), ("clicked", pa.bool_()), ("liked", pa.bool_()),
                      ("purchased", pa.bool_()), ("score", pa.float64()), ("relevance_score", pa.float64()),
                      (PROVENANCE, pa.string())])
    return pa.schema([("serp_id", pa.string()), ("query", pa.string()), ("platform", pa.string()),
                      ("ts", pa.string()), ("split", pa.string()), ("anchor_item_id", pa.string()),
                      ("items", pa.list_(item))])


def _dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


class CollectWindows(beam.PTransform):
    """PCollection[str] of log lines -> {"windows", "ctr" (or absent), "deadletter"} PCollections."""

    def __init__(self, max_price_diff=0.2, before=5, after=2, min_items=2, train_fraction=0.8,
                 validation_fraction=0.1, split_salt="imagescore", ctr_cutoff: datetime | None = None):
        super().__init__()
        self._window_args = (max_price_diff, before, after, min_items, train_fraction, validation_fraction, split_salt)
        self._ctr_cutoff = ctr_cutoff

    def expand(self, lines):
        parsed = lines | "ParseSerps" >> beam.ParDo(ParseSerpFn()).with_outputs(DEAD_LETTER, main="serps")
        serps = parsed.serps
        out = {"windows": serps | "MakeWindows" >> beam.ParDo(WindowFn(*self._window_args)),
               "deadletter": parsed[DEAD_LETTER]}
        if self._ctr_cutoff is not None:
            out["ctr"] = (serps
                          | "Impressions" >> beam.FlatMap(impressions, self._ctr_cutoff, self._window_args[4:])
                          | "SumPerItem" >> beam.CombinePerKey(SumPairs())
                          | "CtrRecord" >> beam.Map(ctr_record))
        return out


# --------------------------------------------------------------------------- options and run

class CollectOptions(CollectFlags, PipelineOptions):
    """Beam's parsing of :class:`pipelines.flags.CollectFlags`."""


def _validate(opts: CollectOptions, output: str | None) -> datetime | None:
    problems = []
    if not opts.logs:
        problems.append("--logs GLOB is required (JSONL search logs)")
    if not output:
        problems.append("--output DIR is required")
    if not 0 <= opts.max_price_diff:
        problems.append(f"--max-price-diff must be >= 0, got {opts.max_price_diff}")
    if opts.before < 0 or opts.after < 0 or opts.min_items < 1:
        problems.append("--before/--after must be >= 0 and --min-items >= 1")
    if not (0 <= opts.train_fraction and 0 <= opts.validation_fraction
            and opts.train_fraction + opts.validation_fraction <= 1):
        problems.append("--train-fraction and --validation-fraction must be >= 0 and sum to at most 1")
    cutoff = None
    if opts.ctr_cutoff:
        try:
            cutoff = parse_ts(opts.ctr_cutoff, "--ctr-cutoff")
        except Rejected as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("; ".join(problems))
    require_files(opts.logs, "--logs", jsonl=True)
    return cutoff


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def build(pipeline: beam.Pipeline, opts: CollectOptions, output: str, cutoff: datetime | None) -> None:
    """Wire read -> collect -> write into ``pipeline``."""
    out = (pipeline
           | "ReadLogs" >> beam.io.ReadFromText(opts.logs)
           | "Collect" >> CollectWindows(opts.max_price_diff, opts.before, opts.after, opts.min_items,
                                         opts.train_fraction, opts.validation_fraction, opts.split_salt, cutoff))
    if opts.output_format == "parquet":
        out["windows"] | "WriteWindows" >> beam.io.WriteToParquet(
            _join(output, "windows"), parquet_schema(), file_name_suffix=".parquet")
    else:
        (out["windows"] | "WindowsJson" >> beam.Map(_dumps)
         | "WriteWindows" >> beam.io.WriteToText(_join(output, "windows"), file_name_suffix=".jsonl"))
    if "ctr" in out:
        (out["ctr"] | "CtrJson" >> beam.Map(_dumps)
         | "WriteCtr" >> beam.io.WriteToText(_join(output, "ctr"), file_name_suffix=".jsonl"))
    (out["deadletter"] | "DeadLetterJson" >> beam.Map(_dumps)
     | "WriteDeadLetters" >> beam.io.WriteToText(_join(output, "deadletter"), file_name_suffix=".jsonl"))


def summarize(counters: dict[str, int], opts: CollectOptions | None = None) -> dict:
    """summary.json: every count, the dead letters by reason, and the two accounting invariants."""
    counts = {name: int(value) for name, value in sorted(counters.items()) if not name.startswith("deadletter_")}
    prefix = f"deadletter_{STAGE}_"
    dead = {name[len(prefix):]: int(value) for name, value in sorted(counters.items()) if name.startswith(prefix)}
    lines_in = counts.get(SERPS_IN, 0) + counts.get(LINES_BLANK, 0) + sum(dead.values())
    serps_dropped = sum(counts.get(k, 0) for k in (SERPS_NO_CLICK, SERPS_ANCHOR_PRICE_UNUSABLE, SERPS_TOO_SMALL))
    item_drops = sum(counts.get(k, 0) for k in (ITEMS_OTHER_CLICKS, ITEMS_PRICE_MISSING, ITEMS_PRICE_FILTERED,
                                                ITEMS_OUTSIDE_WINDOW))
    summary = {
        "lines_in": lines_in,
        "counts": counts,
        "deadletters": dead,
        "deadletters_total": sum(dead.values()),
        "invariants": {
            # every line is a window, a counted SERP drop, a blank line or a dead letter
            "lines_accounted": lines_in == counts.get(WINDOWS, 0) + serps_dropped + counts.get(LINES_BLANK, 0)
            + sum(dead.values()),
            # every item of a window-producing SERP is in the window or dropped under a reason
            "items_accounted": counts.get(ITEMS_IN, 0) == counts.get(WINDOW_ITEMS, 0) + item_drops,
        },
    }
    if opts is not None:
        summary["options"] = {k: getattr(opts, k) for k in (
            "logs", "output_format", "max_price_diff", "before", "after", "min_items", "train_fraction",
            "validation_fraction", "split_salt", "ctr_cutoff")}
    return summary


def write_summary(output: str, summary: dict) -> None:
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.create(_join(output, "summary.json")) as fh:
        fh.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))


def run(argv: list[str] | None = None) -> int:
    if help_requested(argv, "collect"):
        return 0
    options = job_options(argv)
    opts = options.view_as(CollectOptions)
    output = options.view_as(JobIOOptions).output
    cutoff = _validate(opts, output)
    max_deadletter_share(options)
    pipeline = beam.Pipeline(runner=runner_for(options), options=options)
    build(pipeline, opts, output, cutoff)
    result = pipeline.run()
    result.wait_until_finish()
    totals = counters(result)
    summary = summarize(totals, opts)
    summary["options"]["output"] = output
    if opts.ctr_cutoff is None:
        summary["ctr"] = "skipped: pass --ctr-cutoff ISO_TIMESTAMP to write ctr*.jsonl"
    if not output.startswith(("gs://", "s3://")):
        os.makedirs(output, exist_ok=True)
    write_summary(output, summary)
    print(json.dumps(summary, indent=2, sort_keys=True))
    if not all(summary["invariants"].values()):
        log.error("collect: counts do not add up (%s); please report this as a bug", summary["invariants"])
        return 1
    counts = summary["counts"]
    print(f"collect: read {summary['lines_in']:,} lines, wrote {counts.get(WINDOWS, 0):,} windows "
          f"({counts.get(WINDOW_ITEMS, 0):,} items), dead-lettered {summary['deadletters_total']:,}"
          f"{top_reasons(totals)}; see {_join(output, 'summary.json')}", file=sys.stderr)
    code, why = run_outcome("collect", summary["lines_in"], counts.get(WINDOWS, 0), summary["deadletters_total"],
                        max_deadletter_share(options))
    if why:
        print(why, file=sys.stderr)
    return code


if __name__ == "__main__":
    job_main("python -m pipelines.collect", run)
