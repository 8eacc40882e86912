"""``imagescore analyze``: do people click the images the judge prefers? (paper Sec. 4, Figs. 4 and 5)

Joins collect's windows (who was clicked, liked, purchased; platform) with the
judge's labels (0-1 within each window) and writes a report directory:
``report.md``, PNG plots and ``figures.json`` with every number the report
quotes. For each comparison it gives the normalised label distributions
(histogram and box plot), medians, means and the two-sample
Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``): clicked vs not clicked
(the paper's Hypothesis 1), liked / purchased vs not clicked, purchased vs
clicked-but-not-purchased, and clicked vs not clicked per platform. Then
the adjectives the judge used most for clicked and for not-clicked images
(see ``training.adjectives`` for how WordNet decides what is an adjective).

Windows where every label is tied (the judge gave all images the same score)
carry no preference and are left out unless ``--include-tied``; the report
says how many.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cli_common import ArgumentParser, UsageError, job_main
from training.adjectives import (
    DEFAULT_WORDNET_DIR,
    AdjectiveFinder,
    WordNetMissing,
    count_adjectives,
    load_wordnet,
)
from training.data import iter_records


@dataclass
class Inputs:
    """The joined rows plus what could not be joined or parsed, so the report can account for it."""
    rows: list[dict] = field(default_factory=list)
    windows: int = 0
    window_items: int = 0
    labels: int = 0
    duplicate_labels: int = 0
    items_without_label: int = 0
    labels_without_window: int = 0
    tied_windows_excluded: int = 0
    tied_items_excluded: int = 0
    problems: Counter = field(default_factory=Counter)
    problem_examples: list[str] = field(default_factory=list)

    def problem(self, kind: str, where: str, detail: str) -> None:
        self.problems[kind] += 1
        if len(self.problem_examples) < 10:
            self.problem_examples.append(f"{where}: {kind}: {detail}")


# --------------------------------------------------------------------------- reading

def _files(patterns: Iterable[str], what: str) -> list[str]:
    files = sorted({path for pattern in patterns for path in glob.glob(pattern)})
    if not files:
        raise UsageError(f"no {what} files match {list(patterns)}")
    return files


def _records(path: str, inputs: Inputs) -> Iterator[tuple[str, dict]]:
    """(where, record) for each JSON object in a JSONL or Parquet file; bad lines are counted, not fatal."""
    for where, record in iter_records(path):
        if isinstance(record, str):
            inputs.problem("malformed_json", where, record)
        else:
            yield where, record


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def load(window_globs: list[str], label_globs: list[str], include_tied: bool = False,
         value: str = "label") -> Inputs:
    """Join labels onto window items by (serp_id, item_id)."""
    inputs = Inputs()
    labels: dict[tuple[str, str], dict] = {}
    for path in _files(label_globs, "label"):
        for where, rec in _records(path, inputs):
            key = (rec.get("serp_id"), rec.get("item_id"))
            number = _number(rec.get(value))
            if not all(isinstance(k, str) and k for k in key):
                inputs.problem("bad_label", where, "needs string serp_id and item_id")
                continue
            if number is None:
                inputs.problem("bad_label", where, f"{value} must be a number, got {rec.get(value)!r}")
                continue
            if key in labels:
                inputs.duplicate_labels += 1  # a relabelled window: the later row wins
            labels[key] = {"value": number, "tied": bool(rec.get("tied", False)),
                           "rationale": rec.get("rationale") if isinstance(rec.get("rationale"), str) else ""}
    inputs.labels = len(labels)
    used: set[tuple[str, str]] = set()
    for path in _files(window_globs, "window"):
        for where, win in _records(path, inputs):
            items = win.get("items")
            if not isinstance(win.get("serp_id"), str) or not isinstance(items, list):
                inputs.problem("bad_window", where, "needs a string serp_id and an items list")
                continue
            inputs.windows += 1
            rows = []
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("item_id"), str):
                    inputs.problem("bad_window", where, "an item without a string item_id")
                    continue
                inputs.window_items += 1
                key = (win["serp_id"], item["item_id"])
                label = labels.get(key)
                if label is None:
                    inputs.items_without_label += 1
                    continue
                used.add(key)
                rows.append({"serp_id": win["serp_id"], "item_id": item["item_id"],
                             "platform": str(win.get("platform") or "unknown"), "split": win.get("split"),
                             "clicked": item.get("clicked") is True, "liked": item.get("liked") is True,
                             "purchased": item.get("purchased") is True, "value": label["value"],
                             "tied": label["tied"], "rationale": label["rationale"],
                             "provenance": item.get("image_provenance")
                             if isinstance(item.get("image_provenance"), str) else None})
            if rows and not include_tied and all(r["tied"] for r in rows):
                inputs.tied_windows_excluded += 1
                inputs.tied_items_excluded += len(rows)
                continue
            inputs.rows.extend(rows)
    inputs.labels_without_window = len(set(labels) - used)
    return inputs


# --------------------------------------------------------------------------- statistics

GROUPS: dict[str, Callable[[dict], bool]] = {
    "clicked": lambda r: r["clicked"],
    "not_clicked": lambda r: not r["clicked"],
    "liked": lambda r: r["clicked"] and r["liked"],
    "purchased": lambda r: r["clicked"] and r["purchased"],
    "clicked_not_purchased": lambda r: r["clicked"] and not r["purchased"],
}
# (name, group a, group b): a is the group expected to score higher under Hypothesis 1.
COMPARISONS = (
    ("clicked_vs_not_clicked", "clicked", "not_clicked"),
    ("liked_vs_not_clicked", "liked", "not_clicked"),
    ("purchased_vs_not_clicked", "purchased", "not_clicked"),
    # disjoint groups, so the KS test's independence assumption holds
    ("purchased_vs_clicked", "purchased", "clicked_not_purchased"),
)


# The image_provenance values that say AI made the image: es.mapping.AI_PROVENANCE_VALUES (training/
# imports no es/ module; tests/test_provenance.py holds the two equal).
AI_PROVENANCE = ("c2pa_ai", "xmp_ai", "generator_metadata")


def _wilson(clicks: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    centre = (clicks + z * z / 2) / (n + z * z)
    half = z * math.sqrt(clicks * (n - clicks) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def provenance_click_through(rows: list[dict]) -> dict | None:
    """Click-through and label of AI-flagged images vs the others, over the items whose window
    carries ``image_provenance``; None when no item does. Does the judge's taste for AI images
    (if any) match what people click?"""
    known = [r for r in rows if r.get("provenance") is not None]
    if not known:
        return None
    out: dict = {"items_with_provenance": len(known), "items_without_provenance": len(rows) - len(known)}
    for name, group in (("ai_flagged", [r for r in known if r["provenance"] in AI_PROVENANCE]),
                        ("other", [r for r in known if r["provenance"] not in AI_PROVENANCE])):
        n, clicks = len(group), sum(r["clicked"] for r in group)
        low, high = _wilson(clicks, n) if n else (float("nan"), float("nan"))
        values = np.array([r["value"] for r in group], float)
        out[name] = {"items": n, "clicks": clicks, "ctr": clicks / n if n else float("nan"),
                     "ctr_ci_low": low, "ctr_ci_high": high,
                     "median_value": float(np.median(values)) if n else float("nan"),
                     "mean_value": float(values.mean()) if n else float("nan")}
    return out


def describe(values: np.ndarray) -> dict:
    return {"n": int(values.size), "median": float(np.median(values)), "mean": float(np.mean(values)),
            "std": float(np.std(values)), "q1": float(np.percentile(values, 25)),
            "q3": float(np.percentile(values, 75))}


def compare(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, alpha: float) -> dict:
    """Medians, means and the two-sided two-sample KS test; a clear skip note when a group is empty."""
    empty = [name for name, values in ((name_a, a), (name_b, b)) if values.size == 0]
    if empty:
        return {"a": name_a, "b": name_b, "n_a": int(a.size), "n_b": int(b.size),
                "skipped": f"no {' and no '.join(empty)} items with labels, so there is nothing to compare"}
    from scipy import stats  # a second to import: loaded when analyze runs, not for --help
    test = stats.ks_2samp(a, b)
    out = {"a": name_a, "b": name_b, "n_a": int(a.size), "n_b": int(b.size),
           "stats_a": describe(a), "stats_b": describe(b),
           "median_diff": float(np.median(a) - np.median(b)), "mean_diff": float(np.mean(a) - np.mean(b)),
           "ks_statistic": float(test.statistic), "ks_pvalue": float(test.pvalue),
           "significant": bool(test.pvalue < alpha), "alpha": alpha}
    return out


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """max |F_a - F_b| over the pooled sample, as ks_2samp computes it (without the p-value)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size
                                - np.searchsorted(b, grid, side="right") / b.size)))


