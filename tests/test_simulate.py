"""simulate: a deterministic offline marketplace whose logs collect can read and whose clicks follow the flags."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from pipelines.collect import parse_serp
from training import simulate
from training.simulate import item_quality


def _world(tmp_path: Path, name: str, *flags: str) -> Path:
    out = tmp_path / name
    assert simulate.run(["--output", str(out), *flags]) == 0
    return out


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_quality_formula():
    assert item_quality({}, 0.0, 0.0, 1.0) == 1.0
    assert item_quality({"blur": 1.0}, 0.0, 0.0, 1.0) == pytest.approx(0.3)
    assert item_quality({"blur": 0.5, "noise": 0.5}, 0.0, 0.0, 1.0) == pytest.approx(0.65 ** 2)
    assert item_quality({}, 1.0, 1.0, 0.5) == pytest.approx(0.65 * 0.7 * 0.75)
    assert item_quality({"blur": 0.2}, 0.0, 0.0, 1.0) > item_quality({"blur": 0.8}, 0.0, 0.0, 1.0)


def test_small_world_is_fast_deterministic_and_readable_by_collect(tmp_path):
    start = time.perf_counter()
    a = _world(tmp_path, "a", "--items", "60", "--serps", "300", "--seed", "5")
    assert time.perf_counter() - start < 20
    b = _world(tmp_path, "b", "--items", "60", "--serps", "300", "--seed", "5", "--no-images")
    logs_a, logs_b = _read(a / "logs.jsonl"), _read(b / "logs.jsonl")
    assert len(logs_a) == 300
    # --no-images writes the very same world, only the image paths differ
    strip = lambda logs: json.dumps(logs).replace(str(a), "X").replace(str(b), "X")
    assert strip(logs_a) == strip(logs_b)
    assert strip(_read(a / "quality.jsonl")) == strip(_read(b / "quality.jsonl"))
    assert not list((b / "images").iterdir())
    c = _world(tmp_path, "c", "--items", "60", "--serps", "300", "--seed", "6", "--no-images")
    assert _read(c / "logs.jsonl") != logs_b

    quality = {q["item_id"]: q for q in _read(a / "quality.jsonl")}
    assert len(quality) == 60 and all(0.0 <= q["quality"] <= 1.0 for q in quality.values())
    first = datetime(2024, 1, 1, tzinfo=UTC)
    for line in (a / "logs.jsonl").read_text().splitlines():
        serp = parse_serp(line)  # the contract collect reads; raises on any violation
        assert first <= datetime.fromisoformat(serp["ts"]) <= datetime(2024, 1, 29, tzinfo=UTC)
        assert [i["position"] for i in serp["items"]] == list(range(1, len(serp["items"]) + 1))
        assert serp["platform"] in ("web", "ios", "android")
        for i in serp["items"]:
            assert not (i["liked"] or i["purchased"]) or i["clicked"]  # downstream of clicks
            assert i["price"] == quality[i["item_id"]]["price"]
    url = next(iter(quality.values()))["image_url"]
    path = urlparse(url).path
    assert url.startswith("file:///") and Path(path).is_absolute()
    with Image.open(path) as img:
        assert img.size == (256, 256) and img.format == "JPEG"


def _clicked_quality_gap(out: Path) -> float:
    """Mean quality of clicked minus not-clicked items, at the same positions (1-5) to factor out position bias."""
    quality = {q["item_id"]: q["quality"] for q in _read(out / "quality.jsonl")}
    clicked, other = [], []
    for serp in _read(out / "logs.jsonl"):
        for i in serp["items"][:5]:
            (clicked if i["clicked"] else other).append(quality[i["item_id"]])
    return float(np.mean(clicked) - np.mean(other))


def test_quality_effect_flag_moves_clicks_and_zero_is_the_null_world(tmp_path):
    flags = ("--items", "200", "--serps", "3000", "--no-images", "--seed", "1")
    strong = _world(tmp_path, "strong", *flags, "--quality-effect", "3")
    null = _world(tmp_path, "null", *flags, "--quality-effect", "0")
    assert _clicked_quality_gap(strong) > 0.05
    assert abs(_clicked_quality_gap(null)) < 0.02


def test_position_bias_top_positions_get_more_clicks(tmp_path):
    out = _world(tmp_path, "w", "--items", "200", "--serps", "2000", "--no-images", "--quality-effect", "0")
    clicks = np.zeros(20)
    for serp in _read(out / "logs.jsonl"):
        for i in serp["items"]:
            clicks[i["position"] - 1] += i["clicked"]
    assert clicks[0] > 1.5 * clicks[9] and clicks[:3].sum() > clicks[-3:].sum()


def test_too_few_items_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--items"):
        simulate.run(["--output", str(tmp_path / "x"), "--items", "2"])
