"""``imagescore monitor``: coverage and drift of the image score, per model and segment.

The source is the index (``--es-url``/``--es-index``: one aggregation search, see
:mod:`es.monitoring`) or score files (``--input "scores*.jsonl"``: one JSON object per line
with ``image_score`` and the grouping fields), binned the same way. Groups are the values of
the ``--by`` fields (a missing field is the group ``null``). Each group's histogram of
``--bins`` equal bins over [0, 1] is compared with a reference: the group of the same key in
a ``--baseline`` file, or (``--reference-model``) the group with the same other keys scored
by that model. Statistics on bin shares: PSI (shares floored at 1e-4), Jensen-Shannon
distance (base 2), a *binned* Kolmogorov-Smirnov statistic (largest gap between the
cumulative bin shares) and the Wasserstein-1 distance between bin centres. A group drifts
when PSI > ``--psi-alert``. Writes ``monitor.json``, ``monitor.md`` and ``monitor.png``;
exit code 3 with ``--fail-on-drift`` when a group drifts.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cli_common import ArgumentParser, UsageError, job_main
from es.monitoring import PERCENTS, IndexSummary, TooManyGroups
from es.names import DELETED_FIELD, MODEL_FIELD, SCORE_FIELD, SCORE_VERSION_FIELD, SCORED_AT_FIELD, VERSION_FIELD

PSI_FLOOR = 1e-4
DRIFT_EXIT = 3
BASELINE_KIND = "imagescore-monitor-baseline"
_FIELD_SLOT = 1 << 20  # room for each --by field's values when the group's ids are packed into one int64


def bin_edges(bins: int) -> np.ndarray:
    """The N + 1 bin edges ``f32(i/N)`` as float64: the edges at the precision the index stores scores in."""
    return (np.arange(bins + 1, dtype=np.float64) / bins).astype(np.float32).astype(np.float64)


def bin_index(scores: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each score in [0, 1]: ``i`` for ``f32(i/N) <= f32(s) < f32((i+1)/N)``, the last bin also holding 1.

    Scores are first rounded to float32, as Elasticsearch's ``float`` field stores them, so this
    path and the index's (``es.monitoring.BIN_SCRIPT``) give the same bins; a score of exactly
    ``i/N`` falls in bin ``i``.
    """
    stored = np.asarray(scores, dtype=np.float64).astype(np.float32).astype(np.float64)
    return np.searchsorted(bin_edges(bins)[1:-1], stored, side="right").astype(np.int64)


def bin_centres(bins: int) -> np.ndarray:
    return (np.arange(bins, dtype=np.float64) + 0.5) / bins