def window_permutation_test(rows: list[dict], permutations: int, seed: int = 0) -> dict:
    """Within-window permutation test of clicked vs not clicked, with the KS statistic.

    Why not only ks_2samp: labels are min-max normalised within each window,
    and collect's windows have 2-8 items (3 whenever the anchor is at the
    top). The clicked group has one item per window and the not-clicked group
    ``n - 1``, so the two pooled samples weight window sizes differently and
    their label distributions differ *even when clicks ignore the images*;
    items shown in many SERPs also make the rows dependent. Under the null
    hypothesis the clicked item is a uniformly random member of its window,
    so re-drawing it within each window gives the exact null distribution of
    D for these very windows. Windows with other than one clicked item, or
    nothing else, are left out.
    """
    by_window: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_window[r["serp_id"]].append(r)
    values, starts, sizes, observed = [], [], [], []
    for window in by_window.values():
        clicked = [i for i, r in enumerate(window) if r["clicked"]]
        if len(clicked) != 1 or len(window) < 2:
            continue
        starts.append(len(values))
        sizes.append(len(window))
        observed.append(len(values) + clicked[0])
        values.extend(r["value"] for r in window)
    if len(sizes) < 2 or permutations <= 0:
        return {"skipped": "needs at least two windows with one clicked item and --permutations > 0",
                "windows": len(sizes)}
    values_arr = np.asarray(values, dtype=np.float64)
    starts_arr, sizes_arr = np.asarray(starts), np.asarray(sizes)

    def statistic(chosen: np.ndarray) -> float:
        mask = np.zeros(values_arr.size, dtype=bool)
        mask[chosen] = True
        return _ks_statistic(values_arr[mask], values_arr[~mask])

    d_obs = statistic(np.asarray(observed))
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        chosen = starts_arr + (rng.random(sizes_arr.size) * sizes_arr).astype(np.int64)
        exceed += statistic(chosen) >= d_obs - 1e-12
    return {"windows": int(sizes_arr.size), "permutations": permutations, "statistic": d_obs,
            "pvalue": (exceed + 1) / (permutations + 1), "seed": seed}


