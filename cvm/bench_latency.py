"""The latency phase of ``cvm bench``: publish → ClickHouse, and publish → ``customer-scores``, timed on sampled events.

:class:`LatencyPhase` is the :class:`cvm.bench_harness.Harness` with :meth:`LatencyPhase.latency`, the phase behind the
``p50_latency_s`` … ``p99_live_score_latency_s`` figures: a worker, the learner and the sink on topics of their own,
the load's pool published at a set rate (as history, or stamped with the wall clock as live traffic), and sampled
events timed until ClickHouse and the score records cover them (the watchers, :class:`cvm.bench_watch.Waiting`,
:class:`cvm.bench_watch.ClickHouseWatch` and :class:`cvm.bench_watch.ScoresWatch`, are :mod:`cvm.bench_watch`).
:func:`percentile` reduces the samples. :class:`cvm.bench.Bench` is a :class:`LatencyPhase`, and :mod:`cvm.bench`
holds what the phase's figures are, and when the phase runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cvm.bench_harness import Harness
from cvm.bench_watch import ClickHouseWatch, ScoresWatch, Waiting
from cvm.config import EVENT_TOPICS

__all__ = ["LatencyPhase", "percentile"]

_LATENCY_S = 20.0  # how long the latency phase publishes, at most
_LATENCY_SAMPLES = 500


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank.

    >>> percentile([3.0, 1.0, 2.0, 4.0], 50), percentile([3.0, 1.0, 2.0, 4.0], 99), percentile([5.0], 1)
    (2.0, 4.0, 5.0)
    """
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


class LatencyPhase(Harness):
    """A harness that can run the latency phase; :class:`cvm.bench.Bench` adds the other measurements."""

    # --- latency ------------------------------------------------------------------------------------------------

    def latency(self, pool: Sequence[tuple[str, bytes, bytes]], rate: float, live: bool = False) -> dict[str, Any]:
        """Worker and sink on fresh topics; publish ``pool`` at ``rate`` and time sampled events into ClickHouse
        (and, to tell the worker's share from the sink's, onto ``customer-scores``).

        The pool is history: at ``rate`` its stream time runs thousands of times faster than the wall clock, so every
        cost that stream time drives (ticks, re-scoring, new model versions) comes as a burst. ``live`` stamps each
        event with the wall clock as it is published (its other times moved alike), as upstream traffic is: stream
        time then follows the wall clock, as in production."""
        from cvm.codec import Codec
        from cvm.events import TIME_FIELDS
        from cvm.kafka import create_topics, make_producer
        from cvm.publish import RateLimiter, poll_for, produce_retrying

        tag = "live" if live else "lat"
        cfg = self.cfg.replace(topic_prefix=f"{self.cfg.topic_prefix}{tag}-", app_id=f"{self.cfg.app_id}-{tag}")
        if live:  # a database of its own: the other phase's history there would be restored first
            cfg = cfg.replace(clickhouse_database="live")
        codec = Codec()

        def stamped(kind: str, value: bytes) -> bytes:
            _, rec = codec.decode(value)
            moved = int(time.time() * 1000) - rec["event_time"]
            for name in TIME_FIELDS[kind]:
                if rec.get(name) is not None:
                    rec[name] += moved
            return codec.encode(kind, rec)

        create_topics(cfg)
        sink = self.children.start("sink", ["-m", "cvm.cli", "sink"], cfg)
        worker = self._spawn_worker(cfg, f"{cfg.app_id}-w1")
        learner = self.children.start(f"{cfg.app_id}-learner", ["-m", "cvm.cli", "learner"], cfg)
        procs, names = [sink, worker, learner], ["sink", f"{cfg.app_id}-w1", f"{cfg.app_id}-learner"]
        table, scores = Waiting(), Waiting()
        watchers = [ClickHouseWatch(cfg, table), ScoresWatch(cfg, scores)]
        try:
            self._wait_http(cfg, sink)
            producer = make_producer(cfg)
            topics = {kind: cfg.topic(kind) for kind in EVENT_TOPICS}
            published: dict[tuple[bytes, str], int] = {}

            def send(items: Sequence[tuple[str, bytes, bytes]], every: int, limiter: RateLimiter | None) -> None:
                for i, (kind, key, value) in enumerate(items):
                    if limiter is not None:
                        limiter.take()
                    if live:
                        value = stamped(kind, value)
                    produce_retrying(producer, topics[kind], value, key, poll_s=0.01)
                    n = published[(key, kind)] = published.get((key, kind), 0) + 1
                    if i % every == 0:
                        now = time.time()
                        table.expect(key.decode(), kind, n, now)
                        scores.expect(key.decode(), kind, n, now)
                    if i % 100 == 0:
                        producer.poll(0)
                producer.flush(30)

            def settle(timeout: float, what: str) -> None:
                deadline = time.monotonic() + timeout
                while table.pending() or scores.pending():
                    self._check_alive(procs, names)
                    for watch in watchers:
                        if watch.error:
                            raise self.fail(f"{watch.name} failed: {watch.error}")
                    if time.monotonic() > deadline:
                        raise self.fail(f"{table.pending():,} {what} did not reach ClickHouse within {timeout:.0f}s")
                    time.sleep(0.1)

            # Warm-up: the worker joins its group and the sink its partitions before the clock runs.
            warm = min(200, max(1, len(pool) // 20))
            send(pool[:warm], 1, None)
            for watch in watchers:
                watch.start()
            settle(120.0, "warm-up events")
            table.latencies.clear()
            scores.latencies.clear()
            timed = list(pool[warm : warm + max(1, min(len(pool) - warm, int(rate * _LATENCY_S)))])
            limiter = RateLimiter(rate, sleep=poll_for(producer))
            send(timed, max(1, len(timed) // _LATENCY_SAMPLES), limiter)
            settle(60.0, "sampled events")
        finally:
            for watch in watchers:
                watch.stop()
            self.children.stop(worker)
            self.children.stop(learner)
            self.children.stop(sink, timeout=30.0)
        return {
            "p50_latency_s": round(percentile(table.latencies, 50), 3),
            "p99_latency_s": round(percentile(table.latencies, 99), 3),
            "p50_score_latency_s": round(percentile(scores.latencies, 50), 3),
            "p99_score_latency_s": round(percentile(scores.latencies, 99), 3),
            "latency_rate_eps": round(rate),
            "latency_samples": len(table.latencies),
        }
