"""Click metrics of a re-ranked SERP, per SERP, so that bootstrap CIs can resample SERPs.

Which question each answers:

* ``mrr``, ``mean_click_position``, ``ndcg@10`` (clicks as gains): does the
  new order put what users clicked higher? Naive: clicks were drawn under the
  logged order, so they favour it (position bias).
* ``pairwise_click_accuracy`` (skip-above): of the (clicked, skipped-above)
  pairs, the share the new order puts the clicked one first. Every such pair is
  wrong under the logged order, so this favours *any* change; read it beside
  the others.
* ``ips_dcg@10``: DCG of the clicks, each click weighted by 1 / the examination
  propensity of the position it was logged at: an unbiased estimate of the
  new order's DCG under the position-based click model.
* ``topk_changed@10``: the share of SERPs whose top k (items and order)
  changed, i.e. how much of the traffic the change touches.

Each metric is a ratio ``numerator / denominator`` of per-SERP sums (the
denominator is 1 per SERP for means over SERPs, the pair count for the
pairwise accuracy), the shape ``training.metrics.group_bootstrap_ci`` takes.
"""
from __future__ import annotations

import numpy as np

from training.metrics import ca_outcomes

METRICS = ("mrr", "mean_click_position", "ndcg@10", "pairwise_click_accuracy", "ips_dcg@10", "topk_changed@10")


def metric_names(k: int) -> tuple[str, ...]:
    return tuple(m.replace("@10", f"@{k}") for m in METRICS)


def skip_above_rows(serp: np.ndarray, position: np.ndarray, clicked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and groups of the skip-above pairs: per click, the click and the unclicked items logged above it.

    Fed to the project's Click Accuracy (``training.metrics.ca_outcomes``), each
    group's (clicked, unclicked) pairs are exactly that click's skip-above pairs.
    """
    clicks = np.flatnonzero(clicked)
    rows, groups = [clicks], [clicks]
    starts = np.searchsorted(serp, serp[clicks])  # first row of each click's SERP (rows sorted by serp, position)
    span = clicks - starts
    for d in range(1, int(span.max()) + 1 if len(span) else 1):
        has = span >= d
        other = clicks[has] - d
        keep = ~clicked[other]
        rows.append(other[keep])
        groups.append(clicks[has][keep])
    return np.concatenate(rows), np.concatenate(groups)


def per_serp(serp: np.ndarray, n_serps: int, clicked: np.ndarray, rank: np.ndarray, logged_rank: np.ndarray,
             propensity: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], k: int = 10) -> dict[str, tuple]:
    """``metric -> (numerator, denominator)`` arrays over SERPs; SERPs without a click have denominator 0.

    ``propensity`` is the examination propensity of each item's logged rank;
    ``pairs`` comes from :func:`skip_above_rows`.
    """
    has_click = np.bincount(serp, weights=clicked, minlength=n_serps) > 0
    ones = has_click.astype(np.float64)
    click_rank = np.where(clicked, rank, np.iinfo(np.int64).max)
    first = np.full(n_serps, np.iinfo(np.int64).max)
    np.minimum.at(first, serp, click_rank)
    rr = np.where(has_click, 1.0 / np.where(has_click, first, 1), 0.0)
    n_clicks = np.bincount(serp, weights=clicked, minlength=n_serps)
    mean_pos = np.where(has_click, np.bincount(serp, weights=clicked * rank, minlength=n_serps)
                        / np.maximum(n_clicks, 1), 0.0)
    discount = np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)
    dcg = np.bincount(serp, weights=clicked * discount, minlength=n_serps)
    ideal_discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = np.where(has_click, ideal_discounts[np.clip(n_clicks.astype(int), 1, k) - 1], 1.0)
    ips = np.bincount(serp, weights=clicked * discount / propensity, minlength=n_serps)
    rows, groups = pairs
    outcomes = ca_outcomes(-rank[rows].astype(np.float64), clicked[rows], groups)
    pair_serp = serp[np.unique(groups)[outcomes.group]]
    correct = np.bincount(pair_serp, weights=outcomes.correct, minlength=n_serps)
    n_pairs = np.bincount(pair_serp, minlength=n_serps).astype(np.float64)
    changed = ((rank <= k) | (logged_rank <= k)) & (rank != logged_rank)
    top_changed = np.bincount(serp, weights=changed, minlength=n_serps) > 0
    names = metric_names(k)
    return {names[0]: (rr, ones), names[1]: (mean_pos, ones), names[2]: (dcg / idcg * ones, ones),
            names[3]: (correct, n_pairs), names[4]: (ips, ones),
            names[5]: (top_changed.astype(np.float64), np.ones(n_serps))}
