"""``cvm replay``: publish a history file through the live topics, with the same codec and producer as live events.

Formats (default from the extension: ``.jsonl``/``.json``/``.ndjson``, ``.csv``/``.tsv``/``.txt``, ``.avro``):

* **jsonl** — the simulator's ``--out`` format (:func:`cvm.events.to_json`, read back with
  :func:`cvm.events.from_json`): one object per line with a ``type`` key (``--type`` for rows without one).
* **csv** — one event per row, of the row's ``type`` column or else of ``--type``. A field is read from the column
  of the same name unless ``--map FIELD=COLUMN`` says otherwise; missing optional fields take their Avro default.
  The delimiter (``,`` ``;`` tab ``|``) is read from the header; decimal commas (``12,50``) are accepted, and rows
  that are not UTF-8 are read as Windows-1252 (spreadsheet exports).
* **avro** — an Avro object container file; the type comes from ``--type`` or from the file's schema name
  (``Transaction``, ``Contact``, ``Payment``).
* **parquet** — a Parquet file (read with pyarrow, a row group at a time), one event per row, columns read like
  CSV columns (``type`` or ``--type``, ``--map``); timestamp and date columns are taken as they are (UTC when
  they carry no zone), decimals as numbers.

Times are ISO-8601 or epoch numbers (seconds or milliseconds, told apart by magnitude; eight digits are a
``YYYYMMDD`` date), or follow ``--time-format`` (``strptime``); times without a zone are UTC. Any time from
``CVM_MIN_EVENT_TIME`` (default 1970-01-01) on is history. A transaction without a currency is in the base currency
(``CVM_BASE_CURRENCY``); one in another currency needs a rate on its date in ``CVM_FX_RATES``
(:mod:`scoring.currency`), or it is a bad row: the worker would only send it to the dead letters.

A row without ``event_id`` gets ``{file_id}:{line}``, where the file id is the first 16 hex digits of the SHA-256 of
the file's bytes: replaying the same file twice publishes the same ids (downstream ignores the duplicates), and two
identical rows stay two events. Rows are numbered by their first line in text files and from 1 in Avro files.

Bad rows fail the command, loudly. The file is read twice: first to check every row, then to publish. A bad row
(unparseable, a required field missing, breaking :func:`cvm.events.validate`, no exchange rate) is reported as
``line N: reason`` (``record N`` in Avro files, ``row N`` in Parquet files) on stderr — the first 20 — and a
summary counts them by reason. When there are more than ``--max-bad`` of them (default 0), nothing is published
and the exit code is 1; otherwise the good rows are published and the bad ones skipped. Publishing nothing at all
(an empty file, every row bad) is an error too, and so is a stop signal before the end of the file.

>>> parse_mapping(["amount=montant", "customer_id = client"])
{'amount': 'montant', 'customer_id': 'client'}
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

from cvm.codec import KINDS, Codec, load_schema, make_registry
from cvm.config import Config
from cvm.events import from_json, parse_time, validate
from cvm.exceptions import CvmError, DecodeError, InvalidEvent
from cvm.publish import Progress, Publisher, StopSignals, format_counts
from scoring.currency import Rates

__all__ = ["FORMATS", "HistoryFile", "Parsed", "Rejected", "RowCheck", "file_id", "main", "parse_mapping"]

#: File extension → format.
FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".avro": "avro",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_UNITS = {"jsonl": "line", "csv": "line", "avro": "record", "parquet": "row"}
_SHOWN_BAD_ROWS = 20
_TRUE = {"true", "t", "yes", "y", "1", "oui", "vrai"}
_FALSE = {"false", "f", "no", "n", "0", "non", "faux"}


@dataclass(frozen=True, slots=True)
class Parsed:
    """A row turned into an event of ``kind``."""

    line: int
    kind: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that cannot be an event, and why; ``kind`` when it was known; ``category`` is the reason without the
    row's values (what the summary counts by; the reason itself when empty)."""

    line: int
    reason: str
    kind: str | None = None
    category: str = ""

    @property
    def what(self) -> str:
        return self.category or self.reason


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """``--map FIELD=COLUMN`` options as ``{field: column}``."""
    mapping = {}
    for item in items:
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise CvmError(f"--map {item!r}: expected FIELD=COLUMN, e.g. --map customer_id=client_id")
        mapping[field.strip()] = column.strip()
    return mapping


