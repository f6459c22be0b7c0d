"""The worker's table on the real Tansu broker: what one worker wrote, another recovers, markers and all."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cvm.config import Config
from cvm.epoch import Epoch, claim
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


# --- checkpoints ------------------------------------------------------------------------------------------------


def _epoch(cfg: Config) -> str:
    return claim(cfg, Epoch(1, uuid.uuid4().hex)).id


def _write(table: CustomerTable, rows: list[tuple[int, bytes, bytes]]) -> None:
    for partition, key, value in rows:
        table.put(partition, key, value)
    table.producer.flush(10)
    table.seal({p for p, _, _ in rows})
    table.producer.flush(10)


def _full(cfg: Config, tmp_path: Path, partitions: list[int]) -> dict[int, dict[bytes, bytes]]:
    """What a recovery from the whole changelog gives (a table with no checkpoints of its own)."""
    table = CustomerTable(cfg, directory=tmp_path / "none")
    table.recover(partitions)
    assert all(source == "changelog" for source, _ in table.recovered.values())
    return table.partitions


def test_a_partition_given_up_and_back_is_read_from_memory_and_a_restart_from_disk(cfg: Config, tmp_path: Path) -> None:
    _epoch(cfg)
    first = CustomerTable(cfg, make_producer(cfg), directory=tmp_path / "ckpt")
    first.create_topic()
    assert first.recover([0, 1, 2, 3]) == 0
    _write(first, [(i % 4, f"c{i % 100}".encode(), f"v{i}".encode()) for i in range(300)])
    first.put(0, b"\x00clock", b"opaque")  # not a customer: kept like any entry
    _write(first, [(0, b"c0", b"v-last")])
    first.drop([0, 1, 2, 3])  # a rebalance takes everything (range assignment is eager)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["0.ckpt", "1.ckpt", "2.ckpt", "3.ckpt"]
    assert first.recover([0, 1]) == 0  # the ones it gets back: from memory, nothing to read
    assert first.recovered == {0: ("memory", 0), 1: ("memory", 0)}
    _write(first, [(1, b"c1", b"v-newer")])
    assert first.checkpoint() == 2

    second = CustomerTable(cfg, directory=tmp_path / "ckpt")  # a worker that restarts on this machine
    second.recover([0, 1, 2, 3])
    assert {p: source for p, (source, _) in second.recovered.items()} == dict.fromkeys(range(4), "checkpoint")
    assert sum(n for _, n in second.recovered.values()) == 0  # the changelog ends where the checkpoints do
    assert second.partitions == _full(cfg, tmp_path, [0, 1, 2, 3]) == {**first.partitions, **second.partitions}
    assert second.get(0, b"\x00clock") == b"opaque" and second.get(1, b"c1") == b"v-newer"


def test_the_records_after_a_checkpoint_are_read_and_a_stranger_s_write_prevents_one(
    cfg: Config, tmp_path: Path
) -> None:
    _epoch(cfg)
    table = CustomerTable(cfg, make_producer(cfg), directory=tmp_path / "ckpt")
    table.create_topic()
    table.recover([0, 1])
    _write(table, [(0, b"a", b"1"), (1, b"b", b"1")])
    assert table.checkpoint() == 2
    other = CustomerTable(cfg, make_producer(cfg), directory=tmp_path / "other")  # e.g. the partition's next owner
    _write(other, [(0, b"a", b"2"), (0, b"z", b"9")])
    assert table.checkpoint() == 1  # partition 0 has writes it does not know: no checkpoint of it
    again = CustomerTable(cfg, directory=tmp_path / "ckpt")
    assert again.recover([0, 1]) == 3  # partition 0 after its (older) checkpoint: two states and a marker
    assert again.recovered == {0: ("checkpoint", 3), 1: ("checkpoint", 0)}
    assert again.partitions == _full(cfg, tmp_path, [0, 1]) and again.get(0, b"a") == b"2"


def test_a_checkpoint_of_another_epoch_or_unreadable_is_not_used(cfg: Config, tmp_path: Path) -> None:
    _epoch(cfg)
    table = CustomerTable(cfg, make_producer(cfg), directory=tmp_path / "ckpt")
    table.create_topic()
    table.recover([0, 1])
    _write(table, [(0, b"a", b"1"), (1, b"b", b"1")])
    table.drop([0, 1])
    path = tmp_path / "ckpt" / "0.ckpt"
    path.write_bytes(path.read_bytes().replace(table._epoch.encode(), b"an-earlier-life-of-the-broker"))
    (tmp_path / "ckpt" / "1.ckpt").write_bytes(b"cvm-table-checkpoint 1\n{not json")
    again = CustomerTable(cfg, directory=tmp_path / "ckpt")
    again.recover([0, 1])
    assert again.recovered == {0: ("changelog", 2), 1: ("changelog", 2)}
    assert again.get(0, b"a") == b"1" and again.get(1, b"b") == b"1"


def test_without_an_epoch_there_are_no_checkpoints(cfg: Config, tmp_path: Path) -> None:
    table = CustomerTable(cfg, make_producer(cfg), directory=tmp_path / "ckpt")
    table.create_topic()
    table.recover([0])
    _write(table, [(0, b"a", b"1")])
    table.drop([0])
    assert table.checkpoint() == 0 and not (tmp_path / "ckpt").exists()
