"""Elasticsearch's time values and dates: ``1s``/``5m`` durations, date formats and ``now`` date math."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tests.es_double.errors import NOT_IMPLEMENTED, illegal_argument, parsing_error

DEFAULT_DATE_FORMAT = "strict_date_optional_time||epoch_millis"
_KEEP_ALIVE_RE = re.compile(r"^(\d+)(nanos|micros|ms|s|m|h|d)$")
_NOW_RE = re.compile(r"^now(?:([+-])(\d+)([dhms]))?(?:/([dhms]))?$")
ISO_RE = re.compile(r"^(?P<y>\d{4})(?:-(?P<mo>\d{2})(?:-(?P<d>\d{2})(?:T(?P<h>\d{2})(?::(?P<mi>\d{2})"
                    r"(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?(?P<z>Z|[+-]\d{2}(?::?\d{2})?)?)?)?)?$")


def time_value_ms(value: Any, setting: str) -> float | None:
    """Milliseconds of an Elasticsearch time value (``500ms``, ``1s``, ``5m``); ``-1`` is None (off)."""
    text = str(value)
    if text == "-1":
        return None
    if text == "0":
        return 0.0
    match = _KEEP_ALIVE_RE.match(text)
    if not match:
        raise illegal_argument(f"failed to parse setting [{setting}] with value [{text}] as a time value: "
                               "unit is missing or unrecognized")
    units = {"nanos": 1e-6, "micros": 1e-3, "ms": 1, "s": 1e3, "m": 6e4, "h": 3.6e6, "d": 8.64e7}
    return int(match.group(1)) * units[match.group(2)]


_JAVA_TOKEN = re.compile(r"yyyy|uuuu|MM|dd|HH|mm|ss|SSS|'[^']*'|[^A-Za-z]")
_JAVA_FIELDS = {"yyyy": r"(?P<y>\d{4})", "uuuu": r"(?P<y>\d{4})", "MM": r"(?P<mo>\d{2})", "dd": r"(?P<d>\d{2})",
                "HH": r"(?P<h>\d{2})", "mm": r"(?P<mi>\d{2})", "ss": r"(?P<s>\d{2})", "SSS": r"(?P<f>\d{3})"}
_ISO_FORMATS = {"strict_date_optional_time", "date_optional_time", "strict_date_optional_time_nanos"}
_EPOCH_FORMATS = {"epoch_millis": 1.0, "epoch_second": 1000.0}


def _java_pattern(pattern: str) -> re.Pattern | None:
    """A regex for a Java date pattern built from ``yyyy MM dd HH mm ss SSS`` and literals; None otherwise."""
    out, position, seen = [], 0, set()
    for match in _JAVA_TOKEN.finditer(pattern):
        if match.start() != position:
            return None
        token = match.group()
        if token in _JAVA_FIELDS:
            if token in seen:
                return None
            seen.add(token)
            out.append(_JAVA_FIELDS[token])
        else:
            out.append(re.escape(token[1:-1] if token.startswith("'") else token))
        position = match.end()
    return re.compile("^" + "".join(out) + "$") if position == len(pattern) and seen else None


def from_parts(parts: dict) -> float:
    fraction = (parts.get("f") or "").ljust(9, "0")
    zone = parts.get("z")
    tz = UTC
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        tz = timezone(offset if zone[0] == "+" else -offset)
    moment = datetime(int(parts["y"]), int(parts.get("mo") or 1), int(parts.get("d") or 1), int(parts.get("h") or 0),
                      int(parts.get("mi") or 0), int(parts.get("s") or 0), int(fraction[:6]), tzinfo=tz)
    return moment.timestamp() * 1000


class DateFormat:
    """An Elasticsearch date ``format``: named ISO and epoch formats and simple Java patterns, joined by ``||``."""

    def __init__(self, spec: str):
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"Invalid format: [{spec}]")
        self.spec = spec
        self._parts: list[Any] = []
        for part in spec.split("||"):
            if part in _ISO_FORMATS or part in _EPOCH_FORMATS:
                self._parts.append(part)
            else:
                pattern = _java_pattern(part)
                if pattern is None:
                    raise ValueError(f"Invalid format: [{spec}]: the ES double knows only "
                                     f"{sorted(_ISO_FORMATS | set(_EPOCH_FORMATS))} and Java patterns made of "
                                     "yyyy, MM, dd, HH, mm, ss, SSS and literals; " + NOT_IMPLEMENTED)
                self._parts.append(pattern)

    def parse(self, value: Any) -> float:
        """Epoch milliseconds; ValueError with Elasticsearch's message when no part of the format fits."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"failed to parse date field [{value}] with format [{self.spec}]")
        text = value if isinstance(value, str) else repr(value)
        for part in self._parts:
            try:
                if part in _EPOCH_FORMATS:
                    if isinstance(value, (int, float)) or re.fullmatch(r"-?\d+(\.\d+)?", text):
                        return float(text) * _EPOCH_FORMATS[part]
                elif part in _ISO_FORMATS:
                    match = ISO_RE.match(text)
                    if match:
                        return from_parts(match.groupdict())
                else:
                    match = part.match(text)
                    if match:
                        return from_parts(match.groupdict())
            except (ValueError, OverflowError):
                continue
        raise ValueError(f"failed to parse date field [{value}] with format [{self.spec}]")


def parse_date(value: Any, spec: str = DEFAULT_DATE_FORMAT) -> float:
    """Epoch milliseconds for ``value`` under the date format ``spec``, else ValueError."""
    return DateFormat(spec).parse(value)


def date_math(value: Any, date_format: DateFormat) -> float:
    if isinstance(value, str) and value.startswith("now"):
        match = _NOW_RE.match(value)
        if not match:
            raise parsing_error(f"unsupported date math [{value}]: " + NOT_IMPLEMENTED)
        sign, amount, unit, round_to = match.groups()
        now = datetime.now(UTC)
        if amount:
            delta = timedelta(**{{"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[unit]: int(amount)})
            now = now + delta if sign == "+" else now - delta
        if round_to:
            fields = {"d": {"hour": 0, "minute": 0, "second": 0, "microsecond": 0},
                      "h": {"minute": 0, "second": 0, "microsecond": 0},
                      "m": {"second": 0, "microsecond": 0}, "s": {"microsecond": 0}}[round_to]
            now = now.replace(**fields)
        return now.timestamp() * 1000
    if isinstance(value, str) and "||" in value:
        raise parsing_error(f"date math [{value}] with an anchor: " + NOT_IMPLEMENTED)
    try:
        return date_format.parse(value)
    except ValueError as exc:
        raise parsing_error(str(exc)) from None