def file_id(path: str | Path) -> str:
    """The content identity of a file: the first 16 hex digits of the SHA-256 of its bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


# --- values -----------------------------------------------------------------------------------------------------


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


# --- files ------------------------------------------------------------------------------------------------------


class HistoryFile:
    """A history file to replay: iterate it for :class:`Parsed` and :class:`Rejected` rows in file order.

    Construction checks what can be checked up front (the file exists, the format is known, the event type and the
    ``--map`` columns can be found) and raises :class:`~cvm.exceptions.CvmError` with what to fix.
    :attr:`position` (bytes read) over :attr:`size` tells the progress.
    """

    def __init__(
        self,
        path: str | Path,
        fmt: str | None = None,
        kind: str | None = None,
        mapping: Mapping[str, str] | None = None,
        time_format: str | None = None,
        default_currency: str | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CvmError(f"{self.path} does not exist or is not a file")
        self.format = fmt or FORMATS.get(self.path.suffix.lower(), "")
        if self.format not in _UNITS:
            raise CvmError(
                f"cannot tell the format of {self.path.name} from its name: give --format jsonl, csv, avro or parquet"
            )
        if kind is not None and kind not in KINDS:
            raise CvmError(f"--type {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.mapping = dict(mapping or {})
        self.time_format = time_format
        self.default_currency = default_currency  # of rows without currency (else the schema's default)
        self.size = self.path.stat().st_size
        self.position = 0
        self.unit = _UNITS[self.format]
        self.file_id = file_id(self.path)
        self._fields = {k: _fields(k, time_format) for k in KINDS}
        kinds = [kind] if kind else list(KINDS)
        known = {f.name for k in kinds for f in self._fields[k]} | {"type"}
        for field in self.mapping:
            if field not in known:
                raise CvmError(
                    f"--map {field}={self.mapping[field]}: {field} is no field of {' or '.join(kinds)} "
                    f"(fields: {', '.join(sorted(known))})"
                )
        self.columns: list[str] = []
        self._delimiter = ","
        if self.format == "csv":
            self._check_csv()
        elif self.format == "avro":
            self._check_avro()
        elif self.format == "parquet":
            self._check_parquet()

    def _check_csv(self) -> None:
        with open(self.path, "rb") as fh:
            header = _decode(fh.readline()).lstrip("\ufeff")
        self._delimiter = max(",;\t|", key=header.count) if any(d in header for d in ",;\t|") else ","
        self.columns = [c.strip() for c in next(csv.reader([header], delimiter=self._delimiter), [])]
        self._check_columns()

    def _check_parquet(self) -> None:
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others on a file that is no Parquet
            raise CvmError(f"{self.path.name} is not a Parquet file ({exc})") from None
        self.columns = list(meta.schema_arrow.names)
        self._parquet_rows = max(1, meta.metadata.num_rows)
        self._check_columns()

    def _check_columns(self) -> None:
        """The type column or ``--type``, the ``--map`` columns and the required fields' columns exist."""
        type_column = self.mapping.get("type", "type")
        if self.kind is None and type_column not in self.columns:
            raise CvmError(f"{self.path.name} has no 'type' column: give --type transactions, contacts or payments")
        for field, column in self.mapping.items():
            if column not in self.columns:
                raise CvmError(
                    f"--map {field}={column}: {self.path.name} has no column {column!r} "
                    f"(columns: {', '.join(self.columns)})"
                )
        if self.kind is not None:
            for f in self._fields[self.kind]:
                column = self.mapping.get(f.name, f.name)
                if f.required and f.name != "event_id" and column not in self.columns:
                    raise CvmError(
                        f"{self.path.name} has no column for {self.kind} field {f.name}: "
                        f"add --map {f.name}=COLUMN (columns: {', '.join(self.columns)})"
                    )

    def _check_avro(self) -> None:
        import fastavro

        try:
            with open(self.path, "rb") as fh:
                schema = fastavro.reader(fh).writer_schema
        except (ValueError, EOFError, OSError) as exc:  # fastavro raises ValueError on a bad header
            raise CvmError(f"{self.path.name} is not an Avro container file ({exc})") from None
        name = str(schema.get("name", "") if isinstance(schema, dict) else "").rsplit(".", 1)[-1].lower()
        from_schema = {"transaction": "transactions", "contact": "contacts", "payment": "payments"}.get(
            name.removesuffix("s")
        )
        if self.kind is None:
            if from_schema is None:
                raise CvmError(f"{self.path.name} holds {name or 'unnamed'} records: give --type")
            self.kind = from_schema

    # --- rows -----------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Parsed | Rejected]:
        self.position = 0
        with open(self.path, "rb") as fh:
            if self.format == "jsonl":
                yield from self._jsonl(fh)
            elif self.format == "csv":
                yield from self._csv(fh)
            elif self.format == "parquet":
                yield from self._parquet()
            else:
                yield from self._avro(fh)

    def _lines(self, fh: BinaryIO) -> Iterator[str]:
        for raw in fh:
            self.position += len(raw)
            yield _decode(raw)

    def _jsonl(self, fh: BinaryIO) -> Iterator[Parsed | Rejected]:
        mapped = set(self.mapping.values())
        for line_no, line in enumerate(self._lines(fh), 1):
            if line_no == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield Rejected(line_no, f"not JSON ({exc})", None, "not JSON")
                continue
            if not isinstance(obj, dict):
                yield Rejected(line_no, "not a JSON object")
                continue
            if self.mapping:
                renamed = {k: v for k, v in obj.items() if k not in mapped}
                renamed.update((field, obj[column]) for field, column in self.mapping.items() if column in obj)
                obj = renamed
            if self.kind and not obj.get("type"):
                obj["type"] = self.kind
            kind = obj.get("type")
            if kind not in KINDS:
                yield _no_kind(line_no, kind)
                continue
            if self.time_format:
                obj = self._pre_parse_times(kind, obj)
                if isinstance(obj, Rejected):
                    yield Rejected(line_no, obj.reason, kind, obj.category)
                    continue
            try:
                _, raw = from_json(obj)
            except (KeyError, ValueError, TypeError, OverflowError) as exc:
                yield Rejected(line_no, f"bad time ({exc})", kind, "bad time")
                continue
            yield self._event(line_no, kind, raw, {})

    def _pre_parse_times(self, kind: str, obj: dict[str, Any]) -> dict[str, Any] | Rejected:
        out = dict(obj)
        for f in self._fields[kind]:
            value = out.get(f.name)
            if f.is_time and isinstance(value, str) and value.strip():
                try:
                    out[f.name] = f.convert(value)
                except ValueError as exc:
                    return Rejected(0, f"{f.name}: {exc}", kind, f"{f.name}: not a time")
        return out

    def _csv(self, fh: BinaryIO) -> Iterator[Parsed | Rejected]:
        lines = self._lines(fh)
        reader = csv.reader(lines, delimiter=self._delimiter)
        header = next(reader, None)
        if header is None:
            return
        columns = [c.strip().lstrip("\ufeff") for c in header]
        type_column = self.mapping.get("type", "type")
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Rejected(start, f"not CSV ({exc})", None, "not CSV")
                start = reader.line_num + 1
                continue
            line_no, start = start, reader.line_num + 1
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                yield Rejected(line_no, f"{len(row)} cells, the header has {len(columns)}", None, "wrong cell count")
                continue
            values = dict(zip(columns, row, strict=True))
            kind = values.get(type_column, "").strip() or self.kind or ""
            if kind not in KINDS:
                yield _no_kind(line_no, kind)
                continue
            yield self._event(line_no, kind, values, self.mapping)

    def _parquet(self) -> Iterator[Parsed | Rejected]:
        import pyarrow.parquet as pq

        type_column = self.mapping.get("type", "type")
        n = 0
        try:
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=4096):
                for values in batch.to_pylist():
                    n += 1
                    kind = str(values.get(type_column) or "").strip() or self.kind or ""
                    if kind not in KINDS:
                        yield _no_kind(n, kind)
                        continue
                    yield self._event(n, kind, values, self.mapping)
                self.position = self.size * n // self._parquet_rows
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            yield Rejected(
                n + 1,
                f"unreadable Parquet data ({exc}); the rest of the file is skipped",
                self.kind,
                "unreadable Parquet data",
            )

    def _avro(self, fh: BinaryIO) -> Iterator[Parsed | Rejected]:
        import fastavro

        kind = self.kind
        assert kind is not None  # set from the schema name in _check_avro
        n = 0
        try:
            for obj in fastavro.reader(fh):
                n += 1
                self.position = fh.tell()
                if not isinstance(obj, dict):
                    yield Rejected(n, "not a record", kind)
                    continue
                yield self._event(n, kind, obj, self.mapping)
        except (ValueError, EOFError, OSError) as exc:  # a truncated or corrupt block ends the file
            yield Rejected(
                n + 1, f"unreadable Avro block ({exc}); the rest of the file is skipped", kind, "unreadable Avro block"
            )

    def _event(
        self, line_no: int, kind: str, values: Mapping[str, Any], mapping: Mapping[str, str]
    ) -> Parsed | Rejected:
        record: dict[str, Any] = {}
        for f in self._fields[kind]:
            value = values.get(mapping.get(f.name, f.name))
            if value is None or (isinstance(value, str) and not value.strip()):
                if f.name == "event_id":
                    record["event_id"] = f"{self.file_id}:{line_no}"
                elif f.required:
                    return Rejected(line_no, f"missing {f.name}", kind)
                elif f.name == "currency" and self.default_currency:
                    record["currency"] = self.default_currency
                else:
                    record[f.name] = f.default
                continue
            try:
                record[f.name] = f.convert(value)
            except ValueError as exc:
                return Rejected(line_no, f"{f.name}: {exc}", kind, f"{f.name}: {f.what}")
        return Parsed(line_no, kind, record)


