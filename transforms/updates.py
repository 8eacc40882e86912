"""Item updates from Pub/Sub: one message, one :class:`Update`, or one dead letter.

A message's data is one item record as JSON, the record the backfill reads
(``id``, ``image_urls``, ``created_at``, ``updated_at``, any other fields), so it
is validated by the backfill's :func:`transforms.items.parse_item`. ``deleted:
true`` marks a withdrawn listing; a delete needs only ``id`` (and ideally
``updated_at``). ``updated_at`` is the item's version; a message without it takes
its publish time as the version, and that is counted (``version_from_publish_time``).

Between the stages of a split job (``--stage``) the original message travels
unchanged, with its id and publish time in the attributes :data:`MESSAGE_ID` and
:data:`PUBLISH_TIME`, so the next stage parses it the same way and its dead
letters still name the message that entered the system.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.utils.timestamp import Timestamp

from es.guard import canonical_version
from transforms.deadletter import DEAD_LETTER, MessagePayload, Rejected, count_dead_letter, dead_letter
from transforms.items import json_object, parse_item, parse_time

#: attributes that carry the original message's id and publish time between stages
MESSAGE_ID = "imagescore_message_id"
PUBLISH_TIME = "imagescore_publish_time"


def iso(moment: datetime) -> str:
    """A time in the one spelling this job writes: the stale-update guard's canonical form
    (UTC, microseconds, ``Z``), which sorts in time order as a string."""
    return canonical_version(moment)


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
        """Newest wins: larger version, then later publish time, then larger message id (numeric order)."""
        return self.version, self.publish_time, len(self.message_id), self.message_id

    @property
    def thumbnail(self) -> str:
        return self.image_urls[0] if self.image_urls else ""

    def original_message(self) -> PubsubMessage:
        """The message as it entered the system, with its origin in the attributes (the aggregator's output)."""
        return PubsubMessage(str(self.payload).encode("utf-8"),
                             {MESSAGE_ID: self.message_id, PUBLISH_TIME: iso(self.publish_time)})


def message_origin(message: PubsubMessage, fallback: Timestamp | None = None) -> tuple[str, datetime]:
    """``(message id, publish time)`` of the message that entered the system (the attributes of a
    previous stage win over this message's own)."""
    attributes = message.attributes or {}
    message_id = attributes.get(MESSAGE_ID) or message.message_id or ""
    published = attributes.get(PUBLISH_TIME)
    if published:
        try:
            return message_id, parse_time(published, PUBLISH_TIME)
        except Rejected:
            pass
    if message.publish_time is not None:
        return message_id, message.publish_time.astimezone(timezone.utc)
    seconds = float(fallback) if fallback is not None else 0.0
    return message_id, datetime.fromtimestamp(seconds, timezone.utc)


def parse_update(data: bytes, message_id: str, publish_time: datetime) -> Update:
    """Validate one message; raise :class:`Rejected` naming the field at fault (with the id when known)."""
    record, text = json_object(data, f"message {message_id}")
    deleted = record.get("deleted", False)
    if not isinstance(deleted, bool):
        raise Rejected("bad_field", f"message {message_id}: 'deleted' must be true or false, got {deleted!r}",
                       id=_known_id(record))
    if deleted:
        try:
            item_id = parse_item(data).id
        except Rejected as exc:   # a delete needs no images or created_at; the parser's id rule still holds
            if exc.id is None:
                raise
            item_id = exc.id
        image_urls: tuple[str, ...] = ()
        raw = record.get("updated_at")
        try:
            updated_at = parse_time(raw, "updated_at") if raw is not None else None
        except Rejected as exc:
            exc.id = item_id
            raise
    else:
        item = parse_item(data)
        item_id, image_urls, updated_at = item.id, item.image_urls, item.updated_at
    return Update(id=item_id, version=updated_at or publish_time, deleted=deleted, image_urls=image_urls,
                  fields=record, payload=MessagePayload(text, message_id, iso(publish_time)),
                  message_id=message_id, publish_time=publish_time, version_from_publish_time=updated_at is None)


def _known_id(record: dict) -> str | None:
    raw = record.get("id")
    return str(raw).strip() if isinstance(raw, (str, int)) and not isinstance(raw, bool) and str(raw).strip() else None


def message_dead_letter(stage: str, exc: BaseException, message: PubsubMessage, message_id: str,
                        publish_time: datetime, id: str | None = None) -> beam.pvalue.TaggedOutput:
    """The dead letter of a whole message: its exact bytes, its origin, counted per stage and reason."""
    reason = exc.reason if isinstance(exc, Rejected) else "unexpected_error"
    count_dead_letter(stage, reason)
    record = dead_letter(stage, reason, exc, message.data or b"", id=id if id is not None else getattr(exc, "id", None))
    record.update(message_id=message_id, publish_time=iso(publish_time))
    return beam.pvalue.TaggedOutput(DEAD_LETTER, record)


class _ParseUpdatesFn(beam.DoFn):
    def __init__(self, stage: str, count_read: bool):
        self._stage = stage
        self._count_read = count_read
        self._read = beam.metrics.Metrics.counter("imagescore", "messages_read")
        self._from_publish = beam.metrics.Metrics.counter("imagescore", "version_from_publish_time")

    def process(self, message: PubsubMessage, timestamp=beam.DoFn.TimestampParam):
        if self._count_read:
            self._read.inc()
        message_id, published = message_origin(message, timestamp)
        try:
            update = parse_update(message.data or b"", message_id, published)
        except Exception as exc:  # noqa: BLE001 -- a bad message never fails the bundle
            yield message_dead_letter(self._stage, exc, message, message_id, published)
            return
        if update.version_from_publish_time and self._count_read:
            self._from_publish.inc()
        yield update


class ParseUpdates(beam.PTransform):
    """``PubsubMessage`` -> :class:`Update`, rejects on the ``deadletter`` output.

    ``count_read`` counts ``messages_read`` (the first stage that sees a message does).
    """

    def __init__(self, stage: str, count_read: bool = True):
        super().__init__()
        self._stage = stage
        self._count_read = count_read

    def expand(self, messages):
        return messages | "ParseUpdate" >> beam.ParDo(
            _ParseUpdatesFn(self._stage, self._count_read)).with_outputs(DEAD_LETTER, main="updates")
