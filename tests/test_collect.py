"""collect: the paper's SERP windows, splits, historical CTR, dead letters and the accounting summary."""
from __future__ import annotations

import glob
import json
from collections import Counter

import pytest

from pipelines import collect
from pipelines.collect import assign_split, make_window, parse_serp
from transforms.deadletter import Rejected


def item(pos, price=1000.0, clicked=False, **extra):
    return {"item_id": f"i{pos}", "position": pos, "price": price, "image_url": f"https://img.example/{pos}.jpg",
            "clicked": clicked, **extra}


def serp(items, serp_id="s1", ts="2024-01-10T12:00:00Z", platform="web"):
    return {"serp_id": serp_id, "query": "bag", "platform": platform, "ts": ts, "items": items}


def parsed(items, **kw):
    return parse_serp(json.dumps(serp(items, **kw)))


def ids(window):
    return [i["item_id"] for i in window["items"]]


# --------------------------------------------------------------------------- windowing

def test_window_keeps_five_nearest_above_and_two_below():
    s = parsed([item(p, clicked=(p == 10)) for p in range(1, 16)])
    window, drops = make_window(s, 0.2, 5, 2)
    assert ids(window) == ["i5", "i6", "i7", "i8", "i9", "i10", "i11", "i12"]
    assert window["anchor_item_id"] == "i10"
    assert drops["items_outside_window"] == 7 and drops["windows"] == 1 and drops["window_items"] == 8


def test_anchor_at_the_top_keeps_only_items_below():
    window, drops = make_window(parsed([item(p, clicked=(p == 1)) for p in range(1, 10)]), 0.2, 5, 2)
    assert ids(window) == ["i1", "i2", "i3"]
    assert drops["items_outside_window"] == 6


@pytest.mark.parametrize("anchor", range(1, 8))
def test_fewer_items_than_the_limits_are_all_kept(anchor):
    window, drops = make_window(parsed([item(p, clicked=(p == anchor)) for p in range(1, 8)]), 0.2, 5, 2)
    expected = [f"i{p}" for p in range(max(1, anchor - 5), min(7, anchor + 2) + 1)]
    assert ids(window) == expected
    assert drops["items_outside_window"] == 7 - len(expected)


def test_anchor_at_the_bottom_keeps_only_items_above():
    window, _ = make_window(parsed([item(p, clicked=(p == 9)) for p in range(1, 10)]), 0.2, 5, 2)
    assert ids(window) == ["i4", "i5", "i6", "i7", "i8", "i9"]


def test_first_clicked_by_position_is_the_anchor_and_other_clicks_are_removed():
    items = [item(p, clicked=p in (3, 6)) for p in range(1, 8)]
    window, drops = make_window(parsed(list(reversed(items))), 0.2, 5, 2)  # log order must not matter
    assert window["anchor_item_id"] == "i3"
    assert "i6" not in ids(window)
    assert ids(window) == ["i1", "i2", "i3", "i4", "i5"]  # i6 removed, then the 2 nearest below
    assert drops["items_other_clicks"] == 1
    assert [i["clicked"] for i in window["items"]] == [False, False, True, False, False]


def test_price_filter_is_relative_to_the_anchor_and_applies_before_the_position_window():
    prices = {1: 700, 2: 1190, 3: 1000, 4: 1250, 5: 810, 6: 1000}  # anchor 3 at 1000
    s = parsed([item(p, price=prices[p], clicked=(p == 3)) for p in range(1, 7)])
    window, drops = make_window(s, 0.2, 5, 2)
    assert ids(window) == ["i2", "i3", "i5", "i6"]  # 700 (30%) and 1250 (25%) out; 1190 and 810 in
    assert drops["items_price_filtered"] == 2
    window, _ = make_window(s, 0.5, 5, 2)
    assert ids(window) == ["i1", "i2", "i3", "i4", "i5"]


def test_every_other_item_filtered_drops_the_window_as_too_small():
    s = parsed([item(1, price=100), item(2, price=1000, clicked=True), item(3, price=5000)])
    window, drops = make_window(s, 0.2, 5, 2, min_items=2)
    assert window is None
    assert drops == Counter({"serps_too_small": 1, "items_in_dropped_serps": 3})
    window, _ = make_window(s, 0.2, 5, 2, min_items=1)
    assert ids(window) == ["i2"]


@pytest.mark.parametrize("price", [0, None])
def test_zero_or_missing_anchor_price_drops_the_serp_with_a_count(price):
    s = parsed([item(1), item(2, price=price, clicked=True), item(3)])
    window, drops = make_window(s, 0.2, 5, 2)
    assert window is None
    assert drops == Counter({"serps_anchor_price_unusable": 1, "items_in_dropped_serps": 3})


