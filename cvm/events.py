"""The event contracts in Python: validation rules and the JSON-lines form used by files.

Inside cvm an event is ``(kind, record)``: kind is the topic's base name (``transactions``, ``contacts``,
``payments``) and record a dict with the Avro fields, times as integer milliseconds since the epoch (UTC).
In files (``cvm simulate --out``, ``cvm replay``) it is one JSON object per line with a ``type`` key and times as
ISO-8601 strings.

>>> line = to_json("transactions", {"event_id": "e1", "customer_id": "c1", "event_time": 0, "amount": 9.99})
>>> line["type"], line["event_time"]
('transactions', '1970-01-01T00:00:00.000Z')
>>> from_json(line)
('transactions', {'event_id': 'e1', 'customer_id': 'c1', 'event_time': 0, 'amount': 9.99})
>>> validate("transactions", {"event_id": "e1", "customer_id": "", "event_time": 0, "amount": 1.0})
Traceback (most recent call last):
cvm.exceptions.InvalidEvent: missing customer_id

History is any event time from the floor on (``CVM_MIN_EVENT_TIME``, default 1970-01-01): a purchase of 1997 is
history like one of last week. Three limits stay: event time 0 itself (1970-01-01T00:00:00.000Z) is refused as the
value of an unset time; a time of the first 25 days of 1970 is a time in seconds sent as milliseconds (every
second since 1970 until 2038 is below 2**31, which is 1970-01-25 in milliseconds); times more than 7 days ahead of
the wall clock are clock errors.

>>> validate("transactions", {"event_id": "e1", "customer_id": "c1", "event_time": 852_076_800_000, "amount": 1.0})
>>> validate("transactions", {"event_id": "e1", "customer_id": "c1", "event_time": -1, "amount": 1.0})
Traceback (most recent call last):
cvm.exceptions.InvalidEvent: event_time 1969-12-31T23:59:59.999Z is before 1970-01-01T00:00:00.000Z (CVM_MIN_EVENT_TIME)
>>> seconds = {"event_id": "e1", "customer_id": "c1", "event_time": 1_733_400_000, "amount": 1.0}
>>> validate("transactions", seconds)  # doctest: +ELLIPSIS
Traceback (most recent call last):
cvm.exceptions.InvalidEvent: event_time 1733400000 is 1970-01-21T01:30:00.000Z: seconds sent as milliseconds? ...
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from cvm.exceptions import InvalidEvent

__all__ = [
    "CONTACT_CHANNELS",
    "CONTACT_REASONS",
    "MIN_EVENT_TIME_MS",
    "PAYMENT_STATUSES",
    "SECONDS_LIKE_MS",
    "TIME_FIELDS",
    "from_json",
    "iso",
    "parse_time",
    "to_json",
    "validate",
]

CONTACT_CHANNELS = ("phone", "email", "chat", "web", "store")
CONTACT_REASONS = ("information", "complaint", "cancellation_request", "sales", "technical", "billing")
PAYMENT_STATUSES = ("paid", "late", "failed", "chargeback")

#: Fields that hold a time, per kind.
TIME_FIELDS = {
    "transactions": ("event_time",),
    "contacts": ("event_time",),
    "payments": ("event_time", "due_date", "paid_date"),
}
_NUMBER_FIELDS = {
    "transactions": ("amount", "gross_margin"),
    "contacts": ("handle_time_s", "cost"),
    "payments": ("amount_due", "amount_paid"),
}
#: The default floor of event times (``CVM_MIN_EVENT_TIME``): 1970-01-01. Earlier times cannot be history for cvm:
#: customer states count time in non-negative milliseconds since the epoch.
MIN_EVENT_TIME_MS = 0
#: Event times below this (1970-01-25T20:31:23.648Z) are seconds sent as milliseconds: every second since 1970
#: until 2038 is below 2**31.
SECONDS_LIKE_MS = 2**31
_MAX_FUTURE_MS = 7 * 86_400_000  # a week ahead of the wall clock: clock skew, not a future event
_MAX_AMOUNT = 1e9


def iso(ms: int) -> str:
    """ISO-8601 UTC text of a time in milliseconds.

    >>> iso(1_700_000_000_123)
    '2023-11-14T22:13:20.123Z'
    """
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(value: Any, fmt: str | None = None) -> int:
    """Milliseconds since the epoch from ISO-8601 text, a ``strptime`` format, or a number of ms/s.

    Times without a zone are UTC. Numbers are seconds or milliseconds, told apart by magnitude (1e11 s is the year
    5138), except eight digits that make a date: ``19970101`` is the basic ISO-8601 form of 1997-01-01 (what many
    exports write), not 19,970,101 seconds after the epoch.

    >>> parse_time("2023-11-14T22:13:20.123Z")
    1700000000123
    >>> parse_time("14/11/2023", "%d/%m/%Y")
    1699920000000
    >>> parse_time(1700000000), parse_time(1700000000123)
    (1700000000000, 1700000000123)
    >>> iso(parse_time("19970101")), iso(parse_time(19970101)), iso(parse_time("1997-01-01"))
    ('1997-01-01T00:00:00.000Z', '1997-01-01T00:00:00.000Z', '1997-01-01T00:00:00.000Z')
    >>> iso(parse_time("-86400"))
    '1969-12-31T00:00:00.000Z'
    """
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int) and 10_000_000 <= value <= 99_999_999:
        day = _basic_date(str(value))
        if day is not None:
            return day
    if isinstance(value, int | float):
        return int(round(value * 1000)) if abs(value) < 1e11 else int(value)
    text = str(value).strip()
    if fmt:
        dt = datetime.strptime(text, fmt)
    else:
        digits = text[1:] if text[:1] in "+-" else text
        if digits.replace(".", "", 1).isdigit():
            day = _basic_date(text) if len(text) == 8 else None
            return day if day is not None else parse_time(float(text))
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(round(dt.timestamp() * 1000))


def _basic_date(text: str) -> int | None:
    """Midnight UTC of an eight-digit ``YYYYMMDD`` date, or None when the digits are no date."""
    try:
        dt = datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return None
    return int(dt.replace(tzinfo=UTC).timestamp() * 1000)


def to_json(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """The JSON-lines object of an event."""
    out: dict[str, Any] = {"type": kind}
    times = TIME_FIELDS[kind]
    for key, value in record.items():
        out[key] = iso(value) if key in times and value is not None else value
    return out


def from_json(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An event from its JSON-lines object; raises ``KeyError``/``ValueError`` on a malformed one."""
    kind = obj["type"]
    if kind not in TIME_FIELDS:
        raise ValueError(f"unknown type {kind!r}")
    times = TIME_FIELDS[kind]
    record = {}
    for key, value in obj.items():
        if key == "type":
            continue
        record[key] = parse_time(value) if key in times and value is not None else value
    return kind, record


