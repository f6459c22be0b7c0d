"""The ``floor`` phase of ``cvm bench``: the most any implementation of cvm's outputs could reach on this machine.

The pipeline's cost per event has two parts: the computing (folding the events, scoring the customers) and the
outputs its contract asks for, which no faster computing removes. This phase measures the second part alone, on the
bench's load and in the bench process: it consumes and decodes every event as the worker does (its consumer
settings, its batch size), and for each event sends what the single worker sent per event in the pipeline phase:

* ``scorings_per_event`` score messages, each a real score record of that phase (read back from its
  ``customer-scores`` topic, parsed, and turned into JSON again for every message, as the worker dumps each
  scoring's dict);
* one changelog record, a real customer state of that phase (the worker writes one per customer per batch: one per
  event at 200,000 customers);

on the worker's producer settings (compressed, errors-only delivery reports), flushed and committed per batch, to
topics of its own. No fold, no features, no model: ``floor_eps`` is the ceiling of cvm's outputs, the figure a
compiled scoring core would approach, and ``floor_eps / quix_eps`` says whether a throughput target against Quix's
count (which decodes nothing and sends nothing but its changelog) is reachable without sending less.

Its labels, CLV facts, alerts and re-keyed records are left out (a few per hundred events): the floor is a little
higher than the real one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from cvm.codec import Codec
from cvm.exceptions import CvmError

if TYPE_CHECKING:
    from cvm.bench_harness import Harness

__all__ = ["KEYS", "Floor", "messages", "owed", "phase", "run"]

KEYS = {
    "floor_eps": "consume + decode + the pipeline's outputs per event (its score messages as JSON, a changelog "
    "record), no fold or scoring: the ceiling of cvm's outputs",
    "floor_cpu_us_per_event": "CPU time of the floor phase per event (the bench process, librdkafka's threads too)",
}

#: Score records and states read back from the pipeline phase to send again: enough that each message is dumped
#: from a dict not in the processor's cache, as the worker's are.
SAMPLE = 50_000


def owed(per_event: float) -> Iterator[int]:
    """How many score messages to send after each event, ``per_event`` on average, counted in thousandths so that
    after ``n`` events exactly :func:`messages` ``(per_event, n)`` were sent.

    >>> from itertools import islice
    >>> list(islice(owed(1.5), 4)), sum(islice(owed(1.667), 400_000)), sum(islice(owed(0.0), 10))
    ([1, 2, 1, 2], 666800, 0)
    """
    step, credit = round(per_event * 1000), 0
    while True:
        credit += step
        yield credit // 1000
        credit %= 1000


def messages(per_event: float, events: int) -> int:
    """The score messages :func:`owed` gives for ``events`` events.

    >>> messages(1.667, 400_000), messages(3.34, 3)
    (666800, 10)
    """
    return events * round(per_event * 1000) // 1000


@dataclass(frozen=True)
class Floor:
    """What the phase timed: the events, those after the first batch and the wall time from its end to the last
    one's, the CPU time of the whole process over all events, the score messages sent."""

    events: int
    timed: int
    seconds: float
    cpu_seconds: float
    messages: int

    def figures(self) -> dict[str, Any]:
        return {
            "floor_eps": round(self.timed / self.seconds) if self.seconds > 0 else None,
            "floor_cpu_us_per_event": round(self.cpu_seconds / max(1, self.events) * 1e6, 1),
        }


