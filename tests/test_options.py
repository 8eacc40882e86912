"""The shared options build the jobs' objects, and refuse a bad flag value in one line naming the flag."""
from __future__ import annotations

import pytest

from cli_common import UsageError
from es.client import EsConfig
from es.guard import WriteMode
from es.index_setup import IndexSetupError, prepare_index
from pipelines.options import ElasticsearchOptions, ImageOptions, ModelOptions, job_options
from transforms.fetch import FetchPolicy
from transforms.inference import ScoreModelHandler


def _view(cls, *argv: str):
    return job_options(list(argv)).view_as(cls)


def test_image_flags_build_the_fetch_policy():
    policy = _view(ImageOptions, "--allow-image-hosts", "cdn.test:8080", "--allow-image-schemes", "gs",
                   "--max-image-bytes", "1000", "--fetch-timeout", "7", "--fetch-concurrency", "3").fetch_policy()
    assert policy == FetchPolicy(allowed_hosts="cdn.test:8080", allowed_schemes="gs", max_bytes=1000,
                                 total_timeout=7.0, concurrency=3)


@pytest.mark.parametrize("flag, value", [("--fetch-concurrency", "0"), ("--max-image-bytes", "-1"),
                                         ("--fetch-timeout", "0")])
def test_a_bad_image_flag_is_a_usage_error_naming_it(flag, value):
    with pytest.raises(UsageError, match=f"^{flag} must be > 0"):
        _view(ImageOptions, flag, value).fetch_policy()


def test_model_flags_build_the_handler_and_the_model_info():
    opts = _view(ModelOptions, "--model", "handcrafted", "--min-batch-size", "2", "--max-batch-size", "4")
    handler = opts.score_handler()
    assert isinstance(handler, ScoreModelHandler)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 4}
    assert opts.model_info() == ("handcrafted-v4", 384)


@pytest.mark.parametrize("spec", ["no-such-model", "triton://host-without-port/m", "{tmp}"])
def test_an_unknown_model_is_one_usage_error_naming_model_once(spec, tmp_path):
    spec = spec.format(tmp=tmp_path)  # an empty directory: not a training run
    with pytest.raises(UsageError) as info:
        _view(ModelOptions, "--model", spec).model_info()
    message = str(info.value)
    assert message.startswith(f"--model {spec!r}") and message.count(f"--model {spec!r}") == 1


def test_es_flags_build_the_config(monkeypatch):
    monkeypatch.delenv("ES_VERIFY_CERTS", raising=False)
    assert _view(ElasticsearchOptions, "--es-url", "").es_config() is None
    assert _view(ElasticsearchOptions, "--es-url", "https://es.test:9243", "--es-no-verify-certs").es_config() == \
        EsConfig("https://es.test:9243", verify_certs=False)
    with pytest.raises(UsageError, match="--es-url: .*must look like https://host:9200"):
        _view(ElasticsearchOptions, "--es-url", "es.test:9243").es_config()


# ---------------------------------------------------------------- index set-up, shared by both jobs

def test_score_mode_needs_the_index_and_maps_only_the_score_fields(es_config, es_client, es_index):
    prepare_index(es_config, es_index, WriteMode.SCORE)
    mapped = es_client.indices.get_mapping(index=es_index)[es_index]["mappings"]["properties"]
    assert mapped["image_score_model"]["type"] == "keyword"
    missing = es_index + "-missing"
    with pytest.raises(IndexSetupError, match=f"index {missing!r} does not exist.*--es-index"):
        prepare_index(es_config, missing, "score")
    assert not es_client.indices.exists(index=missing)


def test_document_mode_creates_a_missing_index(es_config, es_client, es_index):
    created = es_index + "-owned"
    try:
        prepare_index(es_config, created, WriteMode.DOCUMENT)
        mapped = es_client.indices.get_mapping(index=created)[created]["mappings"]["properties"]
        assert mapped["updated_at"]["type"] == "date" and mapped["image_score_rank"]["type"] == "rank_feature"
        prepare_index(es_config, created, WriteMode.DOCUMENT)  # idempotent
    finally:
        es_client.options(ignore_status=404).indices.delete(index=created)


def test_refused_credentials_say_which_variables_to_check(es_double, es_config):
    es_double.require_auth(api_key="the-right-key")
    with pytest.raises(IndexSetupError, match="ES_API_KEY or ES_USERNAME/ES_PASSWORD"):
        prepare_index(es_config, "items", WriteMode.SCORE)


def test_half_a_credential_pair_is_a_set_up_error(es_config, monkeypatch):
    monkeypatch.delenv("ES_API_KEY", raising=False)
    monkeypatch.setenv("ES_USERNAME", "indexer")
    monkeypatch.delenv("ES_PASSWORD", raising=False)
    with pytest.raises(IndexSetupError, match="set both ES_USERNAME and ES_PASSWORD"):
        prepare_index(es_config, "items", WriteMode.SCORE)


def test_an_unreachable_cluster_is_one_usage_error_from_the_options():
    opts = _view(ElasticsearchOptions, "--es-url", "http://127.0.0.1:9", "--es-index", "items")
    with pytest.raises(UsageError, match=r"^Elasticsearch is not reachable at http://127.0.0.1:9 .*--es-url"):
        opts.prepare_index(WriteMode.DOCUMENT)


def test_a_write_mode_is_checked_once_with_the_modes_named():
    assert WriteMode.of("score") is WriteMode.SCORE and WriteMode.SCORE == "score"
    with pytest.raises(ValueError, match=r"write mode must be one of \('document', 'score'\), got 'partial'"):
        WriteMode.of("partial")
