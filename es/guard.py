"""The stale-update guard: one stored Painless script that every write of ours goes through.

Elasticsearch refuses ``version_type=external`` inside bulk ``update`` actions, and an
external version could not guard a score-only partial write anyway, so the comparison runs
in a scripted update. The script is stored (installed at start-up, like the mapping, by
:func:`ensure_guard_script`) so its text lives in one place and the cluster compiles it once.

**The version** is the item's ``updated_at``, written in one canonical form: UTC, ISO 8601
with microseconds and ``Z`` (``2026-11-20T12:00:00.000000Z``). Strings of one fixed-width
UTC form sort in time order, so the script compares them with ``compareTo``. Anything
else a record carries (an offset, no fraction, a naive time taken as UTC) is converted by
:func:`canonical_version`. Epoch numbers are refused: nothing says whether they are seconds
or milliseconds. A stored version in any other form (an epoch number, or an ISO string with
an offset that another indexer wrote) would compare wrongly, so the script refuses it and
the write fails loudly instead (a dead letter, ``es_script_error``).

The script, for the two write modes:

* ``document``: the job owns the document. Compare with the stored ``updated_at``; if the
  incoming version is strictly newer, replace the whole source with ``params.fields``
  (the processed item, or a tombstone ``{updated_at, deleted: true}``), else ``noop``.
  A delete wins a tie, and a scored document completes an unscored one of its version (below).
  Sent as a scripted upsert, so a missing document is created.
* ``score``: another indexer owns the document. Compare with the stored score's version
  (``image_score_version``) and never write onto a tombstone; merge only the score fields.
  Sent without an upsert, so a missing document is a 404 (a counted skip).

Older *or equal* answers ``noop``, so a replay changes nothing. Two ties in document mode go the
other way. A delete wins a tie: a tombstone with the same version as a live document replaces it
(counted ``deleted``). A score completes its version: a live document that carries ``image_score``
replaces a live document of the same version that has none (the item indexed without its score
because its image failed; the replayed dead letter puts the score on). A replayed delete onto its
own tombstone, an update onto a tombstone of the same version, or any same-version document onto
one that already has a score, is still ``noop``.
"""
from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from elasticsearch import Elasticsearch

from es.client import scrubbed_errors
from es.mapping import (
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
    rank_feature_value,
)
from es.names import DOCUMENT, SCORE, WRITE_MODES, WriteMode  # noqa: F401  (part of this module's interface)
from es.timestamps import iso, parse_iso

# The id carries a version: a changed script gets a new id, so a running job keeps the one it started with.
GUARD_SCRIPT_ID = "imagescore-guard-v3"
GUARD_SCRIPT_SOURCE = (
    "def s = ctx._source; "
    "def v = params.score ? s.image_score_version : s.updated_at; "
    "if (v != null && !(v instanceof String && v.length() == 27 && v.endsWith('Z'))) "
    "{ throw new IllegalArgumentException('stored version [' + v + '] is not in the canonical form'); } "
    "int c = v == null ? -1 : v.compareTo(params.version); "
    "if ((params.score && s.deleted == true) || c > 0 "
    "|| (c == 0 && (params.score || s.deleted == true "
    "|| (params.fields.deleted != true && (s.image_score != null || params.fields.image_score == null))))) "
    "{ ctx.op = 'noop'; } "
    "else { if (!params.score) { s.clear(); } s.putAll(params.fields); }"
)

# What a score-mode record carries, besides id and updated_at: the required fields, then the
# provenance of the scored image (optional: records written before it existed lack it).
REQUIRED_SCORE_FIELDS = (SCORE_FIELD, MODEL_FIELD, SCORED_AT_FIELD, SCORED_URL_FIELD)
PROVENANCE_FIELDS = (PROVENANCE_FIELD, PROVENANCE_DETAIL_FIELD)
SCORE_RECORD_FIELDS = (*REQUIRED_SCORE_FIELDS, *PROVENANCE_FIELDS)


class BadRecord(ValueError):
    """A record the writer cannot send; the message names the field and says what to do."""


def canonical_version(value: Any, field: str = VERSION_FIELD) -> str:
    """``value`` (an ISO 8601 string or an aware datetime) in the guard's canonical form (:func:`iso`).

    Naive times are taken as UTC, as the item parser does. Raises :class:`BadRecord`.
    """
    try:
        return iso(parse_iso(value, field))
    except ValueError as exc:
        raise BadRecord(f"{exc}; fix the producer and replay the record") from None


