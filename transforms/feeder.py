"""The feeder: batch processed documents across bundles, then bulk-write them.

In streaming a bundle often holds one or two elements, so a writer that flushes
once per bundle sends one- or two-document bulk requests (Beam's Java
``ElasticsearchIO`` had exactly this bug, apache/beam#19444). Documents are
grouped first with ``GroupIntoBatches.WithShardedKey``: a batch is emitted when it
holds ``max_docs`` documents or when its first one has waited ``buffer_seconds``,
whichever comes first; shards let a runner spread the batching over workers. Each
batch then goes through the backfill's writer (:class:`es.bulk_writer.WriteToElasticsearch`),
with its byte cap, retries, 429 handling, per-document failures and its outage budget
(``--es-unavailable-seconds``: an unreachable cluster is waited out, then the batch is
dead-lettered ``es_unavailable`` and the job goes on).

Every write goes through the stale-update guard (docs/stale-guard.md). In ``document``
mode (the default) the whole processed item is upserted and a delete leaves a
tombstone; in ``score`` mode only the score fields are written to documents another
indexer owns, and a delete is left to that indexer (counted ``deleted``, nothing written).

Every document leaves counted as ``written``, ``stale``, ``deleted`` or ``missing``,
or as a dead letter of stage ``feeder``. ``publish_to_write_ms`` is the distribution
of the time from the original message's publish time to the end of its write.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import apache_beam as beam
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.histogram import LinearBucket
from apache_beam.utils.timestamp import Timestamp

from es.bulk_writer import DELETED, FAILED, MISSING, STALE, WRITTEN, WriteToElasticsearch
from es.client import EsConfig
from es.guard import SCORE_RECORD_FIELDS, WriteMode
from es.timestamps import iso
from transforms.deadletter import DEAD_LETTER, count_dead_letter, dead_letter
from transforms.messages import FeedRecord, element_dead_letter

STAGE = "feeder"
LATENCY_HISTOGRAM = "publish_to_write_ms_histogram"
#: 100 ms buckets up to one hour (a backlog or an outage delays writes past minutes); longer counts as the last bucket
LATENCY_BUCKET = LinearBucket(0, 100, 36_000)


def _unbatch(keyed_batch):
    """One batch back to documents, each stamped with its original publish time (for the latency)."""
    _, records = keyed_batch
    for record in records:
        try:
            stamped = TimestampedValue(record, Timestamp.from_utc_datetime(record.publish_time))
        except Exception:  # noqa: BLE001 -- no usable publish time: the record goes on with the batch's time
            stamped = record
        yield stamped


class _CountOutcomeFn(beam.DoFn):
    def __init__(self, outcome: str, clock: Callable[[], float]):
        self._clock = clock
        self._count = beam.metrics.Metrics.counter("imagescore", outcome)
        self._latency = beam.metrics.Metrics.distribution("imagescore", "publish_to_write_ms")
        # for p50/p99 (a distribution has only min, max and mean)
        self._histogram = beam.metrics.Metrics.histogram("imagescore", LATENCY_HISTOGRAM, LATENCY_BUCKET)

    def process(self, doc_id, timestamp=beam.DoFn.TimestampParam):
        self._count.inc()
        published = float(timestamp)
        if published > 0:
            latency = max(0, int((self._clock() - published) * 1000))
            self._latency.update(latency)
            # past the last bucket Beam logs a warning per record and p99 becomes inf
            self._histogram.update(min(latency, LATENCY_BUCKET.range_to() - 1))
        yield doc_id


class _ToScoreRecordFn(beam.DoFn):
    """Score mode: a document becomes a score record (exactly the fields the guard's score mode takes);
    a delete is the owning indexer's business and is counted ``deleted`` here."""

    def __init__(self, clock: Callable[[], float]):
        self._deleted = _CountOutcomeFn("deleted", clock)

    def process(self, record, timestamp=beam.DoFn.TimestampParam):
        try:
            if record.get("deleted") is True:
                yield from self._deleted.process(record.get("id"), timestamp)
                return
            fields = {"id": record["id"], "updated_at": record["updated_at"],
                      **{name: record.get(name) for name in SCORE_RECORD_FIELDS}}
        except Exception as exc:  # noqa: BLE001 -- one element never fails the job
            yield element_dead_letter(STAGE, exc, record)
            return
        yield FeedRecord(fields, record.payload, record.message_id, record.publish_time) \
            if isinstance(record, FeedRecord) else fields


def _write_dead_letter(failure, timestamp=beam.DoFn.TimestampParam):
    record, reason, error = failure
    count_dead_letter(STAGE, reason)
    doc_id = record.get("id") if isinstance(record, dict) else None
    doc_id = doc_id if isinstance(doc_id, str) else None
    if isinstance(record, FeedRecord):
        letter = dead_letter(STAGE, reason, error, record.payload, id=doc_id)
        letter.update(message_id=record.message_id,
                      publish_time=iso(record.publish_time) if isinstance(record.publish_time, datetime) else None)
        return letter
    letter = dead_letter(STAGE, reason, error, record, id=doc_id)
    if float(timestamp) > 0:
        letter["publish_time"] = iso(datetime.fromtimestamp(float(timestamp), UTC))
    return letter


class Feed(beam.PTransform):
    """Documents -> Elasticsearch; returns the dead letters (stage ``feeder``)."""

    def __init__(self, config: EsConfig, index: str, *, max_docs: int = 500, max_bytes: int = 5 * 1024 * 1024,
                 buffer_seconds: float = 1.0, clock: Callable[[], float] = time.time,
                 mode: WriteMode | str = WriteMode.DOCUMENT, unavailable_seconds: float = 600.0):
        super().__init__()
        if buffer_seconds <= 0:
            raise ValueError(f"--es-max-buffer-seconds must be positive, got {buffer_seconds}")
        self._mode = WriteMode.of(mode)
        self._config = config
        self._index = index
        self._max_docs = max_docs
        self._max_bytes = max_bytes
        self._buffer_seconds = buffer_seconds
        self._clock = clock
        self._unavailable_seconds = unavailable_seconds

    def expand(self, documents):
        dead = []
        if self._mode is WriteMode.SCORE:
            to_score = documents | "ToScoreRecord" >> beam.ParDo(_ToScoreRecordFn(self._clock)).with_outputs(
                DEAD_LETTER, main="records")
            dead.append(to_score[DEAD_LETTER])
            documents = to_score.records
        written = (documents
                   | "KeyForBatching" >> beam.WithKeys(self._index)
                   | "BatchAcrossBundles" >> beam.GroupIntoBatches.WithShardedKey(
                       self._max_docs, max_buffering_duration_secs=self._buffer_seconds, clock=self._clock)
                   | "Unbatch" >> beam.FlatMap(_unbatch)
                   | "Write" >> WriteToElasticsearch(self._config, self._index, max_docs=self._max_docs,
                                                     max_bytes=self._max_bytes, mode=self._mode,
                                                     unavailable_seconds=self._unavailable_seconds))
        for outcome, name in ((WRITTEN, "written"), (DELETED, "deleted"), (STALE, "stale"), (MISSING, "missing")):
            _ = written[outcome] | f"Count[{name}]" >> beam.ParDo(_CountOutcomeFn(name, self._clock))
        dead.append(written[FAILED] | "WriteFailures" >> beam.Map(_write_dead_letter))
        return dead | "AllFeederDeadLetters" >> beam.Flatten()
