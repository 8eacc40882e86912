"""Writing items and image scores to Elasticsearch through the stale-update guard, from Beam.

Every record becomes a bulk ``update`` of document ``id`` that runs the stored guard script
(:mod:`es.guard`, installed by ``ensure_guard_script``), so a write is idempotent and an
older version never overwrites a newer one, in any order of arrival. Two modes:

* ``mode="score"`` (the backfill; streaming with ``--write score``) writes only the score
  fields to a document another indexer owns. A record is
  ``{"id", "updated_at", "image_score", "image_score_model", "image_scored_at",
  "image_score_image_url"}``, exactly those keys, plus optionally ``image_provenance`` and
  ``image_provenance_detail`` (the scored image's provenance); ``updated_at`` is the item version the
  score was computed from. It is compared with the stored ``image_score_version``; a
  tombstone is never written onto; a missing document is not created.
* ``mode="document"`` (streaming's default) upserts the whole processed item: ``id``,
  ``updated_at``, the item's other fields and, when scored, ``image_score``,
  ``image_score_model``, ``image_scored_at``, ``image_score_image_url`` and optionally
  ``image_score_version`` (default: ``updated_at``; pass the stored one when a score is
  reused). A delete is ``{"id", "updated_at", "deleted": true}``; it replaces the document
  by a tombstone (other fields are dropped). Compared with the stored ``updated_at``.

``updated_at`` is an ISO 8601 string (naive times are UTC); the writer stores it, and
``image_score_version``, in the guard's canonical UTC form. It also writes
``image_score_rank`` (a ``rank_feature``) from ``image_score``. ``id`` names the document
and is not written into it.

Where each record ends up (exactly one place):

* ``written``: the id, once Elasticsearch created or updated the document.
* ``deleted``: the id of a tombstone Elasticsearch accepted (document mode).
* ``stale``: the id, when the guard answered ``noop``: the stored version is newer or the
  same (a replay), or, in score mode, the document is a tombstone. A counted skip.
* ``missing``: the id, when the document does not exist (score mode: 404
  ``document_missing_exception``). A counted skip: the item was deleted, or is not indexed yet.
* ``failed``: ``(record, reason, error)`` for per-document errors (``es_mapping_error``,
  ``es_rejected`` for 429s that outlived the retries, ``es_script_error`` when the guard
  script failed on a stored value, ``es_script_missing`` when it is not installed,
  ``es_<status>``) and ``es_bad_record`` for records the writer cannot send (no id, no or a
  malformed ``updated_at``, a non-numeric score, wrong score-mode fields). The pipeline turns
  these into dead letters.

Per-document 429s are retried by ``elasticsearch.helpers.streaming_bulk``. 5xx answers
(per document or for the whole request) and connection failures are retried here, with
exponential backoff, bounded in attempts and in time. When the connection still fails the
bundle raises, so the runner retries it; the writes are idempotent, so that is safe (a
write that had landed before its answer was lost comes back ``stale``).
Request-level refusals that no retry fixes (401, 403, a 400 for the whole request) raise too.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import BoundedWindow
from apache_beam.utils.windowed_value import WindowedValue
from elastic_transport import TransportError, Urllib3HttpNode
from elasticsearch import helpers

from es.client import (
    RETRYABLE_STATUSES,
    EsConfig,
    EsError,
    backoff_delay,
    describe,
)
from es.client_dofn import EsClientDoFn
from es.guard import BadRecord, WriteMode, guard_params, guard_script, is_tombstone
from es.secrets import scrub

WRITTEN = "written"
DELETED = "deleted"
STALE = "stale"
MISSING = "missing"
FAILED = "failed"
OUTPUT_TAGS = (WRITTEN, DELETED, STALE, MISSING, FAILED)

MAPPING_ERROR_TYPES = frozenset({
    "mapper_parsing_exception", "document_parsing_exception", "strict_dynamic_mapping_exception",
})

_NAMESPACE = "imagescore"


class _BulkMeter(threading.local):
    """Per-thread tallies of what went over the wire, read by the DoFn around each flush."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.docs = 0


_METER = _BulkMeter()


class _MeteredNode(Urllib3HttpNode):
    """The default HTTP node, counting ``_bulk`` requests, bytes and documents as sent.

    The bulk helper retries 429s internally, so the wire is the only place where every
    request it makes, and every document it re-sends, can be counted.
    """

    def perform_request(self, method: str, target: str, body: bytes | None = None, *args: Any, **kwargs: Any):
        if body and target.split("?", 1)[0].endswith("/_bulk"):
            _METER.requests += 1
            _METER.bytes += len(body)
            _METER.docs += body.count(b"\n") // 2  # one action line and one doc line per update
        return super().perform_request(method, target, body, *args, **kwargs)


