"""ClickHouse access on the real chDB engine: migrations, dedup tokens, read-only guard, connection errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import ClickHouseError

from cvm.config import Config
from cvm.exceptions import ClickHouseUnavailable, QueryError
from sinks.clickhouse import ClickHouse, Migration, check_read_only, connect, load_migrations, migrate
from sinks.columns import Table
from sinks.query import run_query

TABLES = {
    "transactions",
    "contacts",
    "payments",
    "customers",
    "customer_scores",
    "alerts",
    "model_metrics",
    "dead_letters",
    "late_events",
    "clv_params",
    "epochs",
    "schema_migrations",
}
#: Views over the tables (migration 0007): alert outcomes, observed leaving, the signals of each scoring.
VIEWS = {"stream_time", "leavers", "alert_outcomes", "score_signals"}


def _tables(ch: ClickHouse) -> set[str]:
    return {t for (t,) in ch.rows("SELECT name FROM system.tables WHERE database = {d:String}", {"d": ch.database})}


def test_migrations_create_every_table_once(ch: ClickHouse) -> None:
    assert _tables(ch) == TABLES | VIEWS
    versions = [m.version for m in load_migrations()]
    assert versions == sorted(versions) and versions[0] == 1
    assert migrate(ch) == []  # second run: nothing to do
    assert ch.rows(f"SELECT count() FROM {ch.database}.schema_migrations")[0][0] == len(versions)
    assert _tables(ch) == TABLES | VIEWS


def test_score_tables_keep_the_same_columns(ch: ClickHouse) -> None:
    def columns(table: str) -> list[tuple[str, str]]:
        return ch.rows(
            "SELECT name, type FROM system.columns WHERE database = {d:String} AND table = {t:String} ORDER BY name",
            {"d": ch.database, "t": table},
        )

    assert columns("customers") == columns("customer_scores")
    assert ("churn_reasons", "Array(String)") in columns("customers")


def test_every_mergetree_table_can_dedup_inserts(ch: ClickHouse) -> None:
    rows = ch.rows(
        "SELECT name, engine_full FROM system.tables WHERE database = {d:String} AND engine != 'View'",
        {"d": ch.database},
    )
    assert {name for name, _ in rows} == TABLES
    for name, engine in rows:
        assert "non_replicated_deduplication_window = 1000" in engine, name


def test_a_later_migration_applies_once_and_in_order(ch: ClickHouse) -> None:
    extra = Migration(
        9001,
        "churn_score",
        (
            "ALTER TABLE {db}.customers ADD COLUMN IF NOT EXISTS churn_risk Float64 DEFAULT -1",
            "ALTER TABLE {db}.customer_scores ADD COLUMN IF NOT EXISTS churn_risk Float64 DEFAULT -1",
        ),
    )
    assert migrate(ch, [*load_migrations(), extra]) == [9001]
    assert migrate(ch, [*load_migrations(), extra]) == []
    assert "churn_risk" in Table.load(ch, "customers").columns


def test_same_dedup_token_twice_gives_one_copy(ch: ClickHouse) -> None:
    table = Table.load(ch, "customer_scores")
    record = table.convert({"customer_id": "c1", "version": 1, "as_of": 1_735_689_600_000, "revenue": 10.0})
    columns = list(record)
    for token in ("s:0:5:9:customer_scores", "s:0:5:9:customer_scores", "s:0:10:12:customer_scores"):
        ch.insert("customer_scores", columns, table.rows([record], columns), token)
    # The third token differs: same content, a new copy (tokens, not content, decide).
    assert ch.rows(f"SELECT count() FROM {ch.database}.customer_scores")[0][0] == 2


def test_read_only_client_refuses_writes_and_stays_read_only(ch: ClickHouse, reader: ClickHouse) -> None:
    db = ch.database
    for sql in (
        f"INSERT INTO {db}.alerts (customer_id) VALUES ('x')",
        f"CREATE TABLE {db}.evil (a UInt8) ENGINE = Memory",
        f"DROP TABLE {db}.alerts",
        "SET readonly = 0",
    ):
        with pytest.raises(ClickHouseError, match="readonly"):
            reader.command(sql)
    assert "alerts" in _tables(ch)
    # The writer client shares the engine but not the session: it still writes.
    ch.command(f"INSERT INTO {db}.alerts (customer_id) VALUES ('ok')")
    assert reader.rows(f"SELECT customer_id FROM {db}.alerts") == [("ok",)]


def test_run_query_guards_beyond_readonly(reader: ClickHouse) -> None:
    # chDB lets KILL QUERY through readonly=1: the keyword guard stops it.
    for sql in ("KILL QUERY WHERE 1", "SYSTEM DROP MARK CACHE", "OPTIMIZE TABLE x", "", "  -- nothing\n"):
        with pytest.raises(QueryError):
            run_query(reader, sql)
    with pytest.raises(QueryError, match="FORMAT"):
        run_query(reader, "SELECT 1 FORMAT JSON")
    with pytest.raises(ValueError, match="readonly"):
        run_query(ClickHouse(reader.client, reader.database, reader.dsn, readonly=False), "SELECT 1")
    assert run_query(reader, "/* hi */ (SELECT 41 + 1 AS x);").rows == [(42,)]


def test_bad_sql_is_one_line(reader: ClickHouse) -> None:
    with pytest.raises(QueryError) as info:
        run_query(reader, "SELECT (1 + , 2")
    message = str(info.value)
    assert "\n" not in message and "SYNTAX_ERROR" in message and "FORMAT Native" not in message
    with pytest.raises(QueryError, match="UNKNOWN_TABLE"):
        run_query(reader, f"SELECT * FROM {reader.database}.nope")


def test_check_read_only_keywords() -> None:
    assert check_read_only("with x as (select 1) select * from x;;") == "with x as (select 1) select * from x"
    assert check_read_only("# note\nSHOW TABLES") == "SHOW TABLES"
    with pytest.raises(QueryError, match="not INSERT"):
        check_read_only("insert into t values (1)")


def test_table_converts_json_values(ch: ClickHouse) -> None:
    payments = Table.load(ch, "payments")
    row = payments.convert(
        {
            "event_id": "e",
            "customer_id": "c",
            "event_time": 1_735_689_600_123,
            "invoice_id": "i",
            "amount_due": 5,
            "due_date": "2025-01-01T00:00:00Z",
            "paid_date": None,
            "status": "paid",
            "extra": 1,
        }
    )
    assert row["event_time"] == 1_735_689_600_123 and row["due_date"] == 1_735_689_600_000
    assert row["paid_date"] is None and row["amount_due"] == 5.0 and "extra" not in row
    with pytest.raises(ValueError):
        payments.convert({"amount_due": "lots"})


def test_connect_refuses_a_path_another_process_owns(cfg: Config, tmp_path: Path) -> None:
    # ClickHouse holds an exclusive flock on <path>/status while it runs; a stand-in process holds it here so
    # this process (which already hosts the session's engine) need not open a second one.
    path = tmp_path / "owned"
    path.mkdir()
    (path / "status").write_text("PID: 1\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time\nf=open(sys.argv[1],'rb')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)",
            str(path / "status"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ClickHouseUnavailable, match="is a `cvm sink` running"):
            connect(cfg.replace(clickhouse_url=f"chdb://{path}"))
    finally:
        holder.kill()
        holder.wait()


def test_connect_errors_are_one_line(cfg: Config, tmp_path: Path) -> None:
    with pytest.raises(ClickHouseUnavailable, match="no embedded ClickHouse data"):
        connect(cfg.replace(clickhouse_url=f"chdb://{tmp_path / 'missing'}"), readonly=True, create=False)
    start = time.monotonic()
    with pytest.raises(ClickHouseUnavailable, match="CVM_CLICKHOUSE_URL") as info:
        connect(cfg.replace(clickhouse_url="http://default:secret@127.0.0.1:1"))
    assert "secret" not in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - start < 30


def test_the_first_copy_of_an_event_read_is_the_one_kept(ch: ClickHouse) -> None:
    """The raw tables keep, of two copies of one event, the one read first (lowest epoch, then offset): the copy the
    worker applied, which a restore must replay in its place (cvm/restore.py)."""
    db = ch.database
    columns = ["event_id", "customer_id", "event_time", "amount", "epoch", "offset"]
    rows = [["e1", "c1", 1000, 3.0, 2, 5], ["e1", "c1", 1000, 1.0, 1, 90], ["e1", "c1", 1000, 2.0, 1, 91]]
    for i, row in enumerate(rows):  # one insert each: the order of arrival must not matter
        ch.insert("transactions", columns, [row], token=f"first-{i}")
    assert ch.rows(f"SELECT amount, epoch, offset FROM {db}.transactions FINAL") == [(1.0, 1, 90)]
    ch.command(f"OPTIMIZE TABLE {db}.transactions FINAL")
    assert ch.rows(f"SELECT amount, epoch, offset FROM {db}.transactions") == [(1.0, 1, 90)]
