"""Training pairs from one labelled SERP window (paper section 3.2).

The clicked image is the one the user chose, so the judge's scores are only
trusted where they agree with that choice: the candidates are the clicked
image plus the images the judge scored strictly *below* it. Images the judge
liked more than the clicked one contradict the click and are left out.
"""
from __future__ import annotations

import itertools
import math


def make_pairs(labels: dict[str, float], clicked: str) -> list[tuple[str, str]]:
    """Every untied pair of candidates as ``(winner, loser)``, the winner having the higher label.

    ``labels`` maps item id -> label of one window; ``clicked`` is the window's
    clicked (anchor) item. Pairs come out in the order of ``labels`` (stable),
    at most ``n * (n - 1) / 2`` of them (28 for 8 images).
    """
    if clicked not in labels:
        raise KeyError(f"clicked item {clicked!r} has no label in this window "
                       f"(labelled items: {sorted(labels)}); label the window again or drop it")
    for item_id, value in labels.items():
        if not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"label of item {item_id!r} is {value!r}; labels must be numbers")
    anchor = labels[clicked]
    candidates = [(item, value) for item, value in labels.items() if item == clicked or value < anchor]
    pairs = []
    for (a, la), (b, lb) in itertools.combinations(candidates, 2):
        if la > lb:
            pairs.append((a, b))
        elif lb > la:
            pairs.append((b, a))
    return pairs