def drift_stats(current: list[int] | np.ndarray, reference: list[int] | np.ndarray) -> dict[str, float]:
    """PSI, Jensen-Shannon distance, binned KS and W1 between two histograms (counts) of the same bins."""
    from scipy.spatial.distance import jensenshannon  # scipy: imported when a comparison runs, not for --help
    from scipy.stats import wasserstein_distance
    p = np.asarray(current, dtype=np.float64)
    q = np.asarray(reference, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    pf, qf = np.maximum(p, PSI_FLOOR), np.maximum(q, PSI_FLOOR)  # floored for PSI only, not renormalised
    centres = bin_centres(len(p))
    return {"psi": float(np.sum((pf - qf) * np.log(pf / qf))),
            "js": float(jensenshannon(p, q, base=2)),
            "ks": float(np.max(np.abs(np.cumsum(p) - np.cumsum(q)))),
            "w1": float(wasserstein_distance(centres, centres, p, q))}


# --------------------------------------------------------------------------- the offline source


@dataclass
class _Accumulator:
    """Per-group bin counts and score samples, and coverage tallies, over the batches of the JSONL files."""

    fields: list[str]
    bins: int
    max_groups: int
    codes: dict[tuple, int] = field(default_factory=dict)  # group key -> code
    field_ids: list[dict] = field(default_factory=list)  # per --by field: value -> id
    counts: list[np.ndarray] = field(default_factory=list)
    code_chunks: list[np.ndarray] = field(default_factory=list)
    score_chunks: list[np.ndarray] = field(default_factory=list)
    scored_at_chunks: list[np.ndarray] = field(default_factory=list)
    models: dict[Any, list] = field(default_factory=dict)  # model -> [scores, newest scored_at ms]
    live: int = 0
    scored: int = 0
    in_range: int = 0
    stale: int = 0

    def __post_init__(self) -> None:
        self.field_ids = [{} for _ in self.fields]

    def _ids(self, column, name: str, slot: dict) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc
        encoded = pc.dictionary_encode(column)
        values = encoded.dictionary.to_pylist()
        for value in values:
            if value not in slot:
                if len(slot) >= self.max_groups:
                    raise TooManyGroups(f"--by {name} has more than --max-groups {self.max_groups} values; "
                                        "raise --max-groups")
                slot[value] = len(slot)
        if None not in slot and encoded.indices.null_count:
            slot[None] = len(slot)
        lookup = np.array([slot[v] for v in values] or [0], dtype=np.int64)
        indices = pc.fill_null(encoded.indices, pa.scalar(-1, encoded.indices.type)).to_numpy(zero_copy_only=False)
        return np.where(indices >= 0, lookup[np.maximum(indices, 0)], slot.get(None, 0))

    def add(self, batch) -> None:
        import pyarrow.compute as pc
        names = batch.schema.names
        live = np.ones(batch.num_rows, dtype=bool)
        if DELETED_FIELD in names:
            live = ~pc.fill_null(pc.equal(batch.column(DELETED_FIELD), True), False).to_numpy(zero_copy_only=False)
        batch = batch.filter(live)
        self.live += batch.num_rows
        score = batch.column(SCORE_FIELD)
        has = pc.is_valid(score).to_numpy(zero_copy_only=False)
        self.scored += int(has.sum())
        values = score.to_numpy(zero_copy_only=False)
        in_range = has & (values >= 0) & (values <= 1)  # NaN compares false: out of range
        self.in_range += int(in_range.sum())
        scored_batch = batch.filter(has)
        scored_at = _epoch_ms(scored_batch.column(SCORED_AT_FIELD), SCORED_AT_FIELD)
        self.scored_at_chunks.append(scored_at[~np.isnan(scored_at)])
        self._models(scored_batch.column(MODEL_FIELD), scored_at)
        version = _epoch_ms(batch.column(SCORE_VERSION_FIELD), SCORE_VERSION_FIELD)
        updated = _epoch_ms(batch.column(VERSION_FIELD), VERSION_FIELD)
        self.stale += int(np.sum(np.floor(version) < np.floor(updated)))  # NaN (missing) compares false
        kept = batch.filter(in_range)
        if not kept.num_rows:
            return
        packed = np.zeros(kept.num_rows, dtype=np.int64)
        for i, name in enumerate(self.fields):
            packed = packed * _FIELD_SLOT + self._ids(kept.column(name), name, self.field_ids[i])
        unique, inverse = np.unique(packed, return_inverse=True)
        by_id = [{v: k for k, v in slot.items()} for slot in self.field_ids]
        local = np.empty(len(unique), dtype=np.int64)
        for j, combined in enumerate(unique.tolist()):
            key = []
            for slot in reversed(by_id):
                combined, part = divmod(combined, _FIELD_SLOT)
                key.append(slot[part])
            key = tuple(reversed(key))
            if key not in self.codes:
                self.codes[key] = len(self.codes)
                self.counts.append(np.zeros(self.bins, dtype=np.int64))
            local[j] = self.codes[key]
        codes = local[inverse.reshape(-1)]
        scores = kept.column(SCORE_FIELD).to_numpy(zero_copy_only=False)
        bins = bin_index(scores, self.bins)
        flat = np.bincount(codes * self.bins + bins, minlength=len(self.codes) * self.bins)
        for code in np.unique(codes).tolist():
            self.counts[code] += flat[code * self.bins:(code + 1) * self.bins]
        self.code_chunks.append(codes.astype(np.int32))
        self.score_chunks.append(scores.astype(np.float32))

    def _models(self, column, scored_at: np.ndarray) -> None:
        import pyarrow.compute as pc
        encoded = pc.dictionary_encode(column)
        names = encoded.dictionary.to_pylist() + [None]
        indices = pc.fill_null(encoded.indices, len(names) - 1).to_numpy(zero_copy_only=False)
        for i in np.unique(indices).tolist():
            mask = indices == i
            entry = self.models.setdefault(names[i], [0, None])
            entry[0] += int(mask.sum())
            times = scored_at[mask]
            times = times[~np.isnan(times)]
            if times.size:
                entry[1] = float(times.max()) if entry[1] is None else max(entry[1], float(times.max()))

    def summary(self) -> IndexSummary:
        codes = np.concatenate(self.code_chunks) if self.code_chunks else np.zeros(0, np.int32)
        scores = np.concatenate(self.score_chunks) if self.score_chunks else np.zeros(0, np.float32)
        order = np.argsort(codes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(self.codes)))])
        sorted_scores = scores[order].astype(np.float64)
        groups = []
        for key, code in self.codes.items():
            sample = sorted_scores[starts[code]:starts[code + 1]]
            values = np.quantile(sample, [p / 100 for p in PERCENTS])  # linear, as Elasticsearch's exact digest
            groups.append((dict(zip(self.fields, key)), self.counts[code].tolist(),
                           {f"p{int(p):02d}": float(v) for p, v in zip(PERCENTS, values)}))
        times = np.concatenate(self.scored_at_chunks) if self.scored_at_chunks else np.zeros(0)
        return IndexSummary(groups=groups, live=self.live, scored=self.scored, in_range=self.in_range,
                            models={m: (n, t) for m, (n, t) in self.models.items()},
                            median_scored_at_ms=float(np.quantile(times, 0.5)) if times.size else None,
                            oldest_scored_at_ms=float(times.min()) if times.size else None, stale=self.stale)


