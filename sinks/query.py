r"""Read-only queries: run one on a read-only client, render it as TSV or JSON, and the ``cvm sql`` command.

With embedded ClickHouse only one process may open the data (chDB), so ``cvm sql`` asks a running sink's HTTP API
first and opens chDB itself (read-only) only when no sink answers.

TSV is a header line of column names, then one line per row; tabs, newlines and backslashes inside values are
escaped as ClickHouse does, NULL is ``\N``, arrays and maps are written as JSON.

>>> to_tsv(["id", "note", "n"], [("c1", "a\tb", None), ("c2", "", 1.5)]).splitlines()
['id\tnote\tn', 'c1\ta\\tb\t\\N', 'c2\t\t1.5']
>>> to_json_text([{"id": "c1", "n": 1}])
'[\n{"id": "c1", "n": 1}\n]\n'
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from cvm.config import Config
from cvm.exceptions import ClickHouseUnavailable, QueryError
from sinks.clickhouse import ClickHouse, check_read_only, condense_error, connect

__all__ = ["Reader", "Result", "jsonable", "main", "run_query", "to_json_text", "to_tsv"]


@dataclass(frozen=True)
class Result:
    """The answer of a query: column names and types, rows, and how long ClickHouse took."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    elapsed_ms: float

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready object per row."""
        return [{c: jsonable(v) for c, v in zip(self.columns, row, strict=True)} for row in self.rows]


def run_query(ch: ClickHouse, sql: str) -> Result:
    """Run a reading query on a read-only client; :class:`QueryError` with ClickHouse's reason on one line."""
    if not ch.readonly:
        # A per-query readonly setting would stay on a chDB session for good (see sinks.clickhouse).
        raise ValueError("run_query needs a client from connect(cfg, readonly=True)")
    text = check_read_only(sql)
    start = time.perf_counter()
    try:
        result = ch.query(text)
    except ClickHouseError as exc:
        raise QueryError(condense_error(exc)) from None
    elapsed_ms = round((time.perf_counter() - start) * 1000, 3)
    columns, types = list(result.column_names), [t.name for t in result.column_types]
    rows = [tuple(r) for r in result.result_rows]
    if not rows and not columns:
        columns, types = _describe(ch, text)
    return Result(columns=columns, types=types, rows=rows, elapsed_ms=elapsed_ms)


def _describe(ch: ClickHouse, text: str) -> tuple[list[str], list[str]]:
    """The columns of a query, for an empty answer: chDB sends no header block when no row came back."""
    if not re.match(r"[(\s]*(SELECT|WITH)\b", text, re.IGNORECASE):
        return [], []
    try:
        found = ch.rows(f"DESCRIBE ({text})")
    except ClickHouseError:
        return [], []
    return [str(r[0]) for r in found], [str(r[1]) for r in found]


# --- rendering -----------------------------------------------------------------------------------------------------


def _time_text(value: datetime) -> str:
    return value.isoformat(sep=" ", timespec="milliseconds" if value.microsecond else "seconds")


def jsonable(value: Any) -> Any:
    """A value JSON can carry: times as text, NaN/inf as null, decimals as floats, the rest as text.

    >>> jsonable(datetime(2025, 1, 1, 12, 0, 0, 123000)), jsonable(float("nan")), jsonable([Decimal("1.5")])
    ('2025-01-01 12:00:00.123', None, [1.5])
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return _time_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def _tsv_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 7, as ClickHouse writes it, not Python's 7.0
    if isinstance(value, datetime):
        return _time_text(value)
    if isinstance(value, list | tuple | dict):
        text = json.dumps(jsonable(value), ensure_ascii=False)
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def to_tsv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Header line, then one tab-separated line per row."""
    lines = ["\t".join(_tsv_value(c) for c in columns)]
    lines.extend("\t".join(_tsv_value(v) for v in row) for row in rows)
    return "\n".join(lines) + "\n"


def to_json_text(records: Sequence[dict[str, Any]]) -> str:
    """A JSON list with one object per line: readable, and valid JSON for a program."""
    if not records:
        return "[]\n"
    return "[\n" + ",\n".join(json.dumps(r, default=str, ensure_ascii=False) for r in records) + "\n]\n"


# --- cvm sql -------------------------------------------------------------------------------------------------------


def _sink_url(cfg: Config) -> str | None:
    """The base URL of a sink whose HTTP API answers on this machine, or None."""
    import httpx

    hosts = ["127.0.0.1"]
    if cfg.http_host not in ("", "0.0.0.0", "::", "127.0.0.1", "localhost"):
        hosts.append(f"[{cfg.http_host}]" if ":" in cfg.http_host else cfg.http_host)
    for host in hosts:
        base = f"http://{host}:{cfg.http_port}"
        try:
            answer = httpx.get(f"{base}/health", timeout=1.0)
        except httpx.HTTPError:
            continue
        try:
            body = answer.json()
        except ValueError:
            continue
        if answer.status_code == 200 and isinstance(body, dict) and body.get("status"):
            return base
    return None


def _via_sink(cfg: Config, base: str, sql: str, fmt: str) -> str:
    import httpx

    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if cfg.http_token:
        headers["Authorization"] = f"Bearer {cfg.http_token}"
    try:
        answer = httpx.post(
            f"{base}/api/sql", params={"format": fmt}, content=sql.encode(), headers=headers, timeout=120.0
        )
    except httpx.HTTPError as exc:
        raise ClickHouseUnavailable(f"the sink at {base} stopped answering: {exc}") from None
    if answer.status_code == 200:
        if fmt == "json":
            return to_json_text(answer.json())
        return answer.text
    try:
        error = str(answer.json().get("error", answer.text))
    except ValueError:
        error = answer.text.strip()[:300]
    if answer.status_code == 401:
        raise QueryError(f"the sink at {base} wants a bearer token: set CVM_HTTP_TOKEN to its token")
    if answer.status_code == 400:
        raise QueryError(error)
    raise QueryError(f"the sink at {base} answered HTTP {answer.status_code}: {error}")


class Reader:
    """Reading queries through the running sink's HTTP API when one answers (it owns the embedded engine),
    otherwise straight from ClickHouse, read-only: the choice ``cvm sql`` makes, for the commands built on it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.base = _sink_url(cfg) if cfg.embedded_clickhouse else None
        self.ch = None if self.base is not None else connect(cfg, readonly=True, create=False)

    def records(self, sql: str) -> list[dict[str, Any]]:
        """One JSON-ready object per row."""
        if self.ch is not None:
            return run_query(self.ch, sql).records()
        assert self.base is not None
        return [dict(r) for r in json.loads(_via_sink(self.cfg, self.base, sql, "json"))]

    def close(self) -> None:
        if self.ch is not None:
            self.ch.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(cfg: Config, args: Any) -> int:
    """``cvm sql QUERY [--format tsv|json]``: print the answer of a read-only query."""
    sql: str = args.query
    fmt: str = getattr(args, "format", None) or "tsv"
    base = _sink_url(cfg) if cfg.embedded_clickhouse else None
    if base is not None:
        text = _via_sink(cfg, base, sql, fmt)
    else:
        check_read_only(sql)  # refuse a write before paying for opening the engine
        ch = connect(cfg, readonly=True, create=False)
        try:
            result = run_query(ch, sql)
        finally:
            ch.close()
        text = to_json_text(result.records()) if fmt == "json" else to_tsv(result.columns, result.rows)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
