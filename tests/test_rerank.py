"""Offline replay: metrics against ir-measures, replay semantics, bad logs, propensities, rerank-eval end to end."""
from __future__ import annotations

import json
import struct
import urllib.parse

import ir_measures
import numpy as np
import pytest

from es.boosting import Boost
from ranking import rerank_eval
from ranking.metrics import per_serp, skip_above_rows
from ranking.propensity import estimate_em, load_propensities
from ranking.replay import attach_scores, load_logs, load_scores, new_ranks, replay_scores


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def serp(sid, items, platform="web", query="bag"):
    return {"serp_id": sid, "query": query, "platform": platform, "ts": "2024-01-01T00:00:00Z",
            "items": [{"item_id": i, "position": p, "price": 100.0, "image_url": f"file:///x/{i}.jpg",
                       "clicked": c, **extra} for p, (i, c, extra) in enumerate(items, 1)]}


# --------------------------------------------------------------------------- metrics

def _random_serps(rng, n=60):
    sizes = rng.integers(3, 25, n)
    serp_idx = np.repeat(np.arange(n), sizes)
    logged = np.concatenate([np.arange(1, s + 1) for s in sizes])
    clicked = rng.random(len(serp_idx)) < 0.15
    new = np.concatenate([rng.permutation(s) + 1 for s in sizes])
    return serp_idx, logged, clicked, new


def test_mrr_and_ndcg_match_ir_measures():
    rng = np.random.default_rng(1)
    serp_idx, logged, clicked, new = _random_serps(rng)
    n = serp_idx.max() + 1
    pairs = skip_above_rows(serp_idx, logged, clicked)
    stats = per_serp(serp_idx, n, clicked, new, logged, np.ones(len(new)), pairs, k=10)
    qrels = [ir_measures.Qrel(str(s), str(i), int(c)) for i, (s, c) in enumerate(zip(serp_idx, clicked))]
    run = [ir_measures.ScoredDoc(str(s), str(i), float(1000 - r)) for i, (s, r) in enumerate(zip(serp_idx, new))]
    oracle = {(m.measure, m.query_id): m.value for m in ir_measures.iter_calc([ir_measures.RR, ir_measures.nDCG @ 10],
                                                                             qrels, run)}
    has_click = np.bincount(serp_idx, weights=clicked, minlength=n) > 0
    for s in np.flatnonzero(has_click):
        assert stats["mrr"][0][s] == pytest.approx(oracle[ir_measures.RR, str(s)])
        assert stats["ndcg@10"][0][s] == pytest.approx(oracle[ir_measures.nDCG @ 10, str(s)])
    assert stats["mrr"][1].sum() == has_click.sum()


def test_skip_above_ips_click_position_and_topk_by_hand():
    # One SERP of 5: clicks at logged ranks 2 and 4. New order moves rank 4 to the top.
    serp_idx = np.zeros(5, np.int64)
    logged = np.arange(1, 6)
    clicked = np.array([False, True, False, True, False])
    new = np.array([2, 3, 4, 1, 5])
    theta = np.array([1.0, 0.5, 0.4, 0.25, 0.2])
    stats = per_serp(serp_idx, 1, clicked, new, logged, theta[logged - 1], skip_above_rows(serp_idx, logged, clicked), 3)
    # skip-above pairs: (2 over 1), (4 over 1), (4 over 3); the new order gets (4>1) and (4>3) right.
    assert (stats["pairwise_click_accuracy"][0][0], stats["pairwise_click_accuracy"][1][0]) == (2.0, 3.0)
    # IPS-DCG@3: click logged at 2 (1/0.5) now at 3; click logged at 4 (1/0.25) now at 1.
    assert stats["ips_dcg@3"][0][0] == pytest.approx(2.0 / np.log2(4) + 4.0 / np.log2(2))
    assert stats["mean_click_position"][0][0] == 2.0 and stats["mrr"][0][0] == 1.0
    assert stats["topk_changed@3"][0][0] == 1.0
    unchanged = per_serp(serp_idx, 1, clicked, logged, logged, np.ones(5), skip_above_rows(serp_idx, logged, clicked), 3)
    assert unchanged["topk_changed@3"][0][0] == 0.0 and unchanged["pairwise_click_accuracy"][0][0] == 0.0