def validate(kind: str, record: dict[str, Any], now_ms: int | None = None, floor_ms: int = MIN_EVENT_TIME_MS) -> None:
    """Raise :class:`InvalidEvent` when a decoded event breaks its contract.

    ``now_ms`` is the wall clock, used only to reject absurd future times (clock errors), never for features.
    ``floor_ms`` is the earliest event time accepted (``Config.min_event_time_ms``; default 1970-01-01).
    """
    if not record.get("customer_id"):
        raise InvalidEvent("missing customer_id")
    if not record.get("event_id"):
        raise InvalidEvent("missing event_id")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    t = record.get("event_time")
    if not isinstance(t, int) or isinstance(t, bool):
        raise InvalidEvent(f"event_time {t!r} is not a time in milliseconds", "event_time not a time")
    if 0 < t < SECONDS_LIKE_MS:
        raise InvalidEvent(
            f"event_time {t} is {iso(t)}: seconds sent as milliseconds? (refused before 1970-01-25)",
            "event_time in seconds",
        )
    if t < floor_ms:
        raise InvalidEvent(
            f"event_time {_shown(t)} is before {iso(floor_ms)} (CVM_MIN_EVENT_TIME)", "event_time before the floor"
        )
    if t == 0:
        raise InvalidEvent("event_time is 0 (1970-01-01T00:00:00Z): an unset time, not history", "event_time is 0")
    if t > now_ms + _MAX_FUTURE_MS:
        raise InvalidEvent(
            f"event_time {_shown(t)} is more than 7 days in the future", "event_time more than 7 days ahead"
        )
    for name in _NUMBER_FIELDS[kind]:
        v = record.get(name)
        if v is None:
            continue
        if not math.isfinite(v):
            raise InvalidEvent(f"{name} is {v}", f"{name} not finite")
        if abs(v) > _MAX_AMOUNT:
            raise InvalidEvent(f"{name}={v} is beyond ±1e9", f"{name} beyond ±1e9")
    if kind == "contacts":
        if record["channel"] not in CONTACT_CHANNELS:
            raise InvalidEvent(f"unknown contact channel {record['channel']!r}", "unknown contact channel")
        if record["reason"] not in CONTACT_REASONS:
            raise InvalidEvent(f"unknown contact reason {record['reason']!r}", "unknown contact reason")
    elif kind == "payments" and record["status"] not in PAYMENT_STATUSES:
        raise InvalidEvent(f"unknown payment status {record['status']!r}", "unknown payment status")


def _shown(ms: int) -> str:
    """ISO text of a time when it has one, else the number."""
    try:
        return iso(ms)
    except (OverflowError, OSError, ValueError):
        return str(ms)
