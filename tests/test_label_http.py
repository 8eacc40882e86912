"""`imagescore label --judge http` against the local chat-completions double."""
from __future__ import annotations

import json

import pytest

from cli_common import guarded
from labeling.label import run
from tests.chat_double import ChatDouble, Reply, recorded
from tests.fixtures.chat import window, write_images, write_windows


def cli(argv):
    """The command as the console script runs it: a usage error is one line on stderr and exit code 2."""
    return guarded("imagescore label", run, argv)


SECRET = "sk-test-SECRET-8f3a9c2e71d4"


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def outputs(out) -> tuple[list[dict], list[dict], list[dict], dict]:
    return (read_jsonl(out / "labels.jsonl"), read_jsonl(out / "responses.jsonl"),
            read_jsonl(out / "deadletter.jsonl"), json.loads((out / "summary.json").read_text()))


def label(windows_path, out, double: ChatDouble, *extra: str) -> int:
    argv = ["--windows", windows_path, "--output", str(out), "--base-url", double.url, "--model", "test-vlm",
            "--allow-image-schemes", "file", "--no-progress", "--image-size", "256", "--concurrency", "1",
            "--malformed-retries", "0", *extra]
    return run(argv)


@pytest.fixture
def images(tmp_path):
    return [p.as_uri() for p in write_images(tmp_path / "img", 6)]


def windows_file(tmp_path, images, count: int, name="windows-00000.jsonl") -> str:
    """``count`` windows of three images each, no two with the same image list (the cache would share them)."""
    assert count <= len(images)
    return write_windows(tmp_path / name, [window(f"s{k}", [images[(k + j) % len(images)] for j in range(3)])
                                           for k in range(count)])


def test_labels_windows_end_to_end(tmp_path, images, chat_double):
    chat_double.default = recorded("good_3")
    out = tmp_path / "out"
    assert label(windows_file(tmp_path, images, 2), out, chat_double, "--price-per-1k-input", "0.15",
                 "--price-per-1k-output", "0.6") == 0
    labels, responses, dead, summary = outputs(out)
    assert chat_double.errors == []
    assert [r.n_images for r in chat_double.requests] == [3, 3]
    assert all(size == (256, 171) for r in chat_double.requests for size in r.image_sizes)  # 900x600 -> long side 256
    assert [(r["serp_id"], r["item_id"], r["score"], r["label"]) for r in labels[:3]] == [
        ("s0", "s0-i0", 7.0, 1.0), ("s0", "s0-i1", 3.0, 0.0), ("s0", "s0-i2", 5.0, 0.5)]
    first = labels[0]
    assert first["judge"] == "http" and first["model"] == "test-vlm" and first["prompt_version"] == "xiqe_aesthetic_v1"
    assert first["tied"] is False and first["clicked"] is True and first["split"] == "train"
    assert first["rationale"].startswith("Color harmony: Warm product tones")
    assert dead == []
    assert len(responses) == 2 and responses[0]["content"].startswith('{\n "images"') and not responses[0]["cached"]
    assert summary["windows_in"] == 2 and summary["windows_labelled"] == 2 and summary["accounted"]
    assert summary["usage"] == {"prompt_tokens": 2500, "completion_tokens": 840, "total_tokens": 3340}
    assert summary["cost"]["total"] == pytest.approx(2.5 * 0.15 + 0.84 * 0.6)
    assert summary["http_attempts"] == 2


def test_recorded_reply_variants_and_tied_window(tmp_path, images, chat_double):
    chat_double.script = [recorded(n) for n in ("fenced_3", "n_of_10_3", "reordered_3", "tied_3")]
    out = tmp_path / "out"
    assert label(windows_file(tmp_path, images, 4), out, chat_double) == 0
    labels, _, dead, summary = outputs(out)
    scores = {}
    for row in labels:
        scores.setdefault(row["serp_id"], []).append(row["score"])
    assert scores == {"s0": [8, 6, 2], "s1": [6, 9, 4], "s2": [8, 2, 5], "s3": [5, 5, 5]}
    tied = [r for r in labels if r["serp_id"] == "s3"]
    assert all(r["tied"] and r["label"] == 0.5 for r in tied)
    assert not any(r["tied"] for r in labels if r["serp_id"] != "s3")
    assert dead == [] and summary["windows_tied"] == 1