def _no_kind(line: int, kind: Any) -> Rejected:
    if kind:
        return Rejected(line, f"unknown type {kind!r}", None, "unknown type")
    return Rejected(line, "no type: give --type")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


# --- the command ------------------------------------------------------------------------------------------------


class RowCheck:
    """What a parsed row must pass to be published, as ``cvm replay`` and ``cvm verify`` both apply it: the event
    rules (:func:`cvm.events.validate`, with the configured floor), its Avro schema, and a rate to the base
    currency when it is a transaction in another currency."""

    def __init__(self, cfg: Config, now_ms: int | None = None) -> None:
        self.codec = Codec(make_registry(cfg.schema_registry_url))
        self.rates = Rates.from_config(cfg)
        self.floor_ms = cfg.min_event_time_ms
        self.now_ms = int(time.time() * 1000) if now_ms is None else now_ms

    def __call__(self, row: Parsed) -> Rejected | None:
        """None when the row is publishable, else why not."""
        try:
            validate(row.kind, row.record, self.now_ms, self.floor_ms)
            self.codec.encode(row.kind, row.record)
            self.rates.convert(row.kind, row.record)
        except InvalidEvent as exc:
            return Rejected(row.line, str(exc), row.kind, exc.reason)
        except DecodeError as exc:
            return Rejected(row.line, str(exc), row.kind, "breaks its Avro schema")
        return None