def test_items_without_a_price_are_removed_and_counted():
    s = parsed([item(1, price=None), item(2, clicked=True), item(3, price=0), item(4)])
    window, drops = make_window(s, 0.2, 5, 2)
    assert ids(window) == ["i2", "i4"]
    assert drops["items_price_missing"] == 2


def test_serp_without_a_click_is_dropped():
    window, drops = make_window(parsed([item(1), item(2)]), 0.2, 5, 2)
    assert window is None and drops["serps_no_click"] == 1


def test_window_fields_and_defaults_for_optional_flags():
    s = parsed([item(1, liked=True), item(2, clicked=True, purchased=True)])
    window, _ = make_window(s, 0.2, 5, 2)
    assert set(window) == {"serp_id", "query", "platform", "ts", "anchor_item_id", "items"}
    assert window["ts"] == "2024-01-10T12:00:00+00:00"
    assert window["items"][0] == {"item_id": "i1", "position": 1, "price": 1000.0,
                                  "image_url": "https://img.example/1.jpg", "clicked": False, "liked": True,
                                  "purchased": False}
    assert window["items"][1]["purchased"] is True and window["items"][1]["liked"] is False


# --------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("line, reason", [
    ("{not json", "malformed_json"),
    ("[1, 2]", "malformed_json"),
    (json.dumps({"serp_id": "s", "query": "q", "platform": "web", "items": []}), "missing_field"),
    (json.dumps(serp([{"item_id": "a", "position": 1, "image_url": "u", "clicked": True}])), "missing_field"),
    (json.dumps(serp("not a list")), "bad_field"),
    (json.dumps(serp([item(1, price="1000")])), "bad_field"),
    (json.dumps(serp([item(1, price=-5)])), "bad_field"),
    (json.dumps(serp([{**item(1), "position": "1"}])), "bad_field"),
    (json.dumps(serp([{**item(1), "position": True}])), "bad_field"),
    (json.dumps(serp([{**item(1), "clicked": "yes"}])), "bad_field"),
    (json.dumps(serp([item(1)], ts="yesterday")), "bad_timestamp"),
    (json.dumps(serp([item(1), {**item(2), "position": 1}])), "duplicate_position"),
    (json.dumps(serp([item(1), {**item(2), "item_id": "i1"}])), "duplicate_item"),
])
def test_malformed_serps_are_rejected_with_a_reason(line, reason):
    with pytest.raises(Rejected) as info:
        parse_serp(line)
    assert info.value.reason == reason


# --------------------------------------------------------------------------- splits

def test_split_is_deterministic_and_near_the_fractions():
    ids_ = [f"serp-{i}" for i in range(20000)]
    splits = [assign_split(s, 0.7, 0.2) for s in ids_]
    assert splits == [assign_split(s, 0.7, 0.2) for s in ids_]
    counts = Counter(splits)
    assert abs(counts["train"] / 20000 - 0.7) < 0.015
    assert abs(counts["validation"] / 20000 - 0.2) < 0.015
    assert abs(counts["test"] / 20000 - 0.1) < 0.015
    other_salt = [assign_split(s, 0.7, 0.2, salt="other") for s in ids_]
    assert other_salt != splits
    # a fixed value: SHA-1 based, so it never changes between runs or Python versions
    assert [assign_split(f"serp-{i:07d}") for i in range(9)] == [
        "train", "train", "train", "train", "test", "train", "test", "train", "validation"]


# --------------------------------------------------------------------------- the Beam job

def _run(tmp_path, lines, *extra):
    logs = tmp_path / "logs.jsonl"
    logs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert collect.run(["--logs", str(logs), "--output", str(out), *extra]) == 0
    summary = json.loads((out / "summary.json").read_text())

    def read(name):
        return [json.loads(l) for f in sorted(glob.glob(str(out / f"{name}*.jsonl"))) for l in open(f) if l.strip()]
    return summary, read


