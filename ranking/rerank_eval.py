"""``imagescore rerank-eval``: choose the boosting formula and weight offline, by replaying logged SERPs.

For each formula and w, every logged SERP is re-ranked as Elasticsearch would
rank it (``ranking.replay``) and scored with the click metrics of
``ranking.metrics``. Figures are deltas against w = 0 (the logged order), with
95% bootstrap CIs that resample SERPs (``training.metrics.group_bootstrap_ci``),
per platform and pooled (``all``). Writes ``rerank.json`` (one row per formula
x w x platform x metric), ``rerank.md``, ``rerank_<platform>.png`` (each metric
against w with its CI band), ``propensities.json`` and ``samples.html`` (sample
SERPs in the logged order beside the re-ranked order, clicked items framed).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from cli_common import ArgumentParser, UsageError, job_main
from es.names import FORMULAS
from ranking.metrics import metric_names, per_serp, skip_above_rows
from ranking.propensity import estimate_em, for_ranks, load_propensities
from training.metrics import group_bootstrap_ci
from training.samples import _src as image_src

if TYPE_CHECKING:
    from ranking.replay import Logs


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--{name} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not np.isfinite(v) or v < 0 for v in values):
        raise UsageError(f"--{name} needs finite numbers >= 0, got {text!r}")
    return values


def propensities(logs: Logs, path: str | None) -> tuple[np.ndarray, str]:
    """Supplied (``--propensities``) or EM-estimated propensities by logged rank."""
    if path:
        return load_propensities(path), path
    import pyarrow as pa
    import pyarrow.compute as pc
    queries = pc.take(pa.array(logs.queries.tolist(), pa.string()), pa.array(logs.serp))
    pairs = pc.binary_join_element_wise(queries, pa.array(logs.item_ids.tolist(), pa.string()), "\x1f")
    codes = pairs.dictionary_encode().indices.to_numpy()  # one code per (query, item)
    return estimate_em(codes, logs.logged_rank(), logs.clicked), "estimated (EM, position-based model)"


def sweep(logs: Logs, formulas: list[str], ws: list[float], *, missing: float = 0.5, k: int = 10,
          theta: np.ndarray, n_boot: int = 1000, seed: int = 0, rescore_window: int | None = None,
          rank_function: str = "saturation", rank_params: dict | None = None,
          ai_factor: float = 1.0) -> tuple[list[dict], dict]:
    """The rows of ``rerank.json`` and the new ranks of every (formula, w).

    Deltas are against the logged order (w = 0, ai_factor 1); with ``ai_factor`` every w,
    0 included, also multiplies AI-flagged items' scores by it, so the w = 0 row shows
    what the discount alone does.
    """
    # The scoring mirror and its query builders import elasticsearch: loaded when the sweep runs, not for --help.
    from es.boosting import Boost
    from ranking.replay import new_ranks, replay_scores
    ws = sorted(set([0.0] + ws))
    logged_rank = logs.logged_rank()
    propensity = for_ranks(theta, logged_rank, "the propensities")
    pairs = skip_above_rows(logs.serp, logs.position, logs.clicked)
    names = metric_names(k)
    per: dict[tuple[str, float], dict] = {}
    ranks: dict[tuple[str, float], np.ndarray] = {}
    logged: dict[str, dict] = {}
    for formula in formulas:
        for w in ws:
            boost = Boost(formula, w, missing, rank_function=rank_function,
                          rank_params=rank_params or {"pivot": 0.5}, ai_factor=ai_factor)
            scores, rescored = replay_scores(logs, boost, rescore_window)
            ranks[formula, w] = new_ranks(logs, scores, rescored)
            per[formula, w] = per_serp(logs.serp, logs.n_serps, logs.clicked, ranks[formula, w], logged_rank,
                                       propensity, pairs, k)
        if ai_factor == 1:
            logged[formula] = per[formula, 0.0]
        else:
            boost = Boost(formula, 0.0, missing, rank_function=rank_function,
                          rank_params=rank_params or {"pivot": 0.5})
            scores, rescored = replay_scores(logs, boost, rescore_window)
            logged[formula] = per_serp(logs.serp, logs.n_serps, logs.clicked, new_ranks(logs, scores, rescored),
                                       logged_rank, propensity, pairs, k)
    platforms = ["all"] + sorted(set(logs.platforms.tolist()))
    rows = []
    for platform in platforms:
        mask = np.ones(logs.n_serps, bool) if platform == "all" else logs.platforms == platform
        for formula in formulas:
            base = logged[formula]
            keys = [(w, m) for w in ws for m in names]
            num = np.stack([per[formula, w][m][0][mask] for w, m in keys], axis=1)
            den = np.stack([per[formula, w][m][1][mask] for w, m in keys], axis=1)
            delta_num = num - np.stack([base[m][0][mask] for _, m in keys], axis=1)
            low, high = (group_bootstrap_ci(delta_num, den, n_boot=n_boot, seed=seed) if mask.sum()
                         else (np.full(len(keys), np.nan), np.full(len(keys), np.nan)))
            for c, (w, m) in enumerate(keys):
                total = den[:, c].sum()
                value = num[:, c].sum() / total if total else float("nan")
                delta = delta_num[:, c].sum() / total if total else float("nan")
                rows.append({"formula": formula, "w": w, "ai_factor": ai_factor, "platform": platform, "metric": m,
                             "value": float(value), "delta": float(delta), "ci_low": float(low[c]),
                             "ci_high": float(high[c]), "serps": int((den[:, c] > 0).sum())})
    return rows, ranks


def table_markdown(rows: list[dict], platform: str = "all") -> str:
    names = list(dict.fromkeys(r["metric"] for r in rows))
    lines = [f"| formula | w | {' | '.join(names)} |", "|---|---|" + "---|" * len(names)]
    cells: dict[tuple, dict] = {}
    for r in rows:
        if r["platform"] == platform:
            cells.setdefault((r["formula"], r["w"]), {})[r["metric"]] = r
    for (formula, w), by_metric in cells.items():
        parts = [f"{by_metric[m]['value']:.4f} ({by_metric[m]['delta']:+.4f} [{by_metric[m]['ci_low']:+.4f}, "
                 f"{by_metric[m]['ci_high']:+.4f}])" for m in names]
        lines.append(f"| {formula} | {w:g} | {' | '.join(parts)} |")
    return "\n".join(lines)


def plot(path: str, rows: list[dict], platform: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(2, (len(names) + 1) // 2, figsize=(13, 7), squeeze=False)
    for ax, metric in zip(axes.flat, names):
        for formula in dict.fromkeys(r["formula"] for r in rows):
            sel = sorted((r for r in rows if r["platform"] == platform and r["metric"] == metric
                          and r["formula"] == formula), key=lambda r: r["w"])
            w = [r["w"] for r in sel]
            ax.plot(w, [r["delta"] for r in sel], marker="o", label=formula)
            ax.fill_between(w, [r["ci_low"] for r in sel], [r["ci_high"] for r in sel], alpha=0.2)
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_title(metric)
        ax.set_xlabel("w")
        ax.set_ylabel("delta vs w = 0")
    axes.flat[0].legend()
    fig.suptitle(f"rerank-eval, platform {platform} (95% CI, SERP bootstrap)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def samples_html(logs: Logs, ranks: np.ndarray, title: str, n: int = 12, seed: int = 0,
                 embed_images: bool = False) -> str:
    """Sample SERPs whose order changed: logged order beside the re-ranked order, clicked items framed."""
    logged_rank = logs.logged_rank()
    changed = np.bincount(logs.serp, weights=ranks != logged_rank, minlength=logs.n_serps) > 0
    clicked = np.bincount(logs.serp, weights=logs.clicked, minlength=logs.n_serps) > 0
    candidates = np.flatnonzero(changed & clicked)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(candidates, size=min(n, len(candidates)), replace=False).tolist())
    starts = np.searchsorted(logs.serp, np.arange(logs.n_serps + 1))

    def cell(i: int) -> str:
        frame = "border:4px solid #e4002b" if logs.clicked[i] else "border:4px solid transparent"
        score = logs.image_score[i]
        caption = (f"logged #{logged_rank[i]} → #{ranks[i]} · image score "
                   f"{'missing' if np.isnan(score) else f'{score:.3f}'}" + (" · <b>clicked</b>" if logs.clicked[i] else ""))
        src = html.escape(image_src(str(logs.image_urls[i]), embed_images), quote=True)
        return (f'<figure><img src="{src}" alt="{html.escape(str(logs.item_ids[i]))}" style="{frame}" '
                f'loading="lazy"><figcaption>{caption}</figcaption></figure>')

    sections = []
    for s in chosen:
        members = np.arange(starts[s], starts[s + 1])
        new_order = members[np.argsort(ranks[members], kind="stable")]
        rows = "".join(f'<div class="row"><div class="tag">{tag}</div>{"".join(cell(i) for i in order)}</div>'
                       for tag, order in (("logged order", members), ("re-ranked", new_order)))
        sections.append(f"<section><h2>{html.escape(logs.serp_ids[s])} — {html.escape(str(logs.platforms[s]))}, "
                        f"query “{html.escape(str(logs.queries[s]))}”</h2>{rows}</section>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rerank-eval samples</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.row {{ display: flex; gap: 8px; align-items: flex-start; margin: 4px 0; overflow-x: auto; }}
.tag {{ min-width: 7em; font-size: 0.85em; color: #555; padding-top: 2em; }}
figure {{ margin: 0; width: 112px; }}
img {{ width: 100px; height: 100px; object-fit: cover; }}
figcaption {{ font-size: 0.7em; color: #333; }}
</style></head><body>
<h1>rerank-eval: {html.escape(title)}</h1>
<p>Each SERP twice: in the logged order, then re-ranked. Clicked items have a red frame.</p>
{"".join(sections) or "<p>No SERP with a click changed order.</p>"}
</body></html>
"""


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="imagescore rerank-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", required=True, help="search-log JSONL glob(s), comma-separated; items carry score "
                                                 "(and relevance_score for the additive formulas)")
    p.add_argument("--scores", required=True, help="JSONL glob(s) of id + image_score (e.g. backfill scores*.jsonl)")
    p.add_argument("--formula", default="multiplicative,additive",
                   help=f"comma-separated formulas among {', '.join(FORMULAS)}")
    p.add_argument("--w", default="0,0.1,0.2,0.3,0.5,0.75,1,1.5", help="comma-separated weights (0 is always added)")
    p.add_argument("--missing", type=float, default=0.5, help="image score used for items without one")
    p.add_argument("--k", type=int, default=10, help="cut-off of NDCG, IPS-DCG and top-k changed")
    p.add_argument("--propensities", help="JSON list of examination propensities by rank (default: EM estimate)")
    p.add_argument("--rescore-window", type=int, help="replay the boost as a rescore of this many top hits")
    p.add_argument("--rank-function", default="saturation", help="rank_feature function (saturation, log, ...)")
    p.add_argument("--rank-params", default='{"pivot": 0.5}', help="rank_feature function parameters as JSON")
    p.add_argument("--ai-factor", type=float, default=1.0,
                   help="also multiply AI-flagged items' scores by this (the logs' image_provenance), e.g. 0.8")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of SERPs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=12, help="SERPs on the sample page")
    p.add_argument("--embed-images", action="store_true", help="inline local images into samples.html")
    p.add_argument("--output", required=True, help="output directory")
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    formulas = [f.strip() for f in args.formula.split(",") if f.strip()]
    bad = [f for f in formulas if f not in FORMULAS]
    if bad or not formulas:
        raise UsageError(f"--formula: {bad or args.formula!r} not among {', '.join(FORMULAS)}")
    ws = _floats(args.w, "w")
    if args.bootstrap < 1 or args.k < 1:
        raise UsageError("--bootstrap and --k must be at least 1")
    from ranking.replay import attach_scores, load_logs, load_scores
    t0 = time.perf_counter()
    try:
        logs = attach_scores(load_logs(args.logs), load_scores(args.scores))
        theta, source = propensities(logs, args.propensities)
        rows, ranks = sweep(logs, formulas, ws, missing=args.missing, k=args.k, theta=theta, n_boot=args.bootstrap,
                            seed=args.seed, rescore_window=args.rescore_window, rank_function=args.rank_function,
                            rank_params=json.loads(args.rank_params), ai_factor=args.ai_factor)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "rerank.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    with open(os.path.join(args.output, "propensities.json"), "w") as fh:
        json.dump({"source": source, "propensities": [round(float(t), 6) for t in theta]}, fh, indent=1)
    platforms = list(dict.fromkeys(r["platform"] for r in rows))
    with open(os.path.join(args.output, "rerank.md"), "w") as fh:
        fh.write("# rerank-eval\n\nvalue (delta vs the logged order [95% CI, SERP bootstrap]); propensities: "
                 f"{source}; {logs.n_serps} SERPs; ai_factor {args.ai_factor:g}.\n")
        for platform in platforms:
            fh.write(f"\n## {platform}\n\n{table_markdown(rows, platform)}\n")
            plot(os.path.join(args.output, f"rerank_{platform}.png"), rows, platform)
    top = (formulas[0], max(ws))
    with open(os.path.join(args.output, "samples.html"), "w", encoding="utf-8") as fh:
        fh.write(samples_html(logs, ranks[top], f"{top[0]}, w = {top[1]:g}", n=args.samples, seed=args.seed,
                              embed_images=args.embed_images))
    print(json.dumps({"output": os.path.abspath(args.output), "serps": logs.n_serps, "items": len(logs.serp),
                      "points": len(ranks), "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


if __name__ == "__main__":
    job_main("python -m ranking.rerank_eval", run)
