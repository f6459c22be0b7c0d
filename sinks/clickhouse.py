"""ClickHouse access: connecting (embedded chDB or a server), migrations, batched inserts, read-only queries.

How a record becomes a row of a table (its columns, value conversion) is :mod:`sinks.columns`.

Two clients per process, each with its own lock:

* the **writer** client inserts and migrates;
* the **reader** client (``connect(cfg, readonly=True)``) has ``readonly=1`` set once, for its whole session.

Why two: on chDB, clickhouse-connect applies per-call settings of commands and INSERTs with ``SET`` and restores
them afterwards — but ``SET readonly = DEFAULT`` is itself refused in read-only mode, so a client that ever ran a
query with ``settings={"readonly": 1}`` stays read-only for good and its next INSERT fails. A dedicated read-only
client cannot leak anything. chDB handles of one engine run concurrently (measured: inserts and ``FINAL``
reads on separate handles, no errors), so a slow dashboard query does not stall the writer.

``readonly=1`` alone is not enough: chDB lets ``KILL QUERY`` through in read-only mode, so :func:`check_read_only`
also admits only statements that start with a reading keyword.

>>> check_read_only("  -- count them\\n SELECT count() FROM cvm.customers;")
'SELECT count() FROM cvm.customers'
>>> check_read_only("KILL QUERY WHERE 1")
Traceback (most recent call last):
cvm.exceptions.QueryError: only reading queries are allowed (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS), not KILL
>>> condense_error("Code: 164. DB::Exception: default: Cannot execute query in readonly mode. (READONLY)")
'Cannot execute query in readonly mode. (READONLY)'
"""

from __future__ import annotations

import fcntl
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.insert import InsertContext

from cvm import metrics
from cvm.config import Config
from cvm.exceptions import ClickHouseUnavailable, ConfigError, QueryError

__all__ = [
    "ClickHouse",
    "InsertFailed",
    "MIGRATIONS_DIR",
    "Migration",
    "check_read_only",
    "condense_error",
    "connect",
    "load_migrations",
    "migrate",
]

log = logging.getLogger("cvm.sink")

#: Session settings of the read-only client. Limits keep one runaway query from eating the sink's memory or an
#: HTTP thread forever; they are set before ``readonly`` because nothing can be changed after it.
READ_ONLY_SETTINGS: dict[str, Any] = {
    "max_execution_time": 60,
    "max_result_rows": 1_000_000,
    "result_overflow_mode": "throw",
    "readonly": 1,
}

#: Session settings of the writer client. A history spanning decades puts more months (partitions of the raw
#: tables) in one batch than ClickHouse's default limit of 100 per INSERT: without this the batch would fail forever.
WRITER_SETTINGS: dict[str, Any] = {"max_partitions_per_insert_block": 0}

_READING_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Where the ``NNNN_name.sql`` files live (next to this module, in a checkout and in a wheel alike).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Paths of chDB engines this process opened: chDB allows one per process, shared by all clients.
_OPENED: set[str] = set()


