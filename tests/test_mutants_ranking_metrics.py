"""ranking/metrics.py: every per-SERP figure of three small SERPs by hand (docs/testing.md, Mutation testing).

Expected values are written by hand, with the arithmetic in a comment; none comes from the code under test.
"""
from __future__ import annotations

import numpy as np
import pytest

from ranking.metrics import metric_names, per_serp, skip_above_rows

# SERP 0: 4 items, clicks at logged ranks 2 and 4, re-ranked by swapping neighbours: new ranks 2, 1, 4, 3.
# SERP 1: 3 items, click at logged rank 3, reversed: new ranks 3, 2, 1.
# SERP 2: 2 items, no click, unchanged.
SERP = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
CLICKED = np.array([False, True, False, True, False, False, True, False, False])
LOGGED = np.array([1, 2, 3, 4, 1, 2, 3, 1, 2])
NEW = np.array([2, 1, 4, 3, 3, 2, 1, 1, 2])
THETA = np.array([1.0, 0.5, 0.25, 0.2])  # examination propensity by logged rank


def test_skip_above_rows_lists_each_click_with_the_unclicked_rows_above_it():
    rows, groups = skip_above_rows(SERP, LOGGED, CLICKED)
    # the clicks themselves (rows 1, 3, 6); one above: 0, 2, 5; two above: row 1 is clicked (dropped) and 4;
    # three above: only row 3's SERP reaches that far: row 0
    assert rows.tolist() == [1, 3, 6, 0, 2, 5, 4, 0]
    assert groups.tolist() == [1, 3, 6, 1, 3, 6, 6, 3]


def test_skip_above_rows_without_clicks_is_empty():
    rows, groups = skip_above_rows(np.array([0, 0]), np.array([1, 2]), np.array([False, False]))
    assert rows.tolist() == [] and groups.tolist() == []


def _per_serp(k: int) -> dict:
    return per_serp(SERP, 3, CLICKED, NEW, LOGGED, THETA[LOGGED - 1], skip_above_rows(SERP, LOGGED, CLICKED), k)


def test_every_figure_at_k_2():
    m = _per_serp(2)
    assert list(m) == ["mrr", "mean_click_position", "ndcg@2", "pairwise_click_accuracy", "ips_dcg@2",
                       "topk_changed@2"]
    clicked_serps = [1.0, 1.0, 0.0]  # SERP 2 has no click: denominator 0
    # first click's new rank: 1 (SERP 0), 1 (SERP 1); none: 0
    assert [v.tolist() for v in m["mrr"]] == [[1.0, 1.0, 0.0], clicked_serps]
    # mean new rank of the clicks: (1 + 3) / 2 = 2; 1
    assert [v.tolist() for v in m["mean_click_position"]] == [[2.0, 1.0, 0.0], clicked_serps]
    # DCG@2: SERP 0 click at rank 1 -> 1, at rank 3 -> 0 (past k); IDCG of 2 clicks = 1 + 1/log2(3) = 1.6309297535714575
    num, den = m["ndcg@2"]
    assert num.tolist() == pytest.approx([0.6131471927654584, 1.0, 0.0], abs=1e-15) and den.tolist() == clicked_serps
    # skip-above pairs: SERP 0 (1 over 0) right, (3 over 2) right, (3 over 0) wrong (new ranks 3 vs 2): 2 of 3;
    # SERP 1 (6 over 5) and (6 over 4) both right: 2 of 2
    assert [v.tolist() for v in m["pairwise_click_accuracy"]] == [[2.0, 2.0, 0.0], [3.0, 2.0, 0.0]]
    # IPS: SERP 0 click logged at 2 (theta .5) now at rank 1: 1 / .5 = 2, the other is past k; SERP 1: 1 / .25 = 4
    assert [v.tolist() for v in m["ips_dcg@2"]] == [[2.0, 4.0, 0.0], clicked_serps]
    # top 2 changed in SERPs 0 and 1; every SERP counts in the denominator
    assert [v.tolist() for v in m["topk_changed@2"]] == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]


def test_ideal_dcg_counts_at_most_k_clicks():
    # k = 1: SERP 0's two clicks fill one slot, IDCG = 1; its click at new rank 1 gives DCG 1
    assert _per_serp(1)["ndcg@1"][0].tolist() == [1.0, 1.0, 0.0]


def test_no_click_serps_raise_no_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _per_serp(2)


def test_metric_names_carry_k():
    assert metric_names(5) == ("mrr", "mean_click_position", "ndcg@5", "pairwise_click_accuracy", "ips_dcg@5",
                               "topk_changed@5")


def test_k_defaults_to_ten():
    m = per_serp(SERP, 3, CLICKED, NEW, LOGGED, THETA[LOGGED - 1], skip_above_rows(SERP, LOGGED, CLICKED))
    assert "ndcg@10" in m and "topk_changed@10" in m


def test_a_serp_without_items_gets_zeros():
    # n_serps 4: SERP 3 logged no item; every per-SERP array still has 4 entries, SERP 3's all 0
    m = per_serp(SERP, 4, CLICKED, NEW, LOGGED, THETA[LOGGED - 1], skip_above_rows(SERP, LOGGED, CLICKED), 2)
    for name, (num, den) in m.items():
        assert len(num) == len(den) == 4 and num[3] == 0.0, name
    assert m["mrr"][1].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert m["topk_changed@2"][0].tolist() == [1.0, 1.0, 0.0, 0.0]