def helper_retries_within(max_retries: int, initial_backoff: float, max_backoff: float,
                          max_retry_time: float) -> int:
    """How many of the helper's 429 retries fit into ``max_retry_time`` of sleeping.

    The helper's waits are ``min(max_backoff, initial_backoff * 2**n)``; it has no time
    bound of its own, so the number of attempts is what bounds it.
    """
    total = 0.0
    for n in range(max_retries):
        total += min(max_backoff, initial_backoff * 2 ** n)
        if total > max_retry_time:
            return n
    return max_retries


@dataclass(frozen=True)
class WriteSettings:
    """Batch caps and retry bounds of :class:`WriteToElasticsearch`."""

    max_docs: int = 500
    max_bytes: int = 5 * 1024 * 1024
    max_retries: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_time: float = 120.0
    retry_on_conflict: int = 3

    def __post_init__(self) -> None:
        if self.max_docs < 1 or self.max_bytes < 1:
            raise ValueError(f"max_docs and max_bytes must be positive, got {self.max_docs} and {self.max_bytes}")
        if self.max_retries < 0 or self.initial_backoff < 0 or self.max_backoff < 0 or self.max_retry_time < 0:
            raise ValueError("max_retries, initial_backoff, max_backoff and max_retry_time must not be negative")


@dataclass
class _Pending:
    record: dict
    id: str
    action: dict
    tombstone: bool
    size: int
    timestamp: Any
    window: BoundedWindow


@dataclass
class _Outcome:
    tag: str
    value: Any
    entry: _Pending


@dataclass
class _Attempt:
    outcomes: list[_Outcome] = field(default_factory=list)
    retry: dict[str, tuple[_Pending, int, str]] = field(default_factory=dict)
    fatal: str | None = None
    fatal_status: int | None = None
    connection_error: BaseException | None = None


def _error_text(info: dict) -> str:
    error = info.get("error")
    if isinstance(error, dict):
        text = f"{error.get('type')}: {error.get('reason')}"
        caused_by = error.get("caused_by")
        for _ in range(3):  # a script failure nests the cause that says what is wrong two levels down
            if not isinstance(caused_by, dict):
                break
            text += f" (caused by {caused_by.get('type')}: {caused_by.get('reason')})"
            caused_by = caused_by.get("caused_by")
        return scrub(text)
    return scrub(str(error))


def _error_type(info: dict) -> str | None:
    error = info.get("error")
    return error.get("type") if isinstance(error, dict) else None


def failure_reason(status: int, error_type: str | None, caused_by: str | None = None) -> str:
    """The dead-letter reason for a per-document failure."""
    if status == 429:
        return "es_rejected"
    if error_type in MAPPING_ERROR_TYPES:
        return "es_mapping_error"
    if error_type == "index_not_found_exception":
        return "es_index_not_found"
    if error_type == "resource_not_found_exception":  # the only resource an update names is its stored script
        return "es_script_missing"
    if caused_by == "script_exception":
        return "es_script_error"
    return f"es_{status}"


def _caused_by_type(info: dict) -> str | None:
    error = info.get("error")
    caused_by = error.get("caused_by") if isinstance(error, dict) else None
    return caused_by.get("type") if isinstance(caused_by, dict) else None


def update_action(record: dict, index: str, mode: WriteMode | str, retry_on_conflict: int = 3) -> dict:
    """The bulk-helper action for one record: a guarded scripted ``update`` of document ``record["id"]``.

    Raises :class:`~es.guard.BadRecord`. Also used to write the same updates as NDJSON files.
    """
    mode = WriteMode.of(mode)
    doc_id, params = guard_params(record, mode)
    action = {"_op_type": "update", "_index": index, "_id": doc_id, "retry_on_conflict": retry_on_conflict,
              "script": guard_script(params)}
    if mode is not WriteMode.SCORE:
        action.update(scripted_upsert=True, upsert={})
    return action


