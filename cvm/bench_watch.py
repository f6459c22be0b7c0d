"""The watchers of ``cvm bench``'s latency phase: they see sampled events reach ClickHouse and ``customer-scores``.

:class:`Waiting` holds the sampled events, each waiting until its customer's figures cover it, and the latencies of
those covered; :class:`ClickHouseWatch` (polling the sink's ``/api/sql``) and :class:`ScoresWatch` (reading
``customer-scores``) are daemon threads that feed it. :class:`cvm.bench_latency.LatencyPhase` publishes the events
and starts them, on the child processes of :class:`cvm.bench_harness.Harness`; the harness drives the run, these
only observe it.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
from typing import Any

from cvm.config import Config

__all__ = ["ClickHouseWatch", "ScoresWatch", "Waiting"]


class Waiting:
    """Sampled events waiting to be covered by their customer's figures, and the latencies of those covered.

    An event is covered when the customer's count of that event kind (``n_transactions``, ...) reaches the number
    of events of that kind published for the customer up to and including it: a topic-partition is applied in
    order, so nothing earlier can be missing.

    >>> w = Waiting()
    >>> w.expect("c1", "contacts", 2, published=10.0)
    >>> w.cover("c1", {"n_contacts": 1}, at=10.5); w.pending()
    1
    >>> w.cover("c1", {"n_contacts": 2, "n_transactions": 7}, at=11.25); w.pending(), w.latencies
    (0, [1.25])
    """

    COLUMNS = {"transactions": "n_transactions", "contacts": "n_contacts", "payments": "n_payments"}

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: dict[str, list[tuple[str, int, float]]] = {}  # customer → (kind, count needed, published)
        self.latencies: list[float] = []

    def expect(self, customer: str, kind: str, count: int, published: float) -> None:
        with self.lock:
            self.waiting.setdefault(customer, []).append((self.COLUMNS[kind], count, published))

    def pending(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.waiting.values())

    def customers(self, limit: int) -> list[str]:
        with self.lock:
            return list(itertools.islice(self.waiting, limit))

    def cover(self, customer: str, have: dict[str, Any], at: float) -> None:
        with self.lock:
            entries = self.waiting.get(customer)
            if not entries:
                return
            left = []
            for column, need, published in entries:
                if int(have.get(column) or 0) >= need:
                    self.latencies.append(at - published)
                else:
                    left.append((column, need, published))
            if left:
                self.waiting[customer] = left
            else:
                del self.waiting[customer]


class _Watch:
    """A daemon thread that feeds a :class:`Waiting` until stopped; its first failure is kept in ``error``."""

    name = "watch"

    def __init__(self, waiting: Waiting) -> None:
        self.waiting = waiting
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name=f"cvm-bench-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _guarded(self) -> None:
        try:
            self.run()
        except Exception as exc:  # reported by the main thread, on one line
            self.error = f"{type(exc).__name__}: {exc}"

    def run(self) -> None:
        raise NotImplementedError


class ClickHouseWatch(_Watch):
    """Polls the customers table through the sink's HTTP API (/api/sql); the time of an answer is when the rows
    it shows became visible, at the latest."""

    name = "reading ClickHouse through the sink"

    def __init__(self, cfg: Config, waiting: Waiting) -> None:
        super().__init__(waiting)
        self.url = f"http://127.0.0.1:{cfg.http_port}/api/sql?format=json"
        self.table = f"{cfg.clickhouse_database}.customers"

    def run(self) -> None:
        while not self._stop.is_set():
            customers = self.waiting.customers(400)
            if not customers:
                self._stop.wait(0.02)
                continue
            ids = ",".join(f"'{c}'" for c in customers if c.isalnum())  # simulator ids: letters and digits
            query = (
                "SELECT customer_id, max(n_transactions) AS n_transactions, max(n_contacts) AS n_contacts, "
                f"max(n_payments) AS n_payments FROM {self.table} WHERE customer_id IN ({ids}) GROUP BY customer_id"
            )
            request = urllib.request.Request(self.url, data=query.encode(), method="POST")
            with urllib.request.urlopen(request, timeout=10.0) as resp:
                rows = json.loads(resp.read())
            seen = time.time()
            for row in rows:
                self.waiting.cover(row["customer_id"], row, seen)
            self._stop.wait(0.1)  # the queries run in the sink's process: polling faster measurably slowed it


class ScoresWatch(_Watch):
    """Reads ``customer-scores``; a score record's timestamp is when the worker sent it."""

    name = "reading customer-scores"

    def __init__(self, cfg: Config, waiting: Waiting) -> None:
        super().__init__(waiting)
        self.cfg = cfg

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from cvm.kafka import make_consumer

        cfg = self.cfg
        consumer = make_consumer(cfg, group=f"{cfg.app_id}-bench-latency", **{"fetch.wait.max.ms": 10})
        topic = cfg.topic("customer-scores")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(cfg.partitions)])
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=0.1):
                    if msg.error() is not None:
                        continue
                    score = json.loads(msg.value())
                    self.waiting.cover(str(score["customer_id"]), score, msg.timestamp()[1] / 1000)
        finally:
            consumer.close()