class _BadRows:
    """Reports the first bad rows on stderr, counts all of them by reason."""

    def __init__(self, unit: str, limit: int = _SHOWN_BAD_ROWS) -> None:
        self.unit = unit
        self.limit = limit
        self.reasons: dict[str, int] = {}

    def add(self, row: Rejected, clear: Callable[[], None]) -> None:
        total = self.total
        self.reasons[row.what] = self.reasons.get(row.what, 0) + 1
        if total < self.limit:
            clear()
            print(f"{self.unit} {row.line}: {row.reason}", file=sys.stderr)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        """``2 missing customer_id, 1 amount: not a number``, most frequent first."""
        ordered = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{n:,} {reason}" for reason, n in ordered)


def _plural(n: int, unit: str) -> str:
    return f"{n:,} {unit}{'' if n == 1 else 's'}"


def main(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``cvm replay``: check every row, then publish the good ones when at most ``--max-bad`` are bad."""
    started = time.monotonic()
    max_bad = getattr(args, "max_bad", 0)
    if max_bad < 0:
        raise CvmError(f"--max-bad {max_bad}: must be 0 or more")
    source = HistoryFile(
        args.file, args.format, args.type, parse_mapping(args.map), args.time_format, cfg.base_currency
    )
    check = RowCheck(cfg)
    publisher = Publisher(cfg, rate=args.rate)
    name, unit = source.path.name, source.unit
    bad = _BadRows(unit)
    refused: set[int] = set()  # lines of parsed rows the check refused (beyond --max-bad nothing is published)
    rows = 0
    with StopSignals() as stop:
        progress = Progress(f"cvm replay: checking {name}")
        for row in source:  # first pass: every row checked, nothing published
            rows += 1
            if not rows & 511:
                progress.update(rows, source.position / max(source.size, 1))
                if stop.requested:
                    break
            rejected = row if isinstance(row, Rejected) else check(row)
            if rejected is not None:
                bad.add(rejected, progress.close)
                if isinstance(row, Parsed) and len(refused) <= max_bad:
                    refused.add(row.line)
        progress.close()
        if stop.requested:
            raise CvmError(f"stopped while checking {name}: nothing published")
        if bad.total > bad.limit:
            print(f"... and {bad.total - bad.limit:,} more bad {unit}s", file=sys.stderr)
        if bad.total:
            print(f"cvm replay: {_plural(bad.total, 'bad ' + unit)} of {rows:,} in {name}: {bad.summary()}",
                  file=sys.stderr)  # fmt: skip
        if bad.total > max_bad:
            raise CvmError(
                f"{_plural(bad.total, 'bad ' + unit)} in {name}, more than --max-bad {max_bad}: nothing published; "
                f"fix the file, or skip them with --max-bad {bad.total}"
            )
        if bad.total == rows:
            every = f" ({_plural(rows, unit)}, all bad)" if rows else ""
            raise CvmError(f"nothing published: {name} holds no event{every}")
        progress = Progress("cvm replay")
        seen = 0
        for row in source:  # second pass: the good rows published, in file order
            seen += 1
            if not seen & 511:
                progress.update(publisher.published, source.position / max(source.size, 1))
                if stop.requested:
                    break
            if isinstance(row, Parsed) and row.line not in refused:  # checked in the first pass
                publisher.publish(row.kind, row.record)
        progress.close()
        publisher.flush()
    elapsed = time.monotonic() - started
    skipped = f", skipped {_plural(bad.total, 'bad ' + unit)}" if bad.total else ""
    print(
        f"cvm replay: published {publisher.published:,} ({format_counts(publisher.counts)}){skipped} "
        f"from {name} to {cfg.bootstrap} in {elapsed:.1f}s",
        file=sys.stderr,
    )
    if stop.requested:
        raise CvmError(
            f"stopped after publishing {publisher.published:,} events of {name}: replay it again to publish the rest "
            "(events already published count once)"
        )
    return 0
