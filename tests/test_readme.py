"""The README's walkthrough runs exactly as written, so the README and the code cannot drift apart.

Blocks to run are the fenced code blocks right after a ``<!-- test: run -->``
comment (invisible on GitHub). They run verbatim, in README order, in one
``bash -euo pipefail`` inside an empty temporary directory, with this
checkout's ``imagescore`` on PATH as ``source .venv/bin/activate`` would put it.
The markdown is parsed with markdown-it-py (CommonMark), not with regular expressions.
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = "<!-- test: run -->"


def runnable_blocks(markdown: str) -> list[str]:
    """The code of every fenced block that directly follows the marker comment, in order."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    blocks = []
    for before, token in zip(tokens, tokens[1:]):
        if token.type == "fence" and before.type == "html_block" and before.content.strip() == MARKER:
            blocks.append(token.content)
    return blocks


def test_the_marker_selects_exactly_the_marked_fences():
    text = f"```bash\nnot me\n```\n\n{MARKER}\n```bash\necho one\n```\n\nprose\n\n```bash\nnot me either\n```\n"
    assert runnable_blocks(text) == ["echo one\n"]


def test_the_readme_marks_one_walkthrough_that_covers_every_model_side_step():
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1
    commands = [line.split()[1] for line in blocks[0].splitlines() if line.startswith("imagescore ")]
    assert commands == ["simulate", "collect", "label", "analyze", "embed", "train", "evaluate", "backfill"]
    assert "..." not in blocks[0] and "api.openai.com" not in blocks[0]  # no placeholders, nothing hosted


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_readme_walkthrough_runs_as_written(tmp_path):
    script = "\n".join(runnable_blocks(README.read_text(encoding="utf-8")))
    bin_dir = os.path.dirname(sys.executable)  # the venv's bin, where `imagescore` is installed
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("ES_URL", None)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1400)
    assert proc.returncode == 0, f"the README walkthrough failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    w = tmp_path / "walkthrough"
    for path in ("report/report.md", "eval/evaluation.md", "eval/samples.html", "run/checkpoint.pt"):
        assert (w / path).is_file(), path
    scores = [json.loads(line) for path in glob.glob(str(w / "scores" / "scores*.jsonl"))
              for line in open(path, encoding="utf-8") if line.strip()]
    items = (w / "world" / "items.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(scores) == len(items)  # every simulated listing scored by the trained model
    assert all(s["image_score_model"].startswith("handcrafted-mlp:run@") and 0 <= s["image_score"] <= 1
               for s in scores)


def readme_commands() -> list[list[str]]:
    """Every ``imagescore COMMAND ...`` line of every README code block (continuations joined), as words."""
    import shlex
    commands = []
    for token in MarkdownIt("commonmark").parse(README.read_text(encoding="utf-8")):
        if token.type != "fence":
            continue
        for line in token.content.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" #", 1)[0].strip())
            if words[:1] == ["imagescore"] or words[:1] == [".venv/bin/imagescore"]:
                commands.append(words[1:])
    return commands


def test_every_flag_in_the_readme_is_one_its_command_takes(capsys):
    import imagescore
    commands = readme_commands()
    assert {c[0] for c in commands} >= {"simulate", "collect", "label", "analyze", "embed", "train", "evaluate",
                                        "backfill", "demo", "export-triton"}
    for command, *args in commands:
        try:
            imagescore.main([command, "--help"])
        except SystemExit:
            pass
        help_text = capsys.readouterr().out
        for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), \
                f"README: `imagescore {command}` does not take {flag}"
