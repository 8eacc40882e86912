"""``imagescore ab-readout``: the online experiment in the paper's Table 2 layout.

Users are the randomisation unit. Rows (CSV, JSONL or Parquet) are
per-user exposures with ``user_id``, ``variant``, ``platform``,
``exposed_at``, ``converted`` (0/1), ``transactions`` (int),
``converted_via_search`` and ``transactions_via_search``; several rows of one
user are summed (conversions: any), and a user seen on several platforms
counts on the platform of first exposure. For each metric (BCR, BCR via
search, ATPU, ATPU via search), each variant against control and each
platform (plus ``all``), the readout gives the variant/control ratio, Welch's
t and p, and the ratio's CI by the delta method (on log ratio), from
``tea-tasting``; Holm's correction across platforms x metrics
(``tea_tasting.adjust_fwer``); the minimum detectable effect at the observed
sample size (80% power), with a warning when the lift is below it; optional
CUPED with pre-exposure covariates (``<column>_pre``); and a sample-ratio
mismatch check (chi-square against the configured split, flagged at
p < 0.001) with scipy, because it takes any number of variants.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from cli_common import ArgumentParser, UsageError, job_main
from es.timestamps import parse_iso

# pyarrow, scipy and tea-tasting take seconds to import together: the functions that use them import them.
if TYPE_CHECKING:
    import pyarrow as pa
    import tea_tasting as tt

METRICS = {"bcr": "converted", "bcr_via_search": "converted_via_search",
           "atpu": "transactions", "atpu_via_search": "transactions_via_search"}
REQUIRED = ("user_id", "variant", "platform", "exposed_at", *METRICS.values())
SRM_ALPHA = 0.001
POWER = 0.8


def read_rows(path: str) -> pa.Table:
    """CSV, JSONL or Parquet by extension."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json
    import pyarrow.parquet as pa_parquet
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    lower = path.lower()
    if lower.endswith(".parquet"):
        table = pa_parquet.read_table(path)
    elif lower.endswith((".jsonl", ".json", ".ndjson")):
        table = pa_json.read_json(path)
    elif lower.endswith(".csv"):
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
            column_types={"user_id": pa.string(), "variant": pa.string(), "platform": pa.string(),
                          "exposed_at": pa.string()}))
    else:
        raise ValueError(f"{path}: unknown format; name it .csv, .jsonl or .parquet")
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)} (required: {', '.join(REQUIRED)})")
    return table


def exposure_times(column: pa.ChunkedArray) -> pa.Array:
    """``exposed_at`` as UTC microseconds: ISO-8601 strings (a time without a zone is UTC) or timestamps."""

    import pyarrow as pa
    import pyarrow.compute as pc
    if column.null_count:
        raise ValueError(f"column 'exposed_at' has {column.null_count} nulls; every exposure needs its time")
    if pa.types.is_timestamp(column.type):
        naive = column.type.tz is None
        values = pc.cast(column, pa.timestamp("us", tz=None if naive else "UTC"))
        return pc.cast(values, pa.int64()).combine_chunks()
    texts = pc.cast(column, pa.string())
    for target in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):  # all zoned, or all naive (UTC)
        try:
            return pc.cast(pc.cast(texts, target), pa.int64()).combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    out = []
    for text in texts.to_pylist():  # mixed spellings: one by one, naming the first bad value
        try:
            ts = parse_iso(text, "exposed_at")
        except ValueError:
            raise ValueError(f"exposed_at {text!r} is not an ISO-8601 time (e.g. 2024-03-01T12:00:00Z)") from None
        out.append(round(ts.timestamp() * 1_000_000))
    return pa.array(out, pa.int64())


def per_user(table: pa.Table, covariates: bool = False) -> tuple[pa.Table, dict]:
    """One row per user: metrics summed (conversions: any), platform of first exposure; and what was excluded."""
    import pyarrow as pa
    import pyarrow.compute as pc
    columns = list(METRICS.values()) + ([f"{c}_pre" for c in METRICS.values()] if covariates else [])
    if covariates:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValueError(f"--cuped needs the pre-exposure column(s) {', '.join(missing)}")
    for name in columns:
        values = table[name]
        if values.null_count or not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
                                     or pa.types.is_boolean(values.type)):
            raise ValueError(f"column {name!r} must be numeric without nulls (got {values.type}, "
                             f"{values.null_count} nulls)")
        table = table.set_column(table.column_names.index(name), name, pc.cast(values, pa.float64()))
        if pc.any(pc.less(table[name], 0)).as_py():
            raise ValueError(f"column {name!r} has negative values; counts and 0/1 flags are >= 0")
    for name in ("user_id", "variant", "platform"):
        table = table.set_column(table.column_names.index(name), name, pc.cast(table[name], pa.string()))
        if table[name].null_count:
            raise ValueError(f"column {name!r} has {table[name].null_count} nulls")
    table = table.set_column(table.column_names.index("exposed_at"), "exposed_at",
                             exposure_times(table["exposed_at"]))
    table = table.sort_by([("user_id", "ascending"), ("exposed_at", "ascending")])
    aggs = [("platform", "first"), ("variant", "first"), ("variant", "count_distinct")]
    aggs += [(c, "max" if c.startswith("converted") else "sum") for c in columns]
    users = table.group_by("user_id", use_threads=False).aggregate(aggs)
    rename = {"platform_first": "platform", "variant_first": "variant", "variant_count_distinct": "variants"}
    rename.update({f"{c}_{'max' if c.startswith('converted') else 'sum'}": c for c in columns})
    users = users.rename_columns([rename.get(n, n) for n in users.column_names])
    several = pc.greater(users["variants"], 1)
    excluded = {"users_in_several_variants": int(pc.sum(several).as_py() or 0)}
    return users.filter(pc.invert(several)), excluded


