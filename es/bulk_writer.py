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
  ``es_script_error`` when the guard script failed on a stored value, ``es_script_missing``
  when it is not installed, ``es_<status>``), ``es_unavailable`` for writes Elasticsearch
  did not take within the outage budget, a whole request the cluster refused (a 400 and
  the like: every record of the batch, with the cluster's reason), and ``es_bad_record``
  for records the writer cannot send (no id, an id over Elasticsearch's 512 bytes, no or a
  malformed ``updated_at``, a non-numeric score, wrong score-mode fields). The pipeline
  turns these into dead letters.

Outages are waited out. Connection failures and 429, 502, 503 and 504 answers (for the
whole request, or per document: the bulk helper retries per-document 429s first) are
retried with exponential backoff and full jitter for up to ``unavailable_seconds`` per
batch (``--es-unavailable-seconds``), counting from the first attempt that failed that
way; what is still not taken then goes to ``failed`` as ``es_unavailable`` and the
bundle succeeds, so a streaming job keeps going and no acknowledged message is lost. The
writes are idempotent, so a write that had landed before its answer was lost comes back
``stale``. One warning is logged when a worker loses the cluster and one when it is back,
with the outage's length. Other 5xx answers are retried up to ``max_retries`` times within
``max_retry_time``, then go to ``failed`` as ``es_<status>``. Only 401 and 403 for the
whole request raise: every later batch would fail the same way, so the credentials need
fixing.
"""
from __future__ import annotations

import json
import logging
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
    UNAVAILABLE_STATUSES,
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

UNAVAILABLE = "es_unavailable"
MAX_ID_BYTES = 512  # Elasticsearch refuses the whole bulk request for a longer _id

MAPPING_ERROR_TYPES = frozenset({
    "mapper_parsing_exception", "document_parsing_exception", "strict_dynamic_mapping_exception",
})

_NAMESPACE = "imagescore"

log = logging.getLogger(__name__)


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
    unavailable_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_docs < 1 or self.max_bytes < 1:
            raise ValueError(f"max_docs and max_bytes must be positive, got {self.max_docs} and {self.max_bytes}")
        if min(self.max_retries, self.initial_backoff, self.max_backoff, self.max_retry_time,
               self.unavailable_seconds) < 0:
            raise ValueError("max_retries, initial_backoff, max_backoff, max_retry_time and unavailable_seconds "
                             "must not be negative")


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
    """What one pass of the bulk helper left: answers, and what to send again."""

    outcomes: list[_Outcome] = field(default_factory=list)
    unavailable: dict[str, tuple[_Pending, str]] = field(default_factory=dict)  # no answer, or 429/502/503/504
    server_errors: dict[str, tuple[_Pending, int, str]] = field(default_factory=dict)  # other 5xx
    fatal: str | None = None
    fatal_status: int | None = None
    # The cluster answered: a bulk response (even one with per-document 429s), or a refusal other than
    # 429/502/503/504 for the whole request. It is up, whatever it said.
    answered: bool = False


@dataclass
class _Outage:
    """One worker's view of an outage: from the first request that got no answer (or a 429/502/503/504 for all of
    it) to the next answer of the cluster."""

    started: float
    dead_lettered: int = 0


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
    if isinstance(info.get("exception"), BaseException):  # the whole request failed: the helper's copy
        return describe(info["exception"])
    return scrub(str(error))


def _error_type(info: dict) -> str | None:
    error = info.get("error")
    if isinstance(error, dict):
        return error.get("type")
    body = getattr(info.get("exception"), "body", None)  # the whole request failed
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("type")
    return None


def failure_reason(status: int, error_type: str | None, caused_by: str | None = None) -> str:
    """The dead-letter reason for a failure that is not an outage (those are ``es_unavailable``)."""
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
            settings.max_retries, settings.initial_backoff, settings.max_backoff,
            min(settings.max_retry_time, settings.unavailable_seconds))
        self._counters = {name: beam.metrics.Metrics.counter(_NAMESPACE, f"es_{name}") for name in (
            *OUTPUT_TAGS, "retried", "retried_requests", "bulk_requests", "bulk_bytes")}
        self._outage: _Outage | None = None

    def start_bundle(self) -> None:
        self._buffer: list[_Pending] = []
        self._buffer_ids: set[str] = set()
        self._buffer_bytes = 0

    def process(self, record: dict, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam) -> Iterator[Any]:
        try:
            action = update_action(record, self._index, self._mode, self._settings.retry_on_conflict)
            size = len(bulk_lines(action).encode("utf-8")) + 2  # and the two newlines
            id_bytes = len(action["_id"].encode("utf-8"))
            if id_bytes > MAX_ID_BYTES:  # refused here, or the cluster would refuse the whole batch with it
                raise BadRecord(f"id {action['_id'][:40]!r}... is {id_bytes} bytes long; Elasticsearch takes "
                                f"ids of at most {MAX_ID_BYTES} bytes, so shorten or hash such ids upstream")
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
            # A batch fits one request (the buffer's caps are the helper's), so every further one is a retry.
            self._counters["retried_requests"].inc(max(0, _METER.requests - requests - 1))
            self._counters["bulk_bytes"].inc(_METER.bytes - sent_bytes)
            self._counters["retried"].inc(max(0, _METER.docs - docs - len(batch)))
        for outcome in outcomes:
            self._counters[outcome.tag].inc()
            yield beam.pvalue.TaggedOutput(outcome.tag, WindowedValue(
                outcome.value, outcome.entry.timestamp, (outcome.entry.window,)))

    def _write(self, batch: list[_Pending]) -> list[_Outcome]:
        """Send ``batch`` until every document has an outcome; raises only for 401/403."""
        s = self._settings
        pending = batch
        outcomes: list[_Outcome] = []
        server_error_deadline = time.monotonic() + s.max_retry_time
        unavailable_deadline: float | None = None
        attempt = 0
        while True:
            attempt_started = time.monotonic()
            result = self._attempt(pending)
            outcomes.extend(result.outcomes)
            if result.fatal:
                raise EsError(result.fatal, result.fatal_status)
            self._track_outage(result, attempt_started)
            if not result.unavailable and not result.server_errors:
                return outcomes
            now = time.monotonic()
            delay = backoff_delay(attempt, s.initial_backoff, s.max_backoff)
            pending = []
            if result.server_errors:
                if attempt >= s.max_retries or now + delay > server_error_deadline:
                    for entry, status, error in result.server_errors.values():
                        outcomes.append(_Outcome(FAILED, (entry.record, failure_reason(status, None),
                                                          f"{error} (gave up after {attempt + 1} attempts)"), entry))
                else:
                    pending += [entry for entry, _, _ in result.server_errors.values()]
            if result.unavailable:
                if unavailable_deadline is None:
                    unavailable_deadline = attempt_started + s.unavailable_seconds
                if now >= unavailable_deadline:
                    outcomes += self._give_up(result.unavailable, now - unavailable_deadline + s.unavailable_seconds)
                else:
                    pending += [entry for entry, _ in result.unavailable.values()]
                    delay = min(delay, unavailable_deadline - now)
            if not pending:
                return outcomes
            time.sleep(delay)
            attempt += 1

    def _give_up(self, unavailable: dict[str, tuple[_Pending, str]], waited: float) -> list[_Outcome]:
        if self._outage is not None:
            self._outage.dead_lettered += len(unavailable)
        return [_Outcome(FAILED, (entry.record, UNAVAILABLE, scrub(
            f"Elasticsearch at {self._config.safe_url()} did not take the write within {waited:.1f} s "
            f"(--es-unavailable-seconds {self._settings.unavailable_seconds:g}); last error: {error}. "
            "Replay this dead letter once the cluster is back")), entry)
            for entry, error in unavailable.values()]

    def _track_outage(self, result: _Attempt, attempt_started: float) -> None:
        """One log line when this worker loses the cluster, one when the cluster answers again."""
        url = self._config.safe_url()
        if result.answered and self._outage is not None:
            outage, self._outage = self._outage, None
            # A warning too, so that the pair shows wherever the first one does (the console script logs warnings).
            log.warning("Elasticsearch at %s is back after an outage of %.1f s; %d document(s) were dead-lettered "
                        "as %s during it", url, time.monotonic() - outage.started, outage.dead_lettered, UNAVAILABLE)
        elif not result.answered and result.unavailable and self._outage is None:
            error = next(iter(result.unavailable.values()))[1]
            self._outage = _Outage(attempt_started)
            log.warning("Elasticsearch at %s is unavailable (%s); retrying each batch for up to %g s "
                        "(--es-unavailable-seconds), then dead-lettering it as %s",
                        url, error, self._settings.unavailable_seconds, UNAVAILABLE)

    def _attempt(self, pending: list[_Pending]) -> _Attempt:
        """One pass of the bulk helper over ``pending``; what got no answer is unavailable."""
        s = self._settings
        result = _Attempt()
        waiting = {entry.id: entry for entry in pending}
        try:
            for ok, item in helpers.streaming_bulk(
                    self._client, [entry.action for entry in pending], chunk_size=s.max_docs,
                    max_chunk_bytes=s.max_bytes, raise_on_error=False, raise_on_exception=False,
                    max_retries=self._helper_retries, initial_backoff=s.initial_backoff, max_backoff=s.max_backoff,
                    yield_ok=True):
                (info,) = item.values()
                self._classify(ok, info, waiting.pop(info["_id"]), result)
        except TransportError as exc:  # connection refused or reset, timeouts: no answer for what is left
            error = describe(exc)
            result.unavailable.update((doc_id, (entry, error)) for doc_id, entry in waiting.items())
        return result

    def _classify(self, ok: bool, info: dict, entry: _Pending, result: _Attempt) -> None:
        if ok:
            result.answered = True
            tag = STALE if info.get("result") == "noop" else DELETED if entry.tombstone else WRITTEN
            result.outcomes.append(_Outcome(tag, entry.id, entry))
            return
        status = int(info.get("status", 500))
        error_type = _error_type(info)
        error = _error_text(info)
        whole_request = "exception" in info
        result.answered = result.answered or not (whole_request and status in UNAVAILABLE_STATUSES)
        if status in UNAVAILABLE_STATUSES:
            result.unavailable[entry.id] = (entry, error)
        elif status in RETRYABLE_STATUSES:
            result.server_errors[entry.id] = (entry, status, error)
        elif whole_request and status in (401, 403):
            result.fatal_status = status
            result.fatal = (f"bulk request to index {self._index!r} at {self._config.safe_url()} was refused "
                            f"with status {status}: {error}. Check ES_API_KEY, or ES_USERNAME and ES_PASSWORD, "
                            "and the key's privileges on the index.")
        elif whole_request:
            reason = failure_reason(status, error_type)
            result.outcomes.append(_Outcome(FAILED, (entry.record, reason, scrub(
                f"Elasticsearch refused the whole bulk request to index {self._index!r} with status {status}, "
                f"so every record of the batch is dead-lettered: {error}")), entry))
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
    ``initial_backoff``, ``max_backoff`` and ``max_retry_time`` bound the retries of a batch's
    5xx answers; ``unavailable_seconds`` is how long a batch waits out an unavailable cluster
    before it is dead-lettered as ``es_unavailable``.
    Metrics (namespace ``imagescore``): es_written, es_deleted, es_stale, es_missing,
    es_failed, es_retried (documents sent again), es_retried_requests (bulk requests sent again),
    es_bulk_requests, es_bulk_bytes.
    """

    def __init__(self, config: EsConfig, index: str, max_docs: int = 500, max_bytes: int = 5 * 1024 * 1024,
                 max_retries: int = 5, initial_backoff: float = 0.5, max_backoff: float = 30.0,
                 max_retry_time: float = 120.0, label: str | None = None, *, mode: WriteMode | str,
                 unavailable_seconds: float = 600.0):
        super().__init__(label)
        if not index or any(c in index for c in ' "*\\/,|<>?#'):
            raise ValueError(f"{index!r} is not a concrete index name; the writer needs one index or alias")
        self._config = config
        self._index = index
        self._mode = WriteMode.of(mode)
        self._settings = WriteSettings(max_docs, max_bytes, max_retries, initial_backoff, max_backoff,
                                       max_retry_time, unavailable_seconds=unavailable_seconds)

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
