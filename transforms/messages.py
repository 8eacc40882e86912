"""The messages of the streaming job, in one place: what each stage reads and writes.

    raw update (Pub/Sub)  --ParseUpdates-->  Update  --KeepNewest-->  Update
        --update_message-->  aggregator -> analyzer topic  --ParseUpdates-->  Update
        --Analyze-->  FeedRecord  --document_message-->  analyzer -> feeder topic
        --ParseDocuments-->  FeedRecord  --Feed-->  Elasticsearch

**Raw update.** The data is one item record as JSON, the record the backfill reads
(``id``, ``image_urls``, ``created_at``, ``updated_at``, any other fields), validated
by the backfill's :func:`transforms.items.parse_item`. ``deleted: true`` marks a
withdrawn listing; a delete needs only ``id`` (and ideally ``updated_at``).
``updated_at`` is the item's version; a message without it takes its publish time
as the version (counted ``version_from_publish_time``).

**Validation** happens here, before anything keyed or stateful sees a message, so no
message can fail a later stage's key coder, state or writer: larger than
``--max-message-bytes`` -> ``message_too_large``; not UTF-8 -> ``bad_encoding``; an id
that is empty, holds a lone surrogate or is over 512 UTF-8 bytes -> ``bad_id``; a
version that does not parse or falls outside the years 1970-9999 -> ``bad_version``;
a lone surrogate in any other field -> ``bad_field``.

**Between stages** (``--stage``) the original message travels unchanged, with its id
and publish time in the attributes :data:`MESSAGE_ID` and :data:`PUBLISH_TIME`, so the
next stage parses it the same way and its dead letters still name the message that
entered the system. The analyzer sends the feeder ``{"document": ..., "payload":
original text}`` with the same attributes and ``item_id``.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.utils.timestamp import Timestamp

from es.timestamps import iso
from transforms.deadletter import (
    DEAD_LETTER,
    MessagePayload,
    Rejected,
    count_dead_letter,
    dead_letter,
    escape_surrogates,
)
from transforms.items import (
    VERSION_YEARS,
    check_id,
    check_text,
    json_object,
    known_id,
    parse_item,
    parse_version,
)
from transforms.limits import DEFAULT_MAX_MESSAGE_BYTES

#: attributes that carry the original message's id and publish time between stages
MESSAGE_ID = "imagescore_message_id"
PUBLISH_TIME = "imagescore_publish_time"
#: the analyzer -> feeder message's attribute with the document id
ITEM_ID = "item_id"
EPOCH = datetime.fromtimestamp(0, UTC)


@dataclasses.dataclass(frozen=True, eq=False)
class Update:
    """One validated item update. Duck-types the ``Item`` the fetch/decode transforms read
    (``id``, ``image_urls``, ``payload``), so they take it unchanged."""

    id: str
    version: datetime
    deleted: bool
    image_urls: tuple[str, ...]
    fields: dict[str, Any]
    payload: MessagePayload
    message_id: str
    publish_time: datetime
    version_from_publish_time: bool = False

    @property
    def order_key(self) -> tuple:
        """Newest wins: larger version, then a delete (deletes win ties, as in the stale-update guard), then
        later publish time, then larger message id (numeric order)."""
        return self.version, self.deleted, self.publish_time, len(self.message_id), self.message_id

    @property
    def thumbnail(self) -> str:
        return self.image_urls[0] if self.image_urls else ""


class FeedRecord(dict):
    """A document for the writer that remembers the message it came from, so a write
    failure can still be dead-lettered with the original payload, id and publish time."""

    def __init__(self, fields: dict, payload: str, message_id: str, publish_time: datetime):
        super().__init__(fields)
        self.payload = str(payload)
        self.message_id = message_id
        self.publish_time = publish_time

    def __reduce__(self):
        return FeedRecord, (dict(self), self.payload, self.message_id, self.publish_time)


# --------------------------------------------------------------------------- building messages

def update_message(update: Update) -> PubsubMessage:
    """Aggregator -> analyzer: the message as it entered the system, its origin in the attributes."""
    return PubsubMessage(str.__str__(update.payload).encode("utf-8"),
                         {MESSAGE_ID: update.message_id, PUBLISH_TIME: iso(update.publish_time)})


def document_message(record: FeedRecord) -> PubsubMessage:
    """Analyzer -> feeder: ``{"document": ..., "payload": original text}``, origin in the attributes."""
    data = json.dumps({"document": dict(record), "payload": record.payload}, sort_keys=True).encode("utf-8")
    return PubsubMessage(data, {MESSAGE_ID: record.message_id, PUBLISH_TIME: iso(record.publish_time),
                                ITEM_ID: str(record.get("id"))})


# --------------------------------------------------------------------------- parsing messages

def message_origin(message: PubsubMessage, fallback: Timestamp | None = None) -> tuple[str, datetime]:
    """``(message id, publish time)`` of the message that entered the system (the attributes of a
    previous stage win over this message's own). Never raises: a time it cannot read is the epoch."""
    attributes = message.attributes if isinstance(message.attributes, dict) else {}
    message_id = attributes.get(MESSAGE_ID) or message.message_id or ""
    message_id = message_id if isinstance(message_id, str) else str(message_id)
    published = attributes.get(PUBLISH_TIME)
    if published:
        try:
            return message_id, parse_version(published, PUBLISH_TIME)
        except Rejected:
            pass
    if isinstance(message.publish_time, datetime):
        try:
            return message_id, message.publish_time.astimezone(UTC)
        except (OverflowError, ValueError):
            pass
    try:
        return message_id, datetime.fromtimestamp(float(fallback) if fallback is not None else 0.0, UTC)
    except (OverflowError, ValueError, OSError):  # an element without a time (Beam's MIN_TIMESTAMP)
        return message_id, EPOCH


def parse_update(data: bytes, message_id: str, publish_time: datetime,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Update:
    """Validate one message; raise :class:`Rejected` naming the field at fault (with the id when known)."""
    if len(data) > max_bytes:
        raise Rejected("message_too_large", f"message {message_id} is {len(data):,} bytes, over "
                                            f"--max-message-bytes {max_bytes:,}; shrink the record at the producer "
                                            "or raise the flag, then replay the dead letter")
    record, text = json_object(data, f"message {message_id}")
    deleted = record.get("deleted", False)
    if not isinstance(deleted, bool):
        raise Rejected("bad_field", f"message {message_id}: 'deleted' must be true or false, got {deleted!r}",
                       id=known_id(record))
    if deleted:  # a delete needs no images or created_at; the id and version rules still hold
        item_id = check_id(record.get("id"))
        try:
            check_text(record)
            raw = record.get("updated_at")
            updated_at = parse_version(raw) if raw is not None else None
        except Rejected as exc:
            exc.id = item_id
            raise
        image_urls: tuple[str, ...] = ()
    else:
        item = parse_item(data)
        item_id, image_urls, updated_at = item.id, item.image_urls, item.updated_at
    version = updated_at or publish_time
    if not VERSION_YEARS[0] <= version.year <= VERSION_YEARS[1]:
        raise Rejected("bad_version", f"message {message_id} has no updated_at and its publish time {iso(version)} "
                                      f"is outside the years {VERSION_YEARS[0]}-{VERSION_YEARS[1]}", id=item_id)
    return Update(id=item_id, version=version, deleted=deleted, image_urls=image_urls,
                  fields=record, payload=MessagePayload(text, message_id, iso(publish_time)),
                  message_id=message_id, publish_time=publish_time, version_from_publish_time=updated_at is None)


def parse_document(data: bytes, message_id: str, publish_time: datetime) -> FeedRecord:
    """Validate one analyzer -> feeder message (the id and version rules of :func:`parse_update` hold)."""
    envelope, _ = json_object(data, f"document message {message_id}")
    document, payload = envelope.get("document"), envelope.get("payload")
    if not isinstance(document, dict) or not isinstance(document.get("id"), str) or not isinstance(payload, str):
        raise Rejected("malformed_document", f"document message {message_id} must hold "
                                             "{'document': {'id': ..., 'updated_at': ...}, 'payload': '...'}")
    check_id(document["id"])
    try:
        check_text(envelope)
        parse_version(document.get("updated_at"))
    except Rejected as exc:
        exc.id = document["id"]
        raise
    return FeedRecord(document, payload, message_id, publish_time)


def message_dead_letter(stage: str, exc: BaseException, message: PubsubMessage, message_id: str,
                        publish_time: datetime, id: str | None = None) -> beam.pvalue.TaggedOutput:
    """The dead letter of a whole message: its exact bytes, its origin, counted per stage and reason."""
    reason = exc.reason if isinstance(exc, Rejected) else "unexpected_error"
    count_dead_letter(stage, reason)
    data = message.data if isinstance(message.data, bytes) else b""
    record = dead_letter(stage, reason, exc, data, id=id if id is not None else getattr(exc, "id", None))
    record.update(message_id=escape_surrogates(message_id), publish_time=iso(publish_time))
    return beam.pvalue.TaggedOutput(DEAD_LETTER, record)


def element_dead_letter(stage: str, exc: BaseException, element: Any) -> beam.pvalue.TaggedOutput:
    """The dead letter of one element inside a stage (an :class:`Update`, a :class:`FeedRecord`, or a
    pair that starts with one): the original message's payload, id and origin. Never raises."""
    reason = exc.reason if isinstance(exc, Rejected) else "unexpected_error"
    count_dead_letter(stage, reason)
    if isinstance(element, tuple) and element and isinstance(element[0], (Update, FeedRecord)):
        element = element[0]
    if isinstance(element, Update):
        return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(stage, reason, exc, element.payload, id=element.id))
    if isinstance(element, FeedRecord):
        letter = dead_letter(stage, reason, exc, element.payload, id=element.get("id"))
        letter.update(message_id=escape_surrogates(str(element.message_id)), publish_time=_iso_or_none(element))
        return beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
    doc_id = element.get("id") if isinstance(element, dict) else None
    return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(stage, reason, exc, element,
                                                             id=doc_id if isinstance(doc_id, str) else None))