# --------------------------------------------------------------------------- replay

def test_replay_ties_in_float32_keep_the_logged_order(tmp_path):
    # 1.0 and 1 + 2**-30 differ in double but not in float32; the multiplicative boost ties them.
    logs = write_jsonl(tmp_path / "logs.jsonl", [serp("s1", [
        ("a", False, {"score": 2.0}), ("b", True, {"score": 1.0}), ("c", False, {"score": 1.0})])])
    scores = write_jsonl(tmp_path / "scores.jsonl", [{"id": "a", "image_score": 0.0}, {"id": "b", "image_score": 1.0},
                                                   {"id": "c", "image_score": 1.0 + 2 ** -30}])
    data = attach_scores(load_logs(logs), load_scores(scores))
    new, _ = replay_scores(data, Boost("multiplicative", 1.0))
    assert new.tolist() == [2.0, 2.0, 2.0]
    assert new_ranks(data, new).tolist() == [1, 2, 3]  # three-way float32 tie: logged order


def test_replay_of_the_additive_formula_uses_logged_relevance_and_other_factors(tmp_path):
    # score = relevance * other factors; other = score / relevance is taken as logged.
    logs = write_jsonl(tmp_path / "logs.jsonl", [serp("s1", [
        ("a", False, {"score": 4.0, "relevance_score": 2.0}), ("b", True, {"score": 3.0, "relevance_score": 3.0})])])
    scores = write_jsonl(tmp_path / "scores.jsonl", [{"id": "b", "image_score": 0.5}])  # a: missing -> m
    data = attach_scores(load_logs(logs), load_scores(scores))
    new, _ = replay_scores(data, Boost("additive", 4.0, missing=0.1))
    assert new.tolist() == [f32(f32(2.0 + f32(0.1 * 4.0)) * 2.0), f32(3.0 + 2.0)]
    assert new_ranks(data, new).tolist() == [2, 1]


def test_rank_feature_replay_uses_the_value_the_indexers_write(tmp_path):
    from es.function_score import quantize_rank_feature
    rows = [serp("s1", [(i, False, {"score": 1.0, "relevance_score": 1.0}) for i in "abc"])]
    data = attach_scores(load_logs(write_jsonl(tmp_path / "logs.jsonl", rows)), {"a": 0.0, "c": 0.3})
    new, _ = replay_scores(data, Boost("rank_feature", 1.0, rank_function="linear", rank_params={}))
    floor = float(quantize_rank_feature(np.array([1e-4], np.float32))[0])
    assert new.tolist() == [f32(1.0 + floor), 1.0, f32(1.0 + float(quantize_rank_feature(np.float32([0.3]))[0]))]


def test_additive_needs_relevance_scores_but_multiplicative_does_not(tmp_path):
    logs = write_jsonl(tmp_path / "logs.jsonl", [serp("s1", [("a", False, {"score": 2.0}), ("b", True, {"score": 1.0})])])
    data = attach_scores(load_logs(logs), {"a": 0.1, "b": 0.9})
    assert new_ranks(data, replay_scores(data, Boost("multiplicative", 2.0))[0]).tolist() == [2, 1]
    with pytest.raises(ValueError, match=r"additive formula needs each item's relevance_score.*SERP 's1' item 'a'"):
        replay_scores(data, Boost("additive", 2.0))


def test_rescore_window_replays_only_the_top_of_each_serp(tmp_path):
    logs = write_jsonl(tmp_path / "logs.jsonl", [serp("s1", [
        ("a", False, {"score": 3.0}), ("b", False, {"score": 2.9}), ("c", True, {"score": 2.8})])])
    data = attach_scores(load_logs(logs), {"a": 0.0, "b": 1.0, "c": 1.0})
    new, rescored = replay_scores(data, Boost("multiplicative", 1.0), rescore_window=2)
    assert rescored.tolist() == [True, True, False]
    assert new_ranks(data, new, rescored).tolist() == [2, 1, 3]  # c is outside the window: stays below