def test_malformed_replies_dead_letter_their_window_only(tmp_path, images, chat_double):
    chat_double.script = [recorded(n) for n in ("good_3", "wrong_count_3", "good_3", "out_of_range_3", "not_json")]
    out = tmp_path / "out"
    path = windows_file(tmp_path, images, 5)
    assert label(path, out, chat_double) == 0
    labels, responses, dead, summary = outputs(out)
    assert sorted({r["serp_id"] for r in labels}) == ["s0", "s2"]
    assert [(d["id"], d["stage"], d["reason"]) for d in dead] == [
        ("s1", "label", "wrong_image_count"), ("s3", "label", "score_out_of_range"),
        ("s4", "label", "response_not_parseable")]
    lines = open(path).read().splitlines()
    assert dead[0]["payload"] == lines[1]  # the original window, ready to replay
    assert len(responses) == 5 and [r["error"]["reason"] for r in responses if r["error"]] == [
        "wrong_image_count", "score_out_of_range", "response_not_parseable"]
    assert summary["windows_in"] == 5 == summary["windows_labelled"] + summary["windows_dead_lettered"]
    assert summary["usage"]["prompt_tokens"] == 5 * 1250  # malformed replies are paid too


def test_malformed_reply_is_asked_again_once(tmp_path, images, chat_double):
    chat_double.script = [recorded("not_json"), recorded("good_3")]
    out = tmp_path / "out"
    assert label(windows_file(tmp_path, images, 1), out, chat_double, "--malformed-retries", "1") == 0
    labels, responses, dead, summary = outputs(out)
    assert len(labels) == 3 and dead == [] and chat_double.request_count == 2
    assert summary["responses"] == {"paid": 2, "cached": 0, "unparseable": 1}


def test_429_with_retry_after_and_500_are_retried(tmp_path, images, chat_double):
    chat_double.script = [recorded("rate_limited"), recorded("server_error"), recorded("good_3")]
    out = tmp_path / "out"
    assert label(windows_file(tmp_path, images, 1), out, chat_double, "--retries", "3") == 0
    labels, _, dead, summary = outputs(out)
    assert len(labels) == 3 and dead == []
    stamps = [r.received_at for r in chat_double.requests]
    assert len(stamps) == 3 and stamps[1] - stamps[0] >= 0.19  # retry-after-ms: 200 honoured
    assert summary["http_status_counts"] == {"429": 1, "500": 1, "200": 1}


def test_retries_are_bounded_then_dead_letter(tmp_path, images, chat_double):
    chat_double.default = recorded("server_error")
    out = tmp_path / "out"
    assert label(windows_file(tmp_path, images, 1), out, chat_double, "--retries", "1") == 1
    labels, _, dead, summary = outputs(out)
    assert labels == [] and [d["reason"] for d in dead] == ["llm_http_500"]
    assert chat_double.request_count == 2 and summary["accounted"]


def test_slow_reply_times_out_and_is_retried_then_gives_up(tmp_path, images, chat_double):
    chat_double.script = [recorded("good_3", delay=1.5), recorded("good_3")]
    out = tmp_path / "out"
    assert label(windows_file(tmp_path, images, 1), out, chat_double, "--timeout", "0.4", "--retries", "1") == 0
    assert len(outputs(out)[0]) == 3 and chat_double.request_count == 2

    chat_double.script, chat_double.default = [], recorded("good_3", delay=1.0)
    out2 = tmp_path / "out2"
    assert label(windows_file(tmp_path, images, 1), out2, chat_double, "--timeout", "0.3", "--retries", "0") == 1
    assert [d["reason"] for d in outputs(out2)[2]] == ["llm_timeout"]