def phase(bench: Harness, ends: dict[tuple[str, int], int], per_event: float, batch: int) -> dict[str, Any]:
    """Run the floor on ``bench``'s published load (``ends``: its partitions' end offsets), ``per_event`` score
    messages per event, ``batch`` records per consume."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from cvm.kafka import TopicSpec, create_topic, make_consumer, make_producer
    from streams.partitions import CLOCK_KEY
    from streams.table import MARKER

    cfg = bench.cfg
    scores = [orjson.loads(v) for v in _sample(bench, cfg.topic("customer-scores"))]
    states = _sample(bench, f"{cfg.app_id}-p1-customers-changelog", skip=(MARKER, CLOCK_KEY))
    if not scores or not states:
        raise bench.fail("floor: the pipeline phase left no score records or states to send again")
    tag = uuid.uuid4().hex[:8]
    out_scores, out_states = f"floor-{tag}-scores", f"floor-{tag}-changelog"
    create_topic(cfg, TopicSpec(out_scores))
    create_topic(cfg, TopicSpec(out_states, compact=True))
    consumer = make_consumer(cfg, group=f"{cfg.app_id}-floor-{tag}", **{"fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
    producer = make_producer(cfg, compressed=True, **{"delivery.report.only.error": True})
    try:
        floor = run(consumer, producer, Codec(), bench.events, per_event, batch, scores, states,
                    (cfg.topic(out_scores), cfg.topic(out_states)), bench.timeout)  # fmt: skip
    finally:
        consumer.close()
    if floor.messages != messages(per_event, floor.events):
        raise bench.fail(f"floor: sent {floor.messages:,} score messages for {floor.events:,} events")
    return floor.figures()


def run(
    consumer: Any,
    producer: Any,
    codec: Codec,
    events: int,
    per_event: float,
    batch: int,
    scores: Sequence[dict[str, Any]],
    states: Sequence[bytes],
    topics: tuple[str, str],
    timeout: float,
) -> Floor:
    """Consume ``events`` events in batches of ``batch``; for each, decode it and send its share of score messages
    and a state; flush and commit each batch, as the worker does."""
    from confluent_kafka import TopicPartition

    scores_topic, states_topic = topics
    shares = owed(per_event)
    decode, dumps, produce = codec.decode, orjson.dumps, producer.produce
    seen = first = sent = i = j = 0
    started = cpu_started = 0.0
    deadline = time.monotonic() + timeout
    while seen < events:
        if time.monotonic() > deadline:
            raise CvmError(f"floor read {seen:,} of {events:,} events in {timeout:.0f}s")
        msgs = consumer.consume(num_messages=batch, timeout=1.0)
        if msgs and not seen:
            cpu_started = time.process_time()
        positions: dict[tuple[str, int], int] = {}
        n = 0
        for msg in msgs:
            if msg.error() is not None:
                continue
            decode(msg.value())
            key = msg.key()
            for _ in range(next(shares)):
                produce(scores_topic, key=key, value=dumps(scores[i]))
                i = (i + 1) % len(scores)
                sent += 1
            produce(states_topic, key=key, value=states[j], partition=msg.partition())
            j = (j + 1) % len(states)
            positions[(msg.topic(), msg.partition())] = msg.offset() + 1
            n += 1
        if not n:
            continue
        producer.flush()
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()], asynchronous=False)
        if not seen:  # the clock starts after the first batch, as for the other rates
            first, started = n, time.perf_counter()
        seen += n
    return Floor(seen, seen - first, time.perf_counter() - started, time.process_time() - cpu_started, sent)


def _sample(bench: Harness, topic: str, skip: tuple[bytes, ...] = ()) -> list[bytes]:
    """About :data:`SAMPLE` values of ``topic``, spread evenly over it (a record in every ``stride`` of each
    partition): what the worker sent all through the phase, not its first, smaller states. Keys in ``skip`` and
    empty values are left out."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from cvm.kafka import make_consumer, read_to_end

    cfg = bench.cfg
    group = f"{cfg.app_id}-floor-read-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(cfg, group=group, **{"enable.partition.eof": True})
    values: list[bytes] = []
    try:
        partitions = range(cfg.partitions)
        total = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)[1] for p in partitions)
        stride = max(1, total // SAMPLE)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        for msg in read_to_end(consumer, partitions, 120.0, f"floor: reading {topic}"):
            value = msg.value()
            if msg.offset() % stride == 0 and value and msg.key() not in skip:
                values.append(value)
    except TimeoutError as exc:
        raise bench.fail(str(exc)) from None
    finally:
        consumer.close()
    return values