def _epoch_ms(column, name: str) -> np.ndarray:
    """Epoch milliseconds of an ISO-8601 column (NaN where missing); a bad time is a ValueError naming the field."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if column.null_count == len(column):
        return np.full(len(column), np.nan)
    try:
        micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{name}: not an ISO-8601 time with a zone ({exc})") from None
    return pc.fill_null(pc.cast(micros, pa.float64()), float("nan")).to_numpy(zero_copy_only=False) / 1000.0


def input_files(pattern: str) -> list[str]:
    """The files a comma-separated list of globs matches; a UsageError naming ``--input`` when none does."""
    files = sorted({f for part in pattern.split(",") if part.strip() for f in glob.glob(part.strip())})
    if not files:
        raise UsageError(f"--input {pattern!r} matches no files; check the path, and quote the glob so the shell "
                         "does not expand it")
    return files


def _batches(path: str, fields: list[str]) -> Iterator:
    import pyarrow as pa
    import pyarrow.json as pa_json
    columns = {SCORE_FIELD: pa.float64(), DELETED_FIELD: pa.bool_(), MODEL_FIELD: pa.string(),
               SCORED_AT_FIELD: pa.string(), SCORE_VERSION_FIELD: pa.string(), VERSION_FIELD: pa.string()}
    columns.update({name: columns.get(name, pa.string()) for name in fields})
    options = pa_json.ParseOptions(explicit_schema=pa.schema(list(columns.items())),
                                   unexpected_field_behavior="ignore")
    if os.path.getsize(path) == 0:
        return
    reader = pa_json.open_json(path, parse_options=options, read_options=pa_json.ReadOptions(block_size=16 << 20))
    yield from reader


def summarize_files(files: list[str], fields: list[str], bins: int, max_groups: int) -> IndexSummary:
    """The same figures as the index search, from JSONL score records (live ones: ``deleted: true`` is skipped)."""
    import pyarrow as pa
    acc = _Accumulator(fields, bins, max_groups)
    for path in files:
        try:
            for batch in _batches(path, fields):
                acc.add(batch)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
            if isinstance(exc, TooManyGroups):
                raise
            raise UsageError(f"--input {path}: not JSONL score records ({str(exc).splitlines()[0]}); each line must "
                             f"be one JSON object with a numeric {SCORE_FIELD} and string grouping fields") from None
    return acc.summary()


def summarize_es(url: str, index: str, fields: list[str], bins: int, max_groups: int) -> IndexSummary:
    from es.client import EsConfig, EsError, make_client, usage_message
    from es.monitoring import summarize_index
    try:
        config = EsConfig.from_env(url)
    except ValueError as exc:
        raise UsageError(f"--es-url: {exc}") from None
    client = make_client(config)
    try:
        return summarize_index(client, index, fields, bins, max_groups)
    except EsError as exc:
        raise UsageError(usage_message(exc, config)) from None
    finally:
        client.close()


# --------------------------------------------------------------------------- references and the report


def load_baseline(path: str, fields: list[str], bins: int) -> dict[tuple, list[int]]:
    """Group key -> histogram from a ``--save-baseline`` file (a ``monitor.json`` works too)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise UsageError(f"--baseline {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--baseline {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list) or "bins" not in data:
        raise UsageError(f"--baseline {path}: expected a --save-baseline file with \"bins\" and \"groups\"")
    if data["bins"] != bins:
        raise UsageError(f"--baseline {path} has {data['bins']} bins but --bins is {bins}; use the same --bins")
    out = {}
    for i, group in enumerate(data["groups"]):
        key, hist = (group.get("key"), group.get("histogram")) if isinstance(group, dict) else (None, None)
        if not isinstance(key, dict) or set(key) != set(fields) or not isinstance(hist, list) or len(hist) != bins \
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in hist):
            raise UsageError(f"--baseline {path}: group {i} must have a key with exactly the --by fields "
                             f"{fields} and a histogram of {bins} counts >= 0")
        out[tuple(key[f] for f in fields)] = hist
    return out