def values_of(rows: list[dict], group: str) -> np.ndarray:
    keep = GROUPS[group]
    return np.array([r["value"] for r in rows if keep(r)], dtype=np.float64)


# --------------------------------------------------------------------------- plots

def _add_permutation(result: dict, rows: list[dict], permutations: int, seed: int, alpha: float) -> None:
    if "skipped" in result:
        return
    test = window_permutation_test(rows, permutations, seed)
    result["permutation"] = test
    if "pvalue" in test:
        result["significant_permutation"] = bool(test["pvalue"] < alpha)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_comparison(path: str, a: np.ndarray, b: np.ndarray, result: dict, value: str) -> None:
    """Paper Fig. 4: normalised histograms and box plots of the two groups."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(0.0, 1.0, 21) if value == "label" else np.linspace(0.0, 10.0, 21)
    for values, name, colour in ((a, result["a"], "tab:blue"), (b, result["b"], "tab:orange")):
        left.hist(values, bins=bins, density=True, alpha=0.55, color=colour, label=f"{name} (n={values.size})")
    left.set_xlabel(value)
    left.set_ylabel("density")
    left.legend()
    right.boxplot([a, b], tick_labels=[result["a"], result["b"]], showmeans=True)
    right.set_ylabel(value)
    fig.suptitle(f"{result['a']} vs {result['b']}: KS D={result['ks_statistic']:.3f}, p={result['ks_pvalue']:.2g}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_platforms(path: str, rows: list[dict], platforms: list[str], value: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(platforms)), 4))
    data, ticks, positions = [], [], []
    for i, platform in enumerate(platforms):
        subset = [r for r in rows if r["platform"] == platform]
        for j, group in enumerate(("clicked", "not_clicked")):
            values = values_of(subset, group)
            if values.size:
                data.append(values)
                positions.append(3 * i + j)
                ticks.append(f"{platform}\n{group}")
    if data:
        ax.boxplot(data, positions=positions, tick_labels=ticks, showmeans=True)
    ax.set_ylabel(value)
    ax.set_title("clicked vs not clicked by platform")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_adjectives(path: str, tables: dict[str, list[dict]]) -> None:
    """Paper Fig. 5: the most common adjectives for clicked and not-clicked images."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 0.3 * max(
        (len(t) for t in tables.values()), default=1) + 1.5))
    for ax, (group, table) in zip(np.atleast_1d(axes), tables.items()):
        words = [row["adjective"] for row in table][::-1]
        shares = [row["share"] for row in table][::-1]
        ax.barh(words, shares, color="tab:blue" if group == "clicked" else "tab:orange")
        ax.set_xlabel("share of rationales mentioning it")
        ax.set_title(group)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- adjectives