def score_fields(score: float, model_id: str, image_url: str, scored_at: datetime | None = None,
                 provenance: tuple[str, str] | None = None) -> dict[str, Any]:
    """The :data:`SCORE_RECORD_FIELDS` of one inference, built once for every job that writes a score.

    ``scored_at`` (default: now) is written in the canonical form of the versions, so every
    score of every job spells its time the same way. ``provenance``: ``(value, detail)`` of the
    scored image (``transforms.provenance.Provenance``), written beside the score when known.
    """
    fields = {SCORE_FIELD: float(score), MODEL_FIELD: model_id,
              SCORED_AT_FIELD: canonical_version(scored_at or datetime.now(UTC), SCORED_AT_FIELD),
              SCORED_URL_FIELD: image_url}
    if provenance is not None:
        fields[PROVENANCE_FIELD], fields[PROVENANCE_DETAIL_FIELD] = provenance
    return fields


def _checked_score_fields(record: dict, doc_id: str) -> dict[str, Any]:
    score = record.get(SCORE_FIELD)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise BadRecord(f"record {doc_id!r}: {SCORE_FIELD} must be a finite number, got {score!r}")
    return {SCORE_FIELD: float(score), RANK_FIELD: rank_feature_value(score)}


def guard_params(record: Any, mode: WriteMode | str) -> tuple[str, dict[str, Any]]:
    """``(document id, script params)`` for one record in ``mode``; raises :class:`BadRecord`.

    The record contracts are in ``es/bulk_writer.py`` and ``docs/stale-guard.md``.
    """
    mode = WriteMode.of(mode)
    doc_id = record.get("id") if isinstance(record, dict) else None
    if not isinstance(doc_id, str) or not doc_id:
        raise BadRecord(f"record has no string 'id' (got {type(doc_id).__name__}); it cannot name a document")
    if record.get(VERSION_FIELD) is None:
        raise BadRecord(f"record {doc_id!r} has no {VERSION_FIELD!r}: the guard needs the item version it "
                        "belongs to; fix the producer and replay the record")
    try:
        version = canonical_version(record[VERSION_FIELD])
        score_version = record.get(SCORE_VERSION_FIELD)
        score_version = canonical_version(score_version, SCORE_VERSION_FIELD) if score_version is not None else None
    except BadRecord as exc:
        raise BadRecord(f"record {doc_id!r}: {exc}") from None
    if mode is WriteMode.SCORE:
        unknown = sorted(set(record) - {"id", VERSION_FIELD, *SCORE_RECORD_FIELDS})
        absent = [name for name in REQUIRED_SCORE_FIELDS if record.get(name) is None]
        if unknown or absent:
            raise BadRecord(f"score record {doc_id!r} must hold exactly id, {VERSION_FIELD} and "
                            f"{', '.join(REQUIRED_SCORE_FIELDS)} (and optionally "
                            f"{', '.join(PROVENANCE_FIELDS)}); " + (f"unexpected {unknown}" if unknown else "")
                            + ("; " if unknown and absent else "") + (f"missing {absent}" if absent else ""))
        fields = {name: record[name] for name in SCORE_RECORD_FIELDS if record.get(name) is not None}
        fields.update(_checked_score_fields(record, doc_id))
        fields[SCORE_VERSION_FIELD] = version
        return doc_id, {"score": True, "version": version, "fields": fields}
    deleted = record.get(DELETED_FIELD, False)
    if not isinstance(deleted, bool):
        raise BadRecord(f"record {doc_id!r}: {DELETED_FIELD} must be true or false, got {deleted!r}")
    if deleted:  # a tombstone: everything but the version is cleared
        return doc_id, {"score": False, "version": version,
                        "fields": {VERSION_FIELD: version, DELETED_FIELD: True}}
    fields = {k: v for k, v in record.items() if k not in ("id", DELETED_FIELD)}
    fields[VERSION_FIELD] = version
    if SCORE_FIELD in fields:
        fields.update(_checked_score_fields(record, doc_id))
        fields[SCORE_VERSION_FIELD] = score_version or version
    return doc_id, {"score": False, "version": version, "fields": fields}


def is_tombstone(params: dict[str, Any]) -> bool:
    return params["fields"].get(DELETED_FIELD) is True


def guard_script(params: dict[str, Any]) -> dict[str, Any]:
    """The ``script`` of a bulk update that runs the stored guard with ``params``."""
    return {"id": GUARD_SCRIPT_ID, "params": params}


def ensure_guard_script(client: Elasticsearch) -> str:
    """Store the guard script (idempotent: putting the same script again changes nothing); returns its id."""
    with scrubbed_errors(f"storing the stale-update guard script {GUARD_SCRIPT_ID!r}"):
        client.put_script(id=GUARD_SCRIPT_ID, script={"lang": "painless", "source": GUARD_SCRIPT_SOURCE})
    return GUARD_SCRIPT_ID
