"""The index fields this project writes, as an index template and as a put-mapping.

Both are idempotent: putting the same template or the same field types again is
accepted by Elasticsearch and changes nothing, so every job can call them at start.

Composable index templates do not merge: only the highest-priority template that
matches an index applies. If your item indices already have a template, put
:func:`score_properties` into it (or into a component template it composes) rather
than adding ours beside it; :func:`ensure_score_mapping` adds the fields to indices
that already exist either way.
"""
from __future__ import annotations

from typing import Any

from elasticsearch import Elasticsearch

from es.client import EsError, EsVersionMismatch, scrubbed_errors
from es.names import (  # noqa: F401  (the field names are part of this module's interface)
    AI_PROVENANCE_VALUES,
    CREATED_AT_FIELD,
    DELETED_FIELD,
    MODEL_FIELD,
    PROVENANCE_DETAIL_FIELD,
    PROVENANCE_FIELD,
    RANK_FIELD,
    SCORE_FIELD,
    SCORE_VERSION_FIELD,
    SCORED_AT_FIELD,
    SCORED_URL_FIELD,
    VERSION_FIELD,
)

# rank_feature values must be positive normal floats, and Elasticsearch keeps only 9 significant bits.
RANK_FEATURE_FLOOR = 1e-4

DEFAULT_TEMPLATE_PRIORITY = 200


def score_properties() -> dict[str, dict[str, Any]]:
    """Mapping properties of the fields both score writers set, and of the tombstone flag they read."""
    return {
        SCORE_FIELD: {"type": "float"},
        MODEL_FIELD: {"type": "keyword"},
        SCORED_AT_FIELD: {"type": "date"},
        SCORED_URL_FIELD: {"type": "keyword"},
        SCORE_VERSION_FIELD: {"type": "date"},
        RANK_FIELD: {"type": "rank_feature"},
        PROVENANCE_FIELD: {"type": "keyword"},
        PROVENANCE_DETAIL_FIELD: {"type": "keyword"},
        DELETED_FIELD: {"type": "boolean"},
    }


def document_properties() -> dict[str, dict[str, Any]]:
    """:func:`score_properties` plus ``updated_at``: the fields a job that owns whole documents maps.

    Kept apart because in score mode ``updated_at`` belongs to another indexer, which may
    map it with its own date format; putting ours could conflict.
    """
    return {**score_properties(), VERSION_FIELD: {"type": "date"}}


def rank_feature_value(score: float) -> float:
    """The ``image_score_rank`` value for ``score``: a score of 0 becomes the smallest value a rank_feature takes."""
    return max(float(score), RANK_FEATURE_FLOOR)


def template_name_for(index_pattern: str) -> str:
    """A stable template name for a pattern, so reapplying replaces rather than duplicates."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in index_pattern.lower()).strip("-_")
    return f"imagescore-{safe or 'all'}"


def index_template_body(index_pattern: str, extra_properties: dict[str, Any] | None = None,
                        priority: int = DEFAULT_TEMPLATE_PRIORITY) -> dict[str, Any]:
    """Body of the index template for new indices matching ``index_pattern``."""
    properties = dict(extra_properties or {})
    properties.update(score_properties())
    return {
        "index_patterns": [index_pattern],
        "priority": priority,
        "template": {"mappings": {"properties": properties}},
    }


def ensure_index_template(client: Elasticsearch, index: str, *, name: str | None = None,
                          extra_properties: dict[str, Any] | None = None,
                          priority: int = DEFAULT_TEMPLATE_PRIORITY) -> str:
    """Put the index template for ``index`` (a name or a pattern like ``items-*``); returns its name.

    ``extra_properties`` lets a caller that owns the whole index (tests, the laptop demo)
    map the item fields, e.g. ``created_at``, in the same template.
    """
    name = name or template_name_for(index)
    body = index_template_body(index, extra_properties, priority)
    with scrubbed_errors(f"putting index template {name!r} for {index!r}"):
        client.indices.put_index_template(
            name=name, index_patterns=body["index_patterns"], priority=body["priority"],
            template=body["template"])
    return name


def ensure_score_mapping(client: Elasticsearch, index: str, *, owns_documents: bool = False) -> None:
    """Add the score fields to an existing index (or every index a pattern matches).

    ``owns_documents``: the caller writes whole documents (document mode), so ``updated_at``
    is mapped too.

    Raises :class:`EsError` whose ``status`` says why: ``None`` when Elasticsearch did not
    answer, 404 when the index does not exist, 400 when a field already exists with another
    type (no put-mapping can change that; it needs a reindex).
    """
    properties = document_properties() if owns_documents else score_properties()
    try:
        with scrubbed_errors(f"putting the image score mapping on index {index!r}"):
            client.indices.put_mapping(index=index, properties=properties)
    except EsVersionMismatch:
        raise
    except EsError as exc:
        if exc.status == 400:
            raise EsError(f"index {index!r}: a score field exists with another type, which needs a reindex "
                          f"into an index mapped with {sorted(properties)} ({exc})", 400) from None
        if exc.status == 404:
            raise EsError(f"index {index!r} does not exist ({exc}); check --es-index, or create the index "
                          "with its item mapping first", 404) from None
        raise
