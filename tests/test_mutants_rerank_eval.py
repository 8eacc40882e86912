"""ranking/rerank_eval.py on one hand-computed SERP: every output file (docs/testing.md, Mutation testing).

Expected values are written by hand, with the arithmetic in a comment; none comes from the code under test.

The SERP (web, query "bag"): a at position 1 (engine score 2, no image score: --missing 0, not clicked), b at
position 2 (engine score 1, image score 1, clicked); propensities [1, 0.5, ...]. Multiplicative w = 1.5:
a 2 * (1 + 1.5 * 0) = 2, b 1 * (1 + 1.5) = 2.5, so b moves to the top. At k = 1 only rank 1 counts:

                       logged (w = 0)   w = 1.5          delta
  mrr                  1/2 = 0.5        1                +0.5
  mean_click_position  2                1                -1
  ndcg@1               0 (b is rank 2)  1                +1
  pairwise (b over a)  0 of 1           1 of 1           +1
  ips_dcg@1            0                1 / 0.5 = 2      +2
  topk_changed@1       0                1                +1

One SERP: every bootstrap resample is that SERP, so both CI ends are the delta.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest

from ranking import rerank_eval
from ranking.replay import attach_scores, load_logs

NAMES = ["mrr", "mean_click_position", "ndcg@1", "pairwise_click_accuracy", "ips_dcg@1", "topk_changed@1"]
LOGGED = [0.5, 2.0, 0.0, 0.0, 0.0, 0.0]
BOOSTED = [1.0, 1.0, 1.0, 1.0, 2.0, 1.0]
DELTA = [0.5, -1.0, 1.0, 1.0, 2.0, 1.0]


def _item(item: str, position: int, clicked: bool, score: float, **extra) -> dict:
    return {"item_id": item, "position": position, "price": 1.0, "image_url": f"file:///x/{item}.jpg",
            "clicked": clicked, "score": score, **extra}


def _logs(tmp_path, *serps: tuple) -> str:
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps({"serp_id": sid, "query": "bag", "platform": platform,
                                        "ts": "2024-01-01T00:00:00Z", "items": items}) + "\n"
                            for sid, platform, items in serps))
    return str(path)


ONE_SERP = ("s1", "web", [_item("a", 1, False, 2.0), _item("b", 2, True, 1.0)])


def test_one_serp_end_to_end(tmp_path):
    logs = _logs(tmp_path, ONE_SERP)
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"id": "b", "image_score": 1.0}\n')
    theta = tmp_path / "p.json"
    theta.write_text("[1.0, 0.5, 0.1234567]")
    out = tmp_path / "out"
    out.mkdir()  # an existing output directory is fine
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert rerank_eval.run(["--logs", logs, "--scores", str(scores), "--formula", "multiplicative", "--w", "1.5",
                                "--missing", "0", "--k", "1", "--propensities", str(theta), "--bootstrap", "1",
                                "--samples", "1", "--output", str(out)]) == 0

    text = (out / "rerank.json").read_text()
    assert text.startswith('[\n {\n  "formula": "multiplicative",\n')  # indent 1
    expected = []
    for platform in ("all", "web"):
        for w, values, deltas in ((0.0, LOGGED, [0.0] * 6), (1.5, BOOSTED, DELTA)):
            for name, value, delta in zip(NAMES, values, deltas):
                expected.append({"formula": "multiplicative", "w": w, "ai_factor": 1.0, "platform": platform,
                                 "metric": name, "value": value, "delta": delta, "ci_low": delta, "ci_high": delta,
                                 "serps": 1})
    assert json.loads(text) == expected

    table = ("| formula | w | mrr | mean_click_position | ndcg@1 | pairwise_click_accuracy | ips_dcg@1 | "
             "topk_changed@1 |\n"
             "|---|---|---|---|---|---|---|---|\n"
             "| multiplicative | 0 | 0.5000 (+0.0000 [+0.0000, +0.0000]) | 2.0000 (+0.0000 [+0.0000, +0.0000]) | "
             "0.0000 (+0.0000 [+0.0000, +0.0000]) | 0.0000 (+0.0000 [+0.0000, +0.0000]) | "
             "0.0000 (+0.0000 [+0.0000, +0.0000]) | 0.0000 (+0.0000 [+0.0000, +0.0000]) |\n"
             "| multiplicative | 1.5 | 1.0000 (+0.5000 [+0.5000, +0.5000]) | 1.0000 (-1.0000 [-1.0000, -1.0000]) | "
             "1.0000 (+1.0000 [+1.0000, +1.0000]) | 1.0000 (+1.0000 [+1.0000, +1.0000]) | "
             "2.0000 (+2.0000 [+2.0000, +2.0000]) | 1.0000 (+1.0000 [+1.0000, +1.0000]) |")
    assert (out / "rerank.md").read_text() == (
        f"# rerank-eval\n\nvalue (delta vs the logged order [95% CI, SERP bootstrap]); propensities: {theta}; "
        f"1 SERPs; ai_factor 1.\n\n## all\n\n{table}\n\n## web\n\n{table}\n")

    # rounded to 6 places, indent 1
    assert (out / "propensities.json").read_text() == (
        f'{{\n "source": "{theta}",\n "propensities": [\n  1.0,\n  0.5,\n  0.123457\n ]\n}}')
    assert (out / "rerank_all.png").stat().st_size > 0 and (out / "rerank_web.png").stat().st_size > 0

    summary = json.loads(printed.getvalue())
    assert summary.keys() == {"output", "serps", "items", "points", "seconds"}
    assert (summary["output"], summary["serps"], summary["items"], summary["points"]) == (str(out), 1, 2, 2)
    assert isinstance(summary["seconds"], float) and summary["seconds"] > 0   # no upper bound: machines are loaded
    assert round(summary["seconds"], 2) == summary["seconds"]

    a = ('<figure><img src="file:///x/a.jpg" alt="a" style="border:4px solid transparent" loading="lazy">'
         '<figcaption>logged #1 → #2 · image score missing</figcaption></figure>')
    b = ('<figure><img src="file:///x/b.jpg" alt="b" style="border:4px solid #e4002b" loading="lazy">'
         '<figcaption>logged #2 → #1 · image score 1.000 · <b>clicked</b></figcaption></figure>')
    section = (f'<section><h2>s1 — web, query “bag”</h2><div class="row"><div class="tag">logged order</div>{a}{b}'
               f'</div><div class="row"><div class="tag">re-ranked</div>{b}{a}</div></section>')
    assert (out / "samples.html").read_text(encoding="utf-8") == f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rerank-eval samples</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.row {{ display: flex; gap: 8px; align-items: flex-start; margin: 4px 0; overflow-x: auto; }}
.tag {{ min-width: 7em; font-size: 0.85em; color: #555; padding-top: 2em; }}
figure {{ margin: 0; width: 112px; }}
img {{ width: 100px; height: 100px; object-fit: cover; }}
figcaption {{ font-size: 0.7em; color: #333; }}
</style></head><body>
<h1>rerank-eval: multiplicative, w = 1.5</h1>
<p>Each SERP twice: in the logged order, then re-ranked. Clicked items have a red frame.</p>
{section}
</body></html>
"""