def name_number_pairs(text: str, flag: str, example: str) -> dict[str, float]:
    """``"a=1,b=2"`` as ``{"a": 1.0, "b": 2.0}``; a ValueError naming ``flag`` otherwise."""
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{flag} {text!r}: expected name=number pairs like {example}") from None
    return out


def parse_split(text: str | None, variants: list[str]) -> dict[str, float]:
    """``--split control=50,a=25,b=25`` (any positive numbers; normalised); equal shares by default."""
    if not text:
        return {v: 1.0 / len(variants) for v in variants}
    shares = name_number_pairs(text, "--split", "control=50,treatment=50")
    if set(shares) != set(variants) or any(not v > 0 for v in shares.values()):
        raise ValueError(f"--split {text!r} must give a positive share to each variant in the data: {variants}")
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()}


def srm(counts: dict[str, int], split: dict[str, float]) -> dict:
    """Chi-square goodness of fit of the users per variant against the configured split."""
    from scipy import stats
    names = sorted(counts)
    observed = np.array([counts[n] for n in names], np.float64)
    expected = np.array([split[n] for n in names]) * observed.sum()
    chi2, p = stats.chisquare(observed, expected)
    return {"chi2": float(chi2), "p": float(p), "flag": bool(p < SRM_ALPHA), "users": dict(zip(names, map(int, observed))),
            "expected_share": {n: split[n] for n in names}}


def _experiment(covariates: bool) -> tt.Experiment:
    import tea_tasting as tt
    return tt.Experiment(**{name: tt.Mean(col, f"{col}_pre" if covariates else None) for name, col in METRICS.items()})


