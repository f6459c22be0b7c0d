"""The per-customer table: each customer's state bytes in memory, one dict per partition, backed by a changelog.

Writes go to the dict and to the compacted changelog topic ``{app_id}-customers-changelog`` (the name and format
Faust's table used: raw customer id key, raw state value), on the partition of the customer's source events. A
worker that is assigned a partition rebuilds it from the changelog before scoring it. The worker writes a table
entry once per customer per batch, and commits the batch's source offsets only after those writes are
acknowledged. Keys starting with ``b"\\x00"`` are not customers (the seal :data:`MARKER` is skipped; others, such
as a partition's clock, are kept like any entry).

Any prefix of the changelog is a consistent table, because each customer's state records the source offsets it
has applied: a worker that recovers an older state is simply re-delivered the records after it.

**Checkpoints.** Recovery reads the whole changelog of a partition, about 3 s per million records on the embedded
broker, which never compacts it (measured at 1 million customers: docs/benchmarks.md). So the table keeps a
checkpoint of each partition — its entries and the changelog offset they cover — and recovery reads only the
records after it:

* in memory, for the partitions a rebalance takes away: range assignment is eager (every rebalance revokes every
  partition), and a worker mostly gets its partitions back;
* on disk, in ``$CVM_DATA_DIR/tables/<changelog>/<partition>.ckpt``, written when the worker gives a partition up
  (a rebalance, a stop) and at a batch's seal every ``CVM_TABLE_CHECKPOINT_S``, for a worker that restarts.

A checkpoint is taken only when it is exact — the changelog ends where this table's own writes since its recovery
put it, so nobody else (a worker that had the partition meanwhile) wrote there — and used only on the broker epoch
it was taken in (:mod:`cvm.epoch`: a broker that lost its topics has a new changelog) and only when the changelog
still reaches its offset. Otherwise recovery reads the whole changelog, as without checkpoints.
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from cvm.config import Config
from cvm.epoch import read as read_epoch
from cvm.kafka import TopicSpec, create_topic, make_consumer, read_to_end

__all__ = ["MARKER", "CustomerTable", "Table"]

#: Key of the changelog marker records (see :meth:`CustomerTable.seal`); never a customer id, never read as state.
MARKER = b"\x00cvm-seal"

log = logging.getLogger("cvm.worker")

_MAGIC = b"cvm-table-checkpoint 1\n"
#: Consumer settings of recovery: prefetch whole partitions (the embedded default fetches one queue at a time, made
#: for following a live stream; reading a changelog with it was 3.6 times slower, 43 s instead of 12 s for 3 million
#: records of 1 million customers).
_RECOVERY = {
    "enable.partition.eof": True,
    "fetch.wait.max.ms": 10,
    "queued.min.messages": 100_000,
    "fetch.queue.backoff.ms": 1,
    "fetch.max.bytes": 100 * 1024 * 1024,
    "max.partition.fetch.bytes": 50 * 1024 * 1024,
}


class Table(Protocol):
    """What the worker needs of the customer table (:class:`CustomerTable`; the scorer's tests use dicts)."""

    partitions: dict[int, dict[bytes, bytes]]

    def get(self, partition: int, key: bytes) -> bytes | None: ...
    def put(self, partition: int, key: bytes, value: bytes) -> None: ...
    def seal(self, partitions: Iterable[int]) -> None: ...
    def recover(self, partitions: Iterable[int]) -> int: ...
    def drop(self, partitions: Iterable[int]) -> None: ...
    def locate(self, key: bytes) -> int | None: ...


@dataclass
class _Checkpoint:
    """A partition's entries as of the changelog offset ``covered`` (every record before it is in them)."""

    epoch: str
    covered: int
    entries: dict[bytes, bytes]


class CustomerTable:
    """Customer id → state bytes for the partitions this worker holds, written through to a changelog.

    Without a ``producer`` the table is read-only: :meth:`recover` and the readers only (the bench's state figures).
    """

    def __init__(self, cfg: Config, producer: Producer | None = None, directory: Path | None = None) -> None:
        self.cfg = cfg
        self.topic = f"{cfg.app_id}-customers-changelog"
        self.producer = producer
        self.partitions: dict[int, dict[bytes, bytes]] = {}
        self.directory = directory or cfg.data_path / "tables" / self.topic
        #: How each partition was last recovered: (from "memory", "checkpoint" or "changelog", records read).
        self.recovered: dict[int, tuple[str, int]] = {}
        self._end: dict[int, int] = {}  # changelog offset after the last record recovery read
        self._written: dict[int, int] = {}  # records this table wrote to the changelog since
        self._standby: dict[int, _Checkpoint] = {}  # partitions given up, kept until the next assignment
        self._epoch: str | None = None
        self._next_checkpoint = time.monotonic() + cfg.table_checkpoint_s

    def create_topic(self) -> None:
        """Create the changelog topic (compacted, one partition per event-topic partition) if it is missing."""
        create_topic(self.cfg, TopicSpec(self.topic, self.cfg.partitions, compact=True), prefixed=False)

    def get(self, partition: int, key: bytes) -> bytes | None:
        entries = self.partitions.get(partition)
        return None if entries is None else entries.get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Set a customer's state; the changelog write is acknowledged at the caller's next producer flush."""
        assert self.producer is not None, "a read-only table"
        self.partitions.setdefault(partition, {})[key] = value
        self.producer.produce(self.topic, key=key, value=value, partition=partition)
        self._written[partition] = self._written.get(partition, 0) + 1

    def seal(self, partitions: Iterable[int]) -> None:
        """End the writes so far with a marker record in a batch of its own, per partition (call after a flush).

        Tansu (memory storage) reports as high watermark the base offset of a partition's last record batch, not
        its last offset + 1, and recovery reads up to that watermark. With the marker alone in the last batch, the
        watermark is the marker's offset: every state record lies below it and is recovered.

        Every write before it being acknowledged, it is also when a periodic checkpoint is taken.
        """
        assert self.producer is not None, "a read-only table"
        if self.cfg.table_checkpoint_s > 0 and time.monotonic() >= self._next_checkpoint:
            self._next_checkpoint = time.monotonic() + self.cfg.table_checkpoint_s
            self.checkpoint()
        for partition in partitions:
            self.producer.produce(self.topic, key=MARKER, value=b"\x00", partition=partition)
            self._written[partition] = self._written.get(partition, 0) + 1

    def locate(self, key: bytes) -> int | None:
        """The partition holding ``key``, if this worker holds it."""
        for partition, entries in self.partitions.items():
            if key in entries:
                return partition
        return None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for entries in self.partitions.values():
            yield from entries.items()

    def __len__(self) -> int:
        return sum(map(len, self.partitions.values()))

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer holds (call with its writes acknowledged): they are kept as
        checkpoints, in memory until the next assignment and on disk."""
        leaving = [p for p in set(partitions) if p in self.partitions]
        for partition, checkpoint in self._exact(leaving).items():
            self._standby[partition] = checkpoint
            self._save(partition, checkpoint)
        for partition in leaving:
            del self.partitions[partition]
            self._end.pop(partition, None)
            self._written.pop(partition, None)
            self.recovered.pop(partition, None)

    def checkpoint(self, partitions: Iterable[int] | None = None) -> int:
        """Write the checkpoints of ``partitions`` (default: all held) whose writes are all acknowledged and alone
        in the changelog; the number written."""
        found = self._exact(sorted(self.partitions if partitions is None else partitions))
        for partition, checkpoint in found.items():
            self._save(partition, checkpoint)
        return len(found)

    def recover(self, partitions: Iterable[int], timeout: float = 120.0) -> int:
        """Rebuild ``partitions`` from their checkpoints and the changelog after them, or from the whole changelog,
        reading each to its end; the number of changelog records read."""
        wanted = sorted(set(partitions))
        standby, self._standby = self._standby, {}
        if not wanted:
            return 0
        epoch = self._current_epoch()
        ends = self._ends(wanted) if epoch is not None else {}
        starts: dict[int, int] = {}
        for partition in wanted:
            found, source = standby.get(partition), "memory"
            if found is None and epoch is not None:
                found, source = self._load(partition), "checkpoint"
            if found is not None and found.epoch == epoch and found.covered <= ends.get(partition, -1):
                self.partitions[partition] = found.entries
                starts[partition] = found.covered
                self.recovered[partition] = (source, 0)
            else:
                self.partitions[partition] = {}
                starts[partition] = OFFSET_BEGINNING
                self.recovered[partition] = ("changelog", 0)
        read = self._read(starts, timeout)
        for partition in wanted:
            self._written[partition] = 0
        return read

    # --- the changelog -----------------------------------------------------------------------------------------------

    def _read(self, starts: dict[int, int], timeout: float) -> int:
        consumer = make_consumer(self.cfg, group=f"{self.cfg.app_id}-restore-{uuid.uuid4().hex[:8]}", **_RECOVERY)
        read = 0
        try:
            consumer.assign([TopicPartition(self.topic, p, offset) for p, offset in starts.items()])
            for msg in read_to_end(consumer, starts, timeout, f"recovering {self.topic}"):
                partition, key, value = msg.partition(), msg.key(), msg.value()
                read += 1
                self._end[partition] = msg.offset() + 1
                source, n = self.recovered[partition]
                self.recovered[partition] = (source, n + 1)
                if key is None or key == MARKER:
                    continue
                entries = self.partitions[partition]
                if value:
                    entries[key] = value
                else:
                    entries.pop(key, None)
        finally:
            consumer.close()
        for partition, offset in starts.items():
            self._end.setdefault(partition, max(offset, 0))
        return read

    def _ends(self, partitions: list[int]) -> dict[int, int]:
        """Where the changelog of each partition ends now: its high watermark, then what lies after it (Tansu's is
        the base offset of the last batch)."""
        consumer: Consumer = make_consumer(
            self.cfg, group=f"{self.cfg.app_id}-ends-{uuid.uuid4().hex[:8]}", **_RECOVERY
        )
        ends: dict[int, int] = {}
        try:
            if self.topic not in consumer.list_topics(timeout=10).topics:
                return dict.fromkeys(partitions, 0)
            for partition in partitions:
                ends[partition] = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=10, cached=False
                )[1]
            consumer.assign([TopicPartition(self.topic, p, offset) for p, offset in ends.items()])
            pending, deadline = set(partitions), time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=10000, timeout=0.5):
                    err = msg.error()
                    if err is None:
                        ends[msg.partition()] = max(ends[msg.partition()], msg.offset() + 1)
                    elif err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - its public name
                        pending.discard(msg.partition())
            if pending:
                return {}
        except KafkaException as exc:
            log.warning("could not read where the changelog ends (%s): no checkpoint", exc)
            return {}
        finally:
            consumer.close()
        return ends

    # --- checkpoints -------------------------------------------------------------------------------------------------

    def _current_epoch(self) -> str | None:
        if self._epoch is None:  # a broker keeps its epoch for life: once known, known
            try:
                found = read_epoch(self.cfg, timeout=5.0)
            except (KafkaException, TimeoutError):
                found = None
            self._epoch = found.id if found is not None else None
        return self._epoch

    def _exact(self, partitions: list[int]) -> dict[int, _Checkpoint]:
        """Checkpoints of those partitions whose changelog ends exactly where this table's writes put it."""
        known = [p for p in partitions if p in self._end and p in self.partitions]
        epoch = self._current_epoch() if known else None
        if epoch is None:
            return {}
        ends = self._ends(known)
        out = {}
        for partition in known:
            expected = self._end[partition] + self._written.get(partition, 0)
            if ends.get(partition) == expected:
                out[partition] = _Checkpoint(epoch, expected, self.partitions[partition])
            else:
                log.info(
                    "no checkpoint of %s[%d]: it ends at %s, not %d",
                    self.topic,
                    partition,
                    ends.get(partition),
                    expected,
                )
        return out

    def _path(self, partition: int) -> Path:
        return self.directory / f"{partition}.ckpt"

    def _save(self, partition: int, checkpoint: _Checkpoint) -> None:
        head = {"epoch": checkpoint.epoch, "covered": checkpoint.covered, "entries": len(checkpoint.entries)}
        path = self._path(partition)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                out.write(_MAGIC + json.dumps(head).encode() + b"\n")
                out.write(marshal.dumps(checkpoint.entries))
            os.replace(tmp, path)  # another worker of this machine may read it at any time: all of it or nothing
        except OSError as exc:
            log.warning("could not write the checkpoint %s: %s", path, exc)
            tmp.unlink(missing_ok=True)

    def _load(self, partition: int) -> _Checkpoint | None:
        path = self._path(partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("could not read the checkpoint %s: %s", path, exc)
            return None
        try:
            if not data.startswith(_MAGIC):
                raise ValueError("not a checkpoint")
            head_end = data.index(b"\n", len(_MAGIC))
            head = json.loads(data[len(_MAGIC) : head_end])
            entries = marshal.loads(data[head_end + 1 :])
            if not isinstance(entries, dict) or len(entries) != head["entries"]:
                raise ValueError("entries missing")
            return _Checkpoint(str(head["epoch"]), int(head["covered"]), entries)
        except (ValueError, KeyError, EOFError, TypeError) as exc:
            log.warning("ignoring the checkpoint %s (%s): recovering from the changelog", path, exc)
            return None