# --------------------------------------------------------------------------- flags, propensities, samples, plot

def test_flags_defaults_types_and_help():
    parser = rerank_eval._parser()
    assert parser.prog == "imagescore rerank-eval"
    assert parser.description == ("``imagescore rerank-eval``: choose the boosting formula and weight offline, by "
                                  "replaying logged SERPs.")
    table = {(a.dest, a.default, a.type, a.required, a.help) for a in parser._actions if a.dest not in ("help", "verbose")}
    assert table == {
        ("logs", None, None, True, "search-log JSONL glob(s), comma-separated; items carry score (and relevance_score "
                                   "for the additive formulas)"),
        ("scores", None, None, True, "JSONL glob(s) of id + image_score (e.g. backfill scores*.jsonl)"),
        ("formula", "multiplicative,additive", None, False,
         "comma-separated formulas among multiplicative, power, additive, rank_feature"),
        ("w", "0,0.1,0.2,0.3,0.5,0.75,1,1.5", None, False, "comma-separated weights (0 is always added)"),
        ("missing", 0.5, float, False, "image score used for items without one"),
        ("k", 10, int, False, "cut-off of NDCG, IPS-DCG and top-k changed"),
        ("propensities", None, None, False, "JSON list of examination propensities by rank (default: EM estimate)"),
        ("rescore_window", None, int, False, "replay the boost as a rescore of this many top hits"),
        ("rank_function", "saturation", None, False, "rank_feature function (saturation, log, ...)"),
        ("rank_params", '{"pivot": 0.5}', None, False, "rank_feature function parameters as JSON"),
        ("ai_factor", 1.0, float, False,
         "also multiply AI-flagged items' scores by this (the logs' image_provenance), e.g. 0.8"),
        ("bootstrap", 1000, int, False, "bootstrap resamples of SERPs"),
        ("seed", 0, int, False, None),
        ("samples", 12, int, False, "SERPs on the sample page"),
        ("embed_images", False, None, False, "inline local images into samples.html"),
        ("output", None, None, True, "output directory"),
    }


