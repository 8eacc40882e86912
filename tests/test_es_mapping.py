"""Index template and put-mapping: idempotent, and new indices get the score fields."""
from __future__ import annotations

import uuid

import pytest

from es.client import EsError
from es.mapping import (
    document_properties,
    ensure_index_template,
    ensure_score_mapping,
    index_template_body,
    rank_feature_value,
    score_properties,
    template_name_for,
)


def _types(client, index: str) -> dict[str, str]:
    properties = client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    return {name: spec.get("type") for name, spec in properties.items()}


def test_score_fields_have_the_documented_types():
    assert score_properties() == {"image_score": {"type": "float"}, "image_score_model": {"type": "keyword"},
                                  "image_scored_at": {"type": "date"}, "image_score_image_url": {"type": "keyword"},
                                  "image_score_version": {"type": "date"},
                                  "image_score_rank": {"type": "rank_feature"},
                                  "image_provenance": {"type": "keyword"},
                                  "image_provenance_detail": {"type": "keyword"}, "deleted": {"type": "boolean"}}
    assert document_properties() == {**score_properties(), "updated_at": {"type": "date"}}
    body = index_template_body("items-*", {"created_at": {"type": "date"}})
    assert body["index_patterns"] == ["items-*"]
    assert body["template"]["mappings"]["properties"]["created_at"] == {"type": "date"}


def test_template_applied_twice_is_harmless_and_shapes_new_indices(es_client):
    prefix = f"imagescore-test-{uuid.uuid4().hex[:8]}"
    name = ensure_index_template(es_client, f"{prefix}-*", extra_properties={"created_at": {"type": "date"}})
    try:
        assert ensure_index_template(es_client, f"{prefix}-*",
                                     extra_properties={"created_at": {"type": "date"}}) == name
        index = f"{prefix}-1"
        es_client.index(index=index, id="x", document={"title": "t", "created_at": "2025-01-01T00:00:00Z"})
        types = _types(es_client, index)
        assert types["image_score"] == "float" and types["image_score_model"] == "keyword"
        assert types["image_scored_at"] == "date" and types["created_at"] == "date"
    finally:
        es_client.options(ignore_status=404).indices.delete(index=f"{prefix}-1")
        es_client.options(ignore_status=404).indices.delete_index_template(name=name)


def test_put_mapping_twice_is_harmless(es_client):
    index = f"imagescore-test-{uuid.uuid4().hex[:8]}"
    es_client.indices.create(index=index, mappings={"properties": {"title": {"type": "text"}}})
    try:
        ensure_score_mapping(es_client, index)
        ensure_score_mapping(es_client, index)
        types = _types(es_client, index)
        assert {k: types[k] for k in score_properties()} == {
            "image_score": "float", "image_score_model": "keyword", "image_scored_at": "date",
            "image_score_image_url": "keyword", "image_score_version": "date", "image_score_rank": "rank_feature",
            "image_provenance": "keyword", "image_provenance_detail": "keyword", "deleted": "boolean"}
        assert types["title"] == "text" and "updated_at" not in types  # score mode: the item indexer owns it
        ensure_score_mapping(es_client, index, owns_documents=True)
        assert _types(es_client, index)["updated_at"] == "date"
    finally:
        es_client.options(ignore_status=404).indices.delete(index=index)


def test_conflicting_field_type_is_a_clear_error(es_client):
    index = f"imagescore-test-{uuid.uuid4().hex[:8]}"
    es_client.indices.create(index=index, mappings={"properties": {"image_score": {"type": "keyword"}}})
    try:
        with pytest.raises(EsError, match=r"(?s)reindex.*image_score") as caught:
            ensure_score_mapping(es_client, index)
        assert caught.value.status == 400
    finally:
        es_client.options(ignore_status=404).indices.delete(index=index)


def test_mapping_on_a_missing_index_names_it(es_client):
    with pytest.raises(EsError, match="imagescore-test-nothing-here") as caught:
        ensure_score_mapping(es_client, "imagescore-test-nothing-here")
    assert caught.value.status == 404


def test_template_names_are_stable_and_safe():
    assert template_name_for("items-*") == template_name_for("items-*") == "imagescore-items"
    assert template_name_for("*") == "imagescore-all"


def test_rank_feature_value_is_positive_and_keeps_the_order():
    assert rank_feature_value(0.0) == rank_feature_value(-0.5) == 1e-4 > 0
    assert rank_feature_value(0.25) == 0.25 and rank_feature_value(1) == 1.0


def test_rank_feature_refuses_zero_so_the_writer_never_sends_it(es_client):
    index = f"imagescore-test-{uuid.uuid4().hex[:8]}"
    es_client.indices.create(index=index, mappings={"properties": score_properties()})
    try:
        with pytest.raises(Exception, match="image_score_rank"):
            es_client.index(index=index, id="zero", document={"image_score_rank": 0.0})
        es_client.index(index=index, id="floor", document={"image_score_rank": rank_feature_value(0.0)})
    finally:
        es_client.options(ignore_status=404).indices.delete(index=index)
