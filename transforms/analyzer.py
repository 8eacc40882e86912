"""The analyzer: turn the newest update of an item into the document the feeder writes.

* A delete skips the fetch and becomes a tombstone ``{id, updated_at, deleted: true}``.
* An update whose thumbnail URL and model are the ones the indexed score was computed
  from keeps that score: most marketplace updates are price or status edits, and a
  fetch plus an inference per edit would decide the job's cost. The stored fields are
  read in batches with ``_mget``; the reuse is counted ``score_reused``. When the
  lookup fails (cluster unreachable) the update is scored again: correct, only dearer.
* Anything else is fetched, decoded and scored by :class:`~transforms.score_images.ScoreImages`,
  the backfill's chain, with the ``--model`` handler; failures leave as dead letters of stage
  ``analyzer``. A model that stays unreachable past ``--model-unavailable-seconds``
  dead-letters its batch as ``model_unavailable``, to be replayed; the job keeps running.
* **A broken image never freezes a listing** (``--write document``). When the image of an
  update cannot be fetched, decoded or scored, the item's newest fields are indexed anyway:
  with the stored score when it is reusable (same thumbnail, same model), else without any
  score fields, so the old image's score is never shown against a new image. The image's
  dead letter still goes out (stage ``analyzer``, its reason, the original bytes, marked
  ``indexed_without_score``), counted ``image_deadlettered`` rather than ``deadlettered``:
  the document write is the message's outcome. Replaying that letter once the image is fixed
  scores it, and the guard lets a scored document complete the unscored one of its version
  (docs/stale-guard.md). In ``--write score`` mode another indexer owns the fields, so the
  failure is the message's dead letter, as before.

The output is a :class:`FeedRecord`: the item's fields, ``updated_at`` (the version),
and ``image_score``, ``image_score_model``, ``image_scored_at``,
``image_score_image_url``, ``image_score_version`` (the version the score was
computed for), ``image_provenance`` and ``image_provenance_detail`` (what the image's
metadata says of its origin; reused with the score).
"""
from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler

from es.client import EsConfig, call_with_retries
from es.client_dofn import EsClientDoFn
from es.guard import PROVENANCE_FIELDS, WriteMode  # provenance: reused with the score (same image)
from es.mapping import (
    DELETED_FIELD,
    MODEL_FIELD,
    RANK_FIELD,
    SCORE_FIELD,
    SCORE_VERSION_FIELD,
    SCORED_AT_FIELD,
    SCORED_URL_FIELD,
)
from es.timestamps import iso
from transforms.deadletter import DEAD_LETTER, DEADLETTERED, IMAGE_DEADLETTERED
from transforms.fetch import FetchPolicy
from transforms.items import parse_version
from transforms.messages import PUBLISH_TIME, FeedRecord, Update, element_dead_letter, parse_update
from transforms.provenance import ProvenanceLimits
from transforms.score_images import SCORED, ScoreImages, ScoreRecordFn

STAGE = "analyzer"
REUSED = "reused"
#: the dead-letter field (and message attribute) that marks an image failure whose item was indexed anyway
INDEXED_WITHOUT_SCORE = "indexed_without_score"
SCORE, MODEL, SCORED_AT, IMAGE_URL, SCORE_VERSION = (
    SCORE_FIELD, MODEL_FIELD, SCORED_AT_FIELD, SCORED_URL_FIELD, SCORE_VERSION_FIELD)
#: what the reuse check reads of a stored document
STORED_FIELDS = (SCORE, MODEL, SCORED_AT, IMAGE_URL, SCORE_VERSION, *PROVENANCE_FIELDS)
#: fields only the analyzer and the writer set; an incoming message's values for them are dropped
DERIVED_FIELDS = frozenset({*STORED_FIELDS, RANK_FIELD, DELETED_FIELD})


