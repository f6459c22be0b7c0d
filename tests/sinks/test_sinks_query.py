"""``cvm sql``: through a running sink's HTTP API, or straight on chDB when no sink answers."""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import pytest

from cvm import cli
from cvm.config import Config
from cvm.exceptions import ClickHouseUnavailable, QueryError
from sinks import query
from sinks.clickhouse import ClickHouse
from sinks.http import ApiServer


@pytest.fixture
def filled(ch: ClickHouse) -> ClickHouse:
    ch.command(
        f"INSERT INTO {ch.database}.customers (customer_id, version, revenue, as_of) VALUES "
        "('c1', 1, 10.5, '2025-01-01 00:00:00.123'), ('c2', 2, 7, '2025-01-02 00:00:00')"
    )
    return ch


def _run(cfg: Config, sql: str, fmt: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert query.main(cfg, Namespace(query=sql, format=fmt)) == 0
    return capsys.readouterr().out


def test_through_the_sink_and_directly_give_the_same_answer(
    cfg: Config, filled: ClickHouse, reader: ClickHouse, capsys: pytest.CaptureFixture[str], port: Callable[[], int]
) -> None:
    sql = f"SELECT customer_id, revenue, as_of FROM {filled.database}.customers ORDER BY customer_id"
    api = ApiServer(cfg, reader).start()
    try:
        via_http = {fmt: _run(cfg.replace(http_port=api.port), sql, fmt, capsys) for fmt in ("tsv", "json")}
    finally:
        api.stop()
    direct = {fmt: _run(cfg.replace(http_port=port()), sql, fmt, capsys) for fmt in ("tsv", "json")}
    assert via_http == direct
    assert direct["tsv"] == (
        "customer_id\trevenue\tas_of\nc1\t10.5\t2025-01-01 00:00:00.123\nc2\t7\t2025-01-02 00:00:00\n"
    )
    assert json.loads(direct["json"]) == [
        {"customer_id": "c1", "revenue": 10.5, "as_of": "2025-01-01 00:00:00.123"},
        {"customer_id": "c2", "revenue": 7.0, "as_of": "2025-01-02 00:00:00"},
    ]
    assert direct["json"].count("\n") == 4  # one object per line


def test_bad_sql_raises_query_error_both_ways(
    cfg: Config, filled: ClickHouse, reader: ClickHouse, port: Callable[[], int]
) -> None:
    api = ApiServer(cfg, reader).start()
    try:
        with pytest.raises(QueryError, match="SYNTAX_ERROR"):
            query.main(cfg.replace(http_port=api.port), Namespace(query="SELECT (1 + , 2", format="tsv"))
    finally:
        api.stop()
    with pytest.raises(QueryError, match="SYNTAX_ERROR"):
        query.main(cfg.replace(http_port=port()), Namespace(query="SELECT (1 + , 2", format="tsv"))
    with pytest.raises(QueryError, match="not DROP"):
        query.main(cfg.replace(http_port=port()), Namespace(query="DROP TABLE x", format="tsv"))


def test_no_data_yet(cfg: Config, tmp_path: Path, port: Callable[[], int]) -> None:
    empty = cfg.replace(clickhouse_url=f"chdb://{tmp_path / 'nothing'}", http_port=port())
    with pytest.raises(ClickHouseUnavailable, match="start 'cvm sink'"):
        query.main(empty, Namespace(query="SELECT 1", format="tsv"))
    assert not (tmp_path / "nothing").exists()


def test_cli_prints_one_line_and_exits_1(
    cfg: Config,
    filled: ClickHouse,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    port: Callable[[], int],
) -> None:
    for key, value in cfg.replace(http_port=port()).to_env().items():
        monkeypatch.setenv(key, value)
    assert cli.main(["sql", f"SELECT count() AS n FROM {filled.database}.customers"]) == 0
    assert capsys.readouterr().out == "n\n2\n"
    assert cli.main(["sql", "SELECT * FROM nowhere.nothing", "--format", "json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cvm sql: ") and err.count("\n") == 1 and "UNKNOWN" in err
