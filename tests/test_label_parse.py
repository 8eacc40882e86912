"""Parsing judge replies (recorded and hand-made), normalisation, prompt files, cache and rate limit."""
from __future__ import annotations

import json
import threading

import pytest

from labeling.cache import WindowCache, cache_key
from labeling.normalize import normalize_window
from labeling.parse import parse_reply
from labeling.prompt import DEFAULT_PROMPT, load_prompt, parse_prompt
from labeling.ratelimit import TokenBucket
from tests.chat_double import recorded
from transforms.deadletter import Rejected


def content(name: str) -> str:
    return recorded(name).body["choices"][0]["message"]["content"]


# --- parsing -----------------------------------------------------------------------------------------

def test_strict_json_gives_scores_and_criteria_rationales():
    parsed = parse_reply(content("good_3"), 3)
    assert parsed.scores == [7.0, 3.0, 5.0]
    assert parsed.method == "json"
    assert parsed.rationales[1].startswith("Color harmony: Product colour clashes")
    assert "Visual impact: Looks careless" in parsed.rationales[1]


def test_fenced_json_is_parsed():
    assert parse_reply(content("fenced_3"), 3).scores == [8.0, 6.0, 2.0]


def test_image_numbers_reorder_entries():
    assert parse_reply(content("reordered_3"), 3).scores == [8.0, 2.0, 5.0]


def test_n_of_10_fallback_splits_rationales_between_scores():
    parsed = parse_reply(content("n_of_10_3"), 3)
    assert parsed.scores == [6.0, 9.0, 4.0]
    assert parsed.method == "n_of_10"
    assert "dark and blurry" in parsed.rationales[2] and "dark and blurry" not in parsed.rationales[1]


@pytest.mark.parametrize("name, n, reason", [
    ("wrong_count_3", 3, "wrong_image_count"),
    ("out_of_range_3", 3, "score_out_of_range"),
    ("not_json", 3, "response_not_parseable"),
    ("good_3", 4, "wrong_image_count"),
    ("n_of_10_3", 2, "wrong_image_count"),
])
def test_malformed_recorded_replies_are_rejected(name, n, reason):
    with pytest.raises(Rejected) as info:
        parse_reply(content(name), n)
    assert info.value.reason == reason


@pytest.mark.parametrize("text, reason", [
    ("", "empty_response"),
    (None, "empty_response"),
    ('{"images": [{"score": 5}, {"score": "great"}]}', "score_not_a_number"),
    ('{"images": [{"score": 5}, {"score": true}]}', "score_not_a_number"),
    ('{"images": [{"score": 5}, {"rationale": "no score"}]}', "missing_score"),
    ('{"images": [{"image": 1, "score": 5}, {"image": 1, "score": 6}]}', "bad_image_index"),
    ('{"verdict": "fine"}', "bad_response_shape"),
    ("Image 1: 5/10. Image 2: -1/10.", "score_out_of_range"),
    ('{"images": [{"score": 5}, {"score": NaN}]}', "score_not_a_number"),
])
def test_partial_and_malformed_replies_are_rejected(text, reason):
    with pytest.raises(Rejected) as info:
        parse_reply(text, 2)
    assert info.value.reason == reason


def test_lenient_score_forms_and_bare_list():
    assert parse_reply('[{"score": "7/10"}, {"score": 2.5}]', 2).scores == [7.0, 2.5]
    assert parse_reply('Sure! {"scores": [{"score": 10}, {"score": 0}]} Hope that helps.', 2).scores == [10.0, 0.0]


# --- normalisation -----------------------------------------------------------------------------------

def test_min_max_within_window():
    labels, tied = normalize_window([7, 3, 5])
    assert labels == [1.0, 0.0, 0.5] and tied is False


def test_all_equal_window_is_half_and_tied():
    assert normalize_window([5, 5, 5]) == ([0.5, 0.5, 0.5], True)
    assert normalize_window([4]) == ([0.5], True)
    with pytest.raises(ValueError):
        normalize_window([])


# --- prompt files ------------------------------------------------------------------------------------

