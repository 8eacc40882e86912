"""Common mistakes end in one line naming the input, exit code 2 and no traceback; failed runs exit non-zero.

Each test feeds one mistake through the same entry point a user types
(``imagescore COMMAND`` in-process, or the console script and ``python -m``
in a subprocess) and checks the exit code, that no traceback is printed, and
that the message names the input and says what to do.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagescore
from cli_common import UsageError
from pipelines.local_runner import LOCAL_BATCH_RUNNER
from pipelines.options import job_options

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-20T12:00:00+00:00"
RUNNER = ["--runner", LOCAL_BATCH_RUNNER]


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``imagescore ARGV`` in-process; (exit code, stderr)."""
    try:
        code = imagescore.main(argv)
    except SystemExit as exc:  # only argparse's --help may exit; a usage error must not get here
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"imagescore {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def item(item_id: str, url: str) -> dict:
    return {"id": item_id, "image_urls": [url], "created_at": "2026-11-19T00:00:00+00:00"}


def photo(path: Path) -> str:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path.as_uri()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- user mistakes: exit 2, one line

@pytest.mark.parametrize("command, flags", [
    ("backfill", ["--source", "files", "--input", "{glob}", "--output", "{out}"]),
    ("collect", ["--logs", "{glob}", "--output", "{out}"]),
    ("embed", ["--windows", "{glob}", "--backbone", "handcrafted", "--output", "{out}"]),
    ("label", ["--windows", "{glob}", "--output", "{out}", "--judge", "handcrafted"]),
    ("analyze", ["--windows", "{glob}", "--labels", "{glob}", "--output", "{out}"]),
    ("train", ["--windows", "{glob}", "--labels", "{glob}", "--embeddings", "{glob}", "--output", "{out}"]),
    ("evaluate", ["--windows", "{glob}", "--labels", "{glob}", "--embeddings", "{glob}"]),
])
def test_a_glob_that_matches_nothing_is_one_line(command, flags, tmp_path, capsys):
    pattern = str(tmp_path / "typo" / "windows*.jsonl")
    argv = [f.format(glob=pattern, out=tmp_path / "out") for f in flags]
    code, err = cli([command, *argv], capsys)
    assert code == 2
    line = error_line(err, command)
    assert pattern in line and "match" in line


def test_elasticsearch_not_listening_names_the_url(tmp_path, capsys):
    items = write_jsonl(tmp_path / "items.jsonl", [item("a", "http://127.0.0.1:1/a.jpg")])
    url = f"http://127.0.0.1:{closed_port()}"
    code, err = cli(["backfill", "--source", "files", "--input", items, "--es-url", url,
                     "--deadletter", str(tmp_path / "dead"), *RUNNER], capsys)
    assert code == 2
    line = error_line(err, "backfill")
    assert f"not reachable at {url}" in line and "--es-url" in line
    assert "reindex" not in line  # the old wrapper blamed the mapping


def test_a_missing_index_names_the_index_and_the_url(es_url, tmp_path, capsys):
    items = write_jsonl(tmp_path / "items.jsonl", [item("a", "http://127.0.0.1:1/a.jpg")])
    index = f"imagescore-test-missing-{tmp_path.name[-6:].lower()}"
    code, err = cli(["backfill", "--source", "files", "--input", items, "--es-url", es_url, "--es-index", index,
                     "--deadletter", str(tmp_path / "dead"), *RUNNER], capsys)
    assert code == 2
    line = error_line(err, "backfill")
    assert f"index {index!r} does not exist" in line and "--es-index" in line and "reindex" not in line
    assert not (tmp_path / "dead").exists()  # refused before anything ran


@pytest.mark.parametrize("command, argv, flag", [
    ("backfill", ["--source", "files", "--input", "x.jsonl", "--output", "o", "--days", "abc"], "--days"),
    ("collect", ["--logs", "x.jsonl", "--output", "o", "--max-price-diff", "cheap"], "--max-price-diff"),
    ("train", ["--windows", "w", "--labels", "l", "--embeddings", "e", "--output", "o", "--epochs", "ten"],
     "--epochs"),
    ("label", ["--windows", "w", "--output", "o", "--judge", "gpt"], "--judge"),
    ("backfill", ["--source", "files", "--input", "x.jsonl", "--output", "o", "--max-deadletter-share", "2"],
     "--max-deadletter-share"),
])
def test_a_bad_flag_value_is_one_line_naming_the_flag(command, argv, flag, capsys):
    code, err = cli([command, *argv], capsys)
    assert code == 2
    assert flag in error_line(err, command)


@pytest.mark.parametrize("command, argv, typo, suggestion", [
    ("backfill", ["--source", "files", "--input", "x.jsonl", "--output", "o"], "--dayz", "--days"),
    ("collect", ["--logs", "x.jsonl", "--output", "o"], "--ctr-cutof", "--ctr-cutoff"),
    ("embed", ["--windows", "w", "--output", "o"], "--backbon", "--backbone"),
    ("train", ["--windows", "w", "--labels", "l", "--embeddings", "e", "--output", "o"], "--epoch", "--epochs"),
    ("demo", ["--output", "o"], "--seeed", "--seed"),
])
def test_an_unknown_flag_is_refused_with_did_you_mean(command, argv, typo, suggestion, capsys):
    code, err = cli([command, *argv, typo, "1"], capsys)
    assert code == 2
    line = error_line(err, command)
    assert f"unknown flag {typo} (did you mean {suggestion}?)" in line


