"""``imagescore monitor``: the drift statistics, the bins, both sources, coverage and the usage errors."""
from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest
from scipy import special, stats

from ranking.monitor import bin_edges, bin_index, drift_stats
from tests.fixtures.es import NEEDS_DOUBLE
from tests.test_errors import cli, error_line, write_jsonl

NOW = "2025-03-01T00:00:00Z"

# ---------------------------------------------------------------- statistics, by hand


def test_statistics_by_hand_on_two_bins():
    # p = [.5, .5], q = [.75, .25]; centres .25 and .75.
    s = drift_stats([2, 2], [3, 1])
    assert s["psi"] == pytest.approx(-0.25 * math.log(0.5 / 0.75) + 0.25 * math.log(0.5 / 0.25))  # 0.274653
    assert s["psi"] == pytest.approx(0.274653, abs=1e-6)
    # m = [.625, .375]; JSD = (KL(p||m) + KL(q||m)) / 2 = (0.032269 + 0.035375) / 2 nats = 0.048795 bits
    assert s["js"] == pytest.approx(math.sqrt(0.048795), abs=1e-5)  # 0.220896
    assert s["ks"] == pytest.approx(0.25)  # |.5 - .75| after the first bin
    assert s["w1"] == pytest.approx(0.125)  # the CDF gap .25 over the distance .5 between the centres


def test_psi_floors_empty_shares_at_1e4_without_renormalising():
    # p = [1, 0] -> [1, 1e-4]; q = [.5, .5]: .5 ln 2 + (1e-4 - .5) ln(1e-4 / .5)
    s = drift_stats([4, 0], [2, 2])
    assert s["psi"] == pytest.approx(0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5))  # 4.604319
    assert s["psi"] == pytest.approx(4.604319, abs=1e-6)
    assert s["js"] == pytest.approx(math.sqrt((math.log2(1 / 0.75) + 0.5 * math.log2(0.5 / 0.75)
                                               + 0.5 * math.log2(0.5 / 0.25)) / 2))  # raw shares, no floor
    assert drift_stats([5, 5, 5], [1, 1, 1]) == {"psi": 0.0, "js": 0.0, "ks": 0.0, "w1": 0.0}


@pytest.mark.parametrize("seed", range(5))
def test_statistics_against_scipy_on_random_histograms(seed):
    rng = np.random.default_rng(seed)
    bins = int(rng.integers(2, 40))
    p, q = rng.integers(0, 50, bins), rng.integers(0, 50, bins)
    p[0] += 1
    q[-1] += 1
    s = drift_stats(p, q)
    centres = (np.arange(bins) + 0.5) / bins
    ps, qs = p / p.sum(), q / q.sum()
    pf, qf = np.maximum(ps, 1e-4), np.maximum(qs, 1e-4)
    assert s["psi"] == pytest.approx(float(np.sum(special.rel_entr(pf, qf) + special.rel_entr(qf, pf))))
    m = (ps + qs) / 2
    assert s["js"] == pytest.approx(math.sqrt((stats.entropy(ps, m, base=2) + stats.entropy(qs, m, base=2)) / 2))
    u, v = np.repeat(centres, p), np.repeat(centres, q)  # the binned samples themselves
    assert s["ks"] == pytest.approx(stats.ks_2samp(u, v).statistic)
    assert s["w1"] == pytest.approx(stats.wasserstein_distance(u, v))


# ---------------------------------------------------------------- bins


@pytest.mark.parametrize("bins", [1, 3, 7, 10, 16, 20, 100])
def test_a_score_of_exactly_i_over_n_falls_in_bin_i_and_1_in_the_last(bins):
    scores = np.arange(bins + 1) / bins
    assert bin_index(scores, bins).tolist() == [min(i, bins - 1) for i in range(bins + 1)]
    below = np.nextafter(bin_edges(bins)[1:-1].astype(np.float32), np.float32(0)).astype(np.float64)
    assert bin_index(below, bins).tolist() == list(range(bins - 1))  # the float32 just under edge i+1 is in bin i


def test_scores_are_binned_as_the_index_stores_them():
    # 0.35 is stored as float32 0.3499999940; floor(0.3499999940 * 20) = 6, but it was written as 7/20.
    assert bin_index(np.array([0.35, 0.3499999]), 20).tolist() == [7, 6]