@pytest.mark.parametrize("flags, message", [
    (["--w", "1,x"], r"^--w must be comma-separated numbers, got '1,x'$"),
    (["--w", ","], r"^--w needs finite numbers >= 0, got ','$"),
    (["--w", "inf"], r"^--w needs finite numbers >= 0, got 'inf'$"),
    (["--bootstrap", "0"], r"^--bootstrap and --k must be at least 1$"),
    (["--k", "0"], r"^--bootstrap and --k must be at least 1$"),
    (["--formula", ","], r"^--formula: ',' not among multiplicative, power, additive, rank_feature$"),
    (["--formula", "additive,sum"], r"^--formula: \['sum'\] not among multiplicative, power, additive, rank_feature$"),
])
def test_bad_flags_are_named(tmp_path, flags, message):
    with pytest.raises(rerank_eval.UsageError, match=message):
        rerank_eval.run(["--logs", "x", "--scores", "y", "--output", str(tmp_path), *flags])


def test_the_propensities_come_from_the_file_or_from_em(tmp_path):
    logs = tmp_path / "logs.jsonl"
    rows = []
    for sid, clicked in (("s1", (True, False)), ("s2", (False, True)), ("s3", (True, False))):
        rows.append({"serp_id": sid, "query": "bag", "platform": "web", "ts": "2024-01-01T00:00:00Z", "items": [
            {"item_id": item, "position": p, "price": 1.0, "image_url": "u", "clicked": c, "score": 1.0}
            for p, (item, c) in enumerate(zip(("a", "b"), clicked), 1)]})
    logs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = attach_scores(load_logs(str(logs)), {})
    theta, source = rerank_eval.propensities(data, None)
    assert source == "estimated (EM, position-based model)"
    # (query, item) pairs: (bag, a) shown at rank 1 three times, clicked twice; (bag, b) at rank 2, clicked once
    assert len(theta) == 2 and theta[0] == 1.0
    path = tmp_path / "p.json"
    path.write_text("[1.0, 0.25]")
    theta, source = rerank_eval.propensities(data, str(path))
    assert theta.tolist() == [1.0, 0.25] and source == str(path)


