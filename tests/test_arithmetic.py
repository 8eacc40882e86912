"""Hand-computed values for the arithmetic that decides what buyers see.

Every expected value is a number written here, with the arithmetic beside it in a
comment; none is computed by the production code under test. Each block names the
plausible bug it was checked against (planted one at a time, then removed).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from es.function_score import combine, evaluate, function_factor, quantize_rank_feature
from es.guard import SCORE, BadRecord, guard_params
from ranking.metrics import per_serp, skip_above_rows

F32 = np.float32


def _rank_feature(function: dict, value: float = 0.75, boost: float = 1.0) -> float:
    docs = {"image_score_rank": np.array([value], np.float32)}
    matches, scores = evaluate({"rank_feature": {"field": "image_score_rank", "boost": boost, **function}}, docs)
    assert matches.tolist() == [True]
    return float(scores[0])


# ---------------------------------------------------------------- rank_feature functions (Lucene FeatureField)
# 0.75 = 0b0.11 keeps all its bits under the 9-bit quantisation, so f = 0.75 exactly.

def test_saturation():
    # 1 - pivot / (f + pivot) = 1 - 0.5 / 1.25 = 0.6
    assert _rank_feature({"saturation": {"pivot": 0.5}}) == pytest.approx(0.6, abs=1e-7)


def test_log_is_the_natural_log():
    # ln(scaling_factor + f) = ln(1.75) = 0.5596157879354227 (log10 would give 0.2430380486862944)
    assert _rank_feature({"log": {"scaling_factor": 1.0}}) == pytest.approx(0.5596157879354227, abs=1e-7)


def test_sigmoid_is_one_minus_the_reciprocal():
    # (f / pivot)^exp = (0.75 / 0.5)^2 = 2.25; 1 - 1 / (1 + 2.25) = 1 - 0.3076923 = 0.6923077
    assert _rank_feature({"sigmoid": {"pivot": 0.5, "exponent": 2.0}}) == pytest.approx(0.6923076923, abs=1e-7)


def test_linear_with_boost():
    # boost * f = 2 * 0.75
    assert _rank_feature({"linear": {}}, boost=2.0) == 1.5


# ---------------------------------------------------------------- the 9 significant bits of a rank feature

@pytest.mark.parametrize("value, stored", [
    (1.0 + 2 ** -8, 1.0 + 2 ** -8),   # the 9th significant bit (8th stored mantissa bit) is kept
    (1.0 + 2 ** -9, 1.0),             # the 10th is dropped
    (1.0 + 2 ** -8 + 2 ** -9, 1.0 + 2 ** -8),  # truncated, not rounded
    (0.6, 0.599609375),               # 0.6 = 1.2 * 2^-1; 1.2 = 1.00110011|0011... -> 1 + 51/256 = 1.19921875
    (2.0 - 2 ** -20, 2.0 - 2 ** -8),  # 1.111...1 keeps 1.11111111 = 1.99609375
])
def test_quantisation_keeps_nine_significant_bits(value, stored):
    assert float(quantize_rank_feature([value])[0]) == stored


def test_the_mirror_scores_the_quantised_value():
    # linear on 1 + 2^-9 scores the stored 1.0, not the written value
    assert _rank_feature({"linear": {}}, value=1.0 + 2 ** -9) == 1.0


# ---------------------------------------------------------------- field_value_factor modifiers
# value 3 (a double field), factor 2 -> v = 6

@pytest.mark.parametrize("modifier, expected", [
    ("none", 6.0),
    ("log", 0.7781512503836436),    # log10(6)
    ("log1p", 0.8450980400142568),  # log10(7)
    ("log2p", 0.9030899869919435),  # log10(8)
    ("ln", 1.791759469228055),      # ln(6)
    ("ln1p", 1.9459101490553132),   # ln(7)
    ("ln2p", 2.0794415416798357),   # ln(8)
    ("square", 36.0),
    ("sqrt", 2.449489742783178),
    ("reciprocal", 0.16666666666666666),
])
def test_field_value_factor_modifier(modifier, expected):
    docs = {"x": np.array([3.0])}
    factor = function_factor([{"field_value_factor": {"field": "x", "factor": 2.0, "modifier": modifier}}],
                             "multiply", docs, np.ones(1, np.float32))
    assert factor[0] == pytest.approx(expected, rel=1e-12)


def test_field_value_factor_missing_and_float32_factor():
    # missing 4 (a double) * factor 0.1 parsed as float32 0.10000000149011612 = 0.4000000059604645
    docs = {"x": np.array([np.nan])}
    factor = function_factor([{"field_value_factor": {"field": "x", "factor": 0.1, "missing": 4.0}}],
                             "multiply", docs, np.ones(1, np.float32))
    assert factor[0] == 0.4000000059604645


# ---------------------------------------------------------------- score_mode
# doc 0: both functions match: A = x * weight 2 = 4 * 2 = 8, B = weight 3
# doc 1: only B matches; doc 2: neither (factor 1 in every mode)
FUNCTIONS = [{"field_value_factor": {"field": "x"}, "weight": 2.0, "filter": {"term": {"a": True}}},
             {"weight": 3.0, "filter": {"term": {"b": True}}}]
DOCS = {"x": np.array([4.0, 4.0, 4.0]), "a": np.array([True, False, False], object),
        "b": np.array([True, True, False], object)}


@pytest.mark.parametrize("mode, expected", [
    ("multiply", [24.0, 3.0, 1.0]),  # 8 * 3
    ("sum", [11.0, 3.0, 1.0]),       # 8 + 3
    ("avg", [2.2, 1.0, 1.0]),        # (8 + 3) / (2 + 3); doc 1: 3 / 3
    ("max", [8.0, 3.0, 1.0]),
    ("min", [3.0, 3.0, 1.0]),
    ("first", [8.0, 3.0, 1.0]),
])
def test_score_mode(mode, expected):
    factor = function_factor(FUNCTIONS, mode, DOCS, np.ones(3, np.float32))
    assert factor.tolist() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- boost_mode, in float32
# query score q = 2, factor f = 3

@pytest.mark.parametrize("mode, expected", [
    ("multiply", 6.0), ("replace", 3.0), ("sum", 5.0), ("avg", 2.5), ("max", 3.0), ("min", 2.0)])
def test_boost_mode(mode, expected):
    assert combine(np.array([2.0], np.float32), np.array([3.0]), mode)[0] == F32(expected)


def test_combine_rounds_to_float32_and_caps_at_max_boost():
    # float32(0.1) = 0.10000000149011612; * 3 = 0.30000000447034836 in double; nearest float32 is
    # 0.30000001192092896 (its neighbour below, 0.29999998211860657, is 3x further away)
    assert float(combine(np.array([0.1], np.float32), np.array([3.0]), "multiply")[0]) == 0.30000001192092896
    # max_boost 2 caps the factor 3: 2 * 2 = 4
    assert combine(np.array([2.0], np.float32), np.array([3.0]), "multiply", max_boost=2.0)[0] == F32(4.0)


# ---------------------------------------------------------------- ranking metrics per SERP
# SERP 0: 4 items logged at ranks 1-4, the one at rank 3 clicked; the new order swaps ranks 1 and 2.
# SERP 1: 3 items, rank 1 clicked, order unchanged.
# SERP 2: 4 items, rank 1 clicked; the new order swaps ranks 3 and 4 (below k = 2).
SERP = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
POSITION = np.array([1, 2, 3, 4, 1, 2, 3, 1, 2, 3, 4])
CLICKED = np.array([0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0], bool)
NEW_RANK = np.array([2, 1, 3, 4, 1, 2, 3, 1, 2, 4, 3])
THETA = np.array([1.0, 0.5, 0.25, 0.2])  # examination propensity by logged rank


def _metrics(k: int) -> dict[str, np.ndarray]:
    raw = per_serp(SERP, 3, CLICKED, NEW_RANK, POSITION, THETA[POSITION - 1],
                   skip_above_rows(SERP, POSITION, CLICKED), k=k)
    return {name: num / np.where(den == 0, np.nan, den) for name, (num, den) in raw.items()}


def test_mrr_and_mean_click_position():
    m = _metrics(10)
    assert m["mrr"].tolist() == pytest.approx([1 / 3, 1.0, 1.0])  # the click moved to rank 3 in SERP 0
    assert m["mean_click_position"].tolist() == [3.0, 1.0, 1.0]


def test_ndcg_at_cutoffs():
    # one click, so IDCG = 1 / log2(2) = 1; SERP 0's click at rank 3: 1 / log2(4) = 0.5
    assert _metrics(10)["ndcg@10"].tolist() == pytest.approx([0.5, 1.0, 1.0])
    assert _metrics(2)["ndcg@2"].tolist() == pytest.approx([0.0, 1.0, 1.0])  # rank 3 is past k = 2


def test_ips_weights_divide_by_the_logged_rank_propensity():
    # SERP 0: discount 0.5 at the new rank 3, logged at rank 3 (propensity 0.25): 0.5 / 0.25 = 2
    assert _metrics(10)["ips_dcg@10"].tolist() == pytest.approx([2.0, 1.0, 1.0])


def test_pairwise_click_accuracy_counts_skip_above_pairs():
    # SERP 0: the click (logged 3) skipped ranks 1 and 2, and the new order still puts both above it: 0 / 2
    m = _metrics(10)
    assert m["pairwise_click_accuracy"][0] == 0.0
    assert math.isnan(m["pairwise_click_accuracy"][1])  # no pair: a click at rank 1


@pytest.mark.parametrize("k, expected", [
    (1, [1.0, 0.0, 0.0]),   # SERP 0's rank 1 changed
    (2, [1.0, 0.0, 0.0]),   # SERP 2's change is at ranks 3-4, below k
    (3, [1.0, 0.0, 1.0]),   # rank 3 of SERP 2 changed
    (10, [1.0, 0.0, 1.0]),
])
def test_topk_changed_respects_k(k, expected):
    assert _metrics(k)[f"topk_changed@{k}"].tolist() == expected


# ---------------------------------------------------------------- the score a record may carry

@pytest.mark.parametrize("score", [True, False, float("nan"), float("inf"), "0.5", None])
def test_a_score_that_is_not_a_finite_number_is_refused(score):
    record = {"id": "a", "updated_at": "2026-01-01T00:00:00Z", "image_score": score,
              "image_score_model": "m", "image_scored_at": "2026-01-01T00:00:00Z",
              "image_score_image_url": "http://x/a.jpg"}
    with pytest.raises(BadRecord, match="image_score"):
        guard_params(record, SCORE)


def test_a_finite_score_passes_as_a_float():
    record = {"id": "a", "updated_at": "2026-01-01T00:00:00Z", "image_score": 1,
              "image_score_model": "m", "image_scored_at": "2026-01-01T00:00:00Z",
              "image_score_image_url": "http://x/a.jpg"}
    _, params = guard_params(record, SCORE)
    assert params["fields"]["image_score"] == 1.0 and type(params["fields"]["image_score"]) is float


# ---------------------------------------------------------------- Holm's step-down across platforms x metrics

def holm(p: list[float]) -> list[float]:
    """Holm's adjusted p-values: sorted ascending, p_(j) * (m - j + 1), running maximum, capped at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - j) * p[i]))
        adjusted[i] = running
    return adjusted


def test_the_holm_reference_by_hand():
    # sorted 0.01, 0.03, 0.04: 3 * 0.01 = 0.03; 2 * 0.03 = 0.06; 1 * 0.04 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 2 * 0.5 = 1.0, 0.6 -> 1.0: capped, then monotone


def test_the_readout_applies_holm_per_variant_across_platforms_and_metrics(tmp_path):
    import json

    from ranking import ab, ab_simulate
    rows_path = tmp_path / "rows.parquet"
    assert ab_simulate.run(["--output", str(rows_path), "--users", "20000", "--lift", "web=1.1,ios=1,android=1",
                            "--seed", "3"]) == 0
    assert ab.run(["--input", str(rows_path), "--control", "control", "--output", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "readout.json").read_text())["rows"]
    family = [r for r in rows if r["variant"] == "treatment"]
    assert len(family) == 16  # 4 platforms (with all) x 4 metrics
    expected = holm([r["p"] for r in family])
    assert [r["p_holm"] for r in family] == pytest.approx(expected, rel=1e-9)
    assert any(r["p_holm"] > r["p"] * 1.5 for r in family if r["p"] < 0.5)  # the correction did something
