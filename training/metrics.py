"""Ordered Pair Accuracy and Click Accuracy (paper section 4), vectorised.

Both compare images only inside one SERP window (a *group*). A pair counts as
correct only when the prediction is *strictly* in the right order: a tied
prediction is wrong, as the paper defines it, and the tie rate is reported so
a scorer that ties a lot (CTR with unseen items, a constant model) is visible.
Confidence intervals resample whole SERPs, since pairs inside one SERP are not
independent.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairOutcomes:
    """One row per evaluated pair: the group it came from, and whether it was right or tied."""

    group: np.ndarray    # int codes, one per pair
    correct: np.ndarray  # bool
    tied: np.ndarray     # bool


@dataclasses.dataclass(frozen=True)
class PairStats:
    """Summary of :class:`PairOutcomes`; ``accuracy`` is NaN when there are no pairs."""

    accuracy: float
    pairs: int
    correct: int
    ties: int
    tie_rate: float
    groups: int
    ci_low: float | None = None
    ci_high: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def within_group_pairs(groups) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)`` of every unordered pair of positions that share a group.

    Sorts by group once, then compares each element with the one ``d`` places
    later for d = 1, 2, ...; groups are contiguous after sorting, so the loop
    stops at the size of the largest group (8 for SERP windows).
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be one-dimensional, got shape {groups.shape}")
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    first, second = [], []
    for d in range(1, len(groups)):
        same = sorted_groups[:-d] == sorted_groups[d:]
        if not same.any():
            break
        first.append(order[:-d][same])
        second.append(order[d:][same])
    if not first:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(first), np.concatenate(second)


def _check(scores, other, groups, other_name: str):
    scores = np.asarray(scores, dtype=np.float64)
    other = np.asarray(other)
    groups = np.asarray(groups)
    if not (scores.shape == other.shape == groups.shape) or scores.ndim != 1:
        raise ValueError(f"scores, {other_name} and groups must be 1-d and the same length, got "
                         f"{scores.shape}, {other.shape}, {groups.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} scores are NaN; a scorer must give every image a number")
    _, codes = np.unique(groups, return_inverse=True)
    return scores, other, codes.reshape(-1)


def opa_outcomes(scores, labels, groups) -> PairOutcomes:
    """Outcomes of every within-group pair with different labels (Ordered Pair Accuracy)."""
    scores, labels, codes = _check(scores, labels, groups, "labels")
    labels = labels.astype(np.float64)
    if np.isnan(labels).any():
        raise ValueError("labels contain NaN; drop unlabelled images before computing OPA")
    i, j = within_group_pairs(codes)
    label_gap = labels[i] - labels[j]
    keep = label_gap != 0
    i, j, label_gap = i[keep], j[keep], label_gap[keep]
    score_gap = scores[i] - scores[j]
    return PairOutcomes(codes[i], score_gap * label_gap > 0, score_gap == 0)


def ca_outcomes(scores, clicked, groups) -> PairOutcomes:
    """Outcomes of every within-group (clicked, not clicked) pair (Click Accuracy)."""
    scores, clicked, codes = _check(scores, clicked, groups, "clicked")
    clicked = clicked.astype(bool)
    i, j = within_group_pairs(codes)
    keep = clicked[i] != clicked[j]
    i, j = i[keep], j[keep]
    score_gap = scores[i] - scores[j]
    click_sign = np.where(clicked[i], 1.0, -1.0)
    return PairOutcomes(codes[i], score_gap * click_sign > 0, score_gap == 0)


def group_bootstrap_ci(numerator, denominator, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                       chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CIs of ``sum(numerator) / sum(denominator)``, resampling groups (rows) with replacement.

    Each column is one statistic; all columns share the same resamples, so the
    CIs of related figures (e.g. deltas against one baseline) are comparable.
    Resamples are drawn ``chunk`` at a time and summed as count-weighted sums,
    so memory stays O(chunk x groups) however many resamples are asked for.
    """
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    squeeze = numerator.ndim == 1
    numerator, denominator = numerator.reshape(len(numerator), -1), denominator.reshape(len(denominator), -1)
    n = len(numerator)
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_boot, chunk):
        draws = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        counts = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append((counts @ numerator) / (counts @ denominator))
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(np.concatenate(stats), [tail, 1.0 - tail], axis=0)
    return (low[0], high[0]) if squeeze else (low, high)


def bootstrap_ci(outcomes: PairOutcomes, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the micro-averaged accuracy, resampling groups (SERPs) with replacement."""
    if len(outcomes.group) == 0:
        return float("nan"), float("nan")
    _, codes = np.unique(outcomes.group, return_inverse=True)
    correct = np.bincount(codes, weights=outcomes.correct.astype(np.float64))
    pairs = np.bincount(codes).astype(np.float64)
    low, high = group_bootstrap_ci(correct, pairs, n_boot=n_boot, seed=seed, level=level)
    return float(low), float(high)


def pair_stats(outcomes: PairOutcomes, n_boot: int = 0, seed: int = 0) -> PairStats:
    """Accuracy, pair count, tie rate and (when ``n_boot`` > 0) a bootstrap CI."""
    pairs = int(len(outcomes.correct))
    correct = int(outcomes.correct.sum())
    ties = int(outcomes.tied.sum())
    low = high = None
    if n_boot > 0 and pairs:
        low, high = bootstrap_ci(outcomes, n_boot=n_boot, seed=seed)
    return PairStats(
        accuracy=correct / pairs if pairs else float("nan"),
        pairs=pairs, correct=correct, ties=ties,
        tie_rate=ties / pairs if pairs else float("nan"),
        groups=int(len(np.unique(outcomes.group))),
        ci_low=low, ci_high=high)


def opa_stats(scores, labels, groups, n_boot: int = 0, seed: int = 0) -> PairStats:
    return pair_stats(opa_outcomes(scores, labels, groups), n_boot, seed)


def ca_stats(scores, clicked, groups, n_boot: int = 0, seed: int = 0) -> PairStats:
    return pair_stats(ca_outcomes(scores, clicked, groups), n_boot, seed)


def ordered_pair_accuracy(scores, labels, groups) -> float:
    """Share of within-group pairs with different labels whose scores are strictly in label order."""
    return opa_stats(scores, labels, groups).accuracy


def click_accuracy(scores, clicked, groups) -> float:
    """Share of within-group (clicked, not clicked) pairs where the clicked image scores strictly higher."""
    return ca_stats(scores, clicked, groups).accuracy
