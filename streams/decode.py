"""Step 1 of a batch: a raw record becomes an :class:`~streams.records.Event`, or a poison with its reason.

Decoding reads the Confluent wire format (:class:`cvm.codec.Codec`), checks that the record's kind is its topic's,
validates it (:func:`cvm.events.validate`: from ``CVM_MIN_EVENT_TIME`` on), and converts a transaction in another
currency to the base currency at its event date (:class:`scoring.currency.Rates`; no rate: a dead letter).

A record whose Kafka key is not its customer id is valid but on the wrong partition for its customer, and so is a
record keyed by its customer id but placed by another partitioner than Kafka's default (murmur2; librdkafka's own
default is CRC32): :meth:`Decoder.needs_rekey` says so, and the worker copies it to its re-key topic (keyed by
customer id, murmur2) instead of folding it where it arrived.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from cvm.codec import Codec
from cvm.events import validate
from cvm.exceptions import DecodeError, InvalidEvent
from scoring.currency import Rates
from streams.records import Event, Poison, RawRecord

__all__ = ["Decoder", "kafka_partition"]


class Decoder:
    """Decodes and validates records of the worker's source topics.

    Parameters
    ----------
    codec
        The wire codec (schema ids from the registry).
    topic_kinds
        Full topic name → the event kind it carries, or ``None`` for a topic carrying any kind (the re-key topic).
    """

    def __init__(
        self,
        codec: Codec,
        topic_kinds: Mapping[str, str | None],
        partitions: int,
        rates: Rates | None = None,
        floor_ms: int = 0,
    ) -> None:
        self.codec = codec
        self.topic_kinds = dict(topic_kinds)
        self.partitions = partitions
        self.rates = rates
        self.floor_ms = floor_ms

    def decode(self, rec: RawRecord, now_ms: int) -> Event | Poison:
        """The event of ``rec``, or a :class:`Poison` saying why it cannot be scored."""
        try:
            kind, record = self.codec.decode(rec.value)
            expected = self.topic_kinds.get(rec.topic)
            if expected is not None and kind != expected:
                raise DecodeError(f"a {kind} record on the {expected} topic")
            validate(kind, record, now_ms, self.floor_ms)
            if self.rates is not None:
                record = self.rates.convert(kind, record)
        except (DecodeError, InvalidEvent) as exc:  # NoExchangeRate is an InvalidEvent
            return Poison(rec, exc)
        return Event(rec, kind, record)

    def needs_rekey(self, event: Event) -> bool:
        """Whether the event is not where its customer's events are: another key than its customer id, or another
        partition than Kafka's default partitioner gives that key (never on the re-key topic itself)."""
        rec = event.rec
        if self.topic_kinds.get(rec.topic) is None:
            return False
        key = event.customer_id.encode()
        return rec.key != key or rec.partition != kafka_partition(key, self.partitions)


@lru_cache(maxsize=1 << 16)
def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client and librdkafka's ``murmur2_random``)
    gives ``key`` among ``partitions``.

    >>> [kafka_partition(k, 4) for k in (b"c000001", b"c000002", b"customer-42", b"")]
    [2, 1, 1, 1]
    """
    m, h = 0x5BD1E995, (0x9747B28C ^ len(key)) & 0xFFFFFFFF
    n4 = len(key) // 4
    for i in range(n4):
        k = int.from_bytes(key[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = key[4 * n4 :]
    if tail:
        for j in range(len(tail) - 1, -1, -1):
            h ^= tail[j] << (8 * j)
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions
