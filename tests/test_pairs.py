import itertools

import pytest

from training.pairs import make_pairs


def test_candidates_are_clicked_plus_lower_items():
    labels = {"a": 0.9, "b": 0.7, "c": 0.5, "d": 0.2, "e": 0.0}
    pairs = make_pairs(labels, "c")
    # a and b were scored above the clicked c: they contradict the click and are left out
    assert sorted(pairs) == sorted([("c", "d"), ("c", "e"), ("d", "e")])


def test_winner_is_higher_label_and_ties_skipped():
    labels = {"click": 0.8, "x": 0.3, "y": 0.3, "z": 0.1}
    pairs = make_pairs(labels, "click")
    assert ("x", "y") not in pairs and ("y", "x") not in pairs
    assert set(pairs) == {("click", "x"), ("click", "y"), ("click", "z"), ("x", "z"), ("y", "z")}
    for winner, loser in pairs:
        assert labels[winner] > labels[loser]


def test_items_tied_with_clicked_are_not_candidates():
    pairs = make_pairs({"c": 0.5, "t": 0.5, "low": 0.1}, "c")
    assert pairs == [("c", "low")]


def test_at_most_28_pairs_for_8_images():
    labels = {f"i{k}": 1.0 - k / 7 for k in range(8)}
    pairs = make_pairs(labels, "i0")
    assert len(pairs) == 28
    assert set(pairs) == set(itertools.combinations([f"i{k}" for k in range(8)], 2))


def test_clicked_lowest_gives_no_pairs():
    assert make_pairs({"c": 0.0, "x": 0.5, "y": 1.0}, "c") == []


def test_all_tied_window_gives_no_pairs():
    assert make_pairs({"c": 0.5, "x": 0.5, "y": 0.5}, "c") == []


def test_missing_clicked_label_is_refused():
    with pytest.raises(KeyError, match="clicked item 'gone' has no label"):
        make_pairs({"a": 1.0}, "gone")


def test_nan_label_is_refused():
    with pytest.raises(ValueError, match="label of item 'b'"):
        make_pairs({"a": 1.0, "b": float("nan")}, "a")