# ---------------------------------------------------------------- offline runs


def _records(rng, n, model="m1", a=2.0, b=5.0, **extra):
    return [{"id": f"{model}-{i}", "image_score": float(s), "image_score_model": model,
             "image_scored_at": "2025-02-28T00:00:00Z", **extra} for i, s in enumerate(rng.beta(a, b, n))]


def _run(argv, capsys):
    code, err = cli(["monitor", *argv], capsys)
    return code, err


def test_a_null_is_quiet_and_a_planted_drift_is_flagged(tmp_path, capsys):
    first = write_jsonl(tmp_path / "day1.jsonl", _records(np.random.default_rng(1), 10_000))
    same = write_jsonl(tmp_path / "day2.jsonl", _records(np.random.default_rng(2), 10_000))
    moved = write_jsonl(tmp_path / "day3.jsonl", _records(np.random.default_rng(3), 10_000, a=3.0, b=4.0))
    base = tmp_path / "baseline.json"
    assert _run(["--input", first, "--save-baseline", str(base), "--output", str(tmp_path / "o1")], capsys)[0] == 0
    assert _run(["--input", same, "--baseline", str(base), "--fail-on-drift", "--output", str(tmp_path / "o2"),
                 "--now", NOW], capsys)[0] == 0
    quiet = json.loads((tmp_path / "o2" / "monitor.json").read_text())["groups"][0]
    assert quiet["reference"] == "baseline" and quiet["drift"] is False and quiet["psi"] < 0.02
    code, _ = _run(["--input", moved, "--baseline", str(base), "--fail-on-drift", "--output", str(tmp_path / "o3")],
                   capsys)
    assert code == 3
    loud = json.loads((tmp_path / "o3" / "monitor.json").read_text())
    assert loud["groups"][0]["drift"] is True and loud["groups"][0]["psi"] > 0.2
    assert loud["thresholds"] == {"psi_alert": 0.2, "psi_floor": 1e-4} and loud["bins"] == 20
    assert (tmp_path / "o3" / "monitor.png").stat().st_size > 0
    assert "**DRIFT**" in (tmp_path / "o3" / "monitor.md").read_text()
    # Without --fail-on-drift the drift is reported, not an exit code.
    assert _run(["--input", moved, "--baseline", str(base), "--output", str(tmp_path / "o4")], capsys)[0] == 0


def test_reference_model_compares_each_segment_with_the_same_segment_of_that_model(tmp_path, capsys):
    rng = np.random.default_rng(5)
    rows = (_records(rng, 3000, "old", platform="web") + _records(rng, 3000, "new", platform="web")
            + _records(rng, 3000, "new", a=5.0, b=2.0, platform="ios") + _records(rng, 3000, "old", platform="ios")
            + [{"id": "x", "image_score": 0.5, "image_score_model": "new"}])  # no platform: the group null
    path = write_jsonl(tmp_path / "scores.jsonl", rows)
    assert _run(["--input", path, "--by", "image_score_model,platform", "--reference-model", "old",
                 "--output", str(tmp_path / "o")], capsys)[0] == 0
    groups = {(g["key"]["image_score_model"], g["key"]["platform"]): g
              for g in json.loads((tmp_path / "o" / "monitor.json").read_text())["groups"]}
    assert set(groups) == {("old", "web"), ("old", "ios"), ("new", "web"), ("new", "ios"), ("new", None)}
    assert groups["old", "web"]["reference"] is None and groups["old", "web"]["psi"] is None
    assert groups["new", None]["reference"] is None and groups["new", None]["drift"] is None  # old has no null group
    assert groups["new", "web"]["reference"] == "model:old" and groups["new", "web"]["drift"] is False
    assert groups["new", "ios"]["drift"] is True