def feed_record(update: Update, score_fields: dict | None) -> FeedRecord:
    """The document of ``update``: a tombstone, or the item's fields plus the score fields."""
    if update.deleted:
        fields: dict[str, Any] = {"id": update.id, "updated_at": iso(update.version), "deleted": True}
    else:
        fields = {k: v for k, v in update.fields.items() if k not in DERIVED_FIELDS}
        fields.update(id=update.id, updated_at=iso(update.version), **(score_fields or {}))
    return FeedRecord(fields, update.payload, update.message_id, update.publish_time)


def scored_document(update: Update, score_fields: dict) -> FeedRecord:
    """The document of a freshly scored update: its fields, the score fields, and the version scored."""
    return feed_record(update, {**score_fields, SCORE_VERSION: iso(update.version)})


def unscored_document(update: Update) -> FeedRecord:
    """The document of an update whose image failed: its fields, no score fields."""
    return feed_record(update, None)


def reusable(stored: dict | None, update: Update, model_id: str) -> bool:
    """Whether the stored score was computed by this model from this thumbnail."""
    return (bool(stored) and stored.get(SCORE) is not None and stored.get(MODEL) == model_id
            and stored.get(IMAGE_URL) == update.thumbnail)


class _LookupStoredFn(EsClientDoFn):
    """Batches of updates -> the ones to score (main) and the documents that reuse a stored score."""

    def __init__(self, config: EsConfig, index: str, model_id: str):
        self._config = config
        self._index = index
        self._model_id = model_id
        self._reused = beam.metrics.Metrics.counter("imagescore", "score_reused")
        self._failed = beam.metrics.Metrics.counter("imagescore", "score_lookup_failed")

    def _stored(self, ids: list[str]) -> dict[str, dict]:
        response = call_with_retries(
            lambda: self._client.mget(index=self._index, ids=ids, source_includes=list(STORED_FIELDS)),
            f"reading stored scores of {len(ids)} item(s) from index {self._index!r}",
            max_retries=3, max_retry_time=10.0)
        return {doc["_id"]: doc.get("_source") or {} for doc in response["docs"] if doc.get("found")}

    def process(self, batch: list[Update]):
        try:
            stored = self._stored(sorted({update.id for update in batch}))
        except Exception:  # noqa: BLE001 -- the lookup is an optimisation: score everything again
            self._failed.inc(len(batch))
            stored = {}
        for update in batch:
            try:
                previous = stored.get(update.id)
                if reusable(previous, update, self._model_id):
                    fields = {name: previous[name] for name in (SCORE, MODEL, SCORED_AT, IMAGE_URL)}
                    fields[SCORE_VERSION] = previous.get(SCORE_VERSION) or iso(update.version)
                    fields.update({name: previous[name] for name in PROVENANCE_FIELDS
                                   if previous.get(name) is not None})
                    reused = feed_record(update, fields)
                else:
                    reused = None
            except Exception:  # noqa: BLE001 -- a stored document of an odd shape: score it again
                self._failed.inc()
                reused = None
            if reused is None:
                yield update
            else:
                self._reused.inc()
                yield beam.pvalue.TaggedOutput(REUSED, reused)


class _ReuseStoredScore(beam.PTransform):
    """Updates -> ``reused`` (documents that keep their stored score) and ``to_score`` (the rest)."""

    def __init__(self, config: EsConfig, index: str, model_id: str):
        super().__init__()
        self._lookup = _LookupStoredFn(config, index, model_id)

    def expand(self, updates):
        return (updates
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=200)
                | "Lookup" >> beam.ParDo(self._lookup).with_outputs(REUSED, main="to_score"))


