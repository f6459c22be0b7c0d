"""A ClickHouse table's columns, and turning records (dicts from JSON/Avro) into rows for them.

:class:`Table` reads a table's columns from ``system.columns`` and converts each record's values to what
clickhouse-connect writes for the column's type (times arrive as epoch milliseconds); the writer inserts the rows
through :class:`sinks.clickhouse.ClickHouse`.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from cvm.events import parse_time
from cvm.exceptions import ClickHouseUnavailable
from sinks.clickhouse import ClickHouse

__all__ = ["Table"]

Converter = Callable[[Any], Any]


def _to_ms(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"not a time: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(round(aware.timestamp() * 1000))
    return parse_time(value)


class _NoFastPath:
    """No value is of this type: a column whose every value goes through its converter."""


def _native(ch_type: str) -> type:
    """The Python type whose values :func:`_converter` returns unchanged for ``ch_type`` (the fast path)."""
    inner = re.match(r"^(Nullable|LowCardinality)\((.*)\)$", ch_type)
    if inner:
        return _native(inner.group(2))
    if re.match(r"^U?Int\d+$", ch_type) or re.match(r"^DateTime64\(3\b", ch_type):
        return int
    if re.match(r"^Float\d+$", ch_type):
        return float
    if ch_type == "String" or ch_type.startswith("FixedString") or ch_type.startswith("Enum"):
        return str
    if ch_type == "Bool":
        return bool
    return _NoFastPath


def _converter(ch_type: str) -> tuple[Converter, Any]:
    """How to turn a JSON/Avro value into what clickhouse-connect writes for ``ch_type``, and the zero value.

    Times arrive as epoch milliseconds and are written as raw ticks (clickhouse-connect's fast path for ints).
    """
    inner = re.match(r"^(Nullable|LowCardinality)\((.*)\)$", ch_type)
    if inner:
        conv, zero = _converter(inner.group(2))
        if inner.group(1) == "Nullable":
            return (lambda v: None if v is None else conv(v)), None
        return conv, zero
    if ch_type.startswith("DateTime64"):
        found = re.match(r"DateTime64\((\d+)", ch_type)
        precision = int(found.group(1)) if found else 3
        if precision == 3:
            return _to_ms, 0
        if precision > 3:
            scale = 10 ** (precision - 3)
            return (lambda v: _to_ms(v) * scale), 0
        div = 10 ** (3 - precision)
        return (lambda v: _to_ms(v) // div), 0
    if ch_type.startswith("DateTime"):
        return (lambda v: _to_ms(v) // 1000), 0
    if ch_type == "Date":
        return (lambda v: datetime.fromtimestamp(_to_ms(v) / 1000, UTC).date()), date(1970, 1, 1)
    if re.match(r"^U?Int\d+$", ch_type):
        return int, 0
    if re.match(r"^Float\d+$", ch_type):
        return float, 0.0
    if ch_type == "Bool":
        return bool, False
    if ch_type in ("String",) or ch_type.startswith("FixedString") or ch_type.startswith("Enum"):
        return (lambda v: v if isinstance(v, str) else json.dumps(v) if isinstance(v, dict | list) else str(v)), ""
    array = re.match(r"^Array\((.*)\)$", ch_type)
    if array:
        conv, _ = _converter(array.group(1))
        return (lambda v: [conv(x) for x in v]), []
    return (lambda v: v), None


class Table:
    """A table's columns as ClickHouse reports them, and how to turn a record (dict) into a row.

    The column list comes from ``system.columns`` at start-up, so a new column is a migration away: the sink
    maps records onto whatever columns exist. Keys without a column are left out here; score messages have their
    keys checked against their contract before (:mod:`schemas.scores`).
    """

    def __init__(self, name: str, columns: Sequence[tuple[str, str]]) -> None:
        self.name = name
        self.columns = [c for c, _ in columns]
        self.types = dict(columns)
        self.zero: dict[str, Any] = {}
        # Per column: the type whose values pass unchanged, the converter, the zero value. Most values arrive
        # with their column's type already, and skipping the converter call halves the time of convert().
        self._plan: dict[str, tuple[type, Converter, Any]] = {}
        for col, typ in columns:
            conv, self.zero[col] = _converter(typ)
            self._plan[col] = (_native(typ), conv, self.zero[col])

    @classmethod
    def load(cls, ch: ClickHouse, name: str) -> Table:
        found = ch.rows(
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} "
            "AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY position",
            {"db": ch.database, "t": name},
        )
        if not found:
            raise ClickHouseUnavailable(f"table {ch.database}.{name} does not exist: run the sink's migrations")
        return cls(name, found)

    def convert(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The record's values for this table's columns (present keys only), converted.

        Raises ``ValueError``/``TypeError`` for a value that does not fit its column. A ``None`` for a column that
        is not Nullable becomes the column type's zero value.
        """
        out = {}
        plan = self._plan
        for key, value in record.items():
            found = plan.get(key)
            if found is None:
                continue
            native, conv, zero = found
            if type(value) is native:
                out[key] = value
            elif value is None:
                out[key] = zero
            else:
                out[key] = conv(value)
        return out

    def rows(self, records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[Sequence[Any]]:
        """Rows for ``columns`` from converted records; a record lacking a column gets the type's zero value."""
        zero = self.zero
        if len(columns) < 2:  # itemgetter of one key gives the value, not a row
            return [[r[c] if c in r else zero[c] for c in columns] for r in records]
        # Per row, C calls only: itemgetter on the record, or on the zeros overlaid with it when keys are missing.
        get = operator.itemgetter(*columns)
        zeros = {c: zero[c] for c in columns}
        width = len(columns)
        try:
            return [get(r) if len(r) == width else get({**zeros, **r}) for r in records]
        except KeyError:  # a record with keys beyond ``columns`` and some missing
            return [get({**zeros, **r}) for r in records]
