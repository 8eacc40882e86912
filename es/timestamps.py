"""ISO 8601 timestamps: the one parser and the one canonical spelling of the whole project.

Every reader of a time (item records, Pub/Sub attributes, SERP logs, flags, the
stale-update guard) parses with :func:`parse_iso`, and every time this project writes
is spelled by :func:`iso`: UTC, microseconds, ``Z``, the year zero-padded to four digits,
so the string is always 27 characters long and strings sort in time order. The guard's
stored script checks exactly that length; ``strftime("%Y")`` does not pad years below
1000 on Linux, which once made ``0999-01-01`` a 26-character version that every later
write of the item failed against.

It lives in ``es/`` because the guard needs it and ``es/`` imports nothing else of ours.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: the length of every :func:`iso` string (``YYYY-MM-DDTHH:MM:SS.ffffffZ``)
ISO_LENGTH = 27


def parse_iso(value: Any, field: str) -> datetime:
    """``value`` (an ISO 8601 string, ``Z`` allowed, or a datetime) as an aware UTC datetime.

    Naive times are taken as UTC (logs and item feeds are UTC by convention). Raises
    :class:`ValueError` naming ``field`` and the value; callers turn it into their own error.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{field} {value!r} is not an ISO 8601 timestamp (e.g. 2026-01-31T12:00:00Z)") from None
    else:
        raise ValueError(f"{field} must be an ISO 8601 string, got {type(value).__name__} {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # an offset that moves year 1 or year 9999 out of datetime's range
        raise ValueError(f"{field} {value!r} is outside the years 1-9999 once converted to UTC") from None


def iso(moment: datetime) -> str:
    """``moment`` in the canonical form: UTC, ISO 8601 with microseconds and ``Z``, always 27 characters."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
            f".{utc.microsecond:06d}Z")
