"""The console script: every subcommand answers --help with its flags; an unknown one is a usage error."""
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import imagescore
from cli_common import plain_text, setup_logging
from pipelines.local_runner import LOCAL_BATCH_RUNNER

ROOT = Path(__file__).resolve().parent.parent

FLAGS = {"demo": "--output", "backfill": "--deadletter", "collect": "--logs", "label": "--judge",
         "analyze": "--labels", "simulate": "--quality-effect", "embed": "--backbone", "train": "--grid",
         "evaluate": "--runs", "export-triton": "--repository", "query": "--formula", "rerank-eval": "--scores",
         "ab-readout": "--control", "simulate-ab": "--srm-loss", "monitor": "--psi-alert",
         "stream": "--deadletter-topic", "stream-demo": "--triton", "replay": "--subscription", "serve-triton": "--grpc-port", "emulator": "--publish"}


def test_every_command_is_covered():
    assert set(FLAGS) == set(imagescore.COMMANDS)


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_lists_the_commands_flags(command, capsys):
    try:
        code = imagescore.main([command, "--help"])
    except SystemExit as exc:  # argparse-based commands exit after printing help
        code = exc.code
    assert code == 0
    assert FLAGS[command] in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    assert imagescore.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert imagescore.main([]) == 0 and "commands:" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_shows_defaults(command, capsys):
    try:
        imagescore.main([command, "--help"])
    except SystemExit:
        pass
    assert "(default: " in capsys.readouterr().out


# ---------------------------------------------------------------- help: fast and plain; logging: quiet unless -v

HEAVY = ("apache_beam", "torch", "transformers", "elasticsearch", "matplotlib", "scipy", "tea_tasting", "pyarrow",
         "google.cloud.pubsub_v1", "openai", "nltk", "tritonclient")


def test_every_help_imports_no_heavy_library():
    """What makes --help take seconds is importing these; bench/bench_cli_help.py times it."""
    script = (
        "import contextlib, io, sys, imagescore\n"
        "for name in [None, *imagescore.COMMANDS]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            imagescore.main(['--help'] if name is None else [name, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"--help imported {proc.stdout.strip()}"


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_has_no_docstring_markup(command, capsys):
    try:
        imagescore.main([command, "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert "``" not in out and not re.search(r":[a-z]+:`", out), out
    assert "-v, --verbose" in out


def test_plain_text_drops_rest_roles():
    assert plain_text("``imagescore demo``: see :mod:`pipelines.catalog` and :func:`~scoring.model.load_model`, "
                      ":ref:`the table <layout>`") == \
        "imagescore demo: see pipelines.catalog and load_model, the table"


@pytest.mark.parametrize("verbose", [False, True])
def test_python_m_job_is_quiet_unless_verbose(verbose, tmp_path):
    """Beam logs dozens of INFO lines per local run; -v shows them, the default does not."""
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "a", "image_urls": ["ftp://example.com/a.jpg"],
                                 "created_at": "2026-11-19T12:00:00+00:00"}) + "\n")
    argv = [sys.executable, "-m", "pipelines.backfill", "--source", "files", "--input", str(items),
            "--output", str(tmp_path / "out"), "--now", "2026-11-20T12:00:00+00:00", "--runner", LOCAL_BATCH_RUNNER]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv + (["-v"] if verbose else []), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # the one record is dead-lettered: the run itself is what is checked
    assert "dead-lettered 1 (fetch_blocked_scheme 1)" in proc.stdout
    info = [line for line in proc.stderr.splitlines() if line.startswith("INFO ")]
    assert (len(info) > 5) if verbose else not info, proc.stderr


def test_setup_logging_only_changes_the_level_when_called_again():
    root = logging.getLogger()
    level = root.level
    try:
        setup_logging(verbose=True)
        setup_logging(verbose=False)
        handlers = [h for h in root.handlers if type(h).__name__ == "_StderrHandler"]
        assert len(handlers) == 1 and root.level == logging.WARNING
    finally:
        root.handlers = [h for h in root.handlers if type(h).__name__ != "_StderrHandler"]
        root.setLevel(level)


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_every_command_names_a_flag_typo_with_did_you_mean(command, capsys):
    """The error matrix's flag-typo column (docs/errors.md): a known flag with its last letter doubled."""
    typo = FLAGS[command] + FLAGS[command][-1]
    code = imagescore.main([command, typo, "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"unknown flag {typo} (did you mean {FLAGS[command]}?)" in err, err
