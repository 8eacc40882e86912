"""ranking/propensity.py: EM steps and the supplied-list checks by hand (docs/testing.md, Mutation testing).

Expected values are written by hand, with the arithmetic in a comment; none comes from the code under test.
"""
from __future__ import annotations

import numpy as np
import pytest

from ranking.propensity import estimate_em, for_ranks, load_propensities

# One (query, item) pair shown at ranks 1 and 2, clicked at rank 1 only.
PAIR, RANK, CLICKED = np.array([0, 0]), np.array([1, 2]), np.array([1, 0])


def test_one_em_step():
    # theta = [.5, .5], gamma = .5; rank 2 (not clicked): denom 1 - .5*.5 = .75,
    # P(examined) = .5 * .5 / .75 = 1/3, P(relevant) = 1/3; theta = [1, 1/3] (relative to rank 1: the same)
    assert estimate_em(PAIR, RANK, CLICKED, iterations=1).tolist() == pytest.approx([1.0, 1 / 3], abs=1e-12)


def test_two_em_steps():
    # after step 1: theta = [1, 1/3], gamma = (1 + 1/3) / 2 = 2/3. Rank 2: denom 1 - 1/3 * 2/3 = 7/9,
    # P(examined) = 1/3 * 1/3 / (7/9) = 1/7; theta = [1, 1/7]
    assert estimate_em(PAIR, RANK, CLICKED, iterations=2).tolist() == pytest.approx([1.0, 1 / 7], abs=1e-12)


def test_tolerance_stops_when_the_change_is_strictly_below_it():
    # step 1 changes theta by max(|1 - .5|, |1/3 - .5|) = .5: below tol 1 it stops, at tol .5 it goes on
    assert estimate_em(PAIR, RANK, CLICKED, iterations=5, tol=1.0).tolist() == pytest.approx([1.0, 1 / 3], abs=1e-12)
    assert estimate_em(PAIR, RANK, CLICKED, iterations=2, tol=0.5).tolist() == pytest.approx([1.0, 1 / 7], abs=1e-12)


def test_a_rank_nobody_was_shown_at_is_clipped_not_zero():
    # ranks 1 and 3: rank 2 has no impressions, theta[1] = 0 / max(0, 1) = 0, clipped to 1e-6
    assert estimate_em(PAIR, np.array([1, 3]), CLICKED, iterations=1).tolist() == pytest.approx(
        [1.0, 1e-6, 1 / 3], abs=1e-12)


def test_certain_clicks_do_not_divide_by_zero():
    # every impression clicked: after step 1 theta = gamma = 1, so 1 - theta*gamma = 0 in step 2 (floored at 1e-12)
    assert estimate_em(PAIR, RANK, np.array([1, 1]), iterations=3).tolist() == [1.0, 1.0]


def test_no_impression_at_rank_one_is_an_error():
    with pytest.raises(ValueError, match=r"^no clicks at rank 1; cannot estimate propensities relative to it — "
                                         r"supply them$"):
        estimate_em(PAIR, np.array([2, 2]), CLICKED, iterations=1)


def test_load_propensities_accepts_a_list_or_an_object(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"propensities": [1, 0.5]}')
    result = load_propensities(str(path))
    assert result.dtype == np.float64 and result.tolist() == [1.0, 0.5]


@pytest.mark.parametrize("text", ["[]", "[1.0, true]", "[1.0, 1.5]", '{"p": [1.0]}', '["1.0"]'])
def test_load_propensities_refuses_other_lists(tmp_path, text):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"expected a non-empty list of propensities in \(0, 1\] by rank, got "):
        load_propensities(str(path))


def test_load_propensities_names_a_file_that_is_not_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[1.0,")
    with pytest.raises(ValueError, match=r"p\.json: not JSON \(.*\); expected a list like \[1\.0, 0\.63, 0\.5, \.\.\.\]$"):
        load_propensities(str(path))


def test_for_ranks_takes_each_ranks_propensity_and_names_a_rank_beyond_the_list():
    theta = np.array([1.0, 0.5, 0.25])
    assert for_ranks(theta, np.array([3, 1, 3]), "p.json").tolist() == [0.25, 1.0, 0.25]  # the last rank is fine
    with pytest.raises(ValueError, match=r"^p\.json gives propensities for ranks 1\.\.3, but the logs show rank 4; "
                                         r"give one propensity per logged rank$"):
        for_ranks(theta, np.array([1, 4]), "p.json")


# Two pairs: p0 at rank 1 (clicked) and rank 2 (not), p1 at rank 1 (not clicked); clicks as bools.
MIXED = (np.array([0, 1, 0]), np.array([1, 1, 2]), np.array([True, False, False]))


def test_em_steps_with_two_impressions_at_rank_one():
    # step 1 from theta = gamma = .5: P(examined | no click) = .5 * .5 / .75 = 1/3, P(relevant | no click) = 1/3;
    # theta = [(1 + 1/3) / 2, 1/3] = [2/3, 1/3], gamma = [(1 + 1/3) / 2, 1/3] = [2/3, 1/3]; relative: [1, 1/2]
    assert estimate_em(*MIXED, iterations=1).tolist() == pytest.approx([1.0, 0.5], abs=1e-12)
    # step 2: row 1 (t 2/3, g 1/3): denom 1 - 2/9 = 7/9, examined (2/3 * 2/3) / (7/9) = 4/7;
    # row 2 (t 1/3, g 2/3): examined (1/3 * 1/3) / (7/9) = 1/7; theta = [(1 + 4/7) / 2, 1/7] = [11/14, 1/7];
    # relative: (1/7) / (11/14) = 2/11
    assert estimate_em(*MIXED, iterations=2).tolist() == pytest.approx([1.0, 2 / 11], abs=1e-12)


def test_em_reads_float_ranks():
    query_item, rank, clicked = MIXED
    assert estimate_em(query_item, rank.astype(float), clicked, iterations=1).tolist() == pytest.approx(
        [1.0, 0.5], abs=1e-12)


def test_load_propensities_of_integers_are_floats(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[1, 1]")
    result = load_propensities(str(path))
    assert result.dtype == np.float64 and result.tolist() == [1.0, 1.0]