def test_file_coverage_counts_tombstones_unscored_stale_and_out_of_range(tmp_path, capsys):
    rows = [{"id": "a", "image_score": 0.2, "image_score_model": "m1", "image_scored_at": "2025-02-28T00:00:00Z"},
            {"id": "b", "image_score": 0.9, "image_score_model": "m2", "image_scored_at": "2025-02-27T00:00:00Z",
             "image_score_version": "2025-02-01T00:00:00.000000Z", "updated_at": "2025-02-02T00:00:00.000000Z"},
            {"id": "c", "image_score": 1.5, "image_score_model": "m2", "image_scored_at": "2025-02-26T00:00:00Z"},
            {"id": "d"},
            {"id": "e", "image_score": 0.4, "image_score_model": "m1", "deleted": True}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    assert _run(["--input", path, "--output", str(tmp_path / "o"), "--now", NOW], capsys)[0] == 0
    c = json.loads((tmp_path / "o" / "monitor.json").read_text())["coverage"]
    assert (c["live"], c["scored"], c["unscored"], c["out_of_range"], c["stale"]) == (4, 3, 1, 1, 1)
    assert c["current_model"] == "m1" and c["scored_by_current"] == 1 and c["scored_by_other"] == 2
    assert c["median_age_hours"] == pytest.approx(48) and c["oldest_age_hours"] == pytest.approx(72)


# ---------------------------------------------------------------- the index source, on the double


def _index(es_client, rows) -> str:
    from es.mapping import document_properties
    name = f"imagescore-monitor-{uuid.uuid4().hex[:10]}"
    es_client.indices.create(index=name, mappings={"properties": {**document_properties(),
                                                                  "platform": {"type": "keyword"}}})
    from elasticsearch import helpers
    helpers.bulk(es_client, ({"_index": name, "_id": r["id"], "_source": r} for r in rows), refresh=True)
    return name


def test_index_and_files_give_the_same_report_in_one_request(es_client, es_url, es_server, tmp_path, capsys):
    bins = 10
    rng = np.random.default_rng(9)
    edges = [{"id": f"edge-{i}", "image_score": i / bins, "image_score_model": "m1", "platform": "web",
              "image_scored_at": f"2025-02-{10 + i:02d}T00:00:00Z", "updated_at": "2025-02-01T00:00:00.000000Z",
              "image_score_version": "2025-02-01T00:00:00.000000Z" if i % 2 else "2025-01-01T00:00:00.000000Z"}
             for i in range(bins + 1)]
    rows = edges + [{**r, "platform": ["web", "ios"][k % 2]} for k, r in enumerate(_records(rng, 300, "m2"))]
    rows += [{"id": "noplat", "image_score": 0.35, "image_score_model": "m2", "image_scored_at": NOW},
             {"id": "unscored", "updated_at": "2025-02-01T00:00:00.000000Z"},
             {"id": "gone", "image_score": 0.5, "image_score_model": "m1", "deleted": True}]
    index = _index(es_client, rows)
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    common = ["--by", "image_score_model,platform", "--bins", str(bins), "--now", NOW]
    if es_server is not None:
        es_server.requests.clear()
    try:
        assert _run(["--es-url", es_url, "--es-index", index, *common, "--output", str(tmp_path / "es")], capsys)[0] == 0
        if es_server is not None:
            assert [r.path for r in es_server.requests] == [f"/{index}/_search"]
    finally:
        es_client.options(ignore_status=404).indices.delete(index=index)
    assert _run(["--input", path, *common, "--output", str(tmp_path / "files")], capsys)[0] == 0
    from_es = json.loads((tmp_path / "es" / "monitor.json").read_text())
    from_files = json.loads((tmp_path / "files" / "monitor.json").read_text())
    assert [(g["key"], g["histogram"]) for g in from_es["groups"]] == \
        [(g["key"], g["histogram"]) for g in from_files["groups"]]
    edge_group = next(g for g in from_es["groups"] if g["key"] == {"image_score_model": "m1", "platform": "web"})
    assert edge_group["histogram"] == [1] * (bins - 1) + [2]  # i/N in bin i, 1.0 in the last
    for a, b in zip(from_es["groups"], from_files["groups"]):  # exact digests (< 2,000 values a group)
        assert a["quantiles"] == pytest.approx(b["quantiles"], abs=1e-6)
    es_cov, file_cov = from_es["coverage"], from_files["coverage"]
    for name in ("live", "scored", "unscored", "out_of_range", "current_model", "scored_by_current", "stale",
                 "by_model", "median_scored_at", "oldest_scored_at"):
        assert es_cov[name] == file_cov[name], name
    assert es_cov["live"] == len(rows) - 1 and es_cov["stale"] == 6 and es_cov["current_model"] == "m2"


def test_demo_into_the_double_then_monitor_accounts_for_every_item(es_url, es_client, es_server, tmp_path, capsys):
    from pipelines import demo
    index = f"imagescore-demo-{uuid.uuid4().hex[:8]}"
    try:
        assert demo.run(["--output", str(tmp_path / "demo"), "--products", "6", "--es-url", es_url,
                         "--es-index", index]) == 0
        es_client.indices.refresh(index=index)
        documents = es_client.count(index=index)["count"]
        scored = es_client.count(index=index, query={"exists": {"field": "image_score"}})["count"]
        capsys.readouterr()
        if es_server is not None:
            es_server.requests.clear()
        assert _run(["--es-url", es_url, "--es-index", index, "--output", str(tmp_path / "m")], capsys)[0] == 0
        if es_server is not None:
            assert sum(r.path.endswith("/_search") for r in es_server.requests) == 1
    finally:
        es_client.options(ignore_status=404).indices.delete(index=index)
    result = json.loads((tmp_path / "m" / "monitor.json").read_text())
    c = result["coverage"]
    assert c["live"] == documents and c["scored"] == scored > 0
    assert c["scored_by_current"] + c["scored_by_other"] + c["unscored"] == c["live"]
    assert sum(m["scores"] for m in c["by_model"].values()) == c["scored"]
    assert sum(g["count"] for g in result["groups"]) == c["scored"] - c["out_of_range"]
    assert c["current_model"] == "handcrafted-v4" and c["scored_by_current"] == scored
    assert c["stale"] == 0


def test_an_unreachable_cluster_is_one_usage_line(tmp_path, capsys):
    from tests.test_errors import closed_port
    code, err = _run(["--es-url", f"http://127.0.0.1:{closed_port()}", "--es-index", "items",
                      "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "not reachable" in error_line(err, "monitor")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize("argv, expected", [
    ([], "give one source"),
    (["--input", "{good}", "--es-url", "http://127.0.0.1:9", "--es-index", "i"], "give one source"),
    (["--input", "{dir}/nothing*.jsonl"], "matches no files"),
    (["--input", "{good}", "--bins", "0"], "--bins must be between 1 and 10000"),
    (["--input", "{good}", "--bins", "x"], "argument --bins: invalid int value"),
    (["--input", "{good}", "--baseline", "{dir}/not.json"], "not JSON"),
    (["--input", "{good}", "--baseline", "{dir}/wrongbins.json"], "has 5 bins but --bins is 20"),
    (["--input", "{good}", "--baseline", "{dir}/badgroup.json"], "group 0 must have a key"),
    (["--input", "{good}", "--baseline", "{dir}/missing.json"], "No such file"),
    (["--input", "{good}", "--reference-model", "m1", "--by", "platform"], "--by must include"),
    (["--input", "{bad}"], "not JSONL score records"),
    (["--input", "{good}", "--max-groups", "1", "--by", "platform"], "more than --max-groups 1"),
    (["--es-url", "http://127.0.0.1:9"], "--es-url needs --es-index"),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [{"image_score": 0.1, "image_score_model": "m1", "platform": "a"},
                                                 {"image_score": 0.2, "image_score_model": "m1", "platform": "b"}])
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"image_score": 0.1}', "not json"])
    (tmp_path / "not.json").write_text("{nope")
    (tmp_path / "wrongbins.json").write_text(json.dumps({"bins": 5, "groups": []}))
    (tmp_path / "badgroup.json").write_text(json.dumps({"bins": 20, "groups": [{"key": {}, "histogram": [1]}]}))
    subst = {"{good}": good, "{bad}": bad, "{dir}": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in subst.items() if k in a), a) for a in argv]
    code, err = _run([*argv, "--output", str(tmp_path / "out")], capsys)
    assert code == 2
    assert expected in error_line(err, "monitor")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_double_refuses_an_inline_script_it_does_not_know(es_double, es_client, es_index):
    from elasticsearch import BadRequestError
    with pytest.raises(BadRequestError) as caught:
        es_client.search(index=es_index, size=0, query={"script": {"script": {"source": "doc['x'].value > 1"}}})
    assert "runs only the score monitor's scripts" in caught.value.body["error"]["reason"]
    assert NEEDS_DOUBLE  # the fixture skips against a real cluster, where the script would run