def bulk_lines(action: dict) -> str:
    """The two ``_bulk`` NDJSON lines of a helper action, as the bulk helper sends them."""
    header, body = helpers.expand_action(action)
    return "\n".join(json.dumps(line, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
                     for line in (header, body))


class _BulkWriteFn(EsClientDoFn):
    """Buffers records per bundle, up to the caps, and writes them with the bulk helper."""

    node_class = _MeteredNode

    def __init__(self, config: EsConfig, index: str, settings: WriteSettings, mode: WriteMode):
        self._config = config
        self._index = index
        self._settings = settings
        self._mode = mode
        self._helper_retries = helper_retries_within(
            settings.max_retries, settings.initial_backoff, settings.max_backoff, settings.max_retry_time)
        self._counters = {name: beam.metrics.Metrics.counter(_NAMESPACE, f"es_{name}") for name in (
            *OUTPUT_TAGS, "retried", "bulk_requests", "bulk_bytes")}

    def start_bundle(self) -> None:
        self._buffer: list[_Pending] = []
        self._buffer_ids: set[str] = set()
        self._buffer_bytes = 0

    def process(self, record: dict, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam) -> Iterator[Any]:
        try:
            action = update_action(record, self._index, self._mode, self._settings.retry_on_conflict)
            size = len(bulk_lines(action).encode("utf-8")) + 2  # and the two newlines
        except BadRecord as exc:
            self._counters[FAILED].inc()
            yield beam.pvalue.TaggedOutput(FAILED, (record, "es_bad_record", scrub(str(exc))))
            return
        except (TypeError, ValueError) as exc:  # not JSON: NaN, a datetime, a set...
            self._counters[FAILED].inc()
            yield beam.pvalue.TaggedOutput(FAILED, (record, "es_bad_record", scrub(
                f"record {action['_id']!r} cannot be sent as JSON ({exc}); send JSON values only")))
            return
        doc_id = action["_id"]
        # A second update of the same id waits for the next request, so updates keep their order.
        if self._buffer and (doc_id in self._buffer_ids
                             or len(self._buffer) >= self._settings.max_docs
                             or self._buffer_bytes + size > self._settings.max_bytes):
            yield from self._flush()
        self._buffer.append(_Pending(record, doc_id, action, is_tombstone(action["script"]["params"]), size,
                                     timestamp, window))
        self._buffer_ids.add(doc_id)
        self._buffer_bytes += size

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._flush()

    def _flush(self) -> Iterator[Any]:
        batch, self._buffer, self._buffer_ids, self._buffer_bytes = self._buffer, [], set(), 0
        if not batch:
            return
        requests, sent_bytes, docs = _METER.requests, _METER.bytes, _METER.docs
        try:
            outcomes = self._write(batch)
        finally:
            self._counters["bulk_requests"].inc(_METER.requests - requests)
            self._counters["bulk_bytes"].inc(_METER.bytes - sent_bytes)
            self._counters["retried"].inc(max(0, _METER.docs - docs - len(batch)))
        for outcome in outcomes:
            self._counters[outcome.tag].inc()
            yield beam.pvalue.TaggedOutput(outcome.tag, WindowedValue(
                outcome.value, outcome.entry.timestamp, (outcome.entry.window,)))

    def _write(self, batch: list[_Pending]) -> list[_Outcome]:
        s = self._settings
        pending = {entry.id: entry for entry in batch}
        outcomes: list[_Outcome] = []
        deadline = time.monotonic() + s.max_retry_time
        attempt = 0
        while True:
            result = self._attempt(pending)
            outcomes.extend(result.outcomes)
            if result.fatal:
                raise EsError(result.fatal, result.fatal_status)
            # Whatever is still pending got no answer: the connection failed before it was sent.
            if not result.retry and not pending:
                return outcomes
            delay = backoff_delay(attempt, s.initial_backoff, s.max_backoff)
            if attempt >= s.max_retries or time.monotonic() + delay > deadline:
                for entry, status, error in result.retry.values():
                    outcomes.append(_Outcome(FAILED, (entry.record, failure_reason(status, None),
                                                      f"{error} (gave up after {attempt + 1} attempts)"), entry))
                if pending:
                    raise EsError(
                        f"bulk write of {len(pending)} document(s) to index {self._index!r} at "
                        f"{self._config.safe_url()} failed after {attempt + 1} attempt(s): "
                        f"{describe(result.connection_error)}; check that the cluster is reachable")
                return outcomes
            time.sleep(delay)
            attempt += 1
            for entry, _, _ in result.retry.values():
                pending[entry.id] = entry

    def _attempt(self, pending: dict[str, _Pending]) -> _Attempt:
        """One pass of the bulk helper over ``pending``, removing every document that got an answer."""
        s = self._settings
        result = _Attempt()
        actions = [entry.action for entry in pending.values()]
        try:
            for ok, item in helpers.streaming_bulk(
                    self._client, actions, chunk_size=s.max_docs, max_chunk_bytes=s.max_bytes,
                    raise_on_error=False, raise_on_exception=False, max_retries=self._helper_retries,
                    initial_backoff=s.initial_backoff, max_backoff=s.max_backoff, yield_ok=True):
                (info,) = item.values()
                entry = pending.pop(info["_id"])
                self._classify(ok, info, entry, result)
        except TransportError as exc:  # connection refused, timeouts: no answer for what is left
            result.connection_error = exc
        return result

    def _classify(self, ok: bool, info: dict, entry: _Pending, result: _Attempt) -> None:
        if ok:
            tag = STALE if info.get("result") == "noop" else DELETED if entry.tombstone else WRITTEN
            result.outcomes.append(_Outcome(tag, entry.id, entry))
            return
        status = int(info.get("status", 500))
        error_type = _error_type(info)
        error = _error_text(info)
        whole_request = "exception" in info
        if status in RETRYABLE_STATUSES and status != 429:
            result.retry[entry.id] = (entry, status, error)
        elif whole_request and status != 429:
            result.fatal_status = status
            result.fatal = (f"bulk request to index {self._index!r} at {self._config.safe_url()} was refused "
                            f"with status {status}: {error}. "
                            + ("Check ES_API_KEY, or ES_USERNAME and ES_PASSWORD, and the key's privileges "
                               "on the index." if status in (401, 403) else "Retrying will not help."))
        elif status == 404 and error_type == "document_missing_exception":
            result.outcomes.append(_Outcome(MISSING, entry.id, entry))
        else:
            reason = failure_reason(status, error_type, _caused_by_type(info))
            result.outcomes.append(_Outcome(FAILED, (entry.record, reason, error), entry))


class WriteToElasticsearch(beam.PTransform):
    """Write records through the stale-update guard into ``index``; outputs tagged
    ``written``, ``deleted``, ``stale``, ``missing``, ``failed`` (see the module docstring).

    ``mode`` (required, keyword) is ``"score"`` (score fields onto documents another indexer
    owns) or ``"document"`` (upsert whole processed items and tombstones). The guard script must be
    stored first (:func:`es.guard.ensure_guard_script`, at start-up like the mapping).
    Batches are capped by ``max_docs`` and ``max_bytes`` (request body bytes). ``max_retries``,
    ``initial_backoff``, ``max_backoff`` and ``max_retry_time`` bound the retries of one batch.
    Metrics (namespace ``imagescore``): es_written, es_deleted, es_stale, es_missing,
    es_failed, es_retried (documents sent again), es_bulk_requests, es_bulk_bytes.
    """

    def __init__(self, config: EsConfig, index: str, max_docs: int = 500, max_bytes: int = 5 * 1024 * 1024,
                 max_retries: int = 5, initial_backoff: float = 0.5, max_backoff: float = 30.0,
                 max_retry_time: float = 120.0, label: str | None = None, *, mode: WriteMode | str):
        super().__init__(label)
        if not index or any(c in index for c in ' "*\\/,|<>?#'):
            raise ValueError(f"{index!r} is not a concrete index name; the writer needs one index or alias")
        self._config = config
        self._index = index
        self._mode = WriteMode.of(mode)
        self._settings = WriteSettings(max_docs, max_bytes, max_retries, initial_backoff, max_backoff,
                                       max_retry_time)

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return records | "BulkUpdate" >> beam.ParDo(
            _BulkWriteFn(self._config, self._index, self._settings, self._mode)).with_outputs(*OUTPUT_TAGS)


def write_batch(config: EsConfig, index: str, records: Iterable[dict], *, mode: WriteMode | str,
                **settings: Any) -> dict[str, list]:
    """Write ``records`` outside Beam (one bundle); returns a list per output tag (``written``, ``deleted``, ...).

    For scripts and tests; the same code path as the transform.
    """
    fn = _BulkWriteFn(config, index, WriteSettings(**settings), WriteMode.of(mode))
    fn.setup()
    out: dict[str, list] = {tag: [] for tag in OUTPUT_TAGS}
    try:
        fn.start_bundle()
        window = beam.transforms.window.GlobalWindow()
        produced = []
        for record in records:
            produced.extend(fn.process(record, timestamp=0, window=window))
        produced.extend(fn.finish_bundle())
        for output in produced:
            value = output.value
            out[output.tag].append(value.value if isinstance(value, WindowedValue) else value)
    finally:
        fn.teardown()
    return out