class InsertFailed(ClickHouseUnavailable):
    """ClickHouse refused an insert; the writer tries it again, not before ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- errors and guards ---------------------------------------------------------------------------------------------


def condense_error(exc: BaseException | str) -> str:
    """ClickHouse's error message on one line, without the parts that only repeat or confuse.

    Drops the ``Code: NN. DB::Exception:`` prefixes, the server version, the stack trace, the ``FORMAT Native``
    clause the client appended to the query, and long "Expected one of" lists.

    >>> condense_error("Code: 62. DB::Exception: Syntax error: failed at position 7 (1) (line 1, col 7): 1\\n"
    ...                " FORMAT Native. Expected one of: a, b, c, d, e, f, g, h, i, j. (SYNTAX_ERROR)")
    'Syntax error: failed at position 7 (1) (line 1, col 7): 1. Expected one of: a, b, c, d, e, f, … (SYNTAX_ERROR)'
    """
    text = str(exc)
    text = text.split("Stack trace", 1)[0]
    text = re.sub(r"HTTPDriver for \S+ received ClickHouse error code \d+", "", text)
    text = re.sub(r"\s+", " ", text).replace(" FORMAT Native", "")
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    text = re.sub(r"(Code: \d+\. DB::Exception: )+", "", text)
    text = re.sub(r"^\w+: (?=Cannot execute query in readonly mode)", "", text.strip())

    def _shorten(match: re.Match[str]) -> str:
        items = match.group(1).split(", ")
        return "Expected one of: " + ", ".join(items[:6]) + (", …" if len(items) > 6 else "")

    text = re.sub(r"Expected one of: (.*?)\.(?= \(|$)", _shorten, text)
    text = re.sub(r"(\([A-Z_]+\))(?:\.? \1)+", r"\1", text).strip()
    return text[:500] or type(exc).__name__


def check_read_only(sql: str) -> str:
    """The query without comments before it and semicolons after it; :class:`QueryError` unless it only reads."""
    text = sql.strip()
    while True:
        text = text.lstrip()
        if text.startswith("--") or text.startswith("#"):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        elif text.startswith("/*"):
            text = text.split("*/", 1)[1] if "*/" in text else ""
        else:
            break
    text = text.rstrip().rstrip(";").rstrip()
    if not text:
        raise QueryError("empty query")
    word = re.match(r"[(\s]*([A-Za-z]*)", text)
    keyword = word.group(1).upper() if word else ""
    if keyword not in _READING_KEYWORDS:
        raise QueryError(
            f"only reading queries are allowed ({', '.join(k for k in _READING_KEYWORDS if k != 'DESC')}), "
            f"not {keyword or text.split()[0]}"
        )
    if re.search(r"\bFORMAT\s+\w+\s*$", text, re.IGNORECASE):
        raise QueryError("remove the FORMAT clause: choose the output with --format (tsv or json)")
    return text


# --- the client wrapper --------------------------------------------------------------------------------------------


class ClickHouse:
    """A clickhouse-connect client, the lock that serializes calls on it, and cvm's database name."""

    def __init__(self, client: Client, database: str, dsn: str, readonly: bool = False) -> None:
        self.client = client
        self.database = database
        self.dsn = dsn
        self.readonly = readonly
        self.lock = threading.Lock()
        self._insert_contexts: dict[tuple[str, tuple[str, ...]], InsertContext] = {}

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb:")

    @contextmanager
    def _locked(self, timeout: float = -1) -> Iterator[bool]:
        got = self.lock.acquire(timeout=timeout)
        try:
            yield got
        finally:
            if got:
                self.lock.release()

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """A clickhouse-connect ``QueryResult``; errors are clickhouse-connect's."""
        with self._locked():
            return self.client.query(sql, parameters=dict(parameters) if parameters else None)

    def command(self, sql: str) -> Any:
        with self._locked():
            return self.client.command(sql)

    def rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self.query(sql, parameters).result_rows)

    def ping(self, timeout: float = 2.0) -> bool:
        """True when ClickHouse answers. A client busy with a query counts as alive: it is answering someone."""
        with self._locked(timeout) as got:
            if not got:
                return True
            try:
                return bool(self.client.command("SELECT 1"))
            except Exception:  # any failure means "not healthy"; /health reports it, it does not raise
                return False

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str) -> None:
        """Insert one batch into ``{database}.{table}``, once: :class:`InsertFailed` when ClickHouse refuses it.

        ``token`` becomes the ``insert_deduplication_token``, so the caller's retry of an insert that did reach
        ClickHouse is a no-op. Retrying is the caller's (the writer pauses consuming and tries again with backoff):
        one retry layer, not one inside another.
        """
        if not rows:
            return
        key = (table, tuple(columns))
        started = time.perf_counter()
        try:
            with self._locked():
                ctx = self._insert_contexts.get(key)
                if ctx is None:
                    # Built once per table and column set: building one asks ClickHouse for the column types.
                    ctx = self.client.create_insert_context(table, list(columns), database=self.database)
                    self._insert_contexts[key] = ctx
                ctx.settings["insert_deduplication_token"] = token
                ctx.data = rows
                try:
                    self.client.insert(context=ctx)
                finally:
                    ctx.data = None
        except ClickHouseError as exc:
            metrics.insert_failures.labels(table=table).inc()
            raise InsertFailed(f"insert into {self.database}.{table} failed: {condense_error(exc)}", 0.5) from exc
        finally:
            metrics.insert_seconds.labels(table=table).observe(time.perf_counter() - started)

    def close(self) -> None:
        with self._locked():
            try:
                self.client.close()
            except ClickHouseError:
                pass


# --- connecting ----------------------------------------------------------------------------------------------------


def _chdb_path(dsn: str) -> Path:
    parsed = urlparse(dsn)
    location = parsed.path if not parsed.netloc else parsed.netloc
    if not location or location in ("memory", ":memory:"):
        raise ConfigError(f"CVM_CLICKHOUSE_URL={dsn!r}: cvm needs an on-disk chDB path, e.g. chdb:///abs/path")
    return Path(location).expanduser().absolute()


def _owned_elsewhere(path: Path) -> bool:
    """True when another process holds the chDB engine at ``path``.

    ClickHouse keeps an exclusive ``flock`` on ``<path>/status`` while it runs. Testing it first spares the user
    the engine's own error text on stderr, and keeps this process free to open another path.
    """
    if str(path) in _OPENED:
        return False
    try:
        fd = open(path / "status", "rb")  # noqa: SIM115 - closed below, the lock dies with it
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        fd.close()
    return False


