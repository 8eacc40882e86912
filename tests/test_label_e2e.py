"""simulate -> collect -> label (HTTP judge, over the chat double) -> analyze, on a small simulated log."""
from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

from labeling import label
from labeling.parse import parse_reply
from pipelines import collect
from scoring.photos import degrade, draw_product
from tests.chat_double import ChatDouble, recorded
from tests.fixtures.chat import window, write_images, write_windows
from tests.fixtures.tools import missing_tool
from tests.pixel_judge import pixel_judge
from training import analyze, simulate
from training.adjectives import DEFAULT_WORDNET_DIR, INSTALL_HINT, WordNetMissing, load_wordnet

SECRET = "sk-test-SECRET-e2e-5b7d10c3"


def read_jsonl(pattern_dir: Path, prefix: str) -> list[dict]:
    return [json.loads(line) for path in sorted(pattern_dir.glob(f"{prefix}*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def as_received(image: Image.Image) -> Image.Image:
    """The image as the judge gets it: JPEG-encoded in transit."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return Image.open(io.BytesIO(buffer.getvalue()))


def judged(images: list[Image.Image]):
    reply = pixel_judge(len(images), images)
    assert reply.status == 200
    return parse_reply(reply.body["choices"][0]["message"]["content"], len(images))


# --------------------------------------------------------------------------- the stand-in judge


def test_pixel_judge_scores_what_it_sees_in_the_prompts_format():
    clean = draw_product(np.random.default_rng(7), 256)
    variants = [clean, degrade(clean, "blur", 0.9), degrade(clean, "underexpose", 0.9),
                draw_product(np.random.default_rng(7), 256, clutter=0.8)]
    parsed = judged([as_received(v) for v in variants])
    assert parsed.method == "json" and len(parsed.scores) == 4
    clean_score, blurred, dark, cluttered = parsed.scores
    assert clean_score >= 8 and blurred <= 4 and dark <= 2 and cluttered < clean_score
    assert "Sharp" in parsed.rationales[0] and "Clean" in parsed.rationales[0]
    assert "Blurry" in parsed.rationales[1] and "Dark" in parsed.rationales[2]
    assert "Cluttered" in parsed.rationales[3]
    assert all(float(s).is_integer() and 0 <= s <= 10 for s in parsed.scores)


def test_pixel_judge_is_deterministic_and_follows_image_order():
    images = [as_received(draw_product(np.random.default_rng(seed), 128)) for seed in (1, 2, 3)]
    images[1] = as_received(degrade(images[1], "blur", 0.8))
    forward = judged(images)
    assert judged(images) == forward
    backward = judged(images[::-1])
    assert backward.scores == forward.scores[::-1] and backward.rationales == forward.rationales[::-1]


# --------------------------------------------------------------------------- the double's responder


def test_script_answers_first_then_the_responder_then_a_broken_responder_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("LLM_API_KEY", raising=False)
    urls = [p.as_uri() for p in write_images(tmp_path / "img", 4)]
    windows = write_windows(tmp_path / "windows.jsonl", [window("s0", urls[:3]), window("s1", urls[1:4]),
                                                         window("s2", urls[:2])])

    def run_label(out: str, double: ChatDouble) -> int:
        return label.run(["--windows", windows, "--output", str(tmp_path / out), "--base-url", double.url,
                          "--model", "test-vlm", "--allow-image-schemes", "file", "--no-progress", "--concurrency",
                          "1", "--no-cache", "--retries", "0", "--malformed-retries", "0"])

    with ChatDouble(script=[recorded("good_3")], responder=pixel_judge) as double:
        assert run_label("ok", double) == 0
    rows = read_jsonl(tmp_path / "ok", "labels")
    assert double.errors == [] and [r.n_images for r in double.requests] == [3, 3, 2]
    assert [r["score"] for r in rows if r["serp_id"] == "s0"] == [7.0, 3.0, 5.0]  # the recorded reply
    # Flat single-colour images: the stand-in finds no edge at all, so it scores them 0 and says why.
    assert all(r["score"] == 0.0 and "Blurry" in r["rationale"] for r in rows if r["serp_id"] != "s0")

    def broken(n_images, images):
        raise RuntimeError("no scores today")

    with ChatDouble(responder=broken) as double:
        assert run_label("broken", double) == 1
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert summary["windows_in"] == 3 and summary["windows_dead_lettered"] == 3 and summary["accounted"]
    assert double.request_count == 3
    assert double.errors == ["chat double: responder failed: RuntimeError: no scores today"] * 3


# --------------------------------------------------------------------------- end to end


def test_simulate_collect_label_over_http_analyze(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("LLM_API_KEY", raising=False)
    world, windows, labels, report = (tmp_path / step for step in ("sim", "col", "lab", "rep"))
    assert simulate.run(["--output", str(world), "--items", "50", "--serps", "120", "--serp-size", "8",
                         "--seed", "3", "--image-size", "128"]) == 0
    assert collect.run(["--logs", str(world / "logs.jsonl"), "--output", str(windows),
                        "--ctr-cutoff", "2024-01-15T00:00:00Z"]) == 0
    window_rows = read_jsonl(windows, "windows")
    assert len(window_rows) >= 20

    with ChatDouble(responder=pixel_judge) as double:
        status = label.run(["--windows", str(windows / "windows*.jsonl"), "--output", str(labels),
                            "--judge", "http", "--base-url", double.url, "--model", "test-vlm",
                            "--allow-image-schemes", "file", "--image-size", "128", "--no-cache",
                            "--concurrency", "2", "--no-progress"])
    assert status == 0

    summary = json.loads((labels / "summary.json").read_text())
    dead = read_jsonl(labels, "deadletter")
    assert summary["windows_in"] == len(window_rows)
    assert summary["windows_in"] == summary["windows_labelled"] + summary["windows_dead_lettered"]
    assert summary["accounted"] and len(dead) == summary["windows_dead_lettered"]
    assert dead == [], f"the stand-in judge answers every window: {Counter(d['reason'] for d in dead)}"

    # One request per window, carrying every one of its images, each authorised with the env key.
    assert double.errors == []
    assert double.request_count == len(window_rows)
    assert sorted(r.n_images for r in double.requests) == sorted(len(w["items"]) for w in window_rows)
    assert all(r.authorization == f"Bearer {SECRET}" and r.model == "test-vlm" for r in double.requests)
    assert summary["usage"]["total_tokens"] > 0
    assert not [p.name for p in labels.rglob("*") if p.is_file() and SECRET in p.read_text(errors="replace")]

    rows = read_jsonl(labels, "labels")
    by_window: dict[str, list[dict]] = {}
    for row in rows:
        by_window.setdefault(row["serp_id"], []).append(row)
    for w in window_rows:
        got = by_window.pop(w["serp_id"])
        assert [r["item_id"] for r in got] == [i["item_id"] for i in w["items"]], "one label per item, in order"
        scores = np.array([r["score"] for r in got])
        labels_ = np.array([r["label"] for r in got])
        assert np.all((labels_ >= 0) & (labels_ <= 1))
        if scores.max() == scores.min():
            assert all(r["tied"] for r in got) and np.all(labels_ == 0.5)
        else:
            np.testing.assert_allclose(labels_, (scores - scores.min()) / (scores.max() - scores.min()))
        assert all(r["judge"] == "http" and r["rationale"] for r in got)
    assert by_window == {}, f"labels for windows collect never wrote: {sorted(by_window)}"
    assert len({r["score"] for r in rows}) >= 4, "the stand-in judge should spread its scores"

    # The judge saw the real photos: its scores follow the simulator's latent quality.
    quality = {q["item_id"]: q["quality"] for q in read_jsonl(world, "quality")}
    item_scores = {r["item_id"]: r["score"] for r in rows}
    rho = spearmanr([quality[i] for i in item_scores], list(item_scores.values())).statistic
    assert rho > 0.3, f"scores barely follow the latent photo quality (Spearman {rho:.2f})"

    assert analyze.run(["--windows", str(windows / "windows*.jsonl"), "--labels", str(labels / "labels*.jsonl"),
                        "--output", str(report), "--permutations", "200"]) == 0
    for name in ("report.md", "figures.json", "clicked_vs_not_clicked.png", "platforms.png"):
        assert (report / name).stat().st_size > 0, name
    figures = json.loads((report / "figures.json").read_text())
    assert figures["inputs"]["labels"] == len(rows) and figures["inputs"]["items_without_label"] == 0
    main = figures["comparisons"]["clicked_vs_not_clicked"]
    assert main["n_a"] > 0 and main["n_b"] > 0 and 0.0 <= main["ks_pvalue"] <= 1.0
    # simulate plants a quality effect on clicks by default; a judge that sees the photos finds it.
    assert main["permutation"]["pvalue"] < 0.05 and main["stats_a"]["median"] > main["stats_b"]["median"]
    assert "clicked_vs_not_clicked" in (report / "report.md").read_text()

    try:
        load_wordnet(DEFAULT_WORDNET_DIR)
    except WordNetMissing:
        missing_tool(f"WordNet 3.0 (in {DEFAULT_WORDNET_DIR}; the adjective table of the report is unchecked)",
                     INSTALL_HINT)
    groups = figures["adjectives"]["groups"]
    found = {row["adjective"] for group in groups.values() for row in group["top"]}
    assert {"sharp", "bright", "cluttered"} <= found, found
    assert found <= _words(rows), f"adjectives not in any rationale: {found - _words(rows)}"
    assert (report / "adjectives.png").exists()
    assert "## Adjectives in the rationales" in (report / "report.md").read_text()


def _words(rows: list[dict]) -> set[str]:
    """Every word the rationales contain: an adjective the report lists must come from them."""
    return {word.strip(".,;:").lower() for r in rows for word in r["rationale"].split()}
