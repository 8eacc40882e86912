"""Secrets from the environment never show up in output, logs, failed records or exceptions.

The double is told to echo the offered credentials in its error reasons, like a careless
proxy might, so these tests prove that our side scrubs them rather than relying on the
server's discretion.
"""
from __future__ import annotations

import logging
import pickle
import socket
import traceback

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from es.bulk_writer import WriteToElasticsearch, write_batch
from es.client import EsConfig, EsError, make_client
from es.source import ReadItemsFromElasticsearch
from pipelines.local_runner import local_runner

API_KEY = "sk-fake-api-key-7c1e9b22"
USERNAME = "scorer-bot-31f0"
PASSWORD = "pw-fake-9d2e77aa"
SECRETS = (API_KEY, USERNAME, PASSWORD)
FAST = {"max_retries": 1, "initial_backoff": 0.01, "max_backoff": 0.02, "max_retry_time": 5.0}


def _score(doc_id: str, scored_at="2025-06-01T00:00:00Z") -> dict:
    return {"id": doc_id, "updated_at": "2025-05-01T00:00:00Z", "image_score": 0.5, "image_score_model": "m-v1",
            "image_scored_at": scored_at, "image_score_image_url": f"http://img.test/{doc_id}.jpg"}


def _assert_clean(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret leaked: ...{text[max(0, text.find(secret) - 80):][:200]}"


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + repr(exc)


@pytest.fixture
def api_key_env(monkeypatch):
    monkeypatch.setenv("ES_API_KEY", API_KEY)
    monkeypatch.delenv("ES_USERNAME", raising=False)
    monkeypatch.delenv("ES_PASSWORD", raising=False)


@pytest.fixture
def basic_env(monkeypatch):
    monkeypatch.delenv("ES_API_KEY", raising=False)
    monkeypatch.setenv("ES_USERNAME", USERNAME)
    monkeypatch.setenv("ES_PASSWORD", PASSWORD)


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def test_bad_api_key_401(es_double, es_config, api_key_env, logs, capsys):
    es_double.require_auth(api_key="the-real-key", echo_credentials=True)
    with pytest.raises(EsError) as caught:
        write_batch(es_config, "items", [_score("a")], mode="score", **FAST)
    assert caught.value.status == 401
    assert "ES_API_KEY" in str(caught.value)  # says what to check, without the value
    assert [r.auth_scheme for r in es_double.bulk_requests()] == ["ApiKey"]
    out = capsys.readouterr()
    _assert_clean(_exception_text(caught.value), logs.text, out.out, out.err)


def test_bad_password_401(es_double, es_config, basic_env, logs, capsys):
    es_double.require_auth(basic=(USERNAME, "another-password"), echo_credentials=True)
    with pytest.raises(EsError) as caught:
        write_batch(es_config, "items", [_score("a")], mode="score", **FAST)
    assert [r.auth_scheme for r in es_double.bulk_requests()] == ["Basic"]
    out = capsys.readouterr()
    _assert_clean(_exception_text(caught.value), logs.text, out.out, out.err)


def test_401_through_beam(es_double, es_config, api_key_env, logs, capsys):
    es_double.require_auth(api_key="the-real-key", echo_credentials=True)
    pipeline = BeamTestPipeline(runner=local_runner())
    _ = pipeline | beam.Create([_score("a")]) | WriteToElasticsearch(es_config, "items", mode="score", **FAST)
    with pytest.raises(Exception) as caught:
        pipeline.run().wait_until_finish()
    assert "401" in str(caught.value)
    out = capsys.readouterr()
    _assert_clean(_exception_text(caught.value), logs.text, out.out, out.err)


def test_source_401(es_double, es_config, api_key_env, logs, capsys):
    es_double.require_auth(api_key="the-real-key", echo_credentials=True)
    pipeline = BeamTestPipeline(runner=local_runner())
    _ = pipeline | ReadItemsFromElasticsearch(es_config, "items", model_id="m-v1")
    with pytest.raises(Exception) as caught:
        pipeline.run().wait_until_finish()
    assert "security_exception" in str(caught.value)
    out = capsys.readouterr()
    _assert_clean(_exception_text(caught.value), logs.text, out.out, out.err)


def test_per_document_errors_are_scrubbed(api_key_env, es_double, es_config, es_client, es_index, logs, capsys):
    es_double.require_auth(api_key=API_KEY)
    es_client.index(index=es_index, id="a", document={"title": "t"})
    es_client.index(index=es_index, id="b", document={"title": "t"})
    es_double.fail_bulk_items(400, ids=["a"], error_type="illegal_argument_exception",
                              reason=f"request carried [ApiKey {API_KEY}]")
    out = write_batch(es_config, es_index, [_score("a"), _score("b", "not-a-date"), _score("gone")], mode="score",
                      **FAST)
    assert [(f[0]["id"], f[1]) for f in out["failed"]] == [("a", "es_400"), ("b", "es_mapping_error")]
    assert "<ES_API_KEY redacted>" in out["failed"][0][2]
    assert out["missing"] == ["gone"]
    captured = capsys.readouterr()
    _assert_clean(repr(out), logs.text, captured.out, captured.err)


def test_connection_refused(es_config, basic_env, logs, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = write_batch(EsConfig(f"http://127.0.0.1:{port}", request_timeout=1), "items", [_score("a")], mode="score",
                      unavailable_seconds=0.2, **FAST)
    assert [f[1] for f in out["failed"]] == ["es_unavailable"]
    captured = capsys.readouterr()
    _assert_clean(repr(out), logs.text, captured.out, captured.err)


def test_config_holds_no_secret(api_key_env, basic_env):
    config = EsConfig.from_env(url="https://es.example:9200")
    _assert_clean(repr(config), pickle.dumps(config).decode("latin-1"))
    assert make_client(config) is not None  # credentials are read here, on the worker


def test_credentials_in_the_url_are_refused_without_echoing_them():
    with pytest.raises(ValueError) as caught:
        EsConfig(f"https://{USERNAME}:{PASSWORD}@es.example:9200")
    _assert_clean(str(caught.value))
    assert "ES_API_KEY" in str(caught.value)


def test_half_a_basic_credential_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ES_API_KEY", raising=False)
    monkeypatch.setenv("ES_USERNAME", USERNAME)
    monkeypatch.delenv("ES_PASSWORD", raising=False)
    with pytest.raises(EsError, match="ES_PASSWORD") as caught:
        make_client(EsConfig())
    _assert_clean(str(caught.value))