def test_rerun_resumes_from_cache_without_requests(tmp_path, images, chat_double):
    chat_double.default = recorded("good_3")
    path = windows_file(tmp_path, images, 3)
    out = tmp_path / "out"
    assert label(path, out, chat_double) == 0
    first = outputs(out)
    assert chat_double.request_count == 3
    assert {r["parsed_as"] for r in first[1]} == {"json"}

    assert label(path, out, chat_double) == 0
    second = outputs(out)
    assert chat_double.request_count == 3  # nothing paid twice
    assert second[0] == first[0]
    assert second[3]["responses"] == {"paid": 0, "cached": 3, "unparseable": 0}
    assert second[3]["usage"]["total_tokens"] == 0

    other = tmp_path / "prompt.txt"
    other.write_text("---\nversion: other_v1\n---\nScore ${n_images} images as JSON.\n")
    assert label(path, out, chat_double, "--prompt", str(other)) == 0
    assert chat_double.request_count == 6  # a new prompt version is a new judgement
    assert {r["prompt_version"] for r in outputs(out)[0]} == {"other_v1"}
    assert label(path, out, chat_double, "--prompt", str(other), "--temperature", "0.7") == 0
    assert chat_double.request_count == 9  # other sampling settings are other answers


def test_repeats_report_agreement_and_cache_per_repeat(tmp_path, images, chat_double):
    chat_double.script = [recorded("good_3"), recorded("good_3_b")]
    path = windows_file(tmp_path, images, 1)
    out = tmp_path / "out"
    assert label(path, out, chat_double, "--repeats", "2") == 0
    labels, responses, _, summary = outputs(out)
    assert [r["repeat_scores"] for r in labels] == [[7, 6], [3, 5], [5, 4]]
    assert [r["score"] for r in labels] == [6.5, 4.0, 4.5]
    assert labels[0]["repeat_spearman"] == pytest.approx(0.5)
    assert summary["agreement"]["mean_pairwise_spearman"] == pytest.approx(0.5)
    assert summary["agreement"]["mean_score_std"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert [r["repeat"] for r in responses] == [0, 1]

    chat_double.default = recorded("good_3")
    assert label(path, out, chat_double, "--repeats", "3") == 0
    assert chat_double.request_count == 3  # repeats 0 and 1 cached, only repeat 2 asked


def test_concurrency_limit_is_respected(tmp_path, images, chat_double):
    chat_double.default = recorded("good_3", delay=0.3)
    out = tmp_path / "out"
    assert label(windows_file(tmp_path, images, 6), out, chat_double, "--concurrency", "2") == 0
    assert chat_double.max_in_flight == 2
    assert outputs(out)[3]["windows_labelled"] == 6


def test_rpm_limit_gates_every_attempt_retries_included(tmp_path, images, chat_double, monkeypatch):
    """--rpm 600 (one every 0.1 s) on a frozen clock: the five windows and the one retry after a 429 each take a
    token, so the six attempts are told to wait 0, 0.1, ..., 0.5 s. Spacing itself is the bucket's test
    (tests/test_label_parse.py); timing requests at the server would measure the machine's load instead."""
    from labeling import client as client_module
    from labeling.ratelimit import TokenBucket

    waits: list[float] = []
    buckets: list[TokenBucket] = []

    def frozen_bucket(rate_per_minute):
        buckets.append(TokenBucket(rate_per_minute, clock=lambda: 0.0, sleep=waits.append))
        return buckets[-1]

    monkeypatch.setattr(client_module, "TokenBucket", frozen_bucket)
    chat_double.script = [recorded("rate_limited")]
    chat_double.default = recorded("good_3")
    out = tmp_path / "out"
    assert label(windows_file(tmp_path, images, 5), out, chat_double, "--concurrency", "4", "--rpm", "600",
                 "--retries", "1") == 0
    assert len(buckets) == 1 and buckets[0].rate == pytest.approx(10.0)
    assert chat_double.request_count == 6
    assert sorted(waits) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])  # the first attempt does not sleep
    assert outputs(out)[3]["http_status_counts"] == {"429": 1, "200": 5}


def test_an_endpoint_nobody_listens_on_is_a_connection_error(tmp_path, images):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    argv = ["--windows", windows_file(tmp_path, images, 2), "--output", str(out), "--base-url",
            f"http://127.0.0.1:{port}/v1", "--model", "test-vlm", "--allow-image-schemes", "file", "--no-progress",
            "--concurrency", "1", "--retries", "1"]
    assert run(argv) == 1
    labels, _, dead, summary = outputs(out)
    assert labels == [] and [d["reason"] for d in dead] == ["llm_connection_error"] * 2
    assert all(f"cannot reach http://127.0.0.1:{port}/v1/" in d["error"] for d in dead)
    assert summary["windows_labelled"] == 0 and summary["accounted"]