def test_pipeline_dead_letters_bad_lines_and_accounts_for_every_line(tmp_path):
    good = [json.dumps(serp([item(p, clicked=(p == 2)) for p in range(1, 6)], serp_id=f"good{i}"))
            for i in range(3)]
    no_click = json.dumps(serp([item(1), item(2)], serp_id="noclick"))
    bad = {
        "malformed_json": '{"serp_id": "x", ',
        "missing_field": json.dumps({"serp_id": "m1", "query": "q", "ts": "2024-01-01T00:00:00Z", "items": []}),
        "bad_field": json.dumps(serp([item(1, price="cheap", clicked=True)], serp_id="b1")),
        "duplicate_position": json.dumps(serp([item(1, clicked=True), {**item(2), "position": 1}], serp_id="d1")),
        "bad_timestamp": json.dumps(serp([item(1, clicked=True)], serp_id="t1", ts="13/01/2024")),
    }
    summary, read = _run(tmp_path, good + [no_click, ""] + list(bad.values()))
    dead = read("deadletter")
    assert sorted(d["reason"] for d in dead) == sorted(bad)
    for d in dead:
        assert d["stage"] == "collect" and d["payload"] == bad[d["reason"]] and d["error"]
    assert {d["id"] for d in dead if d["reason"] == "duplicate_position"} == {"d1"}
    windows = read("windows")
    assert sorted(w["serp_id"] for w in windows) == ["good0", "good1", "good2"]
    assert all(w["split"] in ("train", "validation", "test") for w in windows)
    assert summary["lines_in"] == len(good) + 2 + len(bad)
    assert summary["counts"]["windows"] == 3 and summary["counts"]["serps_no_click"] == 1
    assert summary["counts"]["lines_blank"] == 1
    assert summary["deadletters"] == {reason: 1 for reason in bad}
    assert summary["invariants"] == {"lines_accounted": True, "items_accounted": True}
    assert (summary["counts"]["windows"] + summary["counts"]["serps_no_click"] + summary["counts"]["lines_blank"]
            + summary["deadletters_total"]) == summary["lines_in"]
    assert "ctr" not in [p.name[:3] for p in (tmp_path / "out").iterdir()]
    assert summary["ctr"].startswith("skipped")


def test_ctr_uses_only_logs_before_the_cutoff(tmp_path):
    lines = [
        json.dumps(serp([item(1, clicked=True), item(2)], serp_id="a", ts="2024-01-01T00:00:00Z")),
        json.dumps(serp([item(1), item(2, clicked=True)], serp_id="b", ts="2024-01-09T23:59:59+00:00")),
        json.dumps(serp([item(1, clicked=True), item(2)], serp_id="c", ts="2024-01-10T00:00:00Z")),  # at cutoff
        json.dumps(serp([item(1, clicked=True), item(3)], serp_id="d", ts="2024-02-01T00:00:00Z")),
    ]
    _, read = _run(tmp_path, lines, "--ctr-cutoff", "2024-01-10T00:00:00Z",
                   "--train-fraction", "1", "--validation-fraction", "0")
    ctr = {r["item_id"]: r for r in read("ctr")}
    assert set(ctr) == {"i1", "i2"}  # i3 only appears after the cutoff
    assert (ctr["i1"]["impressions"], ctr["i1"]["clicks"], ctr["i1"]["ctr"]) == (2, 1, 0.5)
    assert (ctr["i2"]["impressions"], ctr["i2"]["clicks"]) == (2, 1)


def test_ctr_never_counts_validation_or_test_serps(tmp_path):
    """The CTR baseline is evaluated on test windows: their own clicks must not be in its table."""
    ids = [f"s{i}" for i in range(40)]
    splits = {i: collect.assign_split(i, 0.5, 0.25) for i in ids}
    lines = [json.dumps(serp([item(1, clicked=True), item(2)], serp_id=i, ts="2024-01-01T00:00:00Z")) for i in ids]
    _, read = _run(tmp_path, lines, "--ctr-cutoff", "2024-02-01T00:00:00Z",
                   "--train-fraction", "0.5", "--validation-fraction", "0.25")
    ctr = {r["item_id"]: r for r in read("ctr")}
    train = sum(s == "train" for s in splits.values())
    assert 0 < train < len(ids)
    assert ctr["i1"]["impressions"] == ctr["i1"]["clicks"] == train


def test_parquet_output_has_the_window_schema(tmp_path):
    import pyarrow.parquet as pq
    lines = [json.dumps(serp([item(p, clicked=(p == 3)) for p in range(1, 6)], serp_id=f"s{i}")) for i in range(4)]
    summary, _ = _run(tmp_path, lines, "--format", "parquet")
    rows = [r for f in glob.glob(str(tmp_path / "out" / "windows*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 4 == summary["counts"]["windows"]
    assert rows[0]["items"][2]["clicked"] is True and rows[0]["anchor_item_id"] == "i3"


def test_bad_flags_say_what_to_fix(tmp_path):
    with pytest.raises(SystemExit, match="--ctr-cutoff"):
        collect.run(["--logs", str(tmp_path / "x"), "--output", str(tmp_path), "--ctr-cutoff", "soon"])
    with pytest.raises(SystemExit, match="--logs GLOB is required"):
        collect.run(["--output", str(tmp_path)])


def test_help_lists_the_collect_flags(capsys):
    assert collect.run(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--logs", "--max-price-diff", "--before", "--after", "--min-items", "--ctr-cutoff", "--format"):
        assert flag in out
