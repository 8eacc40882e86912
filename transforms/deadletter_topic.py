"""Dead letters on a Pub/Sub topic: the original payload as data, the rest as attributes.

A dead-letter record (see :mod:`transforms.deadletter`) becomes one message whose
data is the input exactly as it arrived (base64 payloads decoded back to their
bytes), so ``imagescore replay`` can republish it unchanged to the input topic.
Attributes: ``stage``, ``reason``, ``error`` (secrets already scrubbed), and, when
known, ``item_id``, ``message_id`` and ``publish_time`` of the original message.
"""
from __future__ import annotations

import base64

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage, WriteToPubSub

from es.secrets import scrub


#: Pub/Sub refuses attribute values longer than this many bytes.
ATTRIBUTE_VALUE_LIMIT = 1024
#: record field -> message attribute
ATTRIBUTES = {"stage": "stage", "reason": "reason", "error": "error", "id": "item_id",
              "message_id": "message_id", "publish_time": "publish_time"}


def _clip(text: str, limit: int = ATTRIBUTE_VALUE_LIMIT) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit - 3].decode("utf-8", errors="ignore") + "..."


def payload_bytes(record: dict) -> bytes:
    """The original input of a dead-letter record, byte for byte."""
    payload = record.get("payload") or ""
    if record.get("payload_encoding") == "base64":
        return base64.b64decode(payload)
    return payload.encode("utf-8")


def to_message(record: dict) -> PubsubMessage:
    """One dead-letter record as a Pub/Sub message."""
    attributes = {}
    for field, name in ATTRIBUTES.items():
        value = record.get(field)
        if value is not None and value != "":
            attributes[name] = _clip(scrub(str(value)))
    return PubsubMessage(payload_bytes(record), attributes)


def to_record(data: bytes, attributes: dict) -> dict:
    """A dead-letter message back as a record (for ``replay`` to files); the inverse of :func:`to_message`."""
    record = {field: attributes.get(name) for field, name in ATTRIBUTES.items()}
    try:
        record["payload"] = data.decode("utf-8")
    except UnicodeDecodeError:
        record["payload"] = base64.b64encode(data).decode("ascii")
        record["payload_encoding"] = "base64"
    return record


class PublishDeadLetters(beam.PTransform):
    """Dead-letter records -> messages on ``topic`` (``projects/P/topics/T``)."""

    def __init__(self, topic: str):
        super().__init__()
        self._topic = topic

    def expand(self, records):
        return (records
                | "ToMessage" >> beam.Map(to_message)
                | "Publish" >> WriteToPubSub(self._topic, with_attributes=True))
