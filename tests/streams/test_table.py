"""The worker's table on the real Tansu broker: what one worker wrote, another recovers, markers and all."""

from __future__ import annotations

import pytest

from cvm.config import Config
from cvm.kafka import make_producer
from streams.table import MARKER, CustomerTable

pytestmark = pytest.mark.integration


def written(cfg: Config) -> CustomerTable:
    table = CustomerTable(cfg, make_producer(cfg))
    table.create_topic()
    for i in range(300):
        table.put(i % 4, f"c{i % 100}".encode(), f"v{i}".encode())  # every customer written three times
    table.producer.flush(10)
    table.seal({0, 1, 2, 3})
    table.producer.flush(10)
    return table


def test_a_recovered_table_holds_the_latest_value_of_every_key(cfg: Config) -> None:
    first = written(cfg)
    second = CustomerTable(cfg, make_producer(cfg))
    read = second.recover([0, 1, 2, 3])
    assert read == 300 + 4  # every state record and the four markers
    assert dict(second.items()) == dict(first.items())
    assert second.get(3, b"c99") == b"v299" and second.get(0, b"c99") is None
    assert MARKER not in dict(second.items())
    assert len(second) == 100 and second.locate(b"c42") == 2


def test_recovery_reads_only_the_partitions_asked_and_drop_forgets_them(cfg: Config) -> None:
    written(cfg)
    table = CustomerTable(cfg, make_producer(cfg))
    table.recover([1])
    assert set(table.partitions) == {1} and len(table) == 25
    assert table.locate(b"c0") is None and table.locate(b"c1") == 1
    table.drop([1])
    assert len(table) == 0 and table.get(1, b"c1") is None


def test_an_empty_value_deletes_and_an_empty_changelog_recovers_empty(cfg: Config) -> None:
    table = written(cfg)
    table.put(0, b"c0", b"")
    table.producer.flush(10)
    table.seal({0})
    table.producer.flush(10)
    again = CustomerTable(cfg, make_producer(cfg))
    again.recover([0])
    assert again.get(0, b"c0") is None and again.get(0, b"c4") == b"v204"
    fresh = CustomerTable(cfg.replace(app_id=cfg.app_id + "-other"), make_producer(cfg))
    fresh.create_topic()
    assert fresh.recover([0, 1, 2, 3]) == 0 and len(fresh) == 0