def _iso_or_none(record: FeedRecord) -> str | None:
    return iso(record.publish_time) if isinstance(record.publish_time, datetime) else None


class _ParseUpdatesFn(beam.DoFn):
    def __init__(self, stage: str, count_read: bool, max_bytes: int):
        self._stage = stage
        self._count_read = count_read
        self._max_bytes = max_bytes
        self._read = beam.metrics.Metrics.counter("imagescore", "messages_read")
        self._from_publish = beam.metrics.Metrics.counter("imagescore", "version_from_publish_time")

    def process(self, message: PubsubMessage, timestamp=beam.DoFn.TimestampParam):
        if self._count_read:
            self._read.inc()
        message_id, published = message_origin(message, timestamp)
        try:
            update = parse_update(message.data or b"", message_id, published, self._max_bytes)
        except Exception as exc:  # noqa: BLE001 -- a bad message never fails the bundle
            yield message_dead_letter(self._stage, exc, message, message_id, published)
            return
        if update.version_from_publish_time and self._count_read:
            self._from_publish.inc()
        yield update


class ParseUpdates(beam.PTransform):
    """``PubsubMessage`` -> :class:`Update`, rejects on the ``deadletter`` output.

    ``count_read`` counts ``messages_read`` (the first stage that sees a message does);
    ``max_bytes`` is ``--max-message-bytes``.
    """

    def __init__(self, stage: str, count_read: bool = True, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        super().__init__()
        if max_bytes <= 0:
            raise ValueError(f"--max-message-bytes must be positive, got {max_bytes}")
        self._stage = stage
        self._count_read = count_read
        self._max_bytes = max_bytes

    def expand(self, messages):
        return messages | "ParseUpdate" >> beam.ParDo(
            _ParseUpdatesFn(self._stage, self._count_read, self._max_bytes)).with_outputs(DEAD_LETTER, main="updates")


class _ParseDocumentFn(beam.DoFn):
    """Feeder input (``--stage feeder``) -> :class:`FeedRecord`, or a dead letter with the exact bytes."""

    def __init__(self):
        self._read = beam.metrics.Metrics.counter("imagescore", "messages_read")

    def process(self, message: PubsubMessage, timestamp=beam.DoFn.TimestampParam):
        self._read.inc()
        message_id, published = message_origin(message, timestamp)
        try:
            record = parse_document(message.data or b"", message_id, published)
        except Exception as exc:  # noqa: BLE001 -- a bad message never fails the bundle
            attributes = message.attributes if isinstance(message.attributes, dict) else {}
            yield message_dead_letter("feeder", exc, message, message_id, published,
                                      id=getattr(exc, "id", None) or attributes.get(ITEM_ID))
            return
        yield record


class ParseDocuments(beam.PTransform):
    """Feeder input messages -> :class:`FeedRecord` on ``documents``, rejects on ``deadletter``."""

    def expand(self, messages):
        return messages | "ParseDocument" >> beam.ParDo(_ParseDocumentFn()).with_outputs(DEAD_LETTER, main="documents")
