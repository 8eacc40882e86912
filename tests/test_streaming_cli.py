"""The streaming job's command line: refused flag combinations, Ctrl-C/SIGTERM, and replay from backfill files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import replay, streaming
from tests.fixtures.pubsub import unique

ROOT = Path(__file__).resolve().parents[1]
SUB = "projects/p/subscriptions/s"
DLQ = "projects/p/topics/dead"


@pytest.mark.parametrize("argv, message", [
    ([], "exactly one of --input-subscription"),
    (["--input-subscription", SUB, "--input-topic", "projects/p/topics/t", "--deadletter-topic", DLQ],
     "exactly one of --input-subscription"),
    (["--input-subscription", SUB], "--deadletter-topic projects/P/topics/T is required"),
    (["--input-subscription", SUB, "--deadletter-topic", DLQ, "--stage", "aggregator"], "needs --output-topic"),
    (["--input-subscription", SUB, "--deadletter-topic", DLQ, "--output-topic", DLQ], "only for --stage"),
    (["--input-subscription", SUB, "--deadletter-topic", DLQ, "--es-url", "http://127.0.0.1:9",
      "--id-attribute", "uid"], "--id-attribute is not supported on the local runner"),
    (["--input-subscription", SUB, "--deadletter-topic", DLQ, "--es-url", "http://127.0.0.1:9",
      "--aggregate-seconds", "-1"], "must not be negative"),
    (["--input-subscription", SUB, "--deadletter-topic", DLQ, "--es-url", "http://127.0.0.1:9",
      "--model-unavailable-seconds", "-1"], "must not be negative"),
    (["--input-subscription", SUB, "--deadletter-topic", DLQ, "--es-url", "http://127.0.0.1:9",
      "--es-max-buffer-seconds", "0"], "--es-max-buffer-seconds must be positive"),
])
def test_refused_flags_name_the_problem(argv, message, monkeypatch):
    monkeypatch.delenv("ES_URL", raising=False)
    opts = streaming.prepare(argv)
    with pytest.raises(SystemExit, match=message):
        streaming.build(beam.Pipeline(options=opts), opts)


def test_local_runner_is_chosen_explicitly():
    opts = streaming.prepare(["--input-subscription", SUB])
    assert opts.get_all_options()["runner"] == "BundleBasedDirectRunner" and opts.get_all_options()["streaming"]
    dataflow = PipelineOptions(["--runner", "DataflowRunner"])
    assert not streaming.is_local(dataflow)


def test_sigterm_stops_a_local_run_and_prints_the_counters(pubsub, es_url):
    topic, (subscription,) = pubsub.create(unique("idle"), unique("idle-job"))
    dead, _ = pubsub.create(unique("idle-dead"))
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub.host, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.streaming", "--input-subscription", subscription,
         "--deadletter-topic", dead, "--es-url", es_url, "--es-index", unique("idle-index")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(12)   # started and pulling an empty topic
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    assert "stopping (Ctrl-C / SIGTERM)" in output and "== stream: counters ==" in output
    assert "0 read, 0 accounted for" in output


def test_replay_backfill_dead_letters_to_a_file(tmp_path, capsys):
    letters = [
        {"id": "a", "stage": "fetch", "reason": "http_503", "error": "e", "payload": '{"id": "a"}'},
        {"id": None, "stage": "parse", "reason": "bad_encoding", "error": "e", "payload": "/w==",
         "payload_encoding": "base64"},
        {"id": "c", "stage": "fetch", "reason": "http_404", "error": "e", "payload": '{"id": "c"}'},
    ]
    (tmp_path / "deadletter-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in letters))
    out = tmp_path / "retry.jsonl"
    assert replay.run(["--files", str(tmp_path / "deadletter*.jsonl"), "--output", str(out),
                       "--reason", "http_503", "--reason", "bad_encoding"]) == 0
    assert out.read_bytes() == b'{"id": "a"}\n\xff\n'
    assert "replayed 2, skipped 1" in capsys.readouterr().out
    assert replay.run(["--files", str(tmp_path / "deadletter*.jsonl"), "--dry-run"]) == 0
    assert "would replay 3" in capsys.readouterr().out


def test_replay_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(SystemExit, match="no files match"):
        replay.run(["--files", str(tmp_path / "none*.jsonl"), "--output", str(tmp_path / "x.jsonl")])
    (tmp_path / "deadletter-bad.jsonl").write_text("not json\n")
    with pytest.raises(SystemExit, match="deadletter-bad.jsonl:1 is not a dead-letter record"):
        replay.run(["--files", str(tmp_path / "deadletter*.jsonl"), "--output", str(tmp_path / "x.jsonl")])
    with pytest.raises(SystemExit, match="needs --topic"):
        replay.run(["--subscription", SUB])
