"""training/metrics.py: the cases `make mutation` showed no test pinned (docs/testing.md, Mutation testing).

Expected values are written by hand, with the arithmetic in a comment; none comes from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    PairOutcomes,
    bootstrap_ci,
    ca_outcomes,
    ca_stats,
    group_bootstrap_ci,
    opa_outcomes,
    opa_stats,
    pair_stats,
    within_group_pairs,
)


def _outcomes(correct: list[bool], groups: list[int] | None = None) -> PairOutcomes:
    groups = list(range(len(correct))) if groups is None else groups
    return PairOutcomes(np.array(groups), np.array(correct, bool), np.zeros(len(correct), bool))


def test_as_dict_names_every_figure():
    # 3 pairs in 2 groups, 2 right, 1 tie: accuracy 2/3, tie rate 1/3.
    stats = pair_stats(PairOutcomes(np.array([0, 0, 1]), np.array([True, True, False]), np.array([False, False, True])))
    assert stats.as_dict() == {"accuracy": 2 / 3, "pairs": 3, "correct": 2, "ties": 1, "tie_rate": 1 / 3,
                               "groups": 2, "ci_low": None, "ci_high": None}


def test_shape_error_names_the_labels():
    with pytest.raises(ValueError, match=r"^scores, labels and groups must be 1-d and the same length"):
        opa_stats([0.1, 0.2], [1.0], ["a", "a"])
    with pytest.raises(ValueError, match=r"^scores, clicked and groups must be 1-d"):
        ca_stats([0.1, 0.2], [1], ["a", "a"])


def test_nan_label_error():
    with pytest.raises(ValueError, match=r"^labels contain NaN; drop unlabelled images before computing OPA$"):
        opa_stats([0.1, 0.2], [1.0, float("nan")], ["a", "a"])


def test_opa_sign_survives_a_denormal_gap():
    # score gap 5e-324 (the smallest double) times label gap 2 is 1e-323 > 0: right order. Divided instead,
    # 5e-324 / 2 rounds to 0.0, which would read as a tie.
    outcomes = opa_outcomes([5e-324, 0.0], [2.0, 0.0], ["a", "a"])
    assert outcomes.correct.tolist() == [True]
    assert outcomes.tied.tolist() == [False]


def test_bootstrap_ci_of_no_pairs_is_nan():
    low, high = bootstrap_ci(_outcomes([]))
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_ci_of_one_pair():
    # One group with its one pair right: every resample is that group, so both ends are 1/1 = 1.0.
    assert bootstrap_ci(_outcomes([True])) == (1.0, 1.0)


# Two groups of one pair each, one right and one wrong. A resample of 2 groups reads 0/2 (p 1/4), 1/2 (p 1/2)
# or 2/2 (p 1/4). Over 1000 resamples (defaults) the 2.5 % and 97.5 % quantiles are 0.0 and 1.0; at level
# 0.4 the 30 % and 70 % quantiles both fall in the middle half: 0.5 and 0.5.
HALF = _outcomes([True, False])


def test_bootstrap_ci_level_and_default_level():
    assert bootstrap_ci(HALF) == (0.0, 1.0)
    assert bootstrap_ci(HALF, level=0.4) == (0.5, 0.5)


def test_bootstrap_ci_n_boot_is_used():
    # One resample: both ends are that resample's value, one of 0.0, 0.5, 1.0.
    low, high = bootstrap_ci(HALF, n_boot=1)
    assert low == high and low in (0.0, 0.5, 1.0)


def test_bootstrap_ci_seed_is_used_and_defaults_to_zero():
    # With one resample the value depends on the draw: some seed among 0..9 must give a different one.
    draws = {bootstrap_ci(HALF, n_boot=1, seed=seed) for seed in range(10)}
    assert len(draws) > 1
    assert bootstrap_ci(HALF, n_boot=1) == bootstrap_ci(HALF, n_boot=1, seed=0)
    assert bootstrap_ci(HALF) == bootstrap_ci(HALF, n_boot=1000, seed=0)


def test_pair_stats_ci_only_when_asked():
    assert pair_stats(HALF).ci_low is None and pair_stats(HALF).ci_high is None
    one = pair_stats(HALF, n_boot=1)  # n_boot=1 is a (one-resample) CI, not "no CI"
    assert one.ci_low == one.ci_high and one.ci_low in (0.0, 0.5, 1.0)
    draws = {pair_stats(HALF, n_boot=1, seed=seed).ci_low for seed in range(10)}
    assert len(draws) > 1
    assert pair_stats(HALF, n_boot=1).ci_low == pair_stats(HALF, n_boot=1, seed=0).ci_low


# One group per SERP, each with one (higher label / clicked, lower / not clicked) pair: a right, b wrong.
SCORES, GROUPS = [0.9, 0.1, 0.1, 0.9], ["a", "a", "b", "b"]


def test_opa_and_ca_stats_pass_n_boot_and_seed():
    for stats in (opa_stats, ca_stats):
        assert stats(SCORES, [1, 0, 1, 0], GROUPS).ci_low is None
        assert stats(SCORES, [1, 0, 1, 0], GROUPS, n_boot=1000).ci_low == 0.0  # as HALF above: (0.0, 1.0)
        assert stats(SCORES, [1, 0, 1, 0], GROUPS, n_boot=1000).ci_high == 1.0
        assert stats(SCORES, [1, 0, 1, 0], GROUPS, 1, 0).ci_low in (0.0, 0.5, 1.0)
        draws = {stats(SCORES, [1, 0, 1, 0], GROUPS, n_boot=1, seed=seed).ci_low for seed in range(10)}
        assert len(draws) > 1
        assert stats(SCORES, [1, 0, 1, 0], GROUPS, n_boot=1).ci_low == \
            stats(SCORES, [1, 0, 1, 0], GROUPS, n_boot=1, seed=0).ci_low


# --------------------------------------------------------------------------- group_bootstrap_ci and pair helpers

def test_group_bootstrap_ci_keeps_columns_apart():
    # Two rows with the same ratio per column (1/1 and 2/1): every resample reads 1.0 and 2.0, so both ends too.
    low, high = group_bootstrap_ci([[1.0, 2.0], [1.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]], n_boot=5)
    assert low.shape == (2,) and low.tolist() == [1.0, 2.0]
    assert high.shape == (2,) and high.tolist() == [1.0, 2.0]


def test_group_bootstrap_ci_of_one_column_is_a_pair_of_scalars():
    low, high = group_bootstrap_ci([3.0, 3.0], [2.0, 2.0], n_boot=5)
    assert np.ndim(low) == 0 and np.ndim(high) == 0 and (low, high) == (1.5, 1.5)  # 3 / 2 in every resample


def test_group_bootstrap_ci_default_level_is_95_percent():
    # HALF's groups as one row each (1/1 right, 0/1 wrong): as bootstrap_ci above, (0.0, 1.0) at 95 %.
    assert group_bootstrap_ci([1.0, 0.0], [1.0, 1.0]) == (0.0, 1.0)
    assert group_bootstrap_ci([1.0, 0.0], [1.0, 1.0], level=0.4) == (0.5, 0.5)


def test_group_bootstrap_ci_does_not_depend_on_the_chunk_size():
    # The resamples are drawn row after row from one generator, so 7 resamples in chunks of 2 (2, 2, 2, then 1)
    # are the same 7 as in one chunk: a last chunk of the wrong size would add or drop a resample.
    numerator, denominator = [1.0, 2.0, 4.0, 8.0, 16.0], [1.0, 1.0, 1.0, 1.0, 1.0]
    whole = group_bootstrap_ci(numerator, denominator, n_boot=7, level=0.99, chunk=64)
    assert group_bootstrap_ci(numerator, denominator, n_boot=7, level=0.99, chunk=2) == whole
    assert group_bootstrap_ci(numerator, denominator, n_boot=7, level=0.99, chunk=3) == whole


def test_within_group_pairs_without_pairs_are_empty_int_arrays():
    for groups in ([], [5], [1, 2, 3]):
        first, second = within_group_pairs(groups)
        assert first.dtype == np.int64 and first.shape == (0,)
        assert second.dtype == np.int64 and second.shape == (0,)


def test_within_group_pairs_names_a_bad_shape():
    with pytest.raises(ValueError, match=r"^groups must be one-dimensional, got shape \(1, 2\)$"):
        within_group_pairs([[1, 2]])


def test_ca_outcomes_reads_the_click_on_either_side():
    # pairs are (earlier, later) positions: (clicked, not) and (not, clicked); the clicked one scores higher in both
    outcomes = ca_outcomes([0.9, 0.1, 0.2, 0.8], [1, 0, 0, 1], ["a", "a", "b", "b"])
    assert outcomes.correct.tolist() == [True, True]
    assert outcomes.tied.tolist() == [False, False]


def test_ca_outcomes_reads_click_counts_as_clicked():
    # click counts 2 and 1: both clicked, so no (clicked, not clicked) pair
    assert len(ca_outcomes([0.9, 0.1], [2, 1], ["a", "a"]).group) == 0


def test_integer_scores_are_compared_as_doubles():
    # 2**62 - (-2**62) = 2**63 overflows int64 to -2**63; as doubles it is 9.223372036854776e18 > 0: right order
    assert ca_outcomes([2 ** 62, -2 ** 62], [1, 0], ["a", "a"]).correct.tolist() == [True]
    assert opa_outcomes([2 ** 62, -2 ** 62], [1.0, 0.0], ["a", "a"]).correct.tolist() == [True]


def test_group_bootstrap_ci_warns_nothing_on_empty_resamples():
    # row 1 has denominator 0: a resample of only row 1 (p 1/4) reads 1/0 (divide) or 0/0 (invalid), kept as
    # inf / NaN; at level 0 both ends are the median, which lies among the finite ratios (1 or 2, and 1 or 1/2)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group_bootstrap_ci([1.0, 1.0], [1.0, 0.0], n_boot=200, level=0.0)
        group_bootstrap_ci([1.0, 0.0], [1.0, 0.0], n_boot=200, level=0.0)


def test_ca_stats_passes_the_seed():
    # the same seed twice gives the same one-resample CI, for every seed
    for seed in range(20):
        assert ca_stats(SCORES, [1, 0, 1, 0], GROUPS, n_boot=1, seed=seed).ci_low == \
            ca_stats(SCORES, [1, 0, 1, 0], GROUPS, n_boot=1, seed=seed).ci_low


def test_within_group_pairs_list_the_earlier_position_first():
    # 40 positions in three groups: numpy's default sort is not stable at this size; pairs still run forward
    groups = [0, 2, 1, 0, 1, 0, 1, 2, 2, 1, 0, 0, 1, 0, 1, 2, 1, 2, 0, 2,
              2, 0, 0, 1, 2, 1, 0, 0, 2, 2, 2, 1, 0, 1, 0, 1, 2, 2, 1, 0]
    first, second = within_group_pairs(groups)
    assert (first < second).all()


def test_group_bootstrap_ci_defaults_are_1000_resamples_from_seed_0():
    # ten groups with different ratios: the 2.5 % and 97.5 % quantiles move with the number and the draw of
    # the resamples, so the defaults must be exactly n_boot 1000 and seed 0
    numerator = [2.0, 3.0, 5.0, 7.0, 11.0, 13.0, 17.0, 19.0, 23.0, 29.0]
    denominator = [1.0, 2.0, 1.0, 3.0, 2.0, 1.0, 4.0, 1.0, 2.0, 3.0]
    default = group_bootstrap_ci(numerator, denominator)
    assert default == group_bootstrap_ci(numerator, denominator, n_boot=1000, seed=0)
    assert default != group_bootstrap_ci(numerator, denominator, n_boot=1001, seed=0)
    assert default != group_bootstrap_ci(numerator, denominator, n_boot=1000, seed=1)
    outcomes = _outcomes([True, False, True, True, False, True, True, False, True, False, False, True],
                         [0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8])
    assert bootstrap_ci(outcomes) == bootstrap_ci(outcomes, n_boot=1000, seed=0)
    assert bootstrap_ci(outcomes) != bootstrap_ci(outcomes, n_boot=1001, seed=0)
