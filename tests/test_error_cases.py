"""The mistakes a new user met outside the core batch jobs: each ends in one line and exit 2.

Each case was a traceback, a doubled prefix or a late refusal before; the test feeds the
same input through ``imagescore COMMAND`` in-process and checks the line and that
nothing was written.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.test_errors import RUNNER, cli, closed_port, error_line, write_jsonl

EIGHT_X_REFUSAL = {  # what an 8.x cluster answers a 9.x client (elastic/elasticsearch-py#2923)
    "error": {"root_cause": [{"type": "media_type_header_exception",
                              "reason": "Invalid media-type value on headers [Content-Type, Accept]"}],
              "type": "media_type_header_exception",
              "reason": "Invalid media-type value on headers [Content-Type, Accept]",
              "caused_by": {"type": "status_exception",
                            "reason": "Accept version must be either version 8 or 7, but found 9. "
                                      "Accept=application/vnd.elasticsearch+json; compatible-with=9"}},
    "status": 400}


@pytest.fixture
def eight_x_cluster():
    """A loopback server answering every request as an 8.x cluster answers a 9.x client."""

    class Handler(BaseHTTPRequestHandler):
        def _refuse(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = json.dumps(EIGHT_X_REFUSAL).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = _refuse

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_label_with_a_missing_quality_file_names_the_flag(tmp_path, capsys):
    windows = write_jsonl(tmp_path / "windows.jsonl", [{"serp_id": "s", "items": []}])
    code, err = cli(["label", "--windows", windows, "--output", str(tmp_path / "labels"), "--judge", "simulated",
                     "--quality", str(tmp_path / "missing.jsonl")], capsys)
    assert code == 2
    line = error_line(err, "label")
    assert "--quality" in line and "missing.jsonl" in line and "imagescore simulate" in line
    assert not (tmp_path / "labels").exists()


def test_evaluate_with_a_run_that_is_not_a_run_names_it(tmp_path, capsys):
    code, err = cli(["evaluate", "--windows", "w", "--labels", "l", "--embeddings", "e",
                     "--runs", str(tmp_path / "missing"), "--output", str(tmp_path / "eval")], capsys)
    assert code == 2
    line = error_line(err, "evaluate")
    assert "--runs" in line and "missing" in line and "imagescore train" in line
    assert not (tmp_path / "eval").exists()


def test_evaluate_with_a_ctr_glob_that_matches_nothing_names_it(tmp_path, capsys):
    pattern = str(tmp_path / "missing*.jsonl")
    code, err = cli(["evaluate", "--windows", "w", "--labels", "l", "--embeddings", "e", "--ctr", pattern], capsys)
    assert code == 2
    line = error_line(err, "evaluate")
    assert "--ctr" in line and pattern in line


@pytest.mark.parametrize("flag", ["--logs", "--scores"])
def test_rerank_eval_glob_that_matches_nothing_is_one_usage_line(flag, tmp_path, capsys):
    logs = write_jsonl(tmp_path / "logs.jsonl", [{"serp_id": "s", "items": [
        {"item_id": "a", "position": 1, "score": 1.0, "clicked": True}]}])
    args = {"--logs": logs, "--scores": logs, flag: str(tmp_path / "nomatch*.jsonl")}
    code, err = cli(["rerank-eval", "--logs", args["--logs"], "--scores", args["--scores"],
                     "--output", str(tmp_path / "rr")], capsys)
    assert code == 2
    line = error_line(err, "rerank-eval")
    assert f"{flag} " in line and "matches no files" in line
    assert line.count("imagescore rerank-eval") == 1


def test_rerank_eval_on_an_empty_log_file_says_it_is_empty(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = cli(["rerank-eval", "--logs", str(empty), "--scores", str(empty), "--output", str(tmp_path / "rr")],
                    capsys)
    assert code == 2
    line = error_line(err, "rerank-eval")
    assert "holds no SERPs" in line and "zero-size" not in line
    assert not (tmp_path / "rr").exists()


def test_ab_readout_error_has_the_prefix_once(tmp_path, capsys):
    code, err = cli(["ab-readout", "--input", str(tmp_path / "nothing.parquet"), "--control", "control",
                     "--output", str(tmp_path / "ab")], capsys)
    assert code == 2
    line = error_line(err, "ab-readout")
    assert line.count("imagescore ab-readout") == 1 and "nothing.parquet" in line


def test_query_against_nothing_listening_names_the_url(capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    code, err = cli(["query", "--match", "bag", "--es-url", url], capsys)
    assert code == 2
    line = error_line(err, "query")
    assert f"not reachable at {url}" in line and "--es-url" in line


def test_query_refused_by_the_cluster_is_one_line(es_url, capsys):
    code, err = cli(["query", "--match", "bag", "--es-url", es_url, "--es-index", "imagescore-query-missing"], capsys)
    # a real cluster answers 404 for the missing index; the double may refuse explain first: one line either way
    assert code == 2
    assert es_url in error_line(err, "query")


def test_query_takes_es_index_like_every_other_command(capsys):
    code, err = cli(["query", "--match", "bag", "--index", "items"], capsys)
    assert code == 2
    assert "unknown flag --index (did you mean --es-index?)" in error_line(err, "query")


def test_a_9x_client_against_an_8x_cluster_names_the_client_to_install(eight_x_cluster, tmp_path, capsys):
    items = write_jsonl(tmp_path / "items.jsonl", [{"id": "a", "image_urls": ["http://127.0.0.1:1/a.jpg"],
                                                   "created_at": "2026-11-19T00:00:00+00:00"}])
    code, err = cli(["backfill", "--source", "files", "--input", items, "--es-url", eight_x_cluster,
                     "--deadletter", str(tmp_path / "dead"), *RUNNER], capsys)
    assert code == 2
    line = error_line(err, "backfill")
    assert "pip install 'elasticsearch>=8.18,<9'" in line and "reindex" not in line
    code, err = cli(["query", "--match", "bag", "--es-url", eight_x_cluster], capsys)
    assert code == 2 and "pip install 'elasticsearch>=8.18,<9'" in error_line(err, "query")


def test_serve_triton_without_the_wheel_names_the_extra(tmp_path, capsys, monkeypatch):
    from scoring import triton_server
    repository = tmp_path / "repo" / "image_score"
    repository.mkdir(parents=True)
    (repository / "config.pbtxt").write_text('name: "image_score"\n')
    monkeypatch.setattr(triton_server, "distribution", lambda: None)
    code, err = cli(["serve-triton", "--repository", str(tmp_path / "repo")], capsys)
    assert code == 2
    assert "imagescore[triton]" in error_line(err, "serve-triton")


def test_serve_triton_without_a_repository_is_a_usage_line(tmp_path, capsys):
    code, err = cli(["serve-triton", "--repository", str(tmp_path / "missing")], capsys)
    assert code == 2
    assert "export-triton" in error_line(err, "serve-triton")


def test_demo_refuses_a_bad_model_before_drawing_the_catalog(tmp_path, capsys):
    code, err = cli(["demo", "--output", str(tmp_path / "demo"), "--model", "bogus"], capsys)
    assert code == 2
    assert "--model 'bogus'" in error_line(err, "demo")
    assert not (tmp_path / "demo").exists()


def test_stream_with_a_project_that_is_not_a_project_id_names_the_flag(capsys, monkeypatch):
    monkeypatch.setenv("ES_URL", f"http://127.0.0.1:{closed_port()}")
    code, err = cli(["stream", "--input-subscription", "projects/P/subscriptions/item-updates",
                     "--deadletter-topic", "projects/P/topics/dead"], capsys)
    assert code == 2
    line = error_line(err, "stream")
    assert "--input-subscription 'projects/P/subscriptions/item-updates'" in line and "project id" in line


def test_stream_with_a_subscription_that_does_not_exist_names_it(pubsub, es_url, es_index, capsys):
    from tests.fixtures.pubsub import unique
    _, (subscription,) = pubsub.create(unique("real"), unique("real-sub"))
    dead, _ = pubsub.create(unique("dead"))
    missing = subscription + "-missing"
    code, err = cli(["stream", "--input-subscription", missing, "--deadletter-topic", dead, "--es-url", es_url,
                     "--es-index", es_index], capsys)
    assert code == 2
    line = error_line(err, "stream")
    assert f"--input-subscription {missing!r} does not exist on the emulator at {pubsub.host}" in line
    code, err = cli(["stream", "--input-subscription", subscription, "--deadletter-topic", dead + "-missing",
                     "--es-url", es_url, "--es-index", es_index], capsys)
    assert code == 2 and "--deadletter-topic" in error_line(err, "stream")


def test_a_typo_of_a_required_flag_says_did_you_mean(tmp_path, capsys):
    code, err = cli(["label", "--windows", "w.jsonl", "--outptu", str(tmp_path / "labels")], capsys)
    assert code == 2
    assert "unknown flag --outptu (did you mean --output?)" in error_line(err, "label")


def test_a_negative_number_is_a_value_not_a_flag(capsys):
    code, err = cli(["query", "--match", "bag", "--w", "-0.5"], capsys)
    assert "unknown flag" not in err  # refused, if at all, for its value


def test_replay_without_pubsub_credentials_says_how_to_get_them(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))  # no ambient credentials
    code, err = cli(["replay", "--subscription", "projects/my-project/subscriptions/dead",
                     "--topic", "projects/my-project/topics/updates"], capsys)
    assert code == 2
    line = error_line(err, "replay")
    assert "imagescore emulator" in line and "gcloud auth application-default login" in line


def test_replay_of_a_subscription_that_does_not_exist_names_it(pubsub, capsys):
    from tests.fixtures.pubsub import unique
    topic, _ = pubsub.create(unique("replay-target"))
    missing = pubsub.subscription(unique("replay-missing"))
    code, err = cli(["replay", "--subscription", missing, "--topic", topic], capsys)
    assert code == 2
    assert f"--subscription {missing!r} does not exist" in error_line(err, "replay")


def test_monitor_against_nothing_listening_is_one_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    code, err = cli(["monitor", "--es-url", url, "--es-index", "items", "--output", str(tmp_path / "m")], capsys)
    assert code == 2
    assert f"not reachable at {url}" in error_line(err, "monitor")
    assert "WARNING" not in err


def test_demo_with_elasticsearch_not_listening_refuses_before_the_catalog(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    code, err = cli(["demo", "--output", str(tmp_path / "demo"), "--es-url", url], capsys)
    assert code == 2
    assert f"not reachable at {url}" in error_line(err, "demo")
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("command, argv, flag", [
    ("export-triton", ["--model", "{missing}", "--repository", "{out}"], "--model"),
    ("query", ["--base-query", "{missing}"], "--base-query"),
    ("replay", ["--files", "{missing}*.jsonl", "--output", "{out}/retry.jsonl"], "--files"),
])
def test_a_missing_input_is_one_line_naming_its_flag(command, argv, flag, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    code, err = cli([command, *[a.format(missing=missing, out=tmp_path / "out") for a in argv]], capsys)
    assert code == 2
    line = error_line(err, command)
    assert flag in line and missing in line
    assert not (tmp_path / "out").exists()
