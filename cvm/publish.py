"""Publishing events to cvm's topics: the one producer path shared by ``cvm simulate`` and ``cvm replay``.

An event ``(kind, record)`` is encoded with the :class:`~cvm.codec.Codec` (Confluent wire format) and produced to
``cfg.topic(kind)`` with the customer id as key, so murmur2 partitioning keeps each customer on one partition of
every co-partitioned topic. Kafka record timestamps are left to the producer (now): a history replayed with its old
event times as record timestamps would fall straight out of the topics' time-based retention.

:func:`produce_retrying` is the one produce-and-retry-while-the-queue-is-full loop: the :class:`Publisher` uses it,
and so do the producers that keep their own delivery callbacks (``cvm bench``'s loads, the restore's history).

>>> clock = [0.0]
>>> bucket = RateLimiter(10, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
>>> for _ in range(25):
...     bucket.take()
>>> round(clock[0], 2)  # one event of burst, then 24 events at 10/s
2.4
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from confluent_kafka import Producer

from cvm.codec import Codec, make_registry
from cvm.config import EVENT_TOPICS, Config
from cvm.exceptions import BrokerUnavailable, CvmError
from cvm.kafka import check_broker, create_topics, make_producer
from cvm.signals import StopSignals  # re-exported: simulate and replay take it from here

__all__ = [
    "Progress",
    "Publisher",
    "RateLimiter",
    "StopSignals",
    "format_counts",
    "poll_for",
    "produce_retrying",
    "serve",
]


class RateLimiter:
    """A token bucket: on average at most ``rate`` events per second, bursts of at most ``burst``.

    :meth:`take` costs one subtraction while tokens remain; the clock is read only when the bucket runs dry.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = max(1.0, rate / 10) if burst is None else float(burst)
        self.clock = clock
        self.sleep = sleep
        self.tokens = self.burst
        self.last = clock()

    def take(self, n: int = 1) -> None:
        """Spend ``n`` tokens, sleeping first when the bucket does not hold them."""
        self.tokens -= n
        if self.tokens >= 0:
            return
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 0:
            wait = -self.tokens / self.rate
            self.sleep(wait)
            self.tokens = 0.0
            self.last = max(self.clock(), now + wait)


class Progress:
    """A one-line progress report redrawn in place on a terminal (``\\r``), at most every ``every`` seconds.

    Off the terminal (a log file, a pipe) it prints nothing: the final summary line says it all.
    """

    def __init__(self, label: str, stream: TextIO | None = None, every: float = 0.5) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.every = every
        self.started = time.monotonic()
        self._next = self.started + every
        self._shown = False

    def update(self, done: int, fraction: float | None = None, note: str = "") -> None:
        """Redraw with ``done`` events so far and, when known, the ``fraction`` of the work done."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        rate = done / max(now - self.started, 1e-9)
        pct = f"{100 * fraction:5.1f}% " if fraction is not None else ""
        self.stream.write(f"\r{self.label}: {pct}{done:,} events, {rate:,.0f}/s {note}\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """Clear the progress line so the summary starts on a clean line."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def format_counts(counts: dict[str, int]) -> str:
    """``transactions 3, contacts 1`` for the non-zero counts.

    >>> format_counts({"transactions": 1200, "contacts": 0, "payments": 3})
    'transactions 1,200, payments 3'
    """
    return ", ".join(f"{kind} {n:,}" for kind, n in counts.items() if n) or "none"


def produce_retrying(producer: Producer, topic: str, value: bytes, key: bytes, poll_s: float = 0.05) -> None:
    """``producer.produce(topic, value, key)``; while the local queue is full (``BufferError``), serve the producer
    for up to ``poll_s`` seconds (librdkafka sends, delivery callbacks run) and try again."""
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(poll_s)


def serve(producer: Producer, seconds: float, pause: Callable[[float], Any] = time.sleep) -> None:
    """Serve ``producer`` (librdkafka sends, delivery callbacks run) for at most ``seconds``.

    ``producer.poll(timeout)`` counts ``timeout`` in whole milliseconds: a shorter one returns at once, and a caller
    waiting for a deadline in a loop spins (a rate limiter at 3,000 events a second, whose waits are about 0.3 ms,
    took 0.7-0.9 of a core). A wait under a millisecond is slept instead.
    """
    if seconds >= 0.001:
        producer.poll(seconds)
    elif seconds > 0:
        pause(seconds)


def poll_for(
    producer: Producer,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], Any] = time.sleep,
) -> Callable[[float], None]:
    """A sleep of ``seconds`` that serves ``producer`` meanwhile, for :class:`RateLimiter`.

    ``producer.poll(timeout)`` returns as soon as it has served an event, long before ``timeout``: as a rate
    limiter's sleep it let ``cvm replay --rate 0.5`` publish 1,500 events in 11.6 s (129 a second). So it serves
    the producer (:func:`serve`) until the deadline.
    """

    def sleep(seconds: float) -> None:
        deadline = clock() + seconds
        while (left := deadline - clock()) > 0:
            serve(producer, left, pause)

    return sleep


class Publisher:
    """Encode events and produce them to cvm's topics, keyed by customer id, optionally rate-limited.

    Construction checks the broker (:class:`~cvm.exceptions.BrokerUnavailable` when it does not answer) and creates
    the topics when missing. Call :meth:`flush` at the end: it raises when events could not be delivered.
    """

    def __init__(self, cfg: Config, rate: float | None = None) -> None:
        check_broker(cfg)
        create_topics(cfg)
        self.codec = Codec(make_registry(cfg.schema_registry_url, cfg.schema_registry_wait_s))
        self.producer = make_producer(cfg, on_delivery=self._delivered, **{"delivery.report.only.error": True})
        self.topics = {kind: cfg.topic(kind) for kind in EVENT_TOPICS}
        self.limiter = RateLimiter(rate, sleep=poll_for(self.producer)) if rate else None
        self.counts = dict.fromkeys(EVENT_TOPICS, 0)
        self.failed = 0
        self.first_error = ""
        self._unpolled = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or str(err)

    @property
    def published(self) -> int:
        """Events handed to the producer so far."""
        return sum(self.counts.values())

    def publish(self, kind: str, record: dict[str, Any]) -> None:
        """Encode and produce one event; raises :class:`~cvm.exceptions.DecodeError` when it breaks its schema."""
        value = self.codec.encode(kind, record)
        if self.limiter is not None:
            self.limiter.take()
        produce_retrying(self.producer, self.topics[kind], value, record["customer_id"].encode())
        self.counts[kind] += 1
        self._unpolled += 1
        if self._unpolled >= 1000:
            self.producer.poll(0)
            self._unpolled = 0

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds`` while serving the producer's delivery reports."""
        serve(self.producer, seconds)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every event is delivered; raise when some were not."""
        remaining = self.producer.flush(timeout)
        if remaining:
            raise BrokerUnavailable(
                f"{remaining:,} events still undelivered after {timeout:g}s: check the broker, then publish again"
            )
        if self.failed:
            raise CvmError(
                f"{self.failed:,} of {self.published:,} events were not delivered ({self.first_error}): "
                "check the broker and the topics, then publish again"
            )
