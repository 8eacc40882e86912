"""Position propensities (how likely each rank is examined) for the IPS metric.

Estimated from the logs with the EM algorithm of Wang et al. (WSDM 2018,
"Position Bias Estimation for Unbiased Learning to Rank in Personal Search")
under the position-based model ``P(click) = theta[rank] * gamma[query, item]``,
which needs the same item to be shown at several ranks for one query (any
ranker with some noise does that). Or supplied as a JSON list ``[theta_1,
theta_2, ...]``. Propensities are reported relative to rank 1.
"""
from __future__ import annotations

import json

import numpy as np


def estimate_em(query_item: np.ndarray, rank: np.ndarray, clicked: np.ndarray, iterations: int = 100,
                tol: float = 1e-5) -> np.ndarray:
    """theta[r - 1] for r = 1..max rank, theta[0] = 1. ``query_item`` are int codes of (query, item) pairs."""
    rank0 = np.asarray(rank, np.int64) - 1
    c = np.asarray(clicked, np.float64)
    n_ranks, n_pairs = int(rank0.max()) + 1, int(query_item.max()) + 1
    per_rank = np.bincount(rank0, minlength=n_ranks).astype(np.float64)
    per_pair = np.bincount(query_item, minlength=n_pairs).astype(np.float64)
    theta, gamma = np.full(n_ranks, 0.5), np.full(n_pairs, 0.5)
    for _ in range(iterations):
        t, g = theta[rank0], gamma[query_item]
        denom = np.maximum(1.0 - t * g, 1e-12)
        examined = c + (1 - c) * t * (1 - g) / denom     # P(E=1 | C), E-step
        relevant = c + (1 - c) * (1 - t) * g / denom     # P(R=1 | C)
        new_theta = np.bincount(rank0, weights=examined, minlength=n_ranks) / np.maximum(per_rank, 1)
        gamma = np.bincount(query_item, weights=relevant, minlength=n_pairs) / np.maximum(per_pair, 1)
        done = np.max(np.abs(new_theta - theta)) < tol
        theta = new_theta
        if done:
            break
    if theta[0] <= 0:
        raise ValueError("no clicks at rank 1; cannot estimate propensities relative to it — supply them")
    return np.clip(theta / theta[0], 1e-6, None)


def load_propensities(path: str) -> np.ndarray:
    """A JSON list of propensities by rank (rank 1 first), each in (0, 1]."""
    with open(path) as fh:
        try:
            raw = json.load(fh)
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON ({exc}); expected a list like [1.0, 0.63, 0.5, ...]") from None
    if isinstance(raw, dict) and "propensities" in raw:
        raw = raw["propensities"]
    if (not isinstance(raw, list) or not raw
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in raw)):
        raise ValueError(f"{path}: expected a non-empty list of propensities in (0, 1] by rank, got {raw!r:.200}")
    return np.array(raw, np.float64)


def for_ranks(theta: np.ndarray, ranks: np.ndarray, source: str) -> np.ndarray:
    """Propensity of each logged rank; a rank beyond the list is an error naming it."""
    if ranks.max() > len(theta):
        raise ValueError(f"{source} gives propensities for ranks 1..{len(theta)}, but the logs show rank "
                         f"{int(ranks.max())}; give one propensity per logged rank")
    return theta[ranks - 1]
