"""Fixtures of the sink tests: one chDB engine per pytest process, a fresh database per test.

chDB allows one data path per process, so every test shares the session's engine and isolates itself with the
random database name (and topic prefix) of the shared ``cfg`` fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cvm.config import Config
from sinks.clickhouse import ClickHouse, connect, migrate
from tests.conftest import free_port


def make_cfg(base: Config, chdb_dir: Path) -> Config:
    """``base`` (random topics, group, data directory and database) on the session's chDB engine."""
    return base.replace(clickhouse_url=f"chdb://{chdb_dir}", http_port=0)


@pytest.fixture
def port() -> Callable[[], int]:
    """Gives a port nothing listens on."""
    return free_port


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb") / "clickhouse"


@pytest.fixture(scope="session")
def engine(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouse, ClickHouse]]:
    """The session's writer and read-only clients (their database is replaced per test)."""
    cfg = make_cfg(Config.load(env={"CVM_DATA_DIR": str(tmp_path_factory.mktemp("data"))}), chdb_dir)
    writer = connect(cfg)
    reader = connect(cfg, readonly=True)
    yield writer, reader
    reader.close()
    writer.close()


@pytest.fixture
def cfg(cfg: Config, chdb_dir: Path) -> Config:
    """The shared per-test configuration (tests/conftest.py), with ClickHouse on the session's engine."""
    return make_cfg(cfg, chdb_dir)


@pytest.fixture
def ch(engine: tuple[ClickHouse, ClickHouse], cfg: Config) -> Iterator[ClickHouse]:
    """A migrated, empty database for this test, on the writer client."""
    client = ClickHouse(engine[0].client, cfg.clickhouse_database, cfg.clickhouse_dsn)
    migrate(client)
    yield client
    client.command(f"DROP DATABASE IF EXISTS {cfg.clickhouse_database} SYNC")


@pytest.fixture
def reader(engine: tuple[ClickHouse, ClickHouse], ch: ClickHouse) -> ClickHouse:
    """The read-only client, on this test's database."""
    return ClickHouse(engine[1].client, ch.database, ch.dsn, readonly=True)
