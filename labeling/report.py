"""Turn judged windows into label rows, repeat agreement and the run summary."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
from scipy.stats import spearmanr

from labeling.judges import WindowOutcome
from labeling.normalize import normalize_window


def pairwise_spearman(runs: list[list[float]]) -> float | None:
    """Mean Spearman correlation over pairs of repeats; None when no pair has variation in both."""
    values = []
    for a, b in itertools.combinations(runs, 2):
        if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
            continue
        rho = spearmanr(a, b).statistic
        if math.isfinite(rho):
            values.append(float(rho))
    return float(np.mean(values)) if values else None


def label_rows(outcome: WindowOutcome, judge_name: str, model: str, prompt_version: str | None) -> list[dict]:
    """One row per item; with repeats the score is the mean over repeats, with the spread alongside."""
    window = outcome.window
    runs = [r.scores for r in sorted(outcome.repeats, key=lambda r: r.repeat)]
    scores = [float(np.mean(column)) for column in zip(*runs)]
    labels, tied = normalize_window(scores)
    rationales = outcome.repeats[0].rationales
    agreement = pairwise_spearman(runs) if len(runs) > 1 else None
    rows = []
    for index, item in enumerate(window.items):
        row = {
            "serp_id": window.serp_id, "item_id": item.item_id, "score": scores[index], "label": labels[index],
            "tied": tied, "rationale": rationales[index], "judge": judge_name, "model": model,
            "prompt_version": prompt_version, "image_url": item.image_url, "position": item.position,
            "clicked": item.clicked, "split": window.split,
        }
        if len(runs) > 1:
            column = [run[index] for run in runs]
            row.update({"repeat_scores": column, "score_std": float(np.std(column)),
                        "repeat_spearman": agreement})
        rows.append(row)
    return rows


def summarize(*, windows_in: int, labelled: int, dead: list[dict], label_rows_: list[dict],
              responses: list[dict], repeats: int, price_in: float, price_out: float,
              extra: dict) -> dict:
    """Counts that must add up (windows in = labelled + dead-lettered), tokens, cost and agreement."""
    paid = [r for r in responses if not r.get("cached")]
    prompt_tokens = sum(int(r["usage"].get("prompt_tokens", 0)) for r in paid)
    completion_tokens = sum(int(r["usage"].get("completion_tokens", 0)) for r in paid)
    cost_in = prompt_tokens / 1000.0 * price_in
    cost_out = completion_tokens / 1000.0 * price_out
    windows_tied = len({r["serp_id"] for r in label_rows_ if r["tied"]})
    summary = {
        "windows_in": windows_in,
        "windows_labelled": labelled,
        "windows_dead_lettered": len(dead),
        "dead_letter_reasons": dict(Counter(d["reason"] for d in dead)),
        "accounted": windows_in == labelled + len(dead),
        "items_labelled": len(label_rows_),
        "windows_tied": windows_tied,
        "repeats": repeats,
        "responses": {"paid": len(paid), "cached": len(responses) - len(paid),
                      "unparseable": sum(1 for r in paid if r.get("error"))},
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "cost": {"input": round(cost_in, 6), "output": round(cost_out, 6), "total": round(cost_in + cost_out, 6),
                 "price_per_1k_input": price_in, "price_per_1k_output": price_out},
    }
    if repeats > 1:
        by_window = {r["serp_id"]: r["repeat_spearman"] for r in label_rows_}
        rhos = [v for v in by_window.values() if v is not None]
        stds = [r["score_std"] for r in label_rows_]
        summary["agreement"] = {
            "mean_pairwise_spearman": float(np.mean(rhos)) if rhos else None,
            "windows_with_spearman": len(rhos),
            "mean_score_std": float(np.mean(stds)) if stds else None,
        }
    summary.update(extra)
    return summary