def compare(summary: IndexSummary, fields: list[str], *, baseline: dict[tuple, list[int]] | None,
            reference_model: str | None, psi_alert: float) -> list[dict]:
    """The groups of ``monitor.json``: each with its reference and statistics (null where it has none)."""
    hists = {tuple(key[f] for f in fields): hist for key, hist, _ in summary.groups}
    rows = []
    for key, hist, quantiles in sorted(summary.groups, key=lambda g: [json.dumps(g[0][f]) for f in fields]):
        reference, ref_hist = None, None
        if baseline is not None:
            ref_hist = baseline.get(tuple(key[f] for f in fields))
            reference = "baseline" if ref_hist and sum(ref_hist) else None
        elif reference_model is not None and key[MODEL_FIELD] != reference_model:
            ref_hist = hists.get(tuple(reference_model if f == MODEL_FIELD else key[f] for f in fields))
            reference = f"model:{reference_model}" if ref_hist and sum(ref_hist) else None
        row = {"key": key, "count": int(sum(hist)), "histogram": hist, "quantiles": quantiles,
               "reference": reference, "reference_histogram": ref_hist if reference else None,
               "psi": None, "js": None, "ks": None, "w1": None, "drift": None}
        if reference:
            row.update(drift_stats(hist, ref_hist))
            row["drift"] = bool(row["psi"] > psi_alert)
        rows.append(row)
    return rows