def connect(cfg: Config, readonly: bool = False, create: bool = True) -> ClickHouse:
    """A client for ``cfg.clickhouse_dsn``; :class:`ClickHouseUnavailable` with what to do when that fails.

    ``readonly`` gives a client whose whole session refuses writes. ``create=False`` refuses to create an
    embedded data directory that does not exist yet (``cvm sql`` must not leave empty databases around).
    """
    dsn = cfg.clickhouse_dsn
    database = cfg.clickhouse_database
    if not _IDENTIFIER.match(database):
        raise ConfigError(f"CVM_CLICKHOUSE_DATABASE={database!r} is not a plain identifier (letters, digits, _)")
    settings = dict(READ_ONLY_SETTINGS) if readonly else dict(WRITER_SETTINGS)
    shown = cfg.describe()["clickhouse_url"]
    if dsn.startswith("chdb:"):
        path = _chdb_path(dsn)
        if not create and not path.exists():
            raise ClickHouseUnavailable(
                f"no embedded ClickHouse data at {path}: start 'cvm sink' (or 'cvm up') first, "
                "or point CVM_DATA_DIR / CVM_CLICKHOUSE_URL at it"
            )
        if _owned_elsewhere(path):
            raise ClickHouseUnavailable(
                f"the embedded ClickHouse at {path} is open in another process (is a `cvm sink` running? "
                "query through it); chDB allows one process per data path (CVM_CLICKHOUSE_URL)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}", settings=settings)
        except Exception as exc:  # chDB raises several kinds: engine errors, ImportError, OSError
            text = str(exc)
            if "already initialized with path" in text:
                raise ClickHouseUnavailable(
                    f"this process already has another chDB path open; chDB allows one per process "
                    f"(CVM_CLICKHOUSE_URL={shown})"
                ) from None
            if "EmbeddedServer" in text or "lock" in text.lower():
                raise ClickHouseUnavailable(
                    f"the embedded ClickHouse at {path} could not be opened (is a `cvm sink` running? query "
                    f"through it): {condense_error(text)} (CVM_CLICKHOUSE_URL)"
                ) from None
            raise ClickHouseUnavailable(
                f"could not open the embedded ClickHouse at {path}: {condense_error(text)} (CVM_CLICKHOUSE_URL)"
            ) from None
        _OPENED.add(str(path))
    else:
        try:
            client = clickhouse_connect.get_client(
                dsn=dsn, settings=settings, connect_timeout=5, send_receive_timeout=120
            )
        except Exception as exc:  # transport errors, auth errors, bad URLs: all mean "not reachable as given"
            raise ClickHouseUnavailable(
                f"ClickHouse at {shown} did not answer ({condense_error(exc)}): check CVM_CLICKHOUSE_URL"
            ) from None
    return ClickHouse(client, database, dsn, readonly=readonly)


# --- migrations ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One ``NNNN_name.sql`` file: its version, name and statements (``{db}`` not yet substituted)."""

    version: int
    name: str
    statements: tuple[str, ...]


def _split_statements(text: str) -> tuple[str, ...]:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    parts = re.split(r";[ \t]*(?:\n|$)", "\n".join(lines))
    return tuple(p.strip() for p in parts if p.strip())


def load_migrations() -> list[Migration]:
    """The migrations shipped in ``sinks/migrations``, in version order."""
    found = []
    for entry in MIGRATIONS_DIR.iterdir():
        match = re.match(r"^(\d+)_(\w+)\.sql$", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), _split_statements(entry.read_text("utf-8"))))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"two migrations share a version in sinks/migrations: {versions}")
    return found


#: Every score message is written to both (latest state, history); ``{score_table}`` in a migration stands for
#: each of them, so the two keep the same columns.
SCORE_TABLES = ("customers", "customer_scores")


def _expand(statements: Sequence[str]) -> list[str]:
    """Statements with ``{score_table}`` once per score table, the others as they are."""
    out: list[str] = []
    for statement in statements:
        if "{score_table}" in statement:
            out.extend(statement.replace("{score_table}", table) for table in SCORE_TABLES)
        else:
            out.append(statement)
    return out


def migrate(ch: ClickHouse, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Create the database and apply the migrations not yet recorded; return the versions applied now."""
    db = ch.database
    try:
        ch.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        ch.command(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
            "(version UInt32, name String, applied_at DateTime) "
            "ENGINE = ReplacingMergeTree ORDER BY version SETTINGS non_replicated_deduplication_window = 1000"
        )
        done = {int(v) for (v,) in ch.rows(f"SELECT version FROM {db}.schema_migrations")}
    except ClickHouseError as exc:
        raise ClickHouseUnavailable(f"could not prepare database {db}: {condense_error(exc)}") from None
    applied = []
    for migration in migrations if migrations is not None else load_migrations():
        if migration.version in done:
            continue
        for statement in _expand(migration.statements):
            try:
                ch.command(statement.replace("{db}", db))
            except ClickHouseError as exc:
                raise ClickHouseUnavailable(
                    f"migration {migration.version:04d}_{migration.name} failed: {condense_error(exc)}"
                ) from None
        ch.command(
            f"INSERT INTO {db}.schema_migrations (version, name, applied_at) "
            f"VALUES ({migration.version}, '{migration.name}', now())"
        )
        applied.append(migration.version)
    return applied
