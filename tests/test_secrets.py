"""Every secret form goes through the one scrubber (es/secrets.py), and every job's error path uses it.

Each test plants secrets where a careless server, client or operator would put
them (an echoed Authorization header, a URL with user:pass, ?api_key=, the
environment), drives one real error path, and asserts that none of the secret
strings reaches an exception, a log record, stdout/stderr or a dead letter.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import traceback
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from PIL import Image

import imagescore
from es.client import EsError, make_client
from es.client import _credentials as es_credentials
from es.mapping import ensure_score_mapping
from es.secrets import LLM_API_KEY_ENVS, SECRET_ENV_VARS, install_log_scrubber, scrub
from labeling.client import ChatClient, api_key_from_env
from tests.chat_double import Reply
from transforms.deadletter import DEAD_LETTER, Rejected, dead_letter
from transforms.deadletter_topic import to_message
from transforms.fetch import FetchPolicy, _FetchBatchFn
from transforms.items import Item

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ES_KEY = "ZXNrZXktaWQ6ZXNrZXktc2VjcmV0LTQxOQ=="
ES_USER = "indexer-bot-77"
ES_PASS = "es-pw-5be1d0c9"
LLM_KEY = "sk-llm-8f3a1c0e9d2b"
OPENAI_KEY = "sk-openai-51d7e2aa90"
URL_PASS = "url-pw-c0ffee42"
QUERY_KEY = "qk-0a1b2c3d4e"
HEADER_TOKEN = "tok.e30.Zm9vYmFy-77"
ENV_SECRETS = (ES_KEY, ES_USER, ES_PASS, LLM_KEY, OPENAI_KEY)
SECRETS = (*ENV_SECRETS, URL_PASS, QUERY_KEY, HEADER_TOKEN)


@pytest.fixture
def secret_env(monkeypatch):
    for name, value in (("ES_API_KEY", ES_KEY), ("ES_USERNAME", ES_USER), ("ES_PASSWORD", ES_PASS),
                        ("LLM_API_KEY", LLM_KEY), ("OPENAI_API_KEY", OPENAI_KEY)):
        monkeypatch.setenv(name, value)


@pytest.fixture
def logs(caplog):
    install_log_scrubber()
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_clean(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret leaked: ...{text[max(0, text.find(secret) - 80):][:200]}"


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + repr(exc)


# --- scrub itself -----------------------------------------------------------------

SECRET_FORMS = {
    "ES API key from the environment": (f"refused [{ES_KEY}]", "<ES_API_KEY redacted>"),
    "ES password from the environment": (f"password {ES_PASS} rejected", "<ES_PASSWORD redacted>"),
    "ES username from the environment": (f"user {ES_USER} unknown", "<ES_USERNAME redacted>"),
    "LLM key from the environment": (f"Incorrect API key provided: {LLM_KEY}.", "<LLM_API_KEY redacted>"),
    "OpenAI key from the environment": (f"key {OPENAI_KEY} revoked", "<OPENAI_API_KEY redacted>"),
    "ES basic auth, encoded": ("Basic " + base64.b64encode(f"{ES_USER}:{ES_PASS}".encode()).decode(),
                               "<ES_USERNAME:ES_PASSWORD redacted>"),
    "a percent-encoded key in a URL": (f"/x?k={quote(ES_KEY, safe='')}", "<ES_API_KEY redacted>"),
    "ApiKey authorization": (f"Authorization: ApiKey {HEADER_TOKEN}", "ApiKey <redacted>"),
    "Bearer authorization": (f"header [Bearer {HEADER_TOKEN}]", "Bearer <redacted>"),
    "Basic authorization": (f"basic {HEADER_TOKEN}", "basic <redacted>"),
    "user:pass in a URL": (f"cannot reach https://elastic:{URL_PASS}@es.example.com:9200/", "https://<redacted>@es"),
    "a token as the URL's user": (f"http://{URL_PASS}@git.example.com/repo", "http://<redacted>@git"),
    "a password holding @": (f"https://u:{URL_PASS}@x@host/p", "https://<redacted>@host/p"),
    "?api_key=": (f"https://cdn.example.com/a.jpg?api_key={QUERY_KEY}&w=640", "api_key=<redacted>&w=640"),
    "&token=": (f"https://cdn.example.com/a.jpg?w=1&token={QUERY_KEY}#top", "token=<redacted>#top"),
    "a signed URL": (f"https://s3.example.com/a.jpg?X-Amz-Signature={QUERY_KEY}", "X-Amz-Signature=<redacted>"),
    "NAME=value": (f"env: OPENAI_API_KEY={QUERY_KEY} PATH=/bin", "OPENAI_API_KEY=<redacted> PATH=/bin"),
    "password=": (f"login(password='{QUERY_KEY}')", "password='<redacted>"),
    "JSON authorization": (f'{{"authorization": "Bearer {HEADER_TOKEN}", "n": 1}}', '"authorization": "<redacted>"'),
    "dict api key": (f"{{'x-api-key': '{QUERY_KEY}'}}", "'x-api-key': '<redacted>'"),
}


@pytest.mark.parametrize("text,shown", SECRET_FORMS.values(), ids=SECRET_FORMS.keys())
def test_scrub_removes_every_secret_form(secret_env, text, shown):
    cleaned = scrub(text)
    assert_clean(cleaned)
    if shown is not None:
        assert shown in cleaned, cleaned


@pytest.mark.parametrize("text", [
    "Basic authentication is disabled; Bearer Token expected",
    'WWW-Authenticate: Basic realm="security" charset="UTF-8", ApiKey',
    "set both ES_USERNAME and ES_PASSWORD, or ES_API_KEY",
    "usage: prompt_tokens=5 completion_tokens=3 max_tokens: 300",
    "see https://example.com/@shop and mail a@b.com",
    "https://cdn.example.com/a.jpg?w=640&h=480",
])
def test_scrub_leaves_text_without_secrets_alone(secret_env, text):
    assert scrub(text) == text


def test_the_keys_the_jobs_read_are_the_keys_scrub_removes(monkeypatch):
    """The LLM judge and the ES client read their keys from the names scrub knows, whichever is set."""
    for name in SECRET_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in LLM_API_KEY_ENVS:
        monkeypatch.setenv(name, LLM_KEY)
        assert api_key_from_env() == LLM_KEY and scrub(LLM_KEY) == f"<{name} redacted>"
        monkeypatch.delenv(name)
    monkeypatch.setenv("ES_API_KEY", ES_KEY)
    assert scrub(str(es_credentials())) == "{'api_key': '<ES_API_KEY redacted>'}"
    monkeypatch.delenv("ES_API_KEY")
    monkeypatch.setenv("ES_USERNAME", ES_USER)
    monkeypatch.setenv("ES_PASSWORD", ES_PASS)
    assert_clean(scrub(str(es_credentials())))


def test_short_values_are_not_treated_as_secrets(monkeypatch):
    monkeypatch.setenv("ES_PASSWORD", "abc")
    assert scrub("abc def") == "abc def"


def test_every_log_record_is_scrubbed_message_and_traceback(secret_env, logs):
    log = logging.getLogger("imagescore.test_secrets")
    log.warning("connecting to %s with %s", f"https://u:{URL_PASS}@h/", f"Bearer {HEADER_TOKEN}")
    try:
        raise RuntimeError(f"server said: key {LLM_KEY} is wrong")
    except RuntimeError:
        log.exception("request failed")
    assert "request failed" in logs.text and "<LLM_API_KEY redacted>" in logs.text
    assert_clean(logs.text)


# --- each job's error paths ---------------------------------------------------------

def test_fetch_dead_letters_carry_no_url_credentials(secret_env, image_server, logs):
    """The fetch stage (backfill, streaming analyzer, embed, labeling) on URLs with user:pass and ?api_key=."""
    missing = image_server.route("gone.jpg", status=404).replace("http://", f"http://seller:{URL_PASS}@")
    blocked = f"http://seller:{URL_PASS}@10.0.0.1/p.jpg?token={QUERY_KEY}"
    items = [Item(id=name, image_urls=(url,), created_at=datetime.now(UTC),
                  payload=json.dumps({"id": name, "image_urls": [url]}))
             for name, url in (("missing", f"{missing}?api_key={QUERY_KEY}"), ("blocked", blocked))]
    fn = _FetchBatchFn(FetchPolicy(allowed_hosts=image_server.host_port, retries=0), "fetch")
    fn.setup()
    try:
        outputs = list(fn.process(items))
    finally:
        fn.teardown()
    assert [o.tag for o in outputs] == [DEAD_LETTER, DEAD_LETTER]
    letters = [o.value for o in outputs]
    assert [(d["id"], d["reason"]) for d in letters] == [("missing", "http_404"), ("blocked", "blocked_address")]
    for letter, item in zip(letters, items):
        assert "<redacted>" in letter["error"], letter["error"]
        assert_clean(json.dumps({k: v for k, v in letter.items() if k != "payload"}), logs.text)
        # The payload is the input exactly as it came, so that the letter can be replayed.
        assert letter["payload"] == item.payload
        assert_clean(to_message({k: v for k, v in letter.items() if k != "payload"}).attributes["error"])


def test_dead_letter_topic_attributes_are_scrubbed(secret_env):
    """A record built elsewhere still cannot put a secret into a Pub/Sub attribute."""
    message = to_message({"stage": "feeder", "reason": "es_401", "payload": "{}",
                          "error": f"refused [ApiKey {ES_KEY}] at https://u:{URL_PASS}@es:9200"})
    assert_clean(*message.attributes.values())


def test_es_client_errors_carry_no_api_key(secret_env, monkeypatch, es_double, es_config, logs, capsys):
    """The ES client's error path: a 401 whose reason echoes the ApiKey header, at DEBUG logging."""
    monkeypatch.delenv("ES_USERNAME")
    monkeypatch.delenv("ES_PASSWORD")
    es_double.require_auth(api_key="the-real-key", echo_credentials=True)
    client = make_client(es_config)
    try:
        with pytest.raises(EsError) as caught:
            ensure_score_mapping(client, "items")
    finally:
        client.close()
    assert caught.value.status == 401 and "<ES_API_KEY redacted>" in str(caught.value)
    letter = dead_letter("index", "es_401", caught.value, {"id": "a"}, id="a")
    out = capsys.readouterr()
    assert_clean(exception_text(caught.value), json.dumps(letter), logs.text, out.out, out.err)


