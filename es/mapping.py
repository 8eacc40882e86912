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

from es.client import EsError, scrubbed_errors

SCORE_FIELD = "image_score"
MODEL_FIELD = "image_score_model"
SCORED_AT_FIELD = "image_scored_at"
CREATED_AT_FIELD = "created_at"  # owned by the item indexer; the backfill source filters on it

DEFAULT_TEMPLATE_PRIORITY = 200


def score_properties() -> dict[str, dict[str, Any]]:
    """Mapping properties of the three fields the score writers set."""
    return {
        SCORE_FIELD: {"type": "float"},
        MODEL_FIELD: {"type": "keyword"},
        SCORED_AT_FIELD: {"type": "date"},
    }


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


def ensure_score_mapping(client: Elasticsearch, index: str) -> None:
    """Add the score fields to an existing index (or every index a pattern matches).

    Raises :class:`EsError` whose ``status`` says why: ``None`` when Elasticsearch did not
    answer, 404 when the index does not exist, 400 when a field already exists with another
    type (no put-mapping can change that; it needs a reindex).
    """
    try:
        with scrubbed_errors(f"putting the image score mapping on index {index!r}"):
            client.indices.put_mapping(index=index, properties=score_properties())
    except EsError as exc:
        if exc.status == 400:
            raise EsError(f"index {index!r}: a score field exists with another type, which needs a reindex "
                          f"into an index mapped with {sorted(score_properties())} ({exc})", 400) from None
        if exc.status == 404:
            raise EsError(f"index {index!r} does not exist ({exc}); check --es-index, or create the index "
                          "with its item mapping first", 404) from None
        raise
