"""Item records: the validated input of the indexing jobs.

An item arrives as JSON (a file line, an Elasticsearch ``_source`` or a
Pub/Sub message). :func:`parse_item` turns it into an :class:`Item` or raises
:class:`~transforms.deadletter.Rejected` with the reason, so a bad record is
dead-lettered with its original payload instead of failing the bundle.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam

from transforms.deadletter import DEAD_LETTER, Rejected, to_dead_letter


@dataclasses.dataclass(frozen=True)
class Item:
    """One listing. ``image_urls[0]`` is the thumbnail, the image that gets scored."""

    id: str
    image_urls: tuple[str, ...]
    created_at: datetime
    updated_at: datetime | None = None
    price: float | None = None
    title: str | None = None
    payload: str = ""  # the original record, kept for dead letters

    @property
    def thumbnail(self) -> str:
        return self.image_urls[0]


def parse_time(value: Any, field: str) -> datetime:
    """Parse an ISO 8601 timestamp (``Z`` allowed) as an aware UTC datetime; naive times are taken as UTC."""
    if not isinstance(value, str):
        raise Rejected("bad_date", f"{field} must be an ISO 8601 string, got {type(value).__name__} {value!r}")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Rejected("bad_date", f"{field} {value!r} is not an ISO 8601 timestamp (e.g. 2026-01-31T12:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def json_object(payload: str | bytes | dict, what: str = "record") -> tuple[dict, str]:
    """``(object, text)`` of a JSON-object payload; :class:`Rejected` ``malformed_json`` otherwise.

    Every reader of JSON lines (items, SERP logs, windows, image lists) starts here,
    so a bad line is rejected the same way everywhere.
    """
    if isinstance(payload, dict):
        return payload, json.dumps(payload, sort_keys=True, default=str)
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Rejected("bad_encoding", f"{what} is not UTF-8 ({exc}); re-export it as UTF-8") from None
    text = payload
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise Rejected("malformed_json", f"{what} is not valid JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(record, dict):
        raise Rejected("malformed_json", f"{what} must be a JSON object, got {type(record).__name__}")
    return record, text


def parse_item(payload: str | bytes | dict) -> Item:
    """Validate one item record; raise :class:`Rejected` naming the field at fault."""
    record, text = json_object(payload, "item record")
    try:
        return _validate(record, text)
    except Rejected as exc:
        raw_id = record.get("id")
        if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
            exc.id = str(raw_id).strip()
        raise


def _validate(record: dict, text: str) -> Item:
    item_id = record.get("id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not item_id.strip():
        raise Rejected("missing_id", "item record has no non-empty string 'id'")
    urls = record.get("image_urls")
    if not isinstance(urls, list) or not urls:
        raise Rejected("no_images", f"item {item_id} has no 'image_urls' (a non-empty list of URLs is required)")
    if not all(isinstance(u, str) and u.strip() for u in urls):
        raise Rejected("bad_field", f"item {item_id}: every entry of 'image_urls' must be a non-empty string")
    if "created_at" not in record:
        raise Rejected("bad_date", f"item {item_id} has no 'created_at'")
    created_at = parse_time(record["created_at"], "created_at")
    updated_at = parse_time(record["updated_at"], "updated_at") if record.get("updated_at") is not None else None
    price = record.get("price")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))):
        raise Rejected("bad_field", f"item {item_id}: 'price' must be a number, got {price!r}")
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise Rejected("bad_field", f"item {item_id}: 'title' must be a string")
    return Item(
        id=item_id.strip(), image_urls=tuple(u.strip() for u in urls), created_at=created_at,
        updated_at=updated_at, price=None if price is None else float(price), title=title, payload=text)


class _ParseItemsFn(beam.DoFn):
    def __init__(self, stage: str):
        self._stage = stage
        self._read = beam.metrics.Metrics.counter("imagescore", "items_read")

    def process(self, payload):
        self._read.inc()
        try:
            yield parse_item(payload)
        except Rejected as exc:
            yield to_dead_letter(self._stage, exc, payload)


class ParseItems(beam.PTransform):
    """JSON payloads -> :class:`Item`, with the rejects on the ``deadletter`` output."""

    def __init__(self, stage: str = "parse"):
        super().__init__()
        self._stage = stage

    def expand(self, payloads):
        return payloads | beam.ParDo(_ParseItemsFn(self._stage)).with_outputs(DEAD_LETTER, main="items")