def _one_image_messages() -> list[dict]:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, format="JPEG")
    data_url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return [{"role": "user", "content": [{"type": "text", "text": "Score the image."},
                                         {"type": "text", "text": "Image 1"},
                                         {"type": "image_url", "image_url": {"url": data_url}}]}]


def test_llm_client_errors_carry_no_key(secret_env, chat_double, logs, capsys):
    """The label job's client: a 401 echoing the key, from an endpoint given with user:pass."""
    chat_double.script = [Reply(401, {"error": {
        "message": f"Incorrect API key provided: {LLM_KEY}. Got Authorization: Bearer {LLM_KEY}",
        "type": "invalid_request_error", "code": "invalid_api_key"}})]
    base_url = chat_double.url.replace("http://", f"http://judge:{URL_PASS}@")
    client = ChatClient(base_url, "test-vlm", retries=0)
    try:
        with pytest.raises(Rejected) as caught:
            client.complete(_one_image_messages())
    finally:
        client.close()
    assert caught.value.reason == "llm_http_401"
    assert "<LLM_API_KEY redacted>" in str(caught.value) and "http://<redacted>@127.0.0.1" in str(caught.value)
    letter = dead_letter("label", caught.value.reason, caught.value, {"serp_id": "s"})
    out = capsys.readouterr()
    assert_clean(exception_text(caught.value), json.dumps(letter), logs.text, out.out, out.err)


