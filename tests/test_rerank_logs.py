"""The search-log contract's engine fields: the simulator logs them, collect validates and carries them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.collect import make_window, parse_serp
from training.simulate import run as simulate
from transforms.deadletter import Rejected


def _line(**item_extra) -> str:
    return json.dumps({"serp_id": "s1", "query": "bag", "platform": "web", "ts": "2024-01-01T00:00:00Z", "items": [
        {"item_id": "a", "position": 1, "price": 100, "image_url": "https://x/a.jpg", "clicked": False},
        {"item_id": "b", "position": 2, "price": 100, "image_url": "https://x/b.jpg", "clicked": True,
         **item_extra}]})


def test_simulated_logs_carry_float32_engine_scores_in_logged_order(tmp_path, capsys):
    simulate(["--output", str(tmp_path), "--serps", "200", "--items", "60", "--no-images"])
    for line in (tmp_path / "logs.jsonl").read_text().splitlines():
        items = json.loads(line)["items"]
        scores = np.array([it["score"] for it in items])
        relevance = np.array([it["relevance_score"] for it in items])
        assert np.all(np.diff(scores) <= 0)  # the engine ranked by its score
        assert np.array_equal(scores.astype(np.float32).astype(np.float64), scores)  # float32, as Elasticsearch
        assert np.all(relevance > 0) and np.all(scores <= relevance)  # other factors in (0, 1]


def test_collect_carries_engine_scores_into_windows():
    serp = parse_serp(_line(score=2.5, relevance_score=3.0))
    window, _ = make_window(serp, min_items=1)
    anchor = [it for it in window["items"] if it["item_id"] == "b"][0]
    assert (anchor["score"], anchor["relevance_score"]) == (2.5, 3.0)
    assert "score" not in [it for it in window["items"] if it["item_id"] == "a"][0]  # absent stays absent


@pytest.mark.parametrize("value", [-1.0, "high", True, float("inf")])
def test_collect_rejects_bad_engine_scores_naming_the_item(value):
    line = _line(score=value).replace("Infinity", "1e999")
    with pytest.raises(Rejected, match=r"SERP 's1' item #1: score must be a finite number >= 0"):
        parse_serp(line)
