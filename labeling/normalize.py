"""Per-window min-max normalisation of judge scores, as the paper does per SERP."""
from __future__ import annotations

from collections.abc import Sequence

TIED_LABEL = 0.5


def normalize_window(scores: Sequence[float]) -> tuple[list[float], bool]:
    """Min-max scale ``scores`` to [0, 1]; a window whose scores are all equal gets 0.5 and ``tied=True``.

    An all-equal window carries no preference, so it must not look like a
    window of all-best (1.0) or all-worst (0.0) images to the pair builder.
    """
    if not scores:
        raise ValueError("cannot normalise an empty window")
    low, high = min(scores), max(scores)
    if high == low:
        return [TIED_LABEL] * len(scores), True
    span = high - low
    return [(s - low) / span for s in scores], False