def test_a_plot_per_platform_of_each_metric_against_w(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    row = {"formula": "power", "platform": "web", "value": 0.0}
    rows = [{**row, "metric": "mrr", "w": 1.0, "delta": 0.5, "ci_low": 0.25, "ci_high": 0.75},
            {**row, "metric": "mrr", "w": 0.0, "delta": 0.0, "ci_low": 0.0, "ci_high": 0.0},
            {**row, "metric": "ndcg@10", "w": 0.0, "delta": 0.0, "ci_low": 0.0, "ci_high": 0.0},
            {**row, "metric": "ndcg@10", "w": 1.0, "delta": -0.5, "ci_low": -1.0, "ci_high": 0.0},
            {**row, "metric": "mrr", "w": 1.0, "delta": 9.0, "ci_low": 9.0, "ci_high": 9.0, "platform": "ios"},
            {**row, "metric": "ips_dcg@10", "w": 0.0, "delta": 0.0, "ci_low": 0.0, "ci_high": 0.0},
            {**row, "metric": "ips_dcg@10", "w": 2.0, "delta": 1.0, "ci_low": 0.5, "ci_high": 1.5}]
    path = tmp_path / "p.png"
    rerank_eval.plot(str(path), rows, "web")
    (fig,) = closed
    assert fig.get_size_inches().tolist() == [13.0, 7.0]
    assert fig._suptitle.get_text() == "rerank-eval, platform web (95% CI, SERP bootstrap)"
    (mrr, ndcg, ips, empty) = fig.axes  # three metrics: a 2 x 2 grid, the last one unused
    assert len(empty.lines) == 0 and empty.get_title() == ""
    for ax, title, ws, deltas, band in ((mrr, "mrr", [0.0, 1.0], [0.0, 0.5], [0.25, 0.75]),
                                        (ndcg, "ndcg@10", [0.0, 1.0], [0.0, -0.5], [-1.0, 0.0]),
                                        (ips, "ips_dcg@10", [0.0, 2.0], [0.0, 1.0], [0.5, 1.5])):
        assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (title, "w", "delta vs w = 0")
        line, zero = ax.lines
        assert list(line.get_xdata()) == ws and list(line.get_ydata()) == deltas  # sorted by w; no ios
        assert line.get_marker() == "o" and line.get_label() == "power"
        assert list(zero.get_ydata()) == [0, 0] and zero.get_color() == "#888" and zero.get_linewidth() == 0.8
        (fill,) = ax.collections
        assert fill.get_alpha() == 0.2
        ys = fill.get_paths()[0].vertices[:, 1].tolist()
        assert set(ys) == {0.0, *band}  # the band: 0..0 at w = 0, ci_low..ci_high at w = 1
    assert [t.get_text() for t in mrr.get_legend().get_texts()] == ["power"] and ndcg.get_legend() is None
    header = path.read_bytes()[16:24]  # PNG width and height: 13 x 7 inches at 90 dpi
    assert (int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")) == (1170, 630)


def test_samples_page_defaults_and_a_page_without_a_changed_serp(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"not really a jpeg")  # a local image file: embed_images would inline it
    items = [_item("a", 1, False, 2.0, image_url=image.as_uri()), _item("b", 2, True, 1.0)]
    data = attach_scores(load_logs(_logs(tmp_path, ("s1", "web", items))), {})
    page = rerank_eval.samples_html(data, np.array([2, 1]), "t")  # n 12, seed 0, no embedding
    assert f'src="{image.as_uri()}"' in page and "data:image" not in page
    assert page.count("<section>") == 1
    # base64 of b"not really a jpeg"
    assert 'src="data:image/jpeg;base64,bm90IHJlYWxseSBhIGpwZWc="' in rerank_eval.samples_html(
        data, np.array([2, 1]), "t", embed_images=True)
    page = rerank_eval.samples_html(data, data.logged_rank(), "t")
    assert "<h1>rerank-eval: t</h1>" in page and "<section>" not in page
    assert "</p>\n<p>No SERP with a click changed order.</p>\n</body>" in page


def test_samples_page_escapes_quotes_in_image_urls(tmp_path):
    items = [_item("a", 1, False, 2.0, image_url='http://x/a".jpg'), _item("b", 2, True, 1.0)]
    data = attach_scores(load_logs(_logs(tmp_path, ("s1", "web", items))), {})
    assert 'src="http://x/a&quot;.jpg"' in rerank_eval.samples_html(data, np.array([2, 1]), "t")


def test_samples_page_picks_n_clicked_serps_that_changed(tmp_path):
    # four SERPs: s1 and s3 changed and have a click; s2 changed without a click; s4 has a click, unchanged
    serps = [(sid, "web", [_item(f"{sid}a", 1, clicked[0], 2.0), _item(f"{sid}b", 2, clicked[1], 1.0)])
             for sid, clicked in (("s1", (False, True)), ("s2", (False, False)), ("s3", (True, False)),
                                  ("s4", (True, False)))]
    data = attach_scores(load_logs(_logs(tmp_path, *serps)), {})
    ranks = np.array([2, 1, 2, 1, 2, 1, 1, 2])
    page = rerank_eval.samples_html(data, ranks, "t", n=2)
    assert page.count("<section>") == 2 and "<h2>s1 " in page and "<h2>s3 " in page  # every candidate, once
    assert page.index("<h2>s1 ") < page.index("<h2>s3 ")  # in SERP order
    assert "</section><section>" in page
    s1, s3 = page.split("</section><section>")
    assert 'alt="s1a"' in s1 and 'alt="s3a"' not in s1  # each section holds its own SERP's items only
    assert 'alt="s3a"' in s3 and 'alt="s1a"' not in s3 and 'alt="s2a"' not in s3
    for seed in range(10):  # the pick of one among two is the seed's, and seed 0 by default
        one = rerank_eval.samples_html(data, ranks, "t", n=1, seed=seed)
        assert one.count("<section>") == 1 and one == rerank_eval.samples_html(data, ranks, "t", n=1, seed=seed)
    assert rerank_eval.samples_html(data, ranks, "t", n=1) == rerank_eval.samples_html(data, ranks, "t", n=1, seed=0)


def test_with_an_ai_factor_deltas_are_against_the_undiscounted_logged_order(tmp_path):
    items = [_item("a", 1, False, 2.0, image_provenance="c2pa_ai"), _item("b", 2, True, 1.5)]
    data = attach_scores(load_logs(_logs(tmp_path, ("s1", "web", items))), {"a": 0.0, "b": 1.0})
    rows, ranks = rerank_eval.sweep(data, ["multiplicative"], [0.0], theta=np.array([1.0, 0.5]), n_boot=5,
                                    ai_factor=0.5)
    # w = 0 with the discount: a 2 * 0.5 = 1 falls below b's 1.5, so the click moves to rank 1 (MRR 1);
    # the logged order (w = 0, no discount: a 2, b 1.5) had it at rank 2 (MRR 0.5): delta +0.5
    mrr = [r for r in rows if r["metric"] == "mrr"]
    assert [(r["platform"], r["w"], r["ai_factor"], r["value"], r["delta"]) for r in mrr] == [
        ("all", 0.0, 0.5, 1.0, 0.5), ("web", 0.0, 0.5, 1.0, 0.5)]
    assert ranks["multiplicative", 0.0].tolist() == [2, 1]


def test_sweep_defaults_missing_0_5_and_k_10(tmp_path):
    # a 2 * (1 + 0.6) = 3.2; b has no image score: 1.5 * (1 + 0.5) = 2.25, below a (with missing 1.5 it would lead)
    items = [_item("a", 1, False, 2.0), _item("b", 2, True, 1.5)]
    data = attach_scores(load_logs(_logs(tmp_path, ("s1", "web", items))), {"a": 0.6})
    rows, ranks = rerank_eval.sweep(data, ["multiplicative"], [1.0], theta=np.array([1.0, 0.5]))
    assert ranks["multiplicative", 1.0].tolist() == [1, 2]
    assert [r["metric"] for r in rows[:6]] == ["mrr", "mean_click_position", "ndcg@10", "pairwise_click_accuracy",
                                               "ips_dcg@10", "topk_changed@10"]


def test_sweep_replays_the_rescore_window(tmp_path):
    # power, w = 1, window 1: only a (the top hit) is rescored, 2 * 0^1 = 0, below b's unrescored 1, yet a rescored
    # hit sorts above every hit outside the window: the order stays a, b
    items = [_item("a", 1, False, 2.0), _item("b", 2, True, 1.0)]
    data = attach_scores(load_logs(_logs(tmp_path, ("s1", "web", items))), {"a": 0.0, "b": 1.0})
    _, ranks = rerank_eval.sweep(data, ["power"], [1.0], theta=np.array([1.0, 0.5]), n_boot=5, rescore_window=1)
    assert ranks["power", 1.0].tolist() == [1, 2]


def test_sweep_names_short_propensities(tmp_path):
    data = attach_scores(load_logs(_logs(tmp_path, ONE_SERP)), {})
    with pytest.raises(ValueError, match=r"^the propensities gives propensities for ranks 1\.\.1, but the logs show "
                                         r"rank 2; "):
        rerank_eval.sweep(data, ["multiplicative"], [1.0], theta=np.array([1.0]), n_boot=5)


def test_a_platform_without_clicks_reads_nan_without_warnings(tmp_path):
    serps = [("s1", "web", [_item("a", 1, False, 2.0), _item("b", 2, True, 1.0)]),
             ("s2", "ios", [_item("c", 1, False, 2.0), _item("d", 2, False, 1.0)])]
    data = attach_scores(load_logs(_logs(tmp_path, *serps)), {"a": 0.0, "b": 1.0})
    with warnings.catch_warnings():  # the 0 / 0 of a click-less platform is read as NaN, not computed
        warnings.filterwarnings("error", message=r".*(divide|invalid value)")
        rows, _ = rerank_eval.sweep(data, ["multiplicative"], [1.5], theta=np.array([1.0, 0.5]), n_boot=5)
    ios = {(r["w"], r["metric"]): r for r in rows if r["platform"] == "ios"}
    mrr = ios[1.5, "mrr"]
    assert np.isnan(mrr["value"]) and np.isnan(mrr["delta"]) and mrr["serps"] == 0  # no click: 0 / 0
    assert ios[1.5, "topk_changed@10"]["serps"] == 1  # every SERP counts for top-k changes
    web = {(r["w"], r["metric"]): r for r in rows if r["platform"] == "web"}
    assert web[1.5, "mrr"]["value"] == 1.0  # b (1 * 2.5) passes a (2): the web rows use the web SERP only
    every = {(r["w"], r["metric"]): r for r in rows if r["platform"] == "all"}
    assert every[1.5, "mrr"]["value"] == 1.0  # 1 click SERP: 1 / 1
    # top-k changed counts both SERPs: web changed, ios did not (c 2 * 1.75 = 3.5 stays above d 1 * 1.75): 1 / 2
    assert (every[1.5, "topk_changed@10"]["value"], every[1.5, "topk_changed@10"]["delta"]) == (0.5, 0.5)


def test_table_markdown_defaults_to_the_pooled_platform():
    row = {"formula": "f", "w": 0.0, "metric": "m", "delta": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    rows = [{**row, "platform": "web", "value": 2.0}, {**row, "platform": "all", "value": 1.0}]
    assert rerank_eval.table_markdown(rows) == "| formula | w | m |\n|---|---|---|\n| f | 0 | 1.0000 (+0.0000 [+0.0000, +0.0000]) |"


def test_sweep_passes_the_rank_function_and_its_parameters(tmp_path):
    # rank_feature, linear: relevance + w * f. a (AI-made, no image score): 2 * 0.5 = 1; b: 1 + 3 * 1 = 4.
    # The logged order is recomputed at w = 0 without the discount, with the same (linear) function.
    items = [_item("a", 1, False, 2.0, relevance_score=2.0, image_provenance="c2pa_ai"),
             _item("b", 2, True, 1.0, relevance_score=1.0)]
    data = attach_scores(load_logs(_logs(tmp_path, ("s1", "web", items))), {"b": 1.0})
    rows, ranks = rerank_eval.sweep(data, ["rank_feature"], [3.0], theta=np.array([1.0, 0.5]), n_boot=5,
                                    rank_function="linear", rank_params={}, ai_factor=0.5)
    assert ranks["rank_feature", 3.0].tolist() == [2, 1]
    mrr = {(r["platform"], r["w"]): (r["value"], r["delta"]) for r in rows if r["metric"] == "mrr"}
    assert mrr["all", 3.0] == (1.0, 0.5)  # b first; logged (a 2, b 1): b second, MRR 0.5


def _rank_feature_logs(tmp_path, relevance_a: float) -> object:
    items = [_item("a", 1, False, relevance_a, relevance_score=relevance_a, image_provenance="c2pa_ai"),
             _item("b", 2, True, 1.0, relevance_score=1.0)]
    return attach_scores(load_logs(_logs(tmp_path, ("s1", "web", items))), {"b": 1.0})


def test_sweep_rank_feature_log_with_an_ai_factor(tmp_path):
    # log: relevance + w * ln(1 + f), f = 1: b 1 + 3 * 0.6931 = 3.079; a (AI-made, no image score) 7 * 0.5 = 3.5
    # stays first. With saturation (pivot 0.5) b would be 1 + 3 * (1 - 0.5 / 1.5) = 3 and with linear 4.
    data = _rank_feature_logs(tmp_path, 7.0)
    _, ranks = rerank_eval.sweep(data, ["rank_feature"], [3.0], theta=np.array([1.0, 0.5]), n_boot=5,
                                 rank_function="log", rank_params={"scaling_factor": 1.0}, ai_factor=0.5)
    assert ranks["rank_feature", 3.0].tolist() == [1, 2]
    # linear: b 1 + 3 * 1 = 4 passes a's 3.5 (saturation's 3 would not)
    _, ranks = rerank_eval.sweep(data, ["rank_feature"], [3.0], theta=np.array([1.0, 0.5]), n_boot=5,
                                 rank_function="linear", rank_params={}, ai_factor=0.5)
    assert ranks["rank_feature", 3.0].tolist() == [2, 1]


def test_sweep_rank_feature_defaults_to_saturation_pivot_one_half(tmp_path):
    # saturation, pivot 0.5: b 1 + 3 * (1 - 0.5 / 1.5) = 3 passes a's 5.2 * 0.5 = 2.6
    # (pivot 1.5 would give b 1 + 3 * (1 - 1.5 / 2.5) = 2.2, below a)
    data = _rank_feature_logs(tmp_path, 5.2)
    for rank_params in (None, {}):
        _, ranks = rerank_eval.sweep(data, ["rank_feature"], [3.0], theta=np.array([1.0, 0.5]), n_boot=5,
                                     rank_params=rank_params, ai_factor=0.5)
        assert ranks["rank_feature", 3.0].tolist() == [2, 1]