def test_llm_connection_errors_carry_no_url_credentials(secret_env, logs):
    client = ChatClient(f"http://judge:{URL_PASS}@127.0.0.1:9/v1", "test-vlm", retries=0, timeout=5)
    try:
        with pytest.raises(Rejected) as caught:
            client.complete(_one_image_messages())
    finally:
        client.close()
    assert caught.value.reason in ("llm_connection_error", "llm_timeout")
    assert_clean(exception_text(caught.value), logs.text)


def test_backfill_and_stream_usage_errors_carry_no_es_url_credentials(secret_env, tmp_path, capsys):
    es_url = f"https://elastic:{URL_PASS}@es.example.com:9200"
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a"}\n', encoding="utf-8")
    backfill = ["backfill", "--es-url", es_url, "--input", str(items), "--deadletter", str(tmp_path / "dl")]
    stream = ["stream", "--es-url", es_url, "--input-topic", "projects/my-project/topics/t",
              "--deadletter-topic", "projects/my-project/topics/d"]
    for argv in (backfill, stream):
        assert imagescore.main(argv) == imagescore.USAGE_EXIT
        out = capsys.readouterr()
        assert "must not contain credentials" in out.err and "ES_API_KEY" in out.err
        assert_clean(out.out, out.err)


def test_backfill_cli_with_credentials_in_es_url_env(secret_env, tmp_path):
    """The console script, with the URL (user:pass) in $ES_URL: one line, exit 2, no secret anywhere."""
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a"}\n', encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=ROOT, ES_URL=f"https://elastic:{URL_PASS}@es.example.com:9200")
    done = subprocess.run([sys.executable, "-m", "imagescore", "backfill", "--input", str(items),
                           "--deadletter", str(tmp_path / "dl")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == imagescore.USAGE_EXIT, done.stderr
    assert done.stderr.count("\n") == 1 and "must not contain credentials" in done.stderr
    assert_clean(done.stdout, done.stderr)


def test_stream_demo_shows_a_credentialed_es_url_without_its_credentials():
    from pipelines.stream_demo import services_line

    line = services_line("127.0.0.1:8085", "https://elastic:hunter2@es.example:9243", "handcrafted")
    assert "hunter2" not in line and "elastic:" not in line and "es.example:9243" in line
