"""analyze: KS and permutation tests, adjectives from WordNet, the report, and the simulate->collect->label->analyze loop."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from labeling import label
from pipelines import collect
from tests.fixtures.tools import missing_tool
from training import analyze, simulate
from training.adjectives import DEFAULT_WORDNET_DIR, INSTALL_HINT, AdjectiveFinder, WordNetMissing, load_wordnet


def test_ks_on_known_distributions():
    rng = np.random.default_rng(0)
    same = analyze.compare(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000), "a", "b", 0.01)
    assert same["ks_pvalue"] > 0.05 and not same["significant"]
    shifted = analyze.compare(rng.normal(0.3, 1, 2000), rng.normal(0, 1, 2000), "a", "b", 0.01)
    assert shifted["ks_pvalue"] < 1e-6 and shifted["significant"]
    assert shifted["median_diff"] > 0 and shifted["stats_a"]["n"] == 2000


def test_empty_group_is_skipped_with_a_note():
    result = analyze.compare(np.array([]), np.array([0.1, 0.2]), "purchased", "not_clicked", 0.01)
    assert "no purchased" in result["skipped"] and "ks_pvalue" not in result


def _windows_rows(rng, n_windows, clicked_is_best):
    """Rows of windows with 2..8 items; the clicked item is the best one, or a random one (the null)."""
    rows = []
    for w in range(n_windows):
        size = int(rng.choice([2, 3, 3, 3, 4, 8]))
        scores = rng.random(size)
        labels = (scores - scores.min()) / (scores.max() - scores.min())
        clicked = int(np.argmax(labels)) if clicked_is_best else int(rng.integers(size))
        rows += [{"serp_id": f"s{w}", "item_id": f"i{k}", "clicked": k == clicked, "value": float(labels[k])}
                 for k in range(size)]
    return rows


def test_window_permutation_test_is_calibrated_where_pooled_ks_is_not():
    rng = np.random.default_rng(3)
    null_rows = _windows_rows(rng, 3000, clicked_is_best=False)
    pooled = analyze.compare(analyze.values_of(null_rows, "clicked"), analyze.values_of(null_rows, "not_clicked"),
                             "clicked", "not_clicked", 0.01)
    perm = analyze.window_permutation_test(null_rows, 300, seed=0)
    assert pooled["ks_pvalue"] < 0.01  # window sizes mixed unequally: the pooled test sees a difference
    assert perm["pvalue"] > 0.05 and perm["windows"] == 3000
    effect = analyze.window_permutation_test(_windows_rows(rng, 300, clicked_is_best=True), 300, seed=0)
    assert effect["pvalue"] < 0.01


# --------------------------------------------------------------------------- adjectives

@pytest.fixture(scope="module")
def wordnet():
    try:
        return load_wordnet()
    except WordNetMissing:
        missing_tool(f"WordNet 3.0 (in {DEFAULT_WORDNET_DIR})", INSTALL_HINT)


def test_wordnet_adjectives_are_lemmatised_and_adverbs_are_not_counted(wordnet):
    finder = AdjectiveFinder(wordnet)
    text = ("A sharp, well-lit photo with a clean white background, clearer than the blurry and grainy one; "
            "very good framing, well centred, only slightly dark. The image shows a bag.")
    found = finder.adjectives(text)
    for word in ("sharp", "lit", "clean", "white", "clear", "blurry", "grainy", "good", "dark"):
        assert word in found
    for word in ("very", "well", "only", "image", "bag", "photo", "background", "the", "shows"):
        assert word not in found
    assert finder.is_adjective_only("blurry") and not finder.is_adjective_only("white")


def test_criterion_headings_of_the_prompt_are_not_counted_as_the_judges_adjectives(wordnet):
    finder = AdjectiveFinder(wordnet)
    text = ("Color harmony: muted tones. Brightness: dark. Light and shadow: harsh. "
            "Visual impact: weak; the product presentation is cluttered, sharp detail: fine.")
    found = finder.adjectives(text)
    assert {"muted", "dark", "harsh", "weak", "cluttered", "sharp", "fine"} <= set(found)
    assert not {"visual", "light"} & set(found)


def test_missing_wordnet_says_how_to_install_and_the_rest_of_the_report_is_written(tmp_path):
    windows, labels = _tiny_inputs(tmp_path)
    empty = tmp_path / "no-wordnet"
    empty.mkdir()
    out = tmp_path / "report"
    figures = analyze.analyze([str(windows)], [str(labels)], str(out), wordnet_dir=str(empty), permutations=50)
    assert INSTALL_HINT in figures["adjectives"]["skipped"] and str(empty) in figures["adjectives"]["skipped"]
    report = (out / "report.md").read_text()
    assert f"`{INSTALL_HINT}`" in report
    assert "clicked_vs_not_clicked" in report and (out / "clicked_vs_not_clicked.png").stat().st_size > 1000
    assert json.loads((out / "figures.json").read_text())["comparisons"]["clicked_vs_not_clicked"]["n_a"] == 2


def _tiny_inputs(tmp_path: Path, extra_label_lines: tuple[str, ...] = ()):
    windows = tmp_path / "windows-00000-of-00001.jsonl"
    labels = tmp_path / "labels.jsonl"
    win_rows, label_rows = [], []
    for w, (platform, tied) in enumerate([("web", False), ("ios", False), ("web", True)]):
        items = [{"item_id": f"i{k}", "position": k + 1, "price": 100.0, "image_url": f"file:///x/{k}.jpg",
                  "clicked": k == 0, "liked": False, "purchased": False} for k in range(3)]
        win_rows.append({"serp_id": f"s{w}", "query": "bag", "platform": platform, "ts": "2024-01-01T00:00:00+00:00",
                         "split": "train", "anchor_item_id": "i0", "items": items})
        for k in range(3):
            label_rows.append({"serp_id": f"s{w}", "item_id": f"i{k}", "score": 5.0,
                               "label": 0.5 if tied else [1.0, 0.4, 0.0][k], "tied": tied,
                               "rationale": "A sharp, bright photo." if k == 0 else "A blurry, dark photo.",
                               "judge": "test", "prompt_version": "t"})
    windows.write_text("".join(json.dumps(r) + "\n" for r in win_rows))
    labels.write_text("".join(json.dumps(r) + "\n" for r in label_rows) + "".join(l + "\n" for l in extra_label_lines))
    return windows, labels


def test_report_accounts_for_bad_lines_tied_windows_and_empty_groups(tmp_path, wordnet):  # its adjectives need WordNet
    windows, labels = _tiny_inputs(tmp_path, ('{"serp_id": ', json.dumps({"serp_id": "s0", "item_id": "i1"}),
                                              json.dumps({"serp_id": "zz", "item_id": "i9", "label": 0.3})))
    out = tmp_path / "report"
    assert analyze.run(["--windows", str(windows), "--labels", str(labels), "--output", str(out),
                        "--permutations", "20"]) == 0
    figures = json.loads((out / "figures.json").read_text())
    inputs = figures["inputs"]
    assert inputs["problems"] == {"malformed_json": 1, "bad_label": 1}
    assert inputs["labels"] == 9 + 1 and inputs["labels_without_window"] == 1
    assert inputs["tied_windows_excluded"] == 1 and inputs["tied_items_excluded"] == 3
    assert inputs["items_analysed"] == 6  # nothing else lost: 9 window items - 3 tied
    assert "no liked" in figures["comparisons"]["liked_vs_not_clicked"]["skipped"]
    assert set(figures["platforms"]) == {"web", "ios"}
    clicked_adjectives = {row["adjective"] for row in figures["adjectives"]["groups"]["clicked"]["top"]}
    assert clicked_adjectives == {"sharp", "bright"}
    report = (out / "report.md").read_text()
    assert "skipped: no liked" in report and "malformed_json" in report and (out / "adjectives.png").exists()


# --------------------------------------------------------------------------- end to end

def _simulate_collect_label_analyze(tmp_path: Path, name: str, *sim_flags: str) -> dict:
    world, windows, labels, report = (tmp_path / f"{name}-{step}" for step in ("sim", "col", "lab", "rep"))
    assert simulate.run(["--output", str(world), "--items", "300", "--serps", "1500", *sim_flags]) == 0
    assert collect.run(["--logs", str(world / "logs.jsonl"), "--output", str(windows),
                        "--ctr-cutoff", "2024-01-15T00:00:00Z"]) == 0
    assert label.run(["--windows", str(windows / "windows*.jsonl"), "--output", str(labels), "--judge", "simulated",
                      "--quality", str(world / "quality.jsonl"), "--no-progress"]) in (0, None)
    assert analyze.run(["--windows", str(windows / "windows*.jsonl"), "--labels", str(labels / "labels*.jsonl"),
                        "--output", str(report), "--permutations", "300"]) == 0
    return json.loads((report / "figures.json").read_text())["comparisons"]["clicked_vs_not_clicked"]


@pytest.mark.slow
def test_end_to_end_detects_the_planted_quality_effect(tmp_path):
    result = _simulate_collect_label_analyze(tmp_path, "effect", "--seed", "2", "--quality-effect", "2")
    assert result["ks_pvalue"] < 0.01 and result["permutation"]["pvalue"] < 0.01
    assert result["stats_a"]["median"] > result["stats_b"]["median"] + 0.2


@pytest.mark.slow
def test_end_to_end_null_world_is_not_flagged(tmp_path):
    result = _simulate_collect_label_analyze(tmp_path, "null", "--seed", "2", "--quality-effect", "0", "--no-images")
    # The within-window permutation test is exact under the null; the pooled KS test is biased by window sizes
    # (see training.analyze.window_permutation_test), so it is not what decides here.
    assert result["permutation"]["pvalue"] > 0.05
    assert abs(result["stats_a"]["median"] - result["stats_b"]["median"]) < 0.1