def adjective_tables(rows: list[dict], wordnet_dir: str, top: int) -> dict:
    """Top adjectives per group with counts and shares, or a skip note (with the install line)."""
    try:
        finder = AdjectiveFinder(load_wordnet(wordnet_dir))
    except WordNetMissing as exc:
        return {"skipped": str(exc)}
    out: dict = {"rule": "WordNet 3.0 adjective (a/s) via morphy; adverb-dominant words skipped",
                 "wordnet": os.path.realpath(wordnet_dir), "groups": {}}
    for group in ("clicked", "not_clicked"):
        texts = [r["rationale"] for r in rows if GROUPS[group](r) and r["rationale"]]
        counts, n = count_adjectives(finder, texts)
        out["groups"][group] = {
            "rationales": n,
            "top": [{"adjective": word, "count": count, "share": count / n if n else 0.0,
                     "adjective_only": finder.is_adjective_only(word)}
                    for word, count in counts.most_common(top)],
        }
    return out


# --------------------------------------------------------------------------- report

def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e-3 and x != 0 else f"{x:.3f}"


def _result_row(name: str, r: dict) -> str:
    if "skipped" in r:
        return f"| {name} | {r['n_a']} | {r['n_b']} | – | – | – | – | – | – | skipped: {r['skipped']} |"
    a, b = r["stats_a"], r["stats_b"]
    higher = r["a"] if r["median_diff"] > 0 or (r["median_diff"] == 0 and r["mean_diff"] > 0) else r["b"]
    verdict = f"KS {'**significant**' if r['significant'] else 'not significant'}"
    perm = r.get("permutation", {})
    if "pvalue" in perm:
        verdict += f"; permutation {'**significant**' if r['significant_permutation'] else 'not significant'}"
    perm_p = f"{perm['pvalue']:.3g}" if "pvalue" in perm else "–"
    return (f"| {name} | {r['n_a']} | {r['n_b']} | {_fmt(a['median'])} / {_fmt(b['median'])} | "
            f"{_fmt(a['mean'])} / {_fmt(b['mean'])} | {_fmt(r['ks_statistic'])} | {r['ks_pvalue']:.3g} | "
            f"{perm_p} | {r['alpha']} | {verdict}; {higher} higher |")


_TABLE_HEAD = ("| comparison (a vs b) | n a | n b | median a / b | mean a / b | KS D | KS p | permutation p | alpha "
               "| verdict |\n|---|---|---|---|---|---|---|---|---|---|")


