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
#: the counter of dead letters that are their message's outcome
DEADLETTERED = "deadlettered"
#: the counter of image dead letters whose item was indexed anyway, without its score (streaming,
#: document mode): the document write is that message's outcome, so they are kept out of ``deadlettered``
IMAGE_DEADLETTERED = "image_deadlettered"


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


def escape_surrogates(text: str) -> str:
    """``text`` with every lone UTF-16 surrogate written as its ``\\ud800``-style escape, so it can be encoded as UTF-8.

    JSON may escape a lone surrogate (``"a\\ud800b"``) and Python decodes it into a ``str``
    that no UTF-8 encoder (a Beam coder, a Pub/Sub attribute, a file) accepts.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text(value: Any) -> str:
    """``str(value)``, never raising (an exception whose ``__str__`` fails is named by its type)."""
    try:
        return escape_surrogates(str(value))
    except Exception:  # noqa: BLE001 -- building a dead letter must not fail
        return f"<{type(value).__name__} that cannot be shown>"


def _payload_text(payload: Any) -> str:
    if isinstance(payload, bytes):
        return payload.decode("utf-8")  # callers hand bytes that are not UTF-8 to dead_letter as base64
    if isinstance(payload, str):
        return escape_surrogates(payload)
    try:
        return json.dumps(payload, default=str, sort_keys=True)  # ensure_ascii: surrogates come out escaped
    except (TypeError, ValueError, RecursionError):
        return _text(repr(payload))


def dead_letter(stage: str, reason: str, error: str | BaseException, payload: Any,
                id: str | None = None) -> dict:
    """Build one dead-letter record: ``id`` (when known), ``stage``, ``reason``, ``error``, ``payload``.

    ``error`` is scrubbed of secrets (:func:`es.secrets.scrub`). ``payload`` is the input exactly as it
    came, so that the record can be replayed: it is not scrubbed.

    A payload of bytes that are not UTF-8 is stored as base64, with ``payload_encoding: base64``.
    A :class:`MessagePayload` adds ``message_id`` and ``publish_time``. It never raises: text
    fields with lone surrogates are escaped (see :func:`escape_surrogates`).
    """
    record = {"id": None if id is None else _text(id), "stage": _text(stage), "reason": _text(reason),
              "error": scrub(_text(error))}
    if isinstance(payload, MessagePayload):
        record.update(message_id=None if payload.message_id is None else _text(payload.message_id),
                      publish_time=None if payload.publish_time is None else _text(payload.publish_time))
        payload = str.__str__(payload)
    try:
        record["payload"] = _payload_text(payload)  # the input as it came, so it can be replayed
    except UnicodeDecodeError:  # bytes that are not text: kept exactly, and marked
        record["payload"] = base64.b64encode(payload).decode("ascii")
        record["payload_encoding"] = "base64"
    return record


def count_dead_letter(stage: str, reason: str, total: str = DEADLETTERED) -> None:
    """The counters every dead letter adds to: ``total`` (:data:`DEADLETTERED`, or
    :data:`IMAGE_DEADLETTERED`), and one per stage and reason."""
    beam.metrics.Metrics.counter("imagescore", total).inc()
    beam.metrics.Metrics.counter("imagescore", f"deadletter_{stage}_{reason}").inc()


def to_dead_letter(stage: str, exc: BaseException, payload: Any, id: str | None = None,
                   total: str = DEADLETTERED) -> beam.pvalue.TaggedOutput:
    """The tagged output for an exception; :class:`Rejected` keeps its reason, anything else is ``unexpected_error``."""
    reason = exc.reason if isinstance(exc, Rejected) else "unexpected_error"
    id = id if id is not None else getattr(exc, "id", None)
    count_dead_letter(stage, reason, total)
    return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(stage, reason, exc, payload, id=id))