@pytest.mark.parametrize("body,reason", [
    ("this is not json", "llm_bad_body"),
    ([1, 2], "llm_bad_body"),                       # JSON, but not an object
    ({"id": "chatcmpl-x"}, "llm_bad_body"),           # an object without a choices field
    ({"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m", "choices": []},
     "empty_response"),
])
def test_a_bad_completion_body_dead_letters_its_window_only(tmp_path, images, chat_double, body, reason):
    chat_double.script = [Reply(200, body)]
    chat_double.default = recorded("good_3")
    out = tmp_path / "out"
    assert label(windows_file(tmp_path, images, 2), out, chat_double, "--retries", "0") == 0  # some labelled
    labels, _, dead, summary = outputs(out)
    assert [(d["reason"], d["id"]) for d in dead] == [(reason, "s0")]
    assert chat_double.url in dead[0]["error"]
    assert {r["serp_id"] for r in labels} == {"s1"} and len(labels) == 3
    assert summary["windows_labelled"] == 1 and summary["accounted"]


def test_unfetchable_and_bad_windows_are_dead_lettered_others_unaffected(tmp_path, chat_double, static_image_server):
    root, host = static_image_server
    write_images(root, 4)
    (root / "notes.jpg").write_text("not an image")
    base = f"http://{host}"
    good = [f"{base}/img0.jpg", f"{base}/img1.jpg", f"{base}/img2.jpg"]
    rows = [window("ok1", good), window("missing", [good[0], f"{base}/gone.jpg", good[2]]),
            window("garbage", [good[0], good[1], f"{base}/notes.jpg"]),
            window("ftp", [good[0], good[1], "ftp://example.com/a.jpg"]), window("ok2", good[::-1])]
    path = tmp_path / "windows-00000.jsonl"
    write_windows(path, rows)
    with open(path, "a") as handle:
        handle.write("{not json\n" + json.dumps({"serp_id": "empty", "items": []}) + "\n"
                     + json.dumps(window("ok1", good)) + "\n")
    chat_double.default = recorded("good_3")
    out = tmp_path / "out"
    assert run(["--windows", str(path), "--output", str(out), "--base-url", chat_double.url, "--model", "m",
                "--allow-image-hosts", host, "--no-progress"]) == 0
    labels, _, dead, summary = outputs(out)
    assert sorted({r["serp_id"] for r in labels}) == ["ok1", "ok2"]
    reasons = {(d["id"], d["reason"]) for d in dead}
    assert reasons == {("missing", "http_404"), ("garbage", "not_an_image"), ("ftp", "blocked_scheme"),
                       (None, "malformed_json"), (None, "bad_window"), ("ok1", "duplicate_window")}
    assert "gone.jpg" in next(d["error"] for d in dead if d["id"] == "missing")
    assert chat_double.request_count == 2  # no request for a window with a missing image
    assert summary["windows_in"] == 8 == summary["windows_labelled"] + summary["windows_dead_lettered"]


def test_api_key_is_sent_but_never_written_or_logged(tmp_path, images, chat_double, monkeypatch, capsys, caplog):
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    chat_double.script = [Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}.",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}})]
    chat_double.default = recorded("good_3")
    out = tmp_path / "out"
    with caplog.at_level("DEBUG"):
        assert label(windows_file(tmp_path, images, 2), out, chat_double) == 0
    assert chat_double.requests[0].authorization == f"Bearer {SECRET}"
    labels, _, dead, _ = outputs(out)
    assert [d["reason"] for d in dead] == ["llm_http_401"] and len(labels) == 3
    assert "LLM_API_KEY redacted" in dead[0]["error"]
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text] + [p.read_text() for p in out.rglob("*") if p.is_file()]
    assert all(SECRET not in text for text in texts)


def test_usage_errors_exit_2(tmp_path, images, capsys):
    path = windows_file(tmp_path, images, 1)
    assert cli(["--windows", path, "--output", str(tmp_path / "o")]) == 2
    assert "--model" in capsys.readouterr().err
    assert cli(["--windows", str(tmp_path / "nope-*.jsonl"), "--output", str(tmp_path / "o"), "--model", "m"]) == 2
    assert "matches no file" in capsys.readouterr().err