def _iso(ms: float | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def coverage(summary: IndexSummary, source: str, current_model: str | None, now: datetime) -> dict:
    """Live documents, scored, scored by the current model, shares, score ages and stale scores."""
    named = {m: v for m, v in summary.models.items() if m is not None}
    chosen_by = "--current-model"
    if current_model is None:
        dated = [(t, m) for m, (_, t) in named.items() if t is not None]
        current_model = max(dated)[1] if dated else None
        chosen_by = f"the newest {SCORED_AT_FIELD}"
    by_current = named.get(current_model, (0, None))[0] if current_model is not None else 0
    now_ms = now.timestamp() * 1000

    def share(n: int, of: int) -> float | None:
        return n / of if of else None

    def age_hours(ms: float | None) -> float | None:
        return None if ms is None else (now_ms - ms) / 3.6e6
    return {
        "source": source, "live": summary.live, "scored": summary.scored, "unscored": summary.live - summary.scored,
        "scored_share": share(summary.scored, summary.live), "current_model": current_model,
        "current_model_from": chosen_by, "scored_by_current": by_current,
        "scored_by_current_share": share(by_current, summary.live),
        "scored_by_other": summary.scored - by_current,
        "by_model": {("null" if m is None else m): {"scores": n, "newest_scored_at": _iso(t)}
                     for m, (n, t) in sorted(summary.models.items(), key=lambda kv: (kv[0] is None, str(kv[0])))},
        "out_of_range": summary.scored - summary.in_range,
        "median_scored_at": _iso(summary.median_scored_at_ms), "oldest_scored_at": _iso(summary.oldest_scored_at_ms),
        "median_age_hours": age_hours(summary.median_scored_at_ms),
        "oldest_age_hours": age_hours(summary.oldest_scored_at_ms),
        "stale": summary.stale, "stale_share": share(summary.stale, summary.scored), "as_of": now.isoformat(),
    }


def _key_text(key: dict) -> str:
    return ", ".join(f"{k}={'null' if v is None else v}" for k, v in key.items())


def _num(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    c, t = result["coverage"], result["thresholds"]
    drifted = [g for g in result["groups"] if g["drift"]]
    lines = ["# Image score monitor", "",
             f"{len(result['groups'])} group(s) by {', '.join(result['by'])}; {result['bins']} bins over [0, 1]; "
             f"PSI (shares floored at {t['psi_floor']:g}), Jensen-Shannon distance (base 2), binned KS (largest gap "
             f"between cumulative bin shares), W1 between bin centres; drift when PSI > {t['psi_alert']:g}.", "",
             f"**Drift:** {len(drifted)} group(s)" + (" — " + "; ".join(_key_text(g["key"]) for g in drifted)
                                                      if drifted else " (none)"), "",
             "## Groups", "",
             "| group | scores | p05 / p50 / p95 | reference | PSI | JS | KS | W1 | drift |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in result["groups"]:
        q = g["quantiles"]
        flag = "**DRIFT**" if g["drift"] else ("no" if g["drift"] is False else "—")
        lines.append(f"| {_key_text(g['key'])} | {g['count']:,} | {_num(q['p05'], '.3f')} / {_num(q['p50'], '.3f')} / "
                     f"{_num(q['p95'], '.3f')} | {g['reference'] or '—'} | {_num(g['psi'])} | {_num(g['js'])} | "
                     f"{_num(g['ks'])} | {_num(g['w1'])} | {flag} |")
    pct = lambda v: "—" if v is None else f"{v:.1%}"  # noqa: E731
    hours = lambda v: "—" if v is None else f"{v:,.1f} h"  # noqa: E731
    lines += ["", f"## Coverage ({c['source']})", "",
              f"- live documents: {c['live']:,}",
              f"- with a score: {c['scored']:,} ({pct(c['scored_share'])}); without: {c['unscored']:,}",
              f"- scored by the current model `{c['current_model']}` (from {c['current_model_from']}): "
              f"{c['scored_by_current']:,} ({pct(c['scored_by_current_share'])}); by another: {c['scored_by_other']:,}",
              f"- scores outside [0, 1] (left out of the histograms): {c['out_of_range']:,}",
              f"- age of {SCORED_AT_FIELD}: median {hours(c['median_age_hours'])}, oldest {hours(c['oldest_age_hours'])}",
              f"- stale scores ({SCORE_VERSION_FIELD} older than {VERSION_FIELD}): {c['stale']:,} "
              f"({pct(c['stale_share'])} of the scores)", "",
              "| model | scores | newest scored |", "|---|---|---|"]
    lines += [f"| {m} | {v['scores']:,} | {v['newest_scored_at'] or '—'} |" for m, v in c["by_model"].items()]
    return "\n".join(lines) + "\n"


def plot(path: str, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = result["groups"] or [{"key": {}, "histogram": [0] * result["bins"], "reference_histogram": None,
                                   "reference": None, "drift": None, "psi": None}]
    cols = min(3, len(groups))
    rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    centres, width = bin_centres(result["bins"]), 1 / result["bins"]
    for ax, g in zip(axes.flat, groups):
        total = sum(g["histogram"]) or 1
        ax.bar(centres, np.array(g["histogram"]) / total, width=width * 0.9,
               color="#d62728" if g["drift"] else "#1f77b4", label="current")
        if g["reference_histogram"]:
            ref = np.array(g["reference_histogram"], dtype=float)
            ax.step(np.append(bin_edges(result["bins"])[:-1], 1.0), np.append(ref, ref[-1]) / ref.sum(),
                    where="post", color="black", lw=1.2, label=g["reference"])
            ax.legend(fontsize=7)
        title = _key_text(g["key"]) or "all"
        ax.set_title(title + (f"\nPSI {g['psi']:.3f}" if g["psi"] is not None else ""), fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("image_score", fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle("image score per group (bars) over its reference (line); red: drift")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imagescore monitor", description=__doc__.split("\n\n")[0])
    p.add_argument("--es-url", help="read the index on this cluster (credentials from the environment)")
    p.add_argument("--es-index", help="index (or pattern) to read with --es-url")
    p.add_argument("--input", help="JSONL score records instead of the index: a glob (comma-separated globs)")
    p.add_argument("--by", default=MODEL_FIELD, help="comma-separated grouping fields (keyword fields)")
    p.add_argument("--bins", type=int, default=20, help="equal-width bins over [0, 1]")
    p.add_argument("--max-groups", type=int, default=1000, help="most values per grouping field (terms size)")
    p.add_argument("--save-baseline", help="write each group's histogram to this file")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--baseline", help="compare each group with the group of the same key in this file")
    ref.add_argument("--reference-model", help=f"compare each group with the group of the same other keys and "
                                               f"{MODEL_FIELD} = this id (a rollout check)")
    p.add_argument("--psi-alert", type=float, default=0.2, help="a group drifts when its PSI is above this")
    p.add_argument("--fail-on-drift", action="store_true", help=f"exit {DRIFT_EXIT} when any group drifts")
    p.add_argument("--current-model", help=f"the current model (default: the one with the newest {SCORED_AT_FIELD})")
    p.add_argument("--now", help="the time ages are measured from, ISO-8601 (default: now)")
    p.add_argument("--output", required=True, help="directory for monitor.json, monitor.md and monitor.png")
    return p


def _check(args: argparse.Namespace) -> list[str]:
    if bool(args.input) == bool(args.es_url):
        raise UsageError("give one source: --es-url URL --es-index INDEX, or --input \"scores*.jsonl\"")
    if args.es_url and not args.es_index:
        raise UsageError("--es-url needs --es-index (the index or pattern holding the scores)")
    if args.input and args.es_index:
        raise UsageError("--es-index goes with --es-url; --input reads files")
    if not 1 <= args.bins <= 10_000:
        raise UsageError(f"--bins must be between 1 and 10000, got {args.bins}")
    if args.max_groups < 1:
        raise UsageError(f"--max-groups must be at least 1, got {args.max_groups}")
    if not (math.isfinite(args.psi_alert) and args.psi_alert >= 0):
        raise UsageError(f"--psi-alert must be a finite number >= 0, got {args.psi_alert}")
    fields = [f.strip() for f in args.by.split(",") if f.strip()]
    if not fields or len(set(fields)) != len(fields) or len(fields) > 3:
        raise UsageError(f"--by {args.by!r}: give one to three distinct field names, comma-separated")
    if args.reference_model and MODEL_FIELD not in fields:
        raise UsageError(f"--reference-model compares groups across models, so --by must include {MODEL_FIELD}")
    return fields


def _now(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--now {text!r} is not an ISO-8601 time (e.g. 2025-01-01T00:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fields = _check(args)
    now = _now(args.now)
    baseline = load_baseline(args.baseline, fields, args.bins) if args.baseline else None
    t0 = time.perf_counter()
    try:
        if args.input:
            summary = summarize_files(input_files(args.input), fields, args.bins, args.max_groups)
        else:
            summary = summarize_es(args.es_url, args.es_index, fields, args.bins, args.max_groups)
    except TooManyGroups as exc:
        raise UsageError(str(exc)) from None
    groups = compare(summary, fields, baseline=baseline, reference_model=args.reference_model,
                     psi_alert=args.psi_alert)
    result = {"groups": groups, "coverage": coverage(summary, "jsonl" if args.input else "elasticsearch",
                                                     args.current_model, now),
              "bins": args.bins, "by": fields,
              "thresholds": {"psi_alert": args.psi_alert, "psi_floor": PSI_FLOOR}}
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "monitor.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(args.output, "monitor.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(result))
    plot(os.path.join(args.output, "monitor.png"), result)
    if args.save_baseline:
        with open(args.save_baseline, "w", encoding="utf-8") as fh:
            json.dump({"kind": BASELINE_KIND, "bins": args.bins, "by": fields, "created_at": now.isoformat(),
                       "groups": [{"key": g["key"], "count": g["count"], "histogram": g["histogram"]}
                                  for g in groups]}, fh, indent=1)
    drifted = sum(bool(g["drift"]) for g in groups)
    print(json.dumps({"output": os.path.abspath(args.output), "groups": len(groups), "drifted": drifted,
                      "live": result["coverage"]["live"], "scored": result["coverage"]["scored"],
                      "seconds": round(time.perf_counter() - t0, 2)}))
    return DRIFT_EXIT if args.fail_on_drift and drifted else 0


if __name__ == "__main__":
    job_main("python -m ranking.monitor", run)