def readout(users: pa.Table, control: str, split: dict[str, float], *, covariates: bool = False,
            alpha: float = 0.05) -> dict:
    """The rows of ``readout.json`` plus the SRM checks (pooled and per platform)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import tea_tasting as tt
    variants = sorted(set(users["variant"].to_pylist()))
    if control not in variants:
        raise ValueError(f"--control {control!r} is not a variant in the data ({variants})")
    platforms = ["all"] + sorted(set(users["platform"].to_pylist()))
    experiment = _experiment(covariates)
    results, checks = {}, {}
    for platform in platforms:
        part = users if platform == "all" else users.filter(pc.equal(users["platform"], platform))
        per_variant = part.group_by("variant").aggregate([("variant", "count")])
        counts = dict(zip(per_variant["variant"].to_pylist(), per_variant["variant_count"].to_pylist()))
        counts = {v: counts.get(v, 0) for v in variants}
        checks[platform] = srm(counts, split)
        if counts[control] < 2:
            continue
        present = [v for v in variants if v != control and counts[v] >= 2]
        part = part.filter(pc.is_in(part["variant"], pa.array([control] + present)))
        analysed = experiment.analyze(part, control=control, all_variants=True)
        for (_, variant), result in analysed.items():
            pair = part.filter(pc.is_in(part["variant"], pa.array([control, variant])))
            mde = experiment.solve_power(pair, "rel_effect_size")
            results[platform, variant] = (result, mde, counts[variant], counts[control])
    rows = []
    for variant in [v for v in variants if v != control]:
        keyed = {platform: results[platform, variant][0] for platform in platforms if (platform, variant) in results}
        adjusted = tt.adjust_fwer(keyed, arbitrary_dependence=True, method="bonferroni", alpha=alpha)  # Holm
        for platform in keyed:
            result, mde, users_v, users_c = results[platform, variant]
            for metric in METRICS:
                r = dict(adjusted[platform][metric])
                m = mde[metric][0].rel_effect_size
                ratio = r["rel_effect_size"] + 1.0
                rows.append({"metric": metric, "platform": platform, "variant": variant, "users": users_v,
                             "control_users": users_c, "control_mean": r["control"], "variant_mean": r["treatment"],
                             "ratio": ratio, "t": r["statistic"], "p": r["pvalue"], "p_holm": float(r["pvalue_adj"]),
                             "ci_low": r["rel_effect_size_ci_lower"] + 1.0, "ci_high": r["rel_effect_size_ci_upper"] + 1.0,
                             "mde": float(m), "below_mde": bool(abs(ratio - 1.0) < m),
                             "significant": bool(r["pvalue_adj"] < alpha)})
    return {"rows": rows, "srm": checks["all"] | {"platforms": {p: c for p, c in checks.items() if p != "all"}},
            "control": control, "variants": variants, "cuped": covariates, "alpha": alpha, "power": POWER}


def _fmt_row(r: dict) -> str:
    stars = " **(Holm)**" if r["significant"] else ""
    warn = " ⚠ below MDE" if r["below_mde"] else ""
    return (f"| {r['platform']} | {r['variant']} | {r['ratio']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] | "
            f"{r['t']:.2f} | {r['p']:.3g} | {r['p_holm']:.3g}{stars} | ±{r['mde']:.2%}{warn} | "
            f"{r['users']} / {r['control_users']} |")


def markdown(result: dict) -> str:
    s = result["srm"]
    lines = ["# A/B readout", "",
             f"Control `{result['control']}`; variant/control ratio with 95% CI (delta method), Welch t, p, "
             f"Holm-adjusted p across platforms × metrics; MDE at {result['power']:.0%} power"
             + ("; CUPED with pre-exposure covariates" if result["cuped"] else "") + ".", "",
             f"**Sample ratio:** χ² = {s['chi2']:.2f}, p = {s['p']:.3g}"
             + (" — **SAMPLE RATIO MISMATCH: do not trust this readout**" if s["flag"] else " (no mismatch)")]
    for platform, check in s["platforms"].items():
        if check["flag"]:
            lines.append(f"- sample ratio mismatch on {platform}: χ² = {check['chi2']:.2f}, p = {check['p']:.3g}")
    for metric in METRICS:
        lines += ["", f"## {metric}", "", "| platform | variant | ratio [95% CI] | t | p | p (Holm) | MDE | users |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [_fmt_row(r) for r in result["rows"] if r["metric"] == metric]
    below = [r for r in result["rows"] if r["below_mde"]]
    if below:
        lines += ["", f"⚠ {len(below)} lift(s) are smaller than the minimum detectable effect at this sample size; "
                      f"a non-significant result there is not evidence of no effect."]
    return "\n".join(lines) + "\n"


def forest_plot(path: str, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["rows"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 0.45 * len(rows) / len(METRICS) + 2),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        sel = [r for r in rows if r["metric"] == metric]
        y = np.arange(len(sel))[::-1]
        lift = np.array([r["ratio"] - 1 for r in sel]) * 100
        err = np.array([[r["ratio"] - r["ci_low"], r["ci_high"] - r["ratio"]] for r in sel]).T * 100
        colors = ["#d62728" if r["significant"] else "#1f77b4" for r in sel]
        ax.errorbar(lift, y, xerr=err, fmt="none", ecolor=colors)
        ax.scatter(lift, y, c=colors, zorder=3)
        ax.axvline(0, color="#888", lw=0.8)
        ax.set_yticks(y, [f"{r['platform']} · {r['variant']}" for r in sel])
        ax.set_title(metric)
        ax.set_xlabel("lift vs control (%)")
    fig.suptitle("A/B readout: lifts with 95% CIs (red: significant after Holm)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imagescore ab-readout", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="per-user experiment rows: .csv, .jsonl or .parquet")
    p.add_argument("--control", required=True, help="name of the control variant")
    p.add_argument("--split", help="configured traffic shares, e.g. control=50,treatment=50 (default: equal)")
    p.add_argument("--cuped", action="store_true", help="CUPED with the pre-exposure columns <metric column>_pre")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate for Holm")
    p.add_argument("--output", required=True, help="directory for readout.json, readout.md and forest.png")
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        users, excluded = per_user(read_rows(args.input), covariates=args.cuped)
        variants = sorted(set(users["variant"].to_pylist()))
        result = readout(users, args.control, parse_split(args.split, variants), covariates=args.cuped,
                         alpha=args.alpha)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    result["excluded"] = excluded
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "readout.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x)
    with open(os.path.join(args.output, "readout.md"), "w") as fh:
        fh.write(markdown(result))
    forest_plot(os.path.join(args.output, "forest.png"), result)
    print(json.dumps({"output": os.path.abspath(args.output), "users": users.num_rows, "srm_flag": result["srm"]["flag"],
                      "significant": sum(r["significant"] for r in result["rows"]), **excluded,
                      "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


if __name__ == "__main__":
    job_main("python -m ranking.ab", run)
