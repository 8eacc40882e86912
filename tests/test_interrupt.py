"""Ctrl-C: one line, exit 130, Beam's unfinished temporary folders removed, finished files kept.

The batch commands share one handler (``cli_common.guarded``); the services (``stream``,
``serve-triton``, ``emulator``) stop on Ctrl-C as their normal end and exit 0 (their tests:
tests/test_streaming_cli.py, tests/test_emulator_cli.py).
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_common import INTERRUPTED_EXIT, guarded, interrupted, output_dirs
from tests.test_errors import cli, item, photo, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


def test_output_dirs_reads_both_flag_forms_and_skips_remote_ones():
    assert output_dirs(["--output", "out", "--deadletter=dead", "--output", "gs://b/x", "--days", "3"]) == \
        ["out", "dead"]
    assert output_dirs(["--output"]) == []


def test_the_guard_removes_temporary_folders_and_keeps_finished_files(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "beam-temp-scores-1").mkdir(parents=True)
    (out / "deadletter" / "beam-temp-deadletter-2").mkdir(parents=True)
    (out / "scores-00000-of-00001.jsonl").write_text("{}\n")
    assert guarded("imagescore backfill", _interrupt, ["--output", str(out)]) == INTERRUPTED_EXIT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("imagescore backfill: interrupted (Ctrl-C)") and str(out) in line
    assert "removed 2 unfinished temporary folder(s)" in line
    assert not glob.glob(str(out / "**" / "beam-temp-*"), recursive=True)
    assert (out / "scores-00000-of-00001.jsonl").exists()


def test_a_command_without_outputs_says_it_wrote_nothing():
    assert interrupted("imagescore query", ["--match", "bag"]).endswith(
        "it writes no files; run it again to redo the rest")


@pytest.mark.parametrize("command, argv, target", [
    ("simulate", ["--output", "{out}"], "training.simulate.simulate"),
    ("simulate-ab", ["--output", "{out}/rows.parquet"], "ranking.ab_simulate.simulate"),
    ("collect", ["--logs", "{logs}", "--output", "{out}"], "apache_beam.Pipeline.run"),
    ("query", ["--match", "bag"], "ranking.query.body_for"),
])
def test_ctrl_c_inside_a_command_is_one_line_and_130(command, argv, target, tmp_path, capsys, monkeypatch):
    logs = write_jsonl(tmp_path / "logs.jsonl", [{"serp_id": "s", "items": []}])
    monkeypatch.setattr(target, _interrupt)
    code, err = cli([command, *[a.format(out=tmp_path / "out", logs=logs) for a in argv]], capsys)
    assert code == INTERRUPTED_EXIT
    assert [line for line in err.splitlines() if "interrupted (Ctrl-C)" in line] == [
        err.strip().splitlines()[-1]]


def test_sigint_mid_backfill_exits_130_and_removes_beam_temp(tmp_path):
    """A real Ctrl-C (SIGINT) while Beam writes: the folders it would leave behind are gone."""
    urls = [photo(tmp_path / f"p{n}.png") for n in range(40)]
    items = write_jsonl(tmp_path / "items.jsonl", [item(f"i{n}", url) for n, url in enumerate(urls)])
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.backfill", "--source", "files", "--input", items, "--output", str(out),
         "--allow-image-schemes", "file", "--now", "2026-11-20T12:00:00+00:00"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a shell's foreground job
    try:
        deadline = time.monotonic() + 300
        while not glob.glob(str(out / "beam-temp-*")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # readiness: Beam has opened its temporary folders
        assert process.poll() is None, "the backfill finished before it could be interrupted"
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == INTERRUPTED_EXIT, output[-2000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1].startswith("python -m pipelines.backfill: interrupted (Ctrl-C)"), output[-2000:]
    assert "Traceback" not in output
    assert not glob.glob(str(out / "**" / "beam-temp-*"), recursive=True)


def test_ctrl_c_that_a_library_wrapped_in_another_error_is_still_130(capsys):
    """Beam re-raises a KeyboardInterrupt inside a bundle as RuntimeError("KeyboardInterrupt [while running ...]")."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a shell's foreground job

    def run(argv):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as exc:
            raise RuntimeError("KeyboardInterrupt [while running 'ReadFiles/Read/EmitSource']") from exc

    def fails(argv):
        raise RuntimeError("a bug, with no Ctrl-C")

    try:
        assert guarded("python -m pipelines.backfill", run, []) == INTERRUPTED_EXIT
        assert capsys.readouterr().err.startswith("python -m pipelines.backfill: interrupted (Ctrl-C)")
        with pytest.raises(RuntimeError, match="a bug"):   # any other error keeps its traceback
            guarded("python -m pipelines.backfill", fails, [])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # put back as it was
    finally:
        signal.signal(signal.SIGINT, previous)