def test_default_prompt_is_versioned_xiqe_style():
    prompt = load_prompt()
    assert prompt.version == "xiqe_aesthetic_v1" and DEFAULT_PROMPT.name == "xiqe_aesthetic_v1.txt"
    text = prompt.render(3)
    for phrase in ("Color harmony", "Brightness", "Saturation", "Composition", "Perspective", "Light and shadow",
                   "Detail", "Visual impact", "Extremely bad (0-1)", "Wonderful (10)", "Image 1, Image 2, Image 3"):
        assert phrase in text
    assert "${" not in text


def test_custom_prompt_needs_a_version(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("---\nversion: shop_v2\n---\nScore ${n_images} photos as JSON {\"images\": []}\n")
    prompt = load_prompt(good)
    assert prompt.version == "shop_v2" and prompt.render(2).startswith("Score 2 photos")
    for bad in ("no front matter", "---\ntitle: x\n---\ntext", "---\nversion: a b\n---\ntext", "---\nversion: v\n---\n"):
        with pytest.raises(ValueError, match="prompt"):
            parse_prompt(bad, "bad.txt")
    with pytest.raises(ValueError, match="cannot read prompt file"):
        load_prompt(tmp_path / "missing.txt")


# --- cache -------------------------------------------------------------------------------------------

def test_cache_key_changes_with_every_input():
    base = dict(prompt_version="v1", prompt_sha256="s", model="m", image_urls=["a", "b"], image_size=512, repeat=0)
    key = cache_key(**base)
    for field, value in [("prompt_version", "v2"), ("prompt_sha256", "t"), ("model", "n"),
                         ("image_urls", ["b", "a"]), ("image_size", 256), ("repeat", 1),
                         ("endpoint", "http://other/v1"), ("sampling", {"temperature": 0.7})]:
        assert cache_key(**{**base, field: value}) != key


def test_cache_round_trip_atomic_and_tolerates_corruption(tmp_path):
    cache = WindowCache(tmp_path)
    key = "ab" + "0" * 62
    assert cache.get(key) is None
    cache.put(key, {"content": "x"})
    assert cache.get(key) == {"content": "x"}
    assert not list(tmp_path.rglob("*.tmp"))
    (tmp_path / "ab" / f"{key}.json").write_text("{half")
    assert cache.get(key) is None  # re-judged, not trusted


# --- rate limit --------------------------------------------------------------------------------------

class FrozenClock:
    """The bucket's clock and sleep: time moves only when the test says so; every wait is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)


def test_token_bucket_queues_callers_that_arrive_together():
    """Six threads at the same instant, 1200 a minute (one every 50 ms): each waits 50 ms longer than the last."""
    clock = FrozenClock()
    bucket = TokenBucket(rate_per_minute=1200, clock=clock, sleep=clock.sleep)
    threads = [threading.Thread(target=bucket.acquire) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(clock.waits) == pytest.approx([0.05, 0.10, 0.15, 0.20, 0.25])  # the first one does not sleep


def test_token_bucket_refills_at_its_rate_up_to_its_capacity():
    clock = FrozenClock()
    bucket = TokenBucket(rate_per_minute=60, capacity=3, clock=clock, sleep=clock.sleep)  # one a second
    assert [bucket.acquire() for _ in range(4)] == pytest.approx([0, 0, 0, 1.0])  # a burst of 3, then queue
    clock.now = 2.5  # 2.5 tokens of refill on top of the reservation (-1) leave 1.5
    assert [bucket.acquire() for _ in range(3)] == pytest.approx([0, 0.5, 1.5])
    clock.now = 1000.0  # a long idle spell saves up no more than the capacity
    assert [bucket.acquire() for _ in range(4)] == pytest.approx([0, 0, 0, 1.0])
    assert clock.waits == pytest.approx([1.0, 0.5, 1.5, 1.0])


def test_token_bucket_refuses_a_bad_rate_or_capacity():
    with pytest.raises(ValueError, match="--rpm must be positive, got 0"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0.5"):
        TokenBucket(60, capacity=0.5)


def test_recordings_hold_no_key():
    from tests.chat_double import RECORDINGS
    for path in RECORDINGS.glob("*.json"):
        assert "sk-" not in path.read_text()
        json.loads(path.read_text())