class _ImageFailedFn(beam.DoFn):
    """Document mode: the dead letter of an update whose image failed -> that update (main), to be
    indexed without its score, and the letter marked :data:`INDEXED_WITHOUT_SCORE` (``deadletter``).

    The letter holds the message exactly as the parser read it, with its id and publish time,
    so the same parser gives the same update back. A letter it cannot read back stays its
    message's outcome and is counted ``deadlettered``.
    """

    def __init__(self):
        self._unscored = beam.metrics.Metrics.counter("imagescore", "indexed_without_score")

    def process(self, letter: dict):
        try:
            data = letter["payload"].encode("utf-8")
            update = parse_update(data, letter["message_id"], parse_version(letter["publish_time"], PUBLISH_TIME),
                                  max_bytes=len(data))
        except Exception:  # noqa: BLE001 -- not an update's letter: the dead letter is the outcome
            beam.metrics.Metrics.counter("imagescore", DEADLETTERED).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
            return
        self._unscored.inc()
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, {**letter, INDEXED_WITHOUT_SCORE: "true"})
        yield update


class _TombstoneFn(beam.DoFn):
    """A delete -> its tombstone; an element that fails is a dead letter of stage ``analyzer``."""

    def process(self, update: Update):
        try:
            record = feed_record(update, None)
        except Exception as exc:  # noqa: BLE001 -- one element never fails the job
            yield element_dead_letter(STAGE, exc, update)
            return
        yield record


class Analyze(beam.PTransform):
    """``Update`` -> :class:`FeedRecord` on ``documents``, rejects on ``deadletter``.

    ``mode`` is the feeder's ``--write`` mode: in ``document`` mode an update whose image fails is
    indexed without its score (and its image dead-lettered); in ``score`` mode it is dead-lettered.
    """

    def __init__(self, handler: ModelHandler, model_id: str, input_size: int, policy: FetchPolicy,
                 max_pixels: int, es_config: EsConfig | None, index: str,
                 mode: WriteMode | str = WriteMode.DOCUMENT):
        super().__init__()
        self._mode = WriteMode.of(mode)
        self._handler = handler
        self._model_id = model_id
        self._input_size = input_size
        self._policy = policy
        self._max_pixels = max_pixels
        self._es_config = es_config
        self._index = index

    def expand(self, updates):
        split = updates | "SplitDeletes" >> beam.Partition(lambda update, _: 0 if update.deleted else 1, 2)
        tombstones = split[0] | "Tombstone" >> beam.ParDo(_TombstoneFn()).with_outputs(
            DEAD_LETTER, main="documents")
        documents = [tombstones.documents]
        to_score = split[1]
        if self._es_config is not None:
            looked_up = split[1] | "LookupStoredScore" >> self._reuse()
            documents.append(looked_up[REUSED])
            to_score = looked_up.to_score
        indexes_without_score = self._mode is WriteMode.DOCUMENT
        scored = to_score | "Score" >> ScoreImages(
            self._handler, self._input_size, self._policy, self._max_pixels, stage=STAGE,
            provenance=ProvenanceLimits(), total=IMAGE_DEADLETTERED if indexes_without_score else DEADLETTERED)
        to_documents = scored[SCORED] | "ToDocument" >> ScoreRecordFn.apply(scored_document, STAGE)
        documents.append(to_documents.records)
        dead = [tombstones[DEAD_LETTER], to_documents[DEAD_LETTER]]
        if indexes_without_score:
            failed = scored[DEAD_LETTER] | "ImageFailed" >> beam.ParDo(_ImageFailedFn()).with_outputs(
                DEAD_LETTER, main="updates")
            dead.append(failed[DEAD_LETTER])
            unscored = failed.updates
            if self._es_config is not None:  # the first lookup may have failed: keep a reusable score
                looked_up = unscored | "LookupStoredScoreOfFailed" >> self._reuse()
                documents.append(looked_up[REUSED])
                unscored = looked_up.to_score
            documents.append(unscored | "UnscoredDocument" >> beam.Map(unscored_document))
        else:
            dead.append(scored[DEAD_LETTER])
        return {"documents": documents | "AllDocuments" >> beam.Flatten(),
                DEAD_LETTER: dead | "AllAnalyzerDeadLetters" >> beam.Flatten()}

    def _reuse(self) -> _ReuseStoredScore:
        return _ReuseStoredScore(self._es_config, self._index, self._model_id)