def write_report(out_dir: str, inputs: Inputs, figures: dict, value: str) -> str:
    lines = ["# Image Score: do people click the images the judge prefers?", ""]
    lines += [("Labels are the judge's scores normalised to 0-1 within each SERP window "
              f"(analysed value: `{value}`). Each comparison uses the two-sample Kolmogorov-Smirnov test "
              "(two-sided, `scipy.stats.ks_2samp`)."), ""]
    lines += ["## Inputs", "",
              f"- windows read: {inputs.windows}; window items: {inputs.window_items}; labels read: {inputs.labels}",
              f"- items analysed: {len(inputs.rows)}",
              f"- window items without a label (skipped): {inputs.items_without_label}",
              f"- labels without a window item (ignored): {inputs.labels_without_window}",
              f"- duplicate labels (later row kept): {inputs.duplicate_labels}",
              f"- all-tied windows excluded: {inputs.tied_windows_excluded} ({inputs.tied_items_excluded} items)"]
    if inputs.problems:
        lines.append(f"- input lines skipped: {dict(inputs.problems)}; first ones:")
        lines += [f"  - `{example}`" for example in inputs.problem_examples]
    lines += ["", "## Clicked vs. not clicked, and the other engagement signals (paper Fig. 4)", "", _TABLE_HEAD]
    lines += [_result_row(name, r) for name, r in figures["comparisons"].items()]
    lines.append("")
    for name, r in figures["comparisons"].items():
        if "plot" in r:
            lines += [f"![{name}]({r['plot']})", ""]
        elif "skipped" in r:
            lines += [f"- {name}: skipped, {r['skipped']}.", ""]
    lines += [("*KS p* is the paper's pooled two-sample KS test. *Permutation p* re-draws the clicked item uniformly "
              "within each window (the null hypothesis: clicks ignore the images) and recomputes D; it is exact for "
              "these windows, whereas the pooled KS test is not: the clicked group has one item per window and the "
              "not-clicked group n-1, so with min-max labels and windows of 2-8 items the pooled distributions "
              "differ even when clicks ignore images. Trust the permutation p where they disagree; the smallest "
              "permutation p it can report is 1/(permutations+1)."), ""]
    lines += [("`purchased_vs_clicked` compares purchased items with clicked items that were not purchased, "
              "so the two samples are disjoint as the KS test assumes."), ""]
    lines += ["## By platform", "", _TABLE_HEAD]
    lines += [_result_row(f"{p}: clicked vs not clicked", r) for p, r in figures["platforms"].items()]
    if figures.get("platform_plot"):
        lines += ["", f"![platforms]({figures['platform_plot']})"]
    provenance = figures.get("provenance")
    lines += ["", "## AI-flagged images (image_provenance)", ""]
    if provenance is None:
        lines += ["The windows carry no `image_provenance`; log the indexed field with each shown item to see "
                  "whether AI-flagged images are clicked as the judge scores them."]
    else:
        lines += [(f"Items with a provenance: {provenance['items_with_provenance']} (without: "
                  f"{provenance['items_without_provenance']}). AI-flagged: `c2pa_ai`, `xmp_ai`, "
                  "`generator_metadata`. Click-through is within the collected windows (one click each), "
                  "with a 95% Wilson interval."), "",
                  f"| images | items | clicks | click-through [95% CI] | median {value} | mean {value} |",
                  "|---|---|---|---|---|---|"]
        for name in ("ai_flagged", "other"):
            g = provenance[name]
            lines.append(f"| {name} | {g['items']} | {g['clicks']} | {_fmt(g['ctr'])} "
                         f"[{_fmt(g['ctr_ci_low'])}, {_fmt(g['ctr_ci_high'])}] | {_fmt(g['median_value'])} | "
                         f"{_fmt(g['mean_value'])} |")
    lines += ["", "## Adjectives in the rationales (paper Fig. 5)", ""]
    adjectives = figures["adjectives"]
    if "skipped" in adjectives:
        lines += [f"Skipped: {adjectives['skipped']}"]
    else:
        lines += [(f"An adjective is a token that WordNet 3.0 ({adjectives['wordnet']}) lists as an adjective "
                  "(synset type a or s) after lemmatising with WordNet's morphy; words WordNet tags far more often "
                  "as adverbs (well, very, only) are not counted. Words that are also nouns or verbs are counted "
                  "and marked `also n/v/r` below. Counts are rationales mentioning the word (once per rationale)."),
                  ""]
        for group, table in adjectives["groups"].items():
            lines += [f"### {group} ({table['rationales']} rationales)", "",
                      "| adjective | rationales | share | WordNet |", "|---|---|---|---|"]
            lines += [f"| {row['adjective']} | {row['count']} | {row['share']:.1%} | "
                      f"{'adjective only' if row['adjective_only'] else 'also n/v/r'} |" for row in table["top"]]
            lines.append("")
        if adjectives.get("plot"):
            lines += [f"![adjectives]({adjectives['plot']})"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(text)
    return text


def analyze(window_globs: list[str], label_globs: list[str], out_dir: str, *, alpha: float = 0.01,
            top: int = 15, wordnet_dir: str = DEFAULT_WORDNET_DIR, include_tied: bool = False,
            value: str = "label", permutations: int = 1000, seed: int = 0) -> dict:
    """Write report.md, the plots and figures.json into ``out_dir``; returns the figures."""
    os.makedirs(out_dir, exist_ok=True)
    inputs = load(window_globs, label_globs, include_tied=include_tied, value=value)
    rows = inputs.rows
    figures: dict = {"value": value, "alpha": alpha, "inputs": {
        "windows": inputs.windows, "window_items": inputs.window_items, "labels": inputs.labels,
        "items_analysed": len(rows), "items_without_label": inputs.items_without_label,
        "labels_without_window": inputs.labels_without_window, "duplicate_labels": inputs.duplicate_labels,
        "tied_windows_excluded": inputs.tied_windows_excluded, "tied_items_excluded": inputs.tied_items_excluded,
        "problems": dict(inputs.problems), "problem_examples": inputs.problem_examples}}
    figures["comparisons"] = {}
    for name, group_a, group_b in COMPARISONS:
        a, b = values_of(rows, group_a), values_of(rows, group_b)
        result = compare(a, b, group_a, group_b, alpha)
        if "skipped" not in result:
            result["plot"] = f"{name}.png"
            plot_comparison(os.path.join(out_dir, result["plot"]), a, b, result, value)
        figures["comparisons"][name] = result
    _add_permutation(figures["comparisons"]["clicked_vs_not_clicked"], rows, permutations, seed, alpha)
    platforms = sorted({r["platform"] for r in rows})
    figures["platforms"] = {p: compare(values_of([r for r in rows if r["platform"] == p], "clicked"),
                                       values_of([r for r in rows if r["platform"] == p], "not_clicked"),
                                       "clicked", "not_clicked", alpha) for p in platforms}
    for p, result in figures["platforms"].items():
        _add_permutation(result, [r for r in rows if r["platform"] == p], permutations, seed, alpha)
    if platforms:
        figures["platform_plot"] = "platforms.png"
        plot_platforms(os.path.join(out_dir, figures["platform_plot"]), rows, platforms, value)
    figures["provenance"] = provenance_click_through(rows)
    adjectives = adjective_tables(rows, wordnet_dir, top)
    if "groups" in adjectives and any(g["top"] for g in adjectives["groups"].values()):
        adjectives["plot"] = "adjectives.png"
        plot_adjectives(os.path.join(out_dir, adjectives["plot"]),
                        {g: t["top"] for g, t in adjectives["groups"].items()})
    figures["adjectives"] = adjectives
    with open(os.path.join(out_dir, "figures.json"), "w", encoding="utf-8") as fh:
        json.dump(figures, fh, indent=2, sort_keys=True)
    write_report(out_dir, inputs, figures, value)
    return figures


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imagescore analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", action="append", required=True, metavar="GLOB",
                   help="collect's windows*.jsonl or *.parquet (repeatable)")
    p.add_argument("--labels", action="append", required=True, metavar="GLOB",
                   help="label's labels*.jsonl (repeatable)")
    p.add_argument("--output", required=True, metavar="DIR", help="report directory")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level of the KS tests")
    p.add_argument("--top-adjectives", type=int, default=15)
    p.add_argument("--wordnet", default=DEFAULT_WORDNET_DIR,
                   help="WordNet 3.0 dict directory (Debian/Ubuntu: apt-get install wordnet-base)")
    p.add_argument("--include-tied", action="store_true", help="keep windows where every label is tied")
    p.add_argument("--permutations", type=int, default=1000,
                   help="within-window permutations for clicked vs not clicked (0 = skip the permutation test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation test")
    p.add_argument("--value", choices=("label", "score"), default="label",
                   help="label: 0-1 within the window (the paper's Fig. 4); score: the judge's raw 0-10")
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    figures = analyze(args.windows, args.labels, args.output, alpha=args.alpha, top=args.top_adjectives,
                      wordnet_dir=args.wordnet, include_tied=args.include_tied, value=args.value,
                      permutations=args.permutations, seed=args.seed)
    main = figures["comparisons"]["clicked_vs_not_clicked"]
    if "skipped" in main:
        print(f"clicked vs not clicked: skipped ({main['skipped']})")
    else:
        print(f"clicked vs not clicked: median {main['stats_a']['median']:.3f} vs {main['stats_b']['median']:.3f}, "
              f"KS D={main['ks_statistic']:.3f} p={main['ks_pvalue']:.3g}, "
              f"permutation p={main.get('permutation', {}).get('pvalue', float('nan')):.3g} "
              f"(n={main['n_a']}/{main['n_b']})")
    if "skipped" in figures["adjectives"]:
        print(f"adjectives skipped: {figures['adjectives']['skipped']}", file=sys.stderr)
    print(f"report: {os.path.join(args.output, 'report.md')}")
    return 0


if __name__ == "__main__":
    job_main("python -m training.analyze", run)
