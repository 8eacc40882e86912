"""Item records: the validated input of the indexing jobs.

An item arrives as JSON (a file line, an Elasticsearch ``_source`` or a
Pub/Sub message). :func:`parse_item` turns it into an :class:`Item` or raises
:class:`~transforms.deadletter.Rejected` with the reason, so a bad record is
dead-lettered with its original payload instead of failing the bundle.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

import apache_beam as beam

from es.timestamps import parse_iso
from transforms.deadletter import DEAD_LETTER, Rejected, escape_surrogates, to_dead_letter


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


#: Elasticsearch refuses document ids longer than this many UTF-8 bytes.
MAX_ID_BYTES = 512
#: the years a version (``updated_at``) may fall in: its canonical form has four digits, and an item
#: edited before the Unix epoch is a producer's placeholder, not a time
VERSION_YEARS = (1970, 9999)


def parse_time(value: Any, field: str, reason: str = "bad_date") -> datetime:
    """:func:`es.timestamps.parse_iso` (the one ISO 8601 parser) raising :class:`Rejected` ``reason``."""
    try:
        return parse_iso(value, field)
    except ValueError as exc:
        raise Rejected(reason, str(exc)) from None


def parse_version(value: Any, field: str = "updated_at") -> datetime:
    """An item version: an ISO 8601 time in the years 1970-9999; :class:`Rejected` ``bad_version`` otherwise.

    A version outside that range cannot be spelled in the guard's 27-character canonical form,
    and every later write of the item would fail against it.
    """
    version = parse_time(value, field, reason="bad_version")
    if not VERSION_YEARS[0] <= version.year <= VERSION_YEARS[1]:
        raise Rejected("bad_version", f"{field} {value!r} is outside the years {VERSION_YEARS[0]}-{VERSION_YEARS[1]}; "
                                      "fix the producer's clock or placeholder and replay the record")
    return version


def check_id(value: Any) -> str:
    """The document id of a record: a non-empty string (or an integer), valid UTF-8, at most 512 bytes.

    Raises :class:`Rejected`: ``missing_id`` when there is no string or integer id, ``bad_id`` when
    Elasticsearch or a Beam key coder could not take it (empty, a lone surrogate, too long).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Rejected("missing_id", f"record has no string 'id' (got {type(value).__name__})")
    value = value.strip()
    if not value:
        raise Rejected("bad_id", "record has an empty 'id'; every record needs the listing's id")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise Rejected("bad_id", f"id {value!r} holds a lone UTF-16 surrogate, which is not text; "
                                 "fix the producer's JSON escaping") from None
    if size > MAX_ID_BYTES:
        raise Rejected("bad_id", f"id {value[:40]!r}... is {size} bytes in UTF-8; Elasticsearch takes at most "
                                 f"{MAX_ID_BYTES}")
    return value


def check_text(record: dict) -> None:
    """Refuse a record with a lone UTF-16 surrogate in any key or string (``bad_field``, naming where).

    JSON may escape one (``"\\ud800"``); no UTF-8 encoder downstream (a Beam coder, the
    Elasticsearch client, a Pub/Sub attribute) can write it, so it is refused here.
    """
    stack: list[tuple[str, Any]] = [("", record)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                _check_string(key, where)
                stack.append((where, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_string(value, path)


def _check_string(value: Any, where: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Rejected("bad_field", f"{escape_surrogates(where)!r} holds a lone UTF-16 surrogate, which is "
                                        "not text; fix the producer's JSON escaping") from None


def known_id(record: dict) -> str | None:
    """The record's id when it passes :func:`check_id`, else ``None`` (for naming a rejected record)."""
    try:
        return check_id(record.get("id"))
    except Rejected:
        return None


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
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
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
        exc.id = known_id(record)
        raise


def _validate(record: dict, text: str) -> Item:
    item_id = check_id(record.get("id"))
    check_text(record)
    urls = record.get("image_urls")
    if not isinstance(urls, list) or not urls:
        raise Rejected("no_images", f"item {item_id} has no 'image_urls' (a non-empty list of URLs is required)")
    if not all(isinstance(u, str) and u.strip() for u in urls):
        raise Rejected("bad_field", f"item {item_id}: every entry of 'image_urls' must be a non-empty string")
    if "created_at" not in record:
        raise Rejected("bad_date", f"item {item_id} has no 'created_at'")
    created_at = parse_time(record["created_at"], "created_at")
    updated_at = parse_version(record["updated_at"]) if record.get("updated_at") is not None else None
    price = record.get("price")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))):
        raise Rejected("bad_field", f"item {item_id}: 'price' must be a number, got {price!r}")
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise Rejected("bad_field", f"item {item_id}: 'title' must be a string")
    return Item(
        id=item_id, image_urls=tuple(u.strip() for u in urls), created_at=created_at,
        updated_at=updated_at, price=None if price is None else float(price), title=title, payload=text)


class _ParseItemsFn(beam.DoFn):
    def __init__(self, stage: str):
        self._stage = stage
        self._read = beam.metrics.Metrics.counter("imagescore", "items_read")

    def process(self, payload):
        self._read.inc()
        try:
            item = parse_item(payload)
        except Exception as exc:  # noqa: BLE001 -- no record fails the bundle; others are unexpected_error
            yield to_dead_letter(self._stage, exc, payload)
            return
        yield item


class ParseItems(beam.PTransform):
    """JSON payloads -> :class:`Item`, with the rejects on the ``deadletter`` output."""

    def __init__(self, stage: str = "parse"):
        super().__init__()
        self._stage = stage

    def expand(self, payloads):
        return payloads | beam.ParDo(_ParseItemsFn(self._stage)).with_outputs(DEAD_LETTER, main="items")
