"""Dead-letter records: where every input that could not be scored ends up.

Every stage that rejects an input raises :class:`Rejected` with a short machine
reason (``http_404``, ``not_an_image``, ...). The DoFn that catches it turns it
into one dead-letter record with the original payload, so nothing is dropped
silently and an operator can replay the record once the cause is fixed.
"""
from __future__ import annotations

import base64
import json
from typing import Any

import apache_beam as beam

from es.secrets import scrub

DEAD_LETTER = "deadletter"  # tag of the dead-letter output of every DoFn


class MessagePayload(str):
    """The text of a Pub/Sub message that carries the message's id and publish time.

    The streaming job hands it to the shared fetch/decode transforms as an item's
    ``payload``; :func:`dead_letter` copies the two into the record, so a dead
    letter from any stage still names the message it came from.
    """

    message_id: str | None
    publish_time: str | None

    def __new__(cls, text: str, message_id: str | None = None, publish_time: str | None = None):
        self = super().__new__(cls, text)
        self.message_id = message_id
        self.publish_time = publish_time
        return self

    def __reduce__(self):
        return MessagePayload, (str(self), self.message_id, self.publish_time)


class Rejected(Exception):
    """An input that cannot be processed, with a short reason for counting and routing."""

    def __init__(self, reason: str, message: str, id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.id = id  # the record's id when it was known before the failure


def _payload_text(payload: Any) -> str:
    if isinstance(payload, bytes):
        return payload.decode("utf-8")  # callers hand bytes that are not UTF-8 to dead_letter as base64
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, default=str, sort_keys=True)


def dead_letter(stage: str, reason: str, error: str | BaseException, payload: Any,
                id: str | None = None) -> dict:
    """Build one dead-letter record: ``id`` (when known), ``stage``, ``reason``, ``error``, ``payload``.

    ``error`` is scrubbed of secrets (:func:`es.secrets.scrub`). ``payload`` is the input exactly as it
    came, so that the record can be replayed: it is not scrubbed.

    A payload of bytes that are not UTF-8 is stored as base64, with ``payload_encoding: base64``.
    A :class:`MessagePayload` adds ``message_id`` and ``publish_time``.
    """
    record = {"id": id, "stage": stage, "reason": reason, "error": scrub(str(error))}
    if isinstance(payload, MessagePayload):
        record.update(message_id=payload.message_id, publish_time=payload.publish_time)
        payload = str(payload)
    try:
        record["payload"] = _payload_text(payload)  # the input as it came, so it can be replayed
    except UnicodeDecodeError:  # bytes that are not text: kept exactly, and marked
        record["payload"] = base64.b64encode(payload).decode("ascii")
        record["payload_encoding"] = "base64"
    return record


def count_dead_letter(stage: str, reason: str) -> None:
    """The counters every dead letter adds to: the total, and one per stage and reason."""
    beam.metrics.Metrics.counter("imagescore", "deadlettered").inc()
    beam.metrics.Metrics.counter("imagescore", f"deadletter_{stage}_{reason}").inc()


def to_dead_letter(stage: str, exc: BaseException, payload: Any, id: str | None = None) -> beam.pvalue.TaggedOutput:
    """The tagged output for an exception; :class:`Rejected` keeps its reason, anything else is ``unexpected_error``."""
    reason = exc.reason if isinstance(exc, Rejected) else "unexpected_error"
    id = id if id is not None else getattr(exc, "id", None)
    count_dead_letter(stage, reason)
    return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(stage, reason, exc, payload, id=id))
