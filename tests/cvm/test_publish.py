"""The one producing loop (:func:`cvm.publish.produce_retrying`): a full local queue is waited out, never lost."""

from __future__ import annotations

from typing import Any

import pytest

from cvm.publish import Publisher, RateLimiter, poll_for, produce_retrying


class FullThenFree:
    """A producer whose local queue is full for the first ``full`` produce calls; it notes every call, in order."""

    def __init__(self, full: int) -> None:
        self.full = full
        self.calls: list[tuple[str, Any]] = []
        self.produced: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.calls.append(("produce", topic))
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.produced.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        self.calls.append(("poll", timeout))
        return 0


def test_a_full_queue_is_polled_then_the_record_produced_once() -> None:
    producer = FullThenFree(full=2)
    produce_retrying(producer, "transactions", b"value", b"c1")  # type: ignore[arg-type]
    assert producer.produced == [("transactions", b"value", b"c1")]
    assert producer.calls == [
        ("produce", "transactions"),
        ("poll", 0.05),
        ("produce", "transactions"),
        ("poll", 0.05),
        ("produce", "transactions"),
    ]


def test_a_free_queue_is_not_polled_and_the_poll_timeout_is_the_callers() -> None:
    free = FullThenFree(full=0)
    produce_retrying(free, "contacts", b"v", b"k", poll_s=0.01)  # type: ignore[arg-type]
    assert free.calls == [("produce", "contacts")]
    full = FullThenFree(full=1)
    produce_retrying(full, "contacts", b"v", b"k", poll_s=0.01)  # type: ignore[arg-type]
    assert full.calls == [("produce", "contacts"), ("poll", 0.01), ("produce", "contacts")]
    assert full.produced == [("contacts", b"v", b"k")]


def test_a_rate_limit_holds_when_the_producer_returns_early() -> None:
    """``producer.poll(timeout)`` returns once it served an event: the limiter's sleep polls until its deadline.
    (With ``sleep=producer.poll``, ``cvm replay --rate 0.5`` published 1,500 events in 11.6 s.)"""
    clock = [0.0]

    class Busy:  # a delivery report is always ready: each poll serves one in 1 ms and returns
        polls = 0

        def poll(self, timeout: float) -> int:
            self.polls += 1
            clock[0] += min(timeout, 0.001)
            return 1

    busy = Busy()

    def pause(seconds: float) -> None:
        clock[0] += seconds

    sleep = poll_for(busy, clock=lambda: clock[0], pause=pause)  # type: ignore[arg-type]
    bucket = RateLimiter(0.5, clock=lambda: clock[0], sleep=sleep)
    for _ in range(5):
        bucket.take()
    assert clock[0] >= 8.0  # one event of burst, then one every 2 s
    assert busy.polls > 4_000  # the producer was served all along


def test_a_sleep_under_a_millisecond_does_not_spin_on_the_producer() -> None:
    """``producer.poll`` counts its timeout in whole milliseconds: ``poll(0.0003)`` returns at once. At 3,050 events
    a second the limiter's sleeps are about 0.3 ms each, and polling until their deadlines kept the latency phase's
    publisher at 0.8 of a core on the two cores the worker, sink and broker share."""
    clock = [0.0]
    paused: list[float] = []

    class Rounding:  # as librdkafka: a timeout under 1 ms does not wait
        polls = 0

        def poll(self, timeout: float) -> int:
            self.polls += 1
            clock[0] += int(timeout * 1000) / 1000 or 1e-6
            return 0

    def pause(seconds: float) -> None:
        paused.append(seconds)
        clock[0] += seconds

    producer = Rounding()
    sleep = poll_for(producer, clock=lambda: clock[0], pause=pause)  # type: ignore[arg-type]
    sleep(0.0003)
    assert producer.polls <= 1 and paused == [pytest.approx(0.0003)]
    sleep(0.0052)  # whole milliseconds polled, the rest paused
    assert producer.polls <= 3 and clock[0] == pytest.approx(0.0055)


def test_a_live_publishers_wait_under_a_millisecond_does_not_poll() -> None:
    """`cvm simulate`'s live traffic waits for each event's time with :meth:`Publisher.wait`: its last fraction of a
    millisecond was polled, which returns at once, in a loop until the event was due."""

    class Rounding:
        polls = 0

        def poll(self, timeout: float) -> int:
            self.polls += 1
            return 0

    publisher = Publisher.__new__(Publisher)  # its producer only: no broker
    publisher.producer = Rounding()  # type: ignore[assignment]
    publisher.wait(0.0004)
    publisher.wait(-1.0)
    assert publisher.producer.polls == 0  # type: ignore[attr-defined]
    publisher.wait(0.002)
    assert publisher.producer.polls == 1  # type: ignore[attr-defined]
