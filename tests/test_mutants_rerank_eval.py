"""ranking/rerank_eval.py on one hand-computed SERP: every output file (docs/testing.md, Mutation testing).

Expected values are written by hand, with the arithmetic in a comment; none comes from the code under test.

The SERP (web, query "bag"): a at position 1 (engine score 2, image score 0, not clicked), b at position 2
(engine score 1, image score 1, clicked); propensities [1, 0.5]. Multiplicative w = 1.5: a 2 * (1 + 0) = 2,
b 1 * (1 + 1.5) = 2.5, so b moves to the top.

                       logged (w = 0)                  w = 1.5                    delta
  mrr                  1/2 = 0.5                       1                          +0.5
  mean_click_position  2                               1                          -1
  ndcg@10              1/log2(3) = 0.6309297535714575  1                          +0.3690702464285425
  pairwise (b over a)  0 of 1                          1 of 1                     +1
  ips_dcg@10           0.6309.../0.5 = 1.261859507142915  1/0.5 = 2               +0.738140492857085
  topk_changed@10      0                               1                          +1

One SERP: every bootstrap resample is that SERP, so both CI ends are the delta.
"""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from ranking import rerank_eval

NAMES = ["mrr", "mean_click_position", "ndcg@10", "pairwise_click_accuracy", "ips_dcg@10", "topk_changed@10"]
LOGGED = [0.5, 2.0, 0.6309297535714575, 0.0, 1.261859507142915, 0.0]
BOOSTED = [1.0, 1.0, 1.0, 1.0, 2.0, 1.0]
DELTA = [0.5, -1.0, 0.3690702464285425, 1.0, 0.738140492857085, 1.0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("rerank")
    items = [{"item_id": "a", "position": 1, "price": 1.0, "image_url": "file:///x/a.jpg", "clicked": False, "score": 2.0},
             {"item_id": "b", "position": 2, "price": 1.0, "image_url": "file:///x/b.jpg", "clicked": True, "score": 1.0}]
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps({"serp_id": "s1", "query": "bag", "platform": "web", "ts": "2024-01-01T00:00:00Z",
                                "items": items}) + "\n")
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"id": "a", "image_score": 0.0}\n{"id": "b", "image_score": 1.0}\n')
    theta = tmp_path / "p.json"
    theta.write_text("[1.0, 0.5]")
    out = tmp_path / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert rerank_eval.run(["--logs", str(logs), "--scores", str(scores), "--formula", "multiplicative",
                                "--w", "1.5", "--propensities", str(theta), "--bootstrap", "20",
                                "--output", str(out)]) == 0
    return out, str(theta), json.loads(printed.getvalue())


def test_rows_hold_every_figure(run):
    out, _, _ = run
    rows = json.loads((out / "rerank.json").read_text())
    expected = []
    for platform in ("all", "web"):
        for w, values, deltas in ((0.0, LOGGED, [0.0] * 6), (1.5, BOOSTED, DELTA)):
            for name, value, delta in zip(NAMES, values, deltas):
                expected.append({"formula": "multiplicative", "w": w, "ai_factor": 1.0, "platform": platform,
                                 "metric": name, "value": value, "delta": delta, "ci_low": delta, "ci_high": delta,
                                 "serps": 1})
    assert _close(rows, expected)


def _close(rows: list[dict], expected: list[dict]) -> bool:
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row.keys() == want.keys()
        for key, value in want.items():
            assert row[key] == (pytest.approx(value, abs=1e-12) if isinstance(value, float) else value), (key, row)
    return True


def test_markdown_propensities_and_summary(run):
    out, theta, printed = run
    table = ("| formula | w | mrr | mean_click_position | ndcg@10 | pairwise_click_accuracy | ips_dcg@10 | "
             "topk_changed@10 |\n"
             "|---|---|---|---|---|---|---|---|\n"
             "| multiplicative | 0 | 0.5000 (+0.0000 [+0.0000, +0.0000]) | 2.0000 (+0.0000 [+0.0000, +0.0000]) | "
             "0.6309 (+0.0000 [+0.0000, +0.0000]) | 0.0000 (+0.0000 [+0.0000, +0.0000]) | "
             "1.2619 (+0.0000 [+0.0000, +0.0000]) | 0.0000 (+0.0000 [+0.0000, +0.0000]) |\n"
             "| multiplicative | 1.5 | 1.0000 (+0.5000 [+0.5000, +0.5000]) | 1.0000 (-1.0000 [-1.0000, -1.0000]) | "
             "1.0000 (+0.3691 [+0.3691, +0.3691]) | 1.0000 (+1.0000 [+1.0000, +1.0000]) | "
             "2.0000 (+0.7381 [+0.7381, +0.7381]) | 1.0000 (+1.0000 [+1.0000, +1.0000]) |")
    assert (out / "rerank.md").read_text() == (
        f"# rerank-eval\n\nvalue (delta vs the logged order [95% CI, SERP bootstrap]); propensities: {theta}; "
        f"1 SERPs; ai_factor 1.\n\n## all\n\n{table}\n\n## web\n\n{table}\n")
    assert json.loads((out / "propensities.json").read_text()) == {"source": theta, "propensities": [1.0, 0.5]}
    assert (out / "rerank_all.png").stat().st_size > 0 and (out / "rerank_web.png").stat().st_size > 0
    assert printed.keys() == {"output", "serps", "items", "points", "seconds"}
    assert (printed["output"], printed["serps"], printed["items"], printed["points"]) == (str(out), 1, 2, 2)


