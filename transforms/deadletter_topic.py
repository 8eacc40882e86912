"""Dead letters on a Pub/Sub topic: the original payload as data, the rest as attributes.

A dead-letter record (see :mod:`transforms.deadletter`) becomes one message whose
data is the input exactly as it arrived (base64 payloads decoded back to their
bytes), so ``imagescore replay`` can republish it unchanged to the input topic.
Attributes: ``stage``, ``reason``, ``error`` (secrets already scrubbed), and, when
known, ``item_id``, ``message_id`` and ``publish_time`` of the original message, and
``indexed_without_score: true`` on an image failure whose item was indexed anyway (streaming).

Pub/Sub takes at most 10,000,000 bytes per publish request. A payload that would not
fit beside its attributes (only an input close to that limit can be so large) keeps
its first bytes, and the attribute ``payload_truncated`` holds its full size in bytes.
"""
from __future__ import annotations

import base64

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage, WriteToPubSub

from es.secrets import scrub
from transforms.deadletter import escape_surrogates

#: Pub/Sub refuses attribute values longer than this many bytes.
ATTRIBUTE_VALUE_LIMIT = 1024
#: Pub/Sub refuses a publish request larger than this many bytes (the message, its attributes, the topic).
PUBLISH_REQUEST_LIMIT = 10_000_000
#: what the topic name and the request's framing may take, besides the message's data and attributes
REQUEST_OVERHEAD = 2048
#: the attribute that marks a clipped payload, with the payload's full size in bytes
TRUNCATED = "payload_truncated"
#: record field -> message attribute
ATTRIBUTES = {"stage": "stage", "reason": "reason", "error": "error", "id": "item_id",
              "message_id": "message_id", "publish_time": "publish_time",
              "indexed_without_score": "indexed_without_score"}


def _clip(text: str, limit: int = ATTRIBUTE_VALUE_LIMIT) -> str:
    text = escape_surrogates(text)
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit - 3].decode("utf-8", errors="ignore") + "..."


def payload_bytes(record: dict) -> bytes:
    """The original input of a dead-letter record, byte for byte."""
    payload = record.get("payload") or ""
    if record.get("payload_encoding") == "base64":
        return base64.b64decode(payload)
    return escape_surrogates(payload).encode("utf-8")


def to_message(record: dict) -> PubsubMessage:
    """One dead-letter record as a Pub/Sub message."""
    attributes = {}
    for field, name in ATTRIBUTES.items():
        value = record.get(field)
        if value is not None and value != "":
            attributes[name] = _clip(scrub(str(value)))
    data = payload_bytes(record)
    room = PUBLISH_REQUEST_LIMIT - REQUEST_OVERHEAD - sum(len(k) + len(v.encode("utf-8")) + 8
                                                          for k, v in attributes.items())
    if len(data) > room:
        attributes[TRUNCATED] = str(len(data))
        data = data[:room - len(TRUNCATED) - 32]
    return PubsubMessage(data, attributes)


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
