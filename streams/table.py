"""The per-customer table: each customer's state bytes in memory, one dict per partition, backed by a changelog.

Writes go to the dict and to the compacted changelog topic ``{app_id}-customers-changelog`` (the name and format
Faust's table used: raw customer id key, raw state value), on the partition of the customer's source events. A
worker that is assigned a partition rebuilds it from the changelog before scoring it. The worker writes a table
entry once per customer per batch, and commits the batch's source offsets only after those writes are
acknowledged.

Any prefix of the changelog is a consistent table, because each customer's state records the source offsets it
has applied: a worker that recovers an older state is simply re-delivered the records after it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition

from cvm.config import Config
from cvm.kafka import TopicSpec, create_topic, make_consumer

__all__ = ["MARKER", "CustomerTable"]

#: Key of the changelog marker records (see :meth:`CustomerTable.seal`); never a customer id, never read as state.
MARKER = b"\x00cvm-seal"

log = logging.getLogger("cvm.worker")


class CustomerTable:
    """Customer id → state bytes for the partitions this worker holds, written through to a changelog.

    Without a ``producer`` the table is read-only: :meth:`recover` and the readers only (the bench's state figures).
    """

    def __init__(self, cfg: Config, producer: Producer | None = None) -> None:
        self.cfg = cfg
        self.topic = f"{cfg.app_id}-customers-changelog"
        self.producer = producer
        self.partitions: dict[int, dict[bytes, bytes]] = {}

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

    def seal(self, partitions: Iterable[int]) -> None:
        """End the writes so far with a marker record in a batch of its own, per partition (call after a flush).

        Tansu (memory storage) reports as high watermark the base offset of a partition's last record batch, not
        its last offset + 1, and recovery reads up to that watermark. With the marker alone in the last batch, the
        watermark is the marker's offset: every state record lies below it and is recovered.
        """
        assert self.producer is not None, "a read-only table"
        for partition in partitions:
            self.producer.produce(self.topic, key=MARKER, value=b"\x00", partition=partition)

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
        """Forget partitions this worker no longer holds."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    def recover(self, partitions: Iterable[int], timeout: float = 120.0) -> int:
        """Rebuild ``partitions`` from the changelog, reading each to its end; the number of records read."""
        wanted = sorted(set(partitions))
        if not wanted:
            return 0
        for partition in wanted:
            self.partitions[partition] = {}
        consumer = make_consumer(
            self.cfg,
            group=f"{self.cfg.app_id}-restore-{uuid.uuid4().hex[:8]}",
            **{"enable.partition.eof": True, "fetch.wait.max.ms": 10},
        )
        read = 0
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in wanted])
            pending = set(wanted)
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"recovering {self.topic} partitions {sorted(pending)} took over {timeout:g}s")
                for msg in consumer.consume(num_messages=10000, timeout=0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - its public name
                            pending.discard(msg.partition())
                        continue
                    key, value = msg.key(), msg.value()
                    read += 1
                    if key is None or key == MARKER:
                        continue
                    entries = self.partitions[msg.partition()]
                    if value:
                        entries[key] = value
                    else:
                        entries.pop(key, None)
        finally:
            consumer.close()
        return read
