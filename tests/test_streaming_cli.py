"""The streaming job's command line: refused flag combinations, SIGTERM/Ctrl-C drains, and replay from backfill files."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import replay, streaming
from pipelines.local_runner import accounted
from tests.fixtures.pubsub import unique

ROOT = Path(__file__).resolve().parents[1]
SUB = "projects/my-project/subscriptions/s"
DLQ = "projects/my-project/topics/dead"


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


class Cli:
    """``python -m pipelines.streaming`` as a child process, its output read line by line as it comes."""

    def __init__(self, argv: list[str], emulator_host: str):
        env = {**os.environ, "PUBSUB_EMULATOR_HOST": emulator_host, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "pipelines.streaming", *argv], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        # Ctrl-C as in a shell's foreground job (a runner's worker may ignore it)
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for_line(self, pattern: str, timeout: float = 180.0) -> re.Match:
        """The first output line matching ``pattern`` (the job's readiness signal), or fail with the output."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline and (self.process.poll() is None or seen < len(self.lines)):
            for line in self.lines[seen:]:
                seen += 1
                found = re.search(pattern, line)
                if found:
                    return found
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"no line matching {pattern!r}; output:\n{self.output()[-3000:]}")

    def finish(self, timeout: float = 180.0) -> tuple[int, str]:
        try:
            self.process.wait(timeout)
        finally:
            self.stop()
        self._reader.join(10)
        return self.process.returncode, self.output()

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


PROGRESS = r"^read (\d+)  scored \d+"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_an_idle_local_run_and_prints_the_counters(pubsub, es_url, sig):
    topic, (subscription,) = pubsub.create(unique("idle"), unique("idle-job"))
    dead, _ = pubsub.create(unique("idle-dead"))
    cli = Cli(["--input-subscription", subscription, "--deadletter-topic", dead, "--es-url", es_url,
               "--es-index", unique("idle-index")], pubsub.host)
    cli.wait_for_line(PROGRESS)   # started: the monitor prints its first progress line
    cli.process.send_signal(sig)
    code, output = cli.finish()
    assert code == 0, output[-3000:]
    assert f"stream: {sig.name}: draining: no more pulls" in output and "stream: drained after" in output
    assert "== stream: counters ==" in output and "0 read, 0 accounted for\n" in output


def test_sigterm_mid_backlog_drains_then_a_restart_indexes_the_rest_exactly_once(
        pubsub, es_url, es_index, es_client, image_server):
    """SIGTERM while a backlog is being read: the job stops pulling, finishes what it read and exits 0 with
    every message read accounted for; a restart reads the rest. Each message is indexed or dead-lettered once."""
    from tests.fixtures.pubsub import publish, pull_all
    from tests.test_streaming_e2e import V, jpeg, record

    topic, (subscription,) = pubsub.create(unique("backlog"), unique("backlog-job"))
    dead, (check,) = pubsub.create(unique("backlog-dead"), unique("backlog-check"))
    url = image_server.route("/b.jpg", body=jpeg((120, 60, 200), 50), content_type="image/jpeg")
    good = [f"item{n:03d}" for n in range(150)]
    bad = [f'{{"id": "bad{n:02d}", "image_urls": ['.encode() for n in range(10)]   # malformed JSON
    payloads = [record(item_id, V[1], url) for item_id in good] + bad
    publish(pubsub, topic, payloads)
    argv = ["--input-subscription", subscription, "--deadletter-topic", dead, "--es-url", es_url,
            "--es-index", es_index, "--allow-image-hosts", image_server.host_port, "--aggregate-seconds", "1",
            "--es-max-buffer-seconds", "0.5"]
    cli = Cli(argv, pubsub.host)
    cli.wait_for_line(r"^read [1-9]\d*  ")   # reading has begun
    cli.process.send_signal(signal.SIGTERM)
    code, output = cli.finish()
    assert code == 0, output[-3000:]
    first = re.search(r"stream: (\d+) read, (\d+) accounted for\n", output)
    assert first and first[1] == first[2], output[-3000:]
    drained = int(first[1])
    assert 0 < drained < len(payloads), f"the signal did not land mid-backlog: {drained} read"

    _, job = streaming.launch(argv)
    try:
        rest = job.wait(stop=lambda t: accounted(t) >= len(payloads) - drained, max_seconds=240, every=0.5)
        letters = pull_all(pubsub, check, len(bad))
    finally:
        rest = job.drain(60)
    assert rest["messages_read"] == rest["messages_pulled"] == accounted(rest) == len(payloads) - drained
    es_client.indices.refresh(index=es_index)
    assert es_client.count(index=es_index)["count"] == len(good)
    found = es_client.mget(index=es_index, ids=good)["docs"]
    assert all(doc["found"] and doc["_source"]["updated_at"] == V[1] for doc in found)
    assert sorted(m.data for m in letters) == sorted(bad)   # each bad message dead-lettered exactly once
    assert pull_all(pubsub, check, 1, timeout_s=3) == []


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