def test_every_flag_beam_its_runners_or_the_job_defines_is_accepted():
    from pipelines import backfill  # noqa: F401 - loads the job's options classes
    options = job_options(["--runner", "DataflowRunner", "--project", "p", "--region", "us-central1",
                           "--temp_location", "gs://b/tmp", "--sdk_container_image", "img", "--num_workers", "3",
                           "--direct_running_mode", "in_memory", "--direct_num_workers", "2",
                           "--flink_master", "localhost:8081", "--spark_master_url", "spark://h:7077",
                           "--experiments", "use_runner_v2", "--days", "3", "--es-pit-keep-alive", "5m"])
    assert options.view_as(backfill.BackfillOptions).days == 3
    with pytest.raises(UsageError, match=r"unknown flag --dayz \(did you mean --days\?\)"):
        job_options(["--project", "p", "--dayz", "1"])


@pytest.mark.parametrize("command, flag", [("backfill", "--input"), ("collect", "--logs"), ("embed", "--input")])
def test_a_json_array_input_is_refused_with_a_message_that_says_jsonl(command, flag, tmp_path, capsys):
    path = tmp_path / "items.json"
    path.write_text(json.dumps([item("a", "http://x/a.jpg"), item("b", "http://x/b.jpg")], indent=2))
    argv = {"backfill": ["--source", "files", "--input", str(path), "--output", str(tmp_path / "o")],
            "collect": ["--logs", str(path), "--output", str(tmp_path / "o")],
            "embed": ["--input", str(path), "--backbone", "handcrafted", "--output", str(tmp_path / "o")]}[command]
    code, err = cli([command, *argv], capsys)
    assert code == 2
    line = error_line(err, command)
    assert str(path) in line and "JSON array" in line and "JSONL" in line and flag in line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- failed runs: exit 1, reasons named

def test_backfill_with_every_record_dead_lettered_exits_1_and_keeps_them_all(tmp_path, capsys):
    rows = [item("a", "file:///etc/passwd"), item("b", "ftp://example.com/b.jpg"), "{not json"]
    items = write_jsonl(tmp_path / "items.jsonl", rows)
    out = tmp_path / "out"
    code = imagescore.main(["backfill", "--source", "files", "--input", items, "--output", str(out), "--now", NOW,
                            *RUNNER])
    captured = capsys.readouterr()
    assert code == 1
    assert "dead-lettered 3 (fetch_blocked_scheme 2, parse_malformed_json 1)" in captured.out
    assert "backfill: FAILED: none of the 3 records read succeeded" in captured.out
    dead = [json.loads(line) for p in (out / "deadletter").glob("deadletter*.jsonl") for line in p.open()]
    assert sorted(d["reason"] for d in dead) == ["blocked_scheme", "blocked_scheme", "malformed_json"]


@pytest.mark.parametrize("share, code", [(0.4, 1), (0.6, 0)])
def test_max_deadletter_share_fails_a_run_over_it(share, code, tmp_path, capsys):
    rows = [item("good", photo(tmp_path / "good.png")), item("bad", "ftp://example.com/b.jpg")]
    items = write_jsonl(tmp_path / "items.jsonl", rows)
    assert imagescore.main(["backfill", "--source", "files", "--input", items, "--output", str(tmp_path / "out"),
                            "--allow-image-schemes", "file", "--now", NOW, "--max-deadletter-share", str(share),
                            *RUNNER]) == code
    out = capsys.readouterr().out
    assert "scored 1," in out and "dead-lettered 1 (fetch_blocked_scheme 1)" in out
    assert ("over --max-deadletter-share 0.4" in out) == (code == 1)


def test_embed_with_every_image_refused_exits_1(tmp_path, capsys):
    listing = write_jsonl(tmp_path / "images.jsonl", [{"item_id": "a", "image_url": "file:///etc/passwd"}])
    assert imagescore.main(["embed", "--input", listing, "--backbone", "handcrafted", "--output",
                            str(tmp_path / "emb"), *RUNNER]) == 1
    out = capsys.readouterr().out
    assert "embedded=0" in out and "fetch_blocked_scheme 1" in out and "embed: FAILED" in out


def test_collect_with_every_line_dead_lettered_exits_1(tmp_path, capsys):
    logs = write_jsonl(tmp_path / "logs.jsonl", ["{broken", '{"serp_id": 3}'])
    assert imagescore.main(["collect", "--logs", logs, "--output", str(tmp_path / "c"), *RUNNER]) == 1
    err = capsys.readouterr().err
    assert "dead-lettered 2 (collect_" in err and "collect: FAILED" in err


# ---------------------------------------------------------------- the entry points themselves

@pytest.mark.parametrize("argv, prog", [
    (["imagescore", "collect", "--logs", "{glob}", "--output", "o"], "imagescore collect"),
    ([sys.executable, "-m", "pipelines.backfill", "--source", "files", "--input", "{glob}", "--output", "o"],
     "python -m pipelines.backfill"),
    ([sys.executable, "-m", "training.train", "--windows", "{glob}", "--labels", "l", "--embeddings", "e",
      "--output", "o"], "python -m training.train"),
])
def test_entry_points_print_one_line_and_exit_2(argv, prog, tmp_path):
    pattern = str(tmp_path / "nothing-*.jsonl")
    argv = [a.format(glob=pattern) for a in argv]
    if argv[0] == "imagescore":
        argv[0] = os.path.join(os.path.dirname(sys.executable), "imagescore")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and pattern in errors[0], proc.stderr


def test_a_real_bug_keeps_its_traceback(monkeypatch, capsys):
    from training import simulate

    def broken(args):
        raise KeyError("a bug, not a user mistake")

    monkeypatch.setattr(simulate, "simulate", broken)
    with pytest.raises(KeyError):
        imagescore.main(["simulate", "--output", "x"])
