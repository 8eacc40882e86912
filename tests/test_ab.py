"""A/B readout on simulated experiments with a known truth, against scipy and the delta method by hand, and bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from ranking import ab, ab_simulate

KEYS = {"metric", "platform", "variant", "users", "control_users", "ratio", "t", "p", "p_holm", "ci_low", "ci_high",
        "mde"}


def _readout(tmp_path, sim_args, readout_args=()):
    rows = tmp_path / "rows.parquet"
    assert ab_simulate.run(["--output", str(rows), *sim_args]) == 0
    out = tmp_path / "out"
    assert ab.run(["--input", str(rows), "--control", "control", "--output", str(out), *readout_args]) == 0
    return json.loads((out / "readout.json").read_text()), out, json.loads((tmp_path / "truth.json").read_text())


def _row(result, metric, platform, variant="treatment"):
    (row,) = [r for r in result["rows"] if (r["metric"], r["platform"], r["variant"]) == (metric, platform, variant)]
    return row


@pytest.mark.parametrize("cuped", [False, True])
def test_a_known_lift_is_recovered_within_its_ci(tmp_path, cuped):
    result, out, truth = _readout(tmp_path, ["--users", "150000", "--lift", "web=1.12,ios=0.95,android=0.95",
                                             "--seed", "11"], ["--cuped"] if cuped else [])
    assert not result["srm"]["flag"] and result["cuped"] is cuped
    for platform in ("web", "ios", "android"):
        for metric in ("atpu_via_search", "atpu"):
            row = _row(result, metric, platform)
            assert set(row) >= KEYS
            true_ratio = truth["ratios"][f"treatment/{platform}"][metric]
            assert row["ci_low"] <= true_ratio <= row["ci_high"], (platform, metric, row)
    web = _row(result, "atpu_via_search", "web")
    assert web["ratio"] > 1 and web["p_holm"] < 0.05 and web["p_holm"] >= web["p"]
    assert (out / "forest.png").stat().st_size > 0
    assert "## atpu_via_search" in (out / "readout.md").read_text()


def test_cuped_narrows_the_ci(tmp_path):
    plain, _, _ = _readout(tmp_path / "a", ["--users", "60000", "--seed", "2"])
    cuped, _, _ = _readout(tmp_path / "b", ["--users", "60000", "--seed", "2"], ["--cuped"])
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(_row(cuped, "atpu", "all")) < width(_row(plain, "atpu", "all"))


def test_a_null_experiment_is_not_flagged_after_holm(tmp_path):
    result, _, _ = _readout(tmp_path, ["--users", "80000", "--lift", "web=1,ios=1,android=1", "--seed", "5",
                                       "--split", "control=50,a=25,b=25"], ["--split", "control=50,a=25,b=25"])
    assert {r["variant"] for r in result["rows"]} == {"a", "b"}
    assert len(result["rows"]) == 2 * 4 * 4  # variants x platforms (with all) x metrics
    assert not any(r["significant"] for r in result["rows"])
    assert all(r["p_holm"] >= r["p"] for r in result["rows"])
    assert not result["srm"]["flag"]


def test_a_sample_ratio_mismatch_is_flagged(tmp_path):
    result, out, _ = _readout(tmp_path, ["--users", "100000", "--srm-loss", "treatment=0.03", "--seed", "1"])
    assert result["srm"]["flag"] and result["srm"]["p"] < 0.001
    assert "SAMPLE RATIO MISMATCH" in (out / "readout.md").read_text()
    # The same users against the split they were drawn from, without the loss, pass.
    clean, _, _ = _readout(tmp_path / "clean", ["--users", "100000", "--seed", "1"])
    assert not clean["srm"]["flag"]


def test_a_small_sample_gets_the_mde_warning(tmp_path):
    result, out, _ = _readout(tmp_path, ["--users", "3000", "--lift", "web=1.02,ios=1.02,android=1.02", "--seed", "3"])
    row = _row(result, "atpu", "all")
    assert row["mde"] > 0.05 and row["below_mde"]
    assert "below MDE" in (out / "readout.md").read_text()


def _small_table():
    rng = np.random.default_rng(4)
    n_c, n_t = 400, 380
    tx_c, tx_t = rng.poisson(0.5, n_c), rng.poisson(0.65, n_t)
    rows = {"user_id": [f"u{i}" for i in range(n_c + n_t)], "variant": ["control"] * n_c + ["treatment"] * n_t,
            "platform": ["web"] * (n_c + n_t), "exposed_at": ["2024-01-01T00:00:00"] * (n_c + n_t),
            "transactions": np.concatenate([tx_c, tx_t])}
    rows["converted"] = (rows["transactions"] > 0).astype(int)
    rows["converted_via_search"] = rows["converted"]
    rows["transactions_via_search"] = rows["transactions"]
    return pa.table(rows), tx_c.astype(float), tx_t.astype(float)


def test_figures_match_scipy_welch_and_the_delta_method_by_hand():
    table, c, t = _small_table()
    users, _ = ab.per_user(table)
    result = ab.readout(users, "control", {"control": 0.5, "treatment": 0.5})
    row = _row(result, "atpu", "all")
    welch = stats.ttest_ind(t, c, equal_var=False)
    assert row["t"] == pytest.approx(welch.statistic, rel=1e-9)
    assert row["p"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert row["ratio"] == pytest.approx(t.mean() / c.mean(), rel=1e-12)
    # Delta method on log(ratio): var = s_t^2 / (n_t m_t^2) + s_c^2 / (n_c m_c^2), Welch-Satterthwaite df.
    a = t.var(ddof=1) / len(t) / t.mean() ** 2
    b = c.var(ddof=1) / len(c) / c.mean() ** 2
    df = (a + b) ** 2 / (a ** 2 / (len(t) - 1) + b ** 2 / (len(c) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(a + b)
    assert row["ci_low"] == pytest.approx(t.mean() / c.mean() * math.exp(-half), rel=1e-9)
    assert row["ci_high"] == pytest.approx(t.mean() / c.mean() * math.exp(half), rel=1e-9)
    # SRM: scipy's chi-square goodness of fit against the split.
    assert result["srm"]["chi2"] == pytest.approx(stats.chisquare([400, 380]).statistic)


def test_users_count_once_on_the_platform_of_first_exposure():
    table = pa.table({"user_id": ["u1", "u1", "u2", "u3", "u3"], "variant": ["c", "c", "c", "t", "c"],
                      "platform": ["ios", "web", "web", "web", "web"],
                      "exposed_at": ["2024-01-02", "2024-01-01", "2024-01-01", "2024-01-01", "2024-01-02"],
                      "converted": [1, 0, 0, 1, 0], "transactions": [2, 1, 0, 1, 0],
                      "converted_via_search": [1, 0, 0, 0, 0], "transactions_via_search": [1, 0, 0, 0, 0]})
    users, excluded = ab.per_user(table)
    assert excluded == {"users_in_several_variants": 1}
    # The same times spelled with zones, mixed with naive ones (UTC), order the same way.
    mixed = table.set_column(3, "exposed_at", pa.array(["2024-01-02T09:00:00+09:00", "2024-01-01T00:00:00Z",
                                                       "2024-01-01", "2024-01-01", "2024-01-02"]))
    assert ab.per_user(mixed)[0].to_pylist() == users.to_pylist()
    with pytest.raises(ValueError, match="exposed_at 'soon' is not an ISO-8601 time"):
        ab.per_user(table.set_column(3, "exposed_at", pa.array(["soon"] * 5)))  # u3 saw both arms: excluded and counted
    got = {r["user_id"]: r for r in users.to_pylist()}
    assert set(got) == {"u1", "u2"}
    assert got["u1"]["platform"] == "web" and got["u1"]["transactions"] == 3 and got["u1"]["converted"] == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.drop_columns(["transactions"]), "lacks the column"),
    (lambda t: t.set_column(4, "transactions", pa.array([-1] + [0] * (t.num_rows - 1))), "negative values"),
])
def test_bad_rows_are_named(tmp_path, mutate, message):
    table, _, _ = _small_table()
    path = tmp_path / "rows.parquet"
    import pyarrow.parquet as pq
    pq.write_table(mutate(table), path)
    with pytest.raises(SystemExit, match=message):
        ab.run(["--input", str(path), "--control", "control", "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_bad_flags_are_named(tmp_path):
    table, _, _ = _small_table()
    path = tmp_path / "rows.csv"
    ab_simulate.write(table, str(path))
    with pytest.raises(SystemExit, match="--control 'ctrl' is not a variant"):
        ab.run(["--input", str(path), "--control", "ctrl", "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--split"):
        ab.run(["--input", str(path), "--control", "control", "--split", "control=50", "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--cuped needs the pre-exposure column"):
        ab.run(["--input", str(path), "--control", "control", "--cuped", "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="unknown format"):
        ab.run(["--input", str(tmp_path / "rows.txt"), "--control", "c", "--output", str(tmp_path / "o")]) \
            if (tmp_path / "rows.txt").write_text("x") else None
    assert ab.run(["--input", str(path), "--control", "control", "--output", str(tmp_path / "csv")]) == 0
    jsonl = tmp_path / "rows.jsonl"
    ab_simulate.write(table, str(jsonl))
    assert ab.run(["--input", str(jsonl), "--control", "control", "--output", str(tmp_path / "jsonl")]) == 0
    assert (json.loads((tmp_path / "csv" / "readout.json").read_text())["rows"]
            == json.loads((tmp_path / "jsonl" / "readout.json").read_text())["rows"])
