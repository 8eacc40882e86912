"""EsConfig and the client helpers: env handling, validation, bounded retries."""
from __future__ import annotations

import pickle

import pytest

from es.client import EsConfig, EsError, call_with_retries, default_es_url, make_client


def test_config_from_env(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    monkeypatch.setenv("ES_URL", "https://search.example:9243")
    monkeypatch.setenv("ES_CA_CERTS", str(ca))
    monkeypatch.setenv("ES_VERIFY_CERTS", "false")
    config = EsConfig.from_env()
    # The CA bundle is a path on the connecting machine: read by make_client there, not pickled from here.
    assert config == EsConfig("https://search.example:9243", verify_certs=False, ca_certs=None)
    assert default_es_url() == "https://search.example:9243"
    assert EsConfig.from_env(url="http://127.0.0.1:9200").url == "http://127.0.0.1:9200"
    assert pickle.loads(pickle.dumps(config)) == config


def test_defaults_without_env(monkeypatch):
    for name in ("ES_URL", "ES_CA_CERTS", "ES_VERIFY_CERTS"):
        monkeypatch.delenv(name, raising=False)
    assert EsConfig.from_env() == EsConfig("http://localhost:9200", verify_certs=True, ca_certs=None)


def test_ca_bundle_from_env_is_read_at_connect_time(monkeypatch, tmp_path):
    bundle = str(tmp_path / "ca.pem")
    monkeypatch.setenv("ES_CA_CERTS", bundle)
    client = make_client(EsConfig("https://search.example:9243"))  # the config itself names no CA
    assert [node.config.ca_certs for node in client.transport.node_pool.all()] == [bundle]
    explicit = make_client(EsConfig("https://search.example:9243", ca_certs="/etc/other.pem"))
    assert [node.config.ca_certs for node in explicit.transport.node_pool.all()] == ["/etc/other.pem"]


def test_bad_verify_flag_names_the_variable(monkeypatch):
    monkeypatch.setenv("ES_VERIFY_CERTS", "maybe")
    with pytest.raises(ValueError, match="ES_VERIFY_CERTS"):
        EsConfig.from_env()


@pytest.mark.parametrize("url", ["search.example:9200", "ftp://search.example", "http://", "http://es:port"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError, match="https://host:9200"):
        EsConfig(url)


def test_non_retryable_errors_are_not_retried(es_double, es_config):
    es_double.fail_requests(400, times=None, path=r"^/$")
    client = make_client(es_config)
    with pytest.raises(EsError, match=r"after 1 attempt") as caught:
        call_with_retries(client.info, "asking for cluster info", initial_backoff=0.01)
    assert caught.value.status == 400
    assert len(es_double.requests) == 1


def test_retryable_errors_are_retried_a_bounded_number_of_times(es_double, es_config):
    es_double.fail_requests(503, times=None, path=r"^/$")
    client = make_client(es_config)
    with pytest.raises(EsError, match=r"after 3 attempt"):
        call_with_retries(client.info, "asking for cluster info", max_retries=2, initial_backoff=0.01)
    assert len(es_double.requests) == 3
    es_double.clear_faults()
    es_double.fail_requests(429, times=2, path=r"^/$")
    assert call_with_retries(client.info, "asking for cluster info", initial_backoff=0.01)["tagline"]
