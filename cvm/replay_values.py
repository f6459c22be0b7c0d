"""How ``cvm replay`` reads a value of a history file into a field of an event: for each field of an event type's
Avro schema, a converter by the field's type and the field's default (the rows themselves are read by
:mod:`cvm.replay_file`).

* **numbers** from JSON numbers or text; decimal commas (``12,50``) and thousands separators are accepted.
* **text** stripped; a JSON object or list is no text.
* **booleans** from ``true``/``false``, ``yes``/``no``, ``1``/``0`` (and French ``oui``/``non``, ``vrai``/``faux``).
* **times** are ISO-8601 or epoch numbers (seconds or milliseconds, told apart by magnitude; eight digits are a
  ``YYYYMMDD`` date), or follow ``--time-format`` (``strptime``); Parquet's timestamp and date values are taken as
  they are; times without a zone are UTC.

Nothing here is public: :class:`cvm.replay_file.HistoryFile` takes each event type's fields from :func:`_fields`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from cvm.codec import load_schema
from cvm.events import parse_time
from cvm.exceptions import CvmError

__all__: list[str] = []

_TRUE = {"true", "t", "yes", "y", "1", "oui", "vrai"}
_FALSE = {"false", "f", "no", "n", "0", "non", "faux"}


def _number(value: Any) -> float:
    """A float from a JSON number or text, decimal comma and thousands separators included.

    >>> _number("12,50"), _number("1 234,5"), _number("1.234,5"), _number("1,234.5"), _number(3)
    (12.5, 1234.5, 1234.5, 1234.5, 3.0)
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, int | float | Decimal):
        return float(value)
    text = str(value).strip().replace("\u00a0", "").replace("\u202f", "").replace(" ", "")
    if "," in text:
        if text.rfind(",") > text.rfind("."):  # the comma is the decimal separator
            text = text.replace(".", "").replace(",", ".")
        else:
            text = text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false, yes/no, 1/0)")


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        raise ValueError(f"{value!r} is not a text")
    return str(value).strip()


def _timestamp(time_format: str | None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, datetime):
            dt = value if value.tzinfo else value.replace(tzinfo=UTC)
            return int(round(dt.timestamp() * 1000))
        if isinstance(value, date):
            return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)
        try:
            return parse_time(value, time_format if isinstance(value, str) else None)
        except (ValueError, OverflowError, OSError):
            hint = f" (expected --time-format {time_format})" if time_format else ""
            raise ValueError(f"{value!r} is not a time{hint}") from None

    return convert


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    convert: Callable[[Any], Any]
    required: bool
    default: Any
    is_time: bool
    what: str  # what a value must be: "not a time", "not a number", ...


def _fields(kind: str, time_format: str | None) -> list[_Field]:
    """Each field of ``kind``'s Avro schema with its converter and default."""
    out = []
    for f in load_schema(kind)["fields"]:
        typ = f["type"]
        if isinstance(typ, list):
            typ = next(t for t in typ if t != "null")
        is_time = isinstance(typ, dict) and typ.get("logicalType") == "timestamp-millis"
        if is_time:
            convert: Callable[[Any], Any] = _timestamp(time_format)
            what = "not a time"
        elif typ == "double":
            convert, what = _number, "not a number"
        elif typ == "boolean":
            convert, what = _boolean, "not a boolean"
        elif typ == "string":
            convert, what = _text, "not a text"
        else:  # a type cvm's contracts do not use yet
            raise CvmError(f"field {f['name']} of {kind} has type {typ!r}, which replay cannot read yet")
        out.append(_Field(f["name"], convert, "default" not in f, f.get("default"), is_time, what))
    return out