@pytest.mark.parametrize("line, message", [
    ("{not json", "logs.jsonl:2: not a SERP log line"),
    (json.dumps(serp("s2", [("a", True, {})])), r"logs.jsonl:2 \(SERP 's2', item 'a'\) has no 'score'"),
    (json.dumps(serp("s2", [("a", True, {"score": -1.0})])), "score must be a finite number >= 0"),
    (json.dumps(serp("s2", [("a", True, {"score": 1.0, "relevance_score": "x"})])), "relevance_score must be"),
])
def test_bad_log_lines_are_named(tmp_path, line, message):
    good = json.dumps(serp("s1", [("a", True, {"score": 1.0})]))
    path = tmp_path / "logs.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_logs(str(path))


def test_columnar_and_line_readers_agree(tmp_path):
    from ranking import replay
    rows = [serp(f"s{i}", [(f"i{j}", j == i % 3, {"score": float(9 - j), **({"relevance_score": 2.0} if i else {})})
                          for j in (2, 0, 1)], platform=("web", "ios")[i % 2]) for i in range(4)]
    path = write_jsonl(tmp_path / "logs.jsonl", rows)
    fast, slow = replay._read_columnar(path), replay._read_lines(path)
    assert fast is not None
    for name in replay._COLUMNS:
        assert np.array_equal(np.asarray(fast[name]), np.asarray(slow[name]), equal_nan=name == "relevance"), name
    other = write_jsonl(tmp_path / "more.jsonl", rows)
    logs = load_logs(",".join([path, other]))  # two files: SERP indices continue
    assert logs.n_serps == 8 and logs.serp.tolist()[-3:] == [7, 7, 7] and logs.position.tolist()[:3] == [1, 2, 3]


def test_bad_score_files_and_missing_globs_are_named(tmp_path):
    path = write_jsonl(tmp_path / "scores.jsonl", [{"id": "a", "image_score": 0.5}, {"item_id": "b"}])
    with pytest.raises(ValueError, match="scores.jsonl:2: expected a JSON object with id and image_score"):
        load_scores(path)
    write_jsonl(tmp_path / "neg.jsonl", [{"id": "a", "image_score": -0.5}])
    with pytest.raises(ValueError, match=r"neg.jsonl:1 \(id 'a'\): image_score must be"):
        load_scores(str(tmp_path / "neg.jsonl"))
    with pytest.raises(ValueError, match=r"--scores .*nothing\*.jsonl' matches no files"):
        load_scores(str(tmp_path / "nothing*.jsonl"))


# --------------------------------------------------------------------------- propensities

def test_em_recovers_the_simulators_examination_curve():
    rng = np.random.default_rng(0)
    n_pairs, n = 400, 200_000
    gamma = rng.uniform(0.05, 0.9, n_pairs)
    theta = 1.0 / np.log2(1.0 + np.arange(1, 11))
    pair = rng.integers(0, n_pairs, n)
    rank = rng.integers(1, 11, n)
    clicked = rng.random(n) < theta[rank - 1] * gamma[pair]
    estimate = estimate_em(pair, rank, clicked, iterations=300)
    assert np.abs(estimate - theta).max() < 0.05


def test_supplied_propensities_are_checked(tmp_path):
    (tmp_path / "p.json").write_text("[1.0, 0.5]")
    assert load_propensities(str(tmp_path / "p.json")).tolist() == [1.0, 0.5]
    (tmp_path / "p.json").write_text("[1.0, 0]")
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        load_propensities(str(tmp_path / "p.json"))


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """simulate (with engine scores) -> score the photos with the project's model -> a quality and a null world."""
    from scoring.model import load_model
    from training.simulate import run as simulate
    from transforms.decode import decode_image
    root = tmp_path_factory.mktemp("rerank")
    common = ["--serps", "4000", "--items", "100", "--seed", "3"]
    simulate(["--output", str(root / "quality"), "--image-size", "96", "--quality-effect", "3", *common])
    simulate(["--output", str(root / "null"), "--no-images", "--quality-effect", "0", *common])
    model = load_model("handcrafted")
    rows = [json.loads(line) for line in (root / "quality" / "quality.jsonl").read_text().splitlines()]
    images = np.stack([decode_image(open(urllib.parse.urlparse(r["image_url"]).path, "rb").read(), model.input_size)
                       for r in rows])
    scores, _ = model.infer(images)
    write_jsonl(root / "scores.jsonl", [{"id": r["item_id"], "image_score": float(s)} for r, s in zip(rows, scores)])
    return root


