"""``imagescore emulator``: the local recipe for running ``stream`` and ``replay`` on your own messages."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.pubsub_emulator import _free_port, gcloud_path, subscriber_client
from tests.fixtures.tools import missing_tool
from tests.test_errors import cli, error_line

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def emulator_command(tmp_path):
    """``imagescore emulator`` running in its own process group; yields (process, host, printed lines)."""
    if gcloud_path() is None:
        missing_tool("gcloud (Pub/Sub emulator)", "install the Google Cloud SDK with its pubsub-emulator component")
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "pipelines.pubsub_emulator", "--port", str(port)], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"},
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               # Ctrl-C as in a shell's foreground job: a test runner's worker may ignore SIGINT,
                               # and an ignored SIGINT is inherited
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # readiness: the line that says how to stop it comes last
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops the emulator"):
                break
        assert lines and lines[-1].startswith("Ctrl-C"), "".join(lines)
        yield process, f"127.0.0.1:{port}", lines
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def test_it_creates_the_topics_publishes_your_lines_and_stops_on_ctrl_c(emulator_command, tmp_path, monkeypatch,
                                                                        capsys):
    process, host, lines = emulator_command
    text = "".join(lines)
    assert f"export PUBSUB_EMULATOR_HOST={host}" in text and "imagescore stream --input-subscription" in text
    messages = [json.dumps({"id": f"m{i}", "updated_at": "2026-12-01T00:00:00Z"}) for i in range(3)]
    path = tmp_path / "updates.jsonl"
    path.write_text("\n".join(messages[:2]) + "\n\n" + messages[2] + "\n")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
    code, _ = cli(["emulator", "--publish", str(path)], capsys)
    assert code == 0

    subscriber = subscriber_client()
    try:
        got, deadline = [], time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            response = subscriber.pull(subscription="projects/imagescore-local/subscriptions/item-updates",
                                       max_messages=10, timeout=5)
            got += [m.message.data.decode() for m in response.received_messages]
            if response.received_messages:
                subscriber.acknowledge(subscription="projects/imagescore-local/subscriptions/item-updates",
                                       ack_ids=[m.ack_id for m in response.received_messages])
    finally:
        subscriber.close()
    assert sorted(got) == sorted(messages)  # every line, byte for byte; the blank one is not a message

    os.killpg(process.pid, signal.SIGINT)
    try:
        code = process.wait(60)
    except subprocess.TimeoutExpired:   # say where it hangs: faulthandler prints every thread's stack on SIGABRT
        process.send_signal(signal.SIGABRT)
        process.wait(30)
        pytest.fail(f"imagescore emulator did not stop within 60 s of Ctrl-C; its output:\n{process.stdout.read()}")
    assert code == 0
    assert "stopped" in process.stdout.read()
    with pytest.raises(ProcessLookupError):  # the gcloud wrapper's Java child went with it
        os.killpg(process.pid, 0)


def test_publish_without_an_emulator_says_how_to_start_one(tmp_path, monkeypatch, capsys):
    path = tmp_path / "updates.jsonl"
    path.write_text('{"id": "a"}\n')
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{_free_port()}")
    code, err = cli(["emulator", "--publish", str(path)], capsys)
    assert code == 2
    assert "imagescore emulator" in error_line(err, "emulator")


def test_publish_of_a_missing_file_names_it(tmp_path, capsys):
    code, err = cli(["emulator", "--publish", str(tmp_path / "missing.jsonl")], capsys)
    assert code == 2
    assert "missing.jsonl" in error_line(err, "emulator")
