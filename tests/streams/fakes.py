"""In-memory stand-ins for the Scorer's clients, for unit tests of its orchestration (integration tests use the real
Tansu broker): one log of records per topic-partition shared by a consumer and producers, a dict table, a feed."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from confluent_kafka import TopicPartition

from cvm.codec import Codec
from cvm.config import Config
from streams.decode import kafka_partition
from streams.models import ModelFeed
from streams.scorer import Scorer

DAY = 86_400_000


class Message:
    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        self._t, self._p, self._o, self._k, self._v = topic, partition, offset, key, value

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def error(self) -> None:
        return None


class Log:
    """Every topic's records, by partition; and a journal of what the clients did, in order."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.records: dict[tuple[str, int], list[Message]] = defaultdict(list)
        self.journal: list[tuple[str, Any]] = []

    def append(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> Message:
        if partition is None:
            partition = kafka_partition(key, self.partitions) if key is not None else 0
        part = self.records[(topic, partition)]
        msg = Message(topic, partition, len(part), key, value)
        part.append(msg)
        return msg

    def values(self, topic: str) -> list[bytes]:
        return [m.value() or b"" for (t, _), part in sorted(self.records.items()) if t == topic for m in part]


class Producer:
    def __init__(self, log: Log, name: str) -> None:
        self.log, self.name = log, name
        self.pending: list[tuple[Any, Message]] = []

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None, partition: int | None = None,
                on_delivery: Any = None) -> None:  # fmt: skip
        msg = self.log.append(topic, key, value, partition)
        self.log.journal.append((f"{self.name}.produce", topic))
        self.pending.append((on_delivery, msg))

    def flush(self, timeout: float = 0) -> int:
        for callback, msg in self.pending:
            if callback is not None:
                callback(None, msg)
        self.pending.clear()
        self.log.journal.append((f"{self.name}.flush", None))
        return 0

    def __len__(self) -> int:
        return len(self.pending)


class Consumer:
    """A consumer of ``topics`` assigned every partition; ``consume`` interleaves partitions at random (seeded)."""

    def __init__(self, log: Log, seed: int = 0) -> None:
        self.log = log
        self.rng = random.Random(seed)
        self.position_of: dict[tuple[str, int], int] = {}
        self.committed_offsets: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        self.topics: list[str] = []
        self.callbacks: dict[str, Any] = {}
        self.assigned = False

    def list_topics(self, timeout: float = 0) -> Any:
        class Meta:
            topics: dict[str, Any] = {}

        return Meta()

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        return 0, len(self.log.records[(tp.topic, tp.partition)])

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.position_of.get((tp.topic, tp.partition), -1001)) for tp in tps
        ]

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        self.topics, self.callbacks = topics, {"assign": on_assign, "revoke": on_revoke}

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[Message]:
        parts = [(t, p) for t in self.topics for p in range(self.log.partitions)]
        if not self.assigned:
            self.assigned = True
            self.callbacks["assign"](self, [TopicPartition(t, p) for t, p in parts])
            self.position_of = {tp: self.committed_offsets.get(tp, 0) for tp in parts}
        out: list[Message] = []
        while len(out) < num_messages:
            ready = [tp for tp in parts if tp not in self.paused and self.position_of[tp] < len(self.log.records[tp])]
            if not ready:
                break
            tp = self.rng.choice(ready)
            take = min(self.rng.randint(1, 50), num_messages - len(out))
            part = self.log.records[tp]
            chunk = part[self.position_of[tp] : self.position_of[tp] + take]
            self.position_of[tp] += len(chunk)
            out.extend(chunk)
        self.log.journal.append(("consume", len(out)))
        return out

    def committed(self, tps: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.committed_of(tp)) for tp in tps]

    def committed_of(self, tp: TopicPartition) -> int:
        return self.committed_offsets.get((tp.topic, tp.partition), -1001)

    def seek(self, tp: TopicPartition) -> None:
        self.position_of[(tp.topic, tp.partition)] = max(tp.offset, 0)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = False) -> None:
        for tp in offsets:
            self.committed_offsets[(tp.topic, tp.partition)] = tp.offset
        self.log.journal.append(("commit", {(tp.topic, tp.partition): tp.offset for tp in offsets}))

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in tps}

    def close(self) -> None:
        pass


class Table:
    """The customer table as dicts, recording its writes in the journal."""

    def __init__(self, log: Log, data: dict[int, dict[bytes, bytes]] | None = None) -> None:
        self.log = log
        self.partitions: dict[int, dict[bytes, bytes]] = {p: dict(v) for p, v in (data or {}).items()}
        self.topic = "changelog"

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.partitions.get(partition, {}).get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.partitions.setdefault(partition, {})[key] = value
        self.log.journal.append(("table.put", partition))

    def seal(self, partitions: Any) -> None:
        pass

    def recover(self, partitions: Any) -> int:
        for p in partitions:
            self.partitions.setdefault(p, {})
        return 0

    def drop(self, partitions: Any) -> None:
        for p in partitions:
            self.partitions.pop(p, None)

    def locate(self, key: bytes) -> int | None:
        for p, entries in self.partitions.items():
            if key in entries:
                return p
        return None


class Feed(ModelFeed):
    """A model feed without its Kafka thread: tests offer it messages."""

    def start(self) -> Feed:
        self.ready.set()
        return self


class Clock:
    """A monotonic clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scorer(cfg: Config, log: Log, seed: int = 0, feed: Feed | None = None, table: Table | None = None) -> Scorer:
    s = Scorer(
        cfg,
        consumer=Consumer(log, seed),
        producer=Producer(log, "producer"),
        learn_producer=Producer(log, "learn"),
        table=table or Table(log),
        models=feed or Feed(cfg),
        codec=Codec(),
        monotonic=Clock(),
    )
    s.subscribe()
    return s


def drain(s: Scorer) -> None:
    """Steps until every record is consumed and processed, then lets the sources go idle (idle scoring)."""
    clock, consumer = s.monotonic, s.consumer
    assert isinstance(clock, Clock) and isinstance(consumer, Consumer)

    def ends() -> dict:
        return {tp: len(part) for tp, part in consumer.log.records.items() if tp[0] in s.sources}

    def done() -> bool:
        return all(consumer.position_of.get(tp, 0) >= n for tp, n in ends().items()) and not s.clock.holding()

    def starved() -> bool:  # nothing the consumer could deliver now: time passes (a real consumer waits)
        return all(tp in consumer.paused or consumer.position_of.get(tp, 0) >= n for tp, n in ends().items())

    for _ in range(100_000):
        if not s.step() and starved():
            clock.now += 11  # the sources that hold nothing go idle
        if consumer.assigned and done():
            break
    clock.now += 11
    s.step()
    s.step()