def _rows(out) -> list[dict]:
    return json.loads((out / "rerank.json").read_text())


def _row(rows, formula, w, metric, platform="all"):
    (row,) = [r for r in rows if (r["formula"], r["w"], r["metric"], r["platform"]) == (formula, w, metric, platform)]
    return row


def test_rerank_eval_end_to_end_finds_the_quality_effect_and_not_a_null_one(worlds, capsys):
    out = {}
    for world in ("quality", "null"):
        out[world] = worlds / f"out-{world}"
        assert rerank_eval.run(["--logs", str(worlds / world / "logs.jsonl"), "--scores", str(worlds / "scores.jsonl"),
                                "--formula", "multiplicative,additive", "--w", "1,3", "--bootstrap", "300",
                                "--output", str(out[world])]) == 0
    rows = _rows(out["quality"])
    assert {r["platform"] for r in rows} == {"all", "web", "ios", "android"}
    assert len(rows) == 2 * 3 * 4 * 6  # formula x w (0 added) x platform x metric
    assert set(rows[0]) == {"formula", "w", "ai_factor", "platform", "metric", "value", "delta", "ci_low", "ci_high",
                            "serps"}
    for formula in ("multiplicative", "additive"):
        assert _row(rows, formula, 0.0, "ips_dcg@10")["delta"] == 0.0
        assert _row(rows, formula, 3.0, "ips_dcg@10")["ci_low"] > 0
        assert _row(rows, formula, 3.0, "pairwise_click_accuracy")["ci_low"] > 0
    null = _rows(out["null"])
    # Eight 95 % intervals in the null world: one may exclude 0 by chance (or by the EM propensities' small
    # bias), so the null check is that the IPS gain is far below the quality world's and NDCG does not rise.
    for formula in ("multiplicative", "additive"):
        for w in (1.0, 3.0):
            assert _row(null, formula, w, "ips_dcg@10")["delta"] < _row(rows, formula, w, "ips_dcg@10")["delta"] / 4
            assert not _row(null, formula, w, "ndcg@10")["ci_low"] > 0
    # Skip-above pairs are all wrong under the logged order, so any change gains on them (documented);
    # the gain is still larger where quality drives clicks.
    assert (_row(rows, "multiplicative", 3.0, "pairwise_click_accuracy")["delta"]
            > _row(null, "multiplicative", 3.0, "pairwise_click_accuracy")["delta"])
    page = (out["quality"] / "samples.html").read_text()
    assert "logged order" in page and "re-ranked" in page and "#e4002b" in page
    assert (out["quality"] / "rerank_all.png").stat().st_size > 0
    assert json.loads((out["quality"] / "propensities.json").read_text())["propensities"][0] == 1.0


def test_rerank_eval_refuses_bad_flags(tmp_path):
    with pytest.raises(SystemExit, match="--formula"):
        rerank_eval.run(["--logs", "x", "--scores", "y", "--formula", "sum", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="--w needs finite numbers >= 0"):
        rerank_eval.run(["--logs", "x", "--scores", "y", "--w", "0,-1", "--output", str(tmp_path)])
    logs = write_jsonl(tmp_path / "logs.jsonl", [serp("s1", [("a", False, {"score": 2.0}), ("b", True, {"score": 1.0})])])
    scores = write_jsonl(tmp_path / "scores.jsonl", [{"id": "a", "image_score": 0.5}])
    with pytest.raises(SystemExit, match="relevance_score"):
        rerank_eval.run(["--logs", logs, "--scores", scores, "--formula", "additive", "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