def test_samples_page_shows_the_serp_in_both_orders(run):
    out, _, _ = run
    a = ('<figure><img src="file:///x/a.jpg" alt="a" style="border:4px solid transparent" loading="lazy">'
         '<figcaption>logged #1 → #2 · image score 0.000</figcaption></figure>')
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


def test_the_propensities_come_from_the_file_or_from_em(run, tmp_path):
    from ranking.replay import attach_scores, load_logs
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
            {**row, "metric": "mrr", "w": 1.0, "delta": 9.0, "ci_low": 9.0, "ci_high": 9.0, "platform": "ios"}]
    path = tmp_path / "p.png"
    rerank_eval.plot(str(path), rows, "web")
    (fig,) = closed
    assert fig.get_size_inches().tolist() == [13.0, 7.0]
    assert fig._suptitle.get_text() == "rerank-eval, platform web (95% CI, SERP bootstrap)"
    (mrr, ndcg) = fig.axes  # two metrics: a 2 x 1 grid
    for ax, title, deltas, band in ((mrr, "mrr", [0.0, 0.5], [0.25, 0.75]), (ndcg, "ndcg@10", [0.0, -0.5], [-1.0, 0.0])):
        assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (title, "w", "delta vs w = 0")
        line, zero = ax.lines
        assert list(line.get_xdata()) == [0.0, 1.0] and list(line.get_ydata()) == deltas  # sorted by w; no ios
        assert line.get_marker() == "o" and line.get_label() == "power"
        assert list(zero.get_ydata()) == [0, 0] and zero.get_color() == "#888" and zero.get_linewidth() == 0.8
        (fill,) = ax.collections
        assert fill.get_alpha() == 0.2
        ys = fill.get_paths()[0].vertices[:, 1].tolist()
        assert set(ys) == {0.0, *band}  # the band: 0..0 at w = 0, ci_low..ci_high at w = 1
    assert [t.get_text() for t in mrr.get_legend().get_texts()] == ["power"] and ndcg.get_legend() is None
    header = path.read_bytes()[16:24]  # PNG width and height: 13 x 7 inches at 90 dpi
    assert (int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")) == (1170, 630)


def test_samples_page_without_a_changed_serp_says_so(run, tmp_path):
    from ranking.replay import attach_scores, load_logs
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps({"serp_id": "s1", "query": "bag", "platform": "web", "ts": "2024-01-01T00:00:00Z",
                                "items": [{"item_id": "a", "position": 1, "price": 1.0, "image_url": "u",
                                           "clicked": True, "score": 1.0}]}) + "\n")
    data = attach_scores(load_logs(str(logs)), {})
    page = rerank_eval.samples_html(data, data.logged_rank(), "t")
    assert "<h1>rerank-eval: t</h1>" in page and "<p>No SERP with a click changed order.</p>" in page


def test_with_an_ai_factor_deltas_are_against_the_undiscounted_logged_order(tmp_path):
    import numpy as np

    from ranking.replay import attach_scores, load_logs
    items = [{"item_id": "a", "position": 1, "price": 1.0, "image_url": "u", "clicked": False, "score": 2.0,
              "image_provenance": "c2pa_ai"},
             {"item_id": "b", "position": 2, "price": 1.0, "image_url": "u", "clicked": True, "score": 1.5}]
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps({"serp_id": "s1", "query": "bag", "platform": "web", "ts": "2024-01-01T00:00:00Z",
                                "items": items}) + "\n")
    data = attach_scores(load_logs(str(logs)), {})
    rows, ranks = rerank_eval.sweep(data, ["multiplicative"], [0.0], theta=np.array([1.0, 0.5]), n_boot=5,
                                    ai_factor=0.5)
    # w = 0 with the discount: a 2 * 0.5 = 1 falls below b's 1.5, so the click moves to rank 1 (MRR 1);
    # the logged order (a, b) had it at rank 2 (MRR 0.5): delta +0.5
    mrr = [r for r in rows if r["metric"] == "mrr"]
    assert [(r["platform"], r["w"], r["ai_factor"], r["value"], r["delta"]) for r in mrr] == [
        ("all", 0.0, 0.5, 1.0, 0.5), ("web", 0.0, 0.5, 1.0, 0.5)]
    assert ranks["multiplicative", 0.0].tolist() == [2, 1]
