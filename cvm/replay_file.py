"""The history files ``cvm replay`` reads (``cvm verify`` and ``cvm backtest`` read them the same way):
:class:`HistoryFile` turns a file into :class:`Parsed` events and :class:`Rejected` rows, in file order; each value
is read into its field by :mod:`cvm.replay_values`.

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

Times and other values are read as :mod:`cvm.replay_values` says. A transaction without a currency is in the
``default_currency`` given (the commands give the base currency, ``CVM_BASE_CURRENCY``), else its schema's default.

A row without ``event_id`` gets ``{file_id}:{line}``, where the file id is the first 16 hex digits of the SHA-256 of
the file's bytes: replaying the same file twice publishes the same ids (downstream ignores the duplicates), and two
identical rows stay two events. Rows are numbered by their first line in text files and from 1 in Avro files.

A row that cannot be an event (unparseable, a required field missing) is a :class:`Rejected` with its ``line N:
reason``, not an error: what to do with it is the command's business (:mod:`cvm.replay`).

>>> parse_mapping(["amount=montant", "customer_id = client"])
{'amount': 'montant', 'customer_id': 'client'}
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cvm.codec import KINDS
from cvm.events import from_json
from cvm.exceptions import CvmError
from cvm.replay_values import _fields

__all__ = ["FORMATS", "HistoryFile", "Parsed", "Rejected", "file_id", "parse_mapping"]

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
