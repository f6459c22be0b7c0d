"""The broker's incarnation, or *epoch*: which life of cvm's topics a record was read in.

A broker that loses its topics — the embedded Tansu on every stop (memory storage), a Kafka whose volume was lost —
starts every partition at offset 0 again, while ClickHouse keeps what it wrote. So ``(topic, partition, offset)``
names a record only together with the epoch, and everything keyed by offsets must carry it: the sink's insert
deduplication tokens (two epochs' batches over the same offsets are different data), the raw tables' ingest order
(the order a restore replays them in).

Each epoch has a **number**, one above every epoch ClickHouse knows (so numbers grow with time), and a random
**id**. The first cvm process that finds the broker without an epoch writes one as the first record of the
single-partition topic ``epoch``; every process after it, until the broker loses its topics again, reads that
record. Two sinks racing both read the first record, so they agree. ClickHouse keeps one row per epoch in
``epochs``, with how its restore went (:mod:`cvm.restore`).

>>> e = Epoch(3, "5f0c")
>>> Epoch.decode(e.encode()) == e, e.number
(True, 3)
>>> Epoch.local().number
0
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from cvm.config import Config
from cvm.kafka import TopicSpec, create_topic, make_consumer, make_producer

__all__ = ["EPOCH_TOPIC", "Epoch", "claim", "read", "records_after"]

#: The topic holding the epoch record (created on demand by :func:`claim`).
EPOCH_TOPIC = TopicSpec("epoch", 1, compact=True, doc="The broker's incarnation: one record, written once (JSON).")


@dataclass(frozen=True)
class Epoch:
    """A broker incarnation: its number (0: not registered, e.g. a writer in a test) and its id."""

    number: int
    id: str
    created_ms: int = field(default=0, compare=False)

    @classmethod
    def local(cls) -> Epoch:
        """An epoch of no broker: a random id, so that the tokens of a writer that knows no epoch never collide."""
        return cls(0, f"local-{uuid.uuid4().hex[:12]}", int(time.time() * 1000))

    def encode(self) -> bytes:
        return json.dumps({"epoch": self.number, "id": self.id, "created": self.created_ms}).encode()

    @classmethod
    def decode(cls, value: bytes) -> Epoch:
        obj: dict[str, Any] = json.loads(value)
        return cls(int(obj["epoch"]), str(obj["id"]), int(obj.get("created", 0)))


def read(cfg: Config, timeout: float = 15.0) -> Epoch | None:
    """The broker's epoch, or ``None`` when it has none yet (its topics are new, or were lost)."""
    topic = cfg.topic(EPOCH_TOPIC.name)
    consumer = make_consumer(cfg, f"{cfg.app_id}-epoch-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    try:
        if topic not in consumer.list_topics(timeout=timeout).topics:
            return None
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(1, timeout=0.5):
                err = msg.error()
                if err is None and msg.value():
                    return Epoch.decode(msg.value())
                if err is not None and err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - its public name
                    return None
        raise TimeoutError(f"reading {topic} took over {timeout:g}s")
    finally:
        consumer.close()


def claim(cfg: Config, mine: Epoch) -> Epoch:
    """Give the broker the epoch ``mine``; the epoch it has now (``mine``, or that of a process that came first)."""
    create_topic(cfg, EPOCH_TOPIC)
    producer = make_producer(cfg)
    # Keyed by its own id: compaction keeps every claim, so the first record stays the first.
    producer.produce(cfg.topic(EPOCH_TOPIC.name), key=mine.id.encode(), value=mine.encode())
    if producer.flush(15):
        raise TimeoutError(f"the broker did not take the epoch record on {cfg.topic(EPOCH_TOPIC.name)}")
    found = read(cfg)
    assert found is not None, "an epoch record was written, then not found"
    return found


def records_after(cfg: Config, starts: Iterable[TopicPartition], timeout: float = 15.0) -> list[TopicPartition]:
    """Those of ``starts`` (topic, partition, offset; a negative offset means the beginning) with a record at or
    after the offset: whether anything is there, without trusting the high watermark (Tansu's is a batch's base)."""
    consumer = make_consumer(cfg, f"{cfg.app_id}-probe-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    found: list[TopicPartition] = []
    try:
        existing = consumer.list_topics(timeout=timeout).topics
        wanted = [
            TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
            for tp in starts
            if tp.topic in existing and tp.partition in existing[tp.topic].partitions
        ]
        if not wanted:
            return []
        consumer.assign(wanted)
        pending = {(tp.topic, tp.partition) for tp in wanted}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {sorted(pending)} took over {timeout:g}s")
            for msg in consumer.consume(100, timeout=0.5):
                key = (msg.topic(), msg.partition())
                if key not in pending:
                    continue
                err = msg.error()
                if err is None:
                    found.append(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
                    pending.discard(key)
                elif err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - its public name
                    pending.discard(key)
    finally:
        consumer.close()
    return found
