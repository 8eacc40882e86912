import itertools

import numpy as np
import pytest

from training.metrics import (
    bootstrap_ci,
    ca_outcomes,
    ca_stats,
    click_accuracy,
    opa_outcomes,
    opa_stats,
    ordered_pair_accuracy,
    within_group_pairs,
)


def brute_opa(scores, labels, groups):
    correct = total = 0
    for i, j in itertools.combinations(range(len(scores)), 2):
        if groups[i] != groups[j] or labels[i] == labels[j]:
            continue
        total += 1
        hi, lo = (i, j) if labels[i] > labels[j] else (j, i)
        correct += scores[hi] > scores[lo]
    return correct / total


def test_opa_hand_example_ties_count_wrong():
    scores = [0.9, 0.5, 0.5, 0.1, 0.2]
    labels = [1.0, 0.5, 0.0, 0.3, 0.9]
    groups = ["a", "a", "a", "b", "b"]
    # group a: (0>1) ok, (0>2) ok, (1 vs 2) tied score -> wrong; group b: label 4 > 3, score 0.2 > 0.1 ok
    assert ordered_pair_accuracy(scores, labels, groups) == pytest.approx(3 / 4)
    stats = opa_stats(scores, labels, groups)
    assert (stats.pairs, stats.correct, stats.ties) == (4, 3, 1)
    assert stats.tie_rate == pytest.approx(0.25)


def test_opa_skips_equal_labels_and_cross_group_pairs():
    scores = [0.1, 0.9, 0.5, 0.4]
    labels = [0.5, 0.5, 1.0, 0.0]
    groups = [1, 1, 2, 3]
    # only pair in a group has equal labels; the others are alone in their group
    stats = opa_stats(scores, labels, groups)
    assert stats.pairs == 0 and np.isnan(stats.accuracy)


def test_ca_hand_example():
    scores = [0.3, 0.8, 0.1, 0.5, 0.5]
    clicked = [True, False, False, True, False]
    groups = [0, 0, 0, 1, 1]
    # group 0: clicked 0.3 vs 0.8 wrong, vs 0.1 right; group 1: tie -> wrong
    assert click_accuracy(scores, clicked, groups) == pytest.approx(1 / 3)
    stats = ca_stats(scores, clicked, groups)
    assert (stats.pairs, stats.correct, stats.ties, stats.groups) == (3, 1, 1, 2)


def test_two_clicked_images_are_not_a_ca_pair():
    stats = ca_stats([0.2, 0.9, 0.1], [True, True, False], ["s", "s", "s"])
    assert stats.pairs == 2 and stats.correct == 2


def test_vectorised_matches_brute_force():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 40, 300)
    labels = rng.integers(0, 4, 300) / 3
    scores = np.round(rng.random(300), 1)  # coarse, so there are ties
    assert ordered_pair_accuracy(scores, labels, groups) == pytest.approx(brute_opa(scores, labels, groups))


def test_within_group_pairs_counts():
    i, j = within_group_pairs(np.array([5, 3, 5, 5, 3, 9]))
    pairs = {tuple(sorted(p)) for p in zip(i.tolist(), j.tolist())}
    assert pairs == {(0, 2), (0, 3), (2, 3), (1, 4)}


def test_random_scores_are_near_half_and_perfect_scores_are_one():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(2000), 8)
    labels = rng.random(len(groups))
    assert ordered_pair_accuracy(labels * 3, labels, groups) == 1.0
    assert ordered_pair_accuracy(-labels, labels, groups) == 0.0
    assert abs(ordered_pair_accuracy(rng.random(len(groups)), labels, groups) - 0.5) < 0.01


def test_constant_scorer_is_all_ties_and_zero_accuracy():
    stats = ca_stats(np.zeros(6), [True, False, False, True, False, False], [0, 0, 0, 1, 1, 1])
    assert stats.accuracy == 0.0 and stats.tie_rate == 1.0


def test_bootstrap_ci_brackets_accuracy_and_is_seeded():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(300), 6)
    labels = rng.random(len(groups))
    scores = labels + rng.normal(0, 0.3, len(groups))
    out = opa_outcomes(scores, labels, groups)
    low, high = bootstrap_ci(out, n_boot=500, seed=7)
    acc = out.correct.mean()
    assert low < acc < high and high - low < 0.1
    assert bootstrap_ci(out, n_boot=500, seed=7) == (low, high)
    stats = opa_stats(scores, labels, groups, n_boot=500, seed=7)
    assert (stats.ci_low, stats.ci_high) == (low, high)


def test_bootstrap_resamples_groups_not_pairs():
    # every group is all-right or all-wrong: resampling pairs would understate the spread
    groups = np.repeat(np.arange(40), 10)
    clicked = np.tile([True] + [False] * 9, 40)
    scores = np.where(clicked, 1.0, 0.0) * np.repeat(np.where(np.arange(40) % 2 == 0, 1, -1), 10)
    out = ca_outcomes(scores, clicked, groups)
    low, high = bootstrap_ci(out, n_boot=2000, seed=0)
    assert out.correct.mean() == 0.5
    assert high - low > 0.2  # about +-0.16 for 40 independent groups


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same length"):
        ordered_pair_accuracy([0.1, 0.2], [1, 0], [0])
    with pytest.raises(ValueError, match="scores are NaN"):
        click_accuracy([np.nan, 0.2], [True, False], [0, 0])
    with pytest.raises(ValueError, match="labels contain NaN"):
        ordered_pair_accuracy([0.1, 0.2], [np.nan, 0.0], [0, 0])
