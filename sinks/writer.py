"""The sink's writer: cvm's topics → batches per (table, topic, partition) → ClickHouse, then offset commits.

At-least-once, never lossy:

* records are batched per (table, topic, partition), a batch's token being
  ``"{topic}:{partition}:{first}:{last}:{table}"``. A flush writes a table's batches (those of the same columns)
  in one INSERT (a part costs ClickHouse ~20 ms of CPU whatever its size: one per partition would eat a core at
  a few thousand events/s) whose ``insert_deduplication_token`` is the broker's epoch id (:mod:`cvm.epoch`: offsets
  start at 0 again on a broker that lost its topics, so offsets alone would repeat an earlier life's tokens, and
  ClickHouse would drop the new rows as duplicates), then ``/``, then its batches' tokens joined with ``|``. Once
  tried, an INSERT is sealed (later records go to new batches; a retry writes the same batches), so a retry
  carries the same token and is a no-op if the earlier attempt reached ClickHouse after all. When a rebalance
  takes a partition away from a sealed INSERT, the rest keeps the token: if the failed attempt had in fact
  landed, the retry of the rest is still a no-op (the partition taken away is re-read by its new owner);
* offsets are committed only after ClickHouse acknowledged every batch holding them;
* while inserts keep failing, the consumer is paused and the writer retries with growing delays (the one retry
  layer: an INSERT is tried once per flush); nothing is dropped. Partitions taken away by a rebalance before
  their batches were written are simply not committed: their new owner reads them again.

What rows a record of each topic becomes (decoding, validation, the score contract, currency conversion,
conversion to the tables' columns) is :mod:`sinks.routes`'s. Once a batch of alerts is written, the ones whose
episode ClickHouse did not hold before (:meth:`~sinks.routes.Routes.fresh_alerts`, asked before the INSERT) go to
:attr:`Writer.alert_listener` (the webhook), so a replay does not notify anyone twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from cvm import metrics
from cvm.config import Config
from cvm.epoch import Epoch
from cvm.kafka import make_consumer
from sinks.clickhouse import SCORE_TABLES, ClickHouse, InsertFailed
from sinks.routes import REFUSALS, Routes, Row

__all__ = ["SCORE_TABLES", "Writer", "sink_group"]

log = logging.getLogger("cvm.sink")

_RATE_WINDOW_S = 5.0
_LAG_EVERY_S = 2.0
_MAX_RETRY_S = 10.0


@dataclass
class _Batch:
    table: str
    topic: str
    partition: int
    first: int
    last: int
    records: list[Row] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    sealed: bool = False  # taken into an _Insert: takes no more records

    @property
    def token(self) -> str:
        return f"{self.topic}:{self.partition}:{self.first}:{self.last}:{self.table}"


@dataclass
class _Insert:
    """One INSERT: the sealed batches of one table, written together under one token."""

    table: str
    batches: list[_Batch]
    epoch: str = ""  # the broker's epoch id: the same offsets in another epoch are other records
    fresh: list[Row] | None = None  # alerts only: those new to ClickHouse, found before the first insert attempt
    token: str = ""  # its batches' tokens when sealed; kept when a rebalance takes batches away (see _forget)

    def __post_init__(self) -> None:
        self.token = self.token or f"{self.epoch}/" + "|".join(b.token for b in self.batches)

    @property
    def records(self) -> list[Row]:
        return [r for b in self.batches for r in b.records]


class Writer:
    """Consumes cvm's topics and writes them to ClickHouse in batches; :meth:`run` is the loop.

    Without a consumer (tests, tools), :meth:`add` and :meth:`flush` work alone and :meth:`commit` does nothing.
    :attr:`epoch` is the broker's (:func:`cvm.epoch.read`); set it before the first record. Without one, the writer
    makes up a random epoch: its tokens never collide with anyone's, nor with its own after a restart.
    """

    def __init__(
        self, cfg: Config, ch: ClickHouse, consumer: Consumer | None = None, epoch: Epoch | None = None
    ) -> None:
        self.cfg = cfg
        self.ch = ch
        self.consumer = consumer
        #: What each topic's records become; it holds the tables (:attr:`tables`) and the epoch (:attr:`epoch`).
        self.routes = Routes(cfg, ch, epoch or Epoch.local())
        self.tables = self.routes.tables
        self._routes = self.routes.by_topic
        #: Called with the new alerts of each written batch (converted rows), from the writer's thread.
        self.alert_listener: Callable[[list[Row]], None] | None = None

        self._open: dict[tuple[str, str, int], _Batch] = {}  # batches still taking records
        self._pending: list[_Batch] = []  # every unwritten batch, oldest first
        self._inserts: list[_Insert] = []  # sealed, unwritten INSERTs, oldest first
        self._positions: dict[tuple[str, int], int] = {}  # last offset handled per partition, not yet committed
        self._full = False
        self._paused = False
        self._repause = False
        self._retry_at = 0.0
        self._retry_s = 0.5
        self._last_flush = time.monotonic()
        self._last_lag = 0.0

        self._stats_lock = threading.Lock()
        self._written: Counter[str] = Counter()
        self._consumed = 0
        self._skipped = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._last_flush_at: float | None = None
        self._last_error: str | None = None
        self._lag: dict[str, int] = {}
        self._pending_seen = 0
        # Records taken into batches and not yet written, per partition: their fate (written or released) is
        # counted when a flush or a rebalance settles it (cvm_records_total).
        self._held: Counter[tuple[str, int]] = Counter()

    @property
    def topics(self) -> list[str]:
        """The full names of the topics the writer consumes."""
        return list(self._routes)

    @property
    def epoch(self) -> Epoch:
        """The broker's epoch: in every INSERT's token, and in the rows of raw events, dead letters and late events."""
        return self.routes.epoch

    @epoch.setter
    def epoch(self, epoch: Epoch) -> None:
        self.routes.epoch = epoch

    # --- records in ------------------------------------------------------------------------------------------------

    def add(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None = None) -> bool:
        """Put one Kafka record into its batches; False when it was skipped (undecodable, invalid, unknown)."""
        self._consumed += 1
        label = metrics.topic_label(self.cfg, topic)
        metrics.records_consumed.labels(topic=label).inc()
        pos = (topic, partition)
        route = self._routes.get(topic)
        if route is None or value is None:
            self._skipped += 1
            metrics.records.labels(topic=label, fate="skipped").inc()
            log.debug("skipped %s[%d]@%d: %s", topic, partition, offset, "no value" if route else "unknown topic")
            self._handled(pos, offset)
            return False
        try:
            rows = route(topic, partition, offset, value, key)
        except REFUSALS as exc:
            # "Skip this record" is not a failure: the worker dead-letters raw events, and a malformed JSON
            # message cannot become valid by retrying.
            self._skipped += 1
            metrics.records.labels(topic=label, fate="skipped").inc()
            log.debug("skipped %s[%d]@%d: %s", topic, partition, offset, exc)
            self._handled(pos, offset)
            return False
        # Any other exception (the Schema Registry unavailable) leaves the position as it was: a commit on the way
        # out (a revoke as the consumer closes) must not cover a record that was neither written nor skipped.
        self._handled(pos, offset)
        self._held[pos] += 1
        limit = self.cfg.sink_batch_rows
        for table, row in rows:
            bkey = (table, topic, partition)
            batch = self._open.get(bkey)
            if batch is None:
                batch = _Batch(table, topic, partition, offset, offset)
                self._open[bkey] = batch
                self._pending.append(batch)
            batch.last = offset
            batch.records.append(row)
            batch.keys.update(row)
            if len(batch.records) >= limit:
                self._full = True
        return True

    def _handled(self, pos: tuple[str, int], offset: int) -> None:
        """The record at ``offset`` is written once its batch is, or skipped: a commit may cover it."""
        if offset > self._positions.get(pos, -1):
            self._positions[pos] = offset

    # --- records out -----------------------------------------------------------------------------------------------

    @property
    def pending_rows(self) -> int:
        return sum(len(b.records) for b in self._pending)

    def flush(self) -> bool:
        """Write every pending batch, one INSERT per table, oldest first; True when ClickHouse acknowledged them all.

        Stops at the first INSERT that still fails after the client's retries (ClickHouse is likely down); that
        INSERT and the ones after it stay pending, sealed, with their batches and tokens.
        """
        self._open.clear()  # seal: a retried batch must keep its offsets, hence its token
        self._full = False
        self._seal()
        while self._inserts:
            ins = self._inserts[0]
            table = self.tables[ins.table]
            columns = [c for c in table.columns if c in ins.batches[0].keys]  # the batches share their keys
            records = ins.records
            if ins.table == "alerts" and self.alert_listener is not None and ins.fresh is None:
                ins.fresh = self.routes.fresh_alerts(records)  # before inserting: afterwards every episode is known
            try:
                self.ch.insert(ins.table, columns, table.rows(records, columns), ins.token)
            except InsertFailed as exc:
                with self._stats_lock:
                    self._last_error = str(exc)
                log.warning("%s", exc)
                return False
            self._inserts.pop(0)
            written = {id(b) for b in ins.batches}
            self._pending = [b for b in self._pending if id(b) not in written]
            if ins.fresh and self.alert_listener is not None:
                try:
                    self.alert_listener(ins.fresh)
                except Exception:  # a notification must never stop the writing
                    log.warning("the alert listener failed", exc_info=True)
            with self._stats_lock:
                self._written[ins.table] += len(records)
            metrics.rows_written.labels(table=ins.table).inc(len(records))
        with self._stats_lock:
            self._last_flush_at = time.time()
            self._last_error = None
        self._settle(self._held, "written")
        return True

    def _settle(self, held: Counter[tuple[str, int]], fate: str) -> int:
        """Count the fate of held records and forget them; the number of records settled."""
        n = 0
        for (topic, partition), count in list(held.items()):
            metrics.records.labels(topic=metrics.topic_label(self.cfg, topic), fate=fate).inc(count)
            n += count
            del self._held[(topic, partition)]
        return n

    def _seal(self) -> None:
        """Group the batches not yet in an INSERT into one INSERT per table, after the sealed ones.

        Batches whose records carry different keys stay apart, as they were before INSERTs were grouped: a column
        no record of a batch has gets the column's default in ClickHouse, not the type's zero.
        """
        grouped: dict[tuple[str, frozenset[str]], list[_Batch]] = {}
        for batch in self._pending:
            if not batch.sealed:
                batch.sealed = True
                grouped.setdefault((batch.table, frozenset(batch.keys)), []).append(batch)
        for (table, _), batches in grouped.items():
            batches.sort(key=lambda b: (b.topic, b.partition))
            self._inserts.append(_Insert(table, batches, self.epoch.id))

    def commit(self) -> bool:
        """Commit the offsets of every record handled so far; call only after a successful :meth:`flush`."""
        if self.consumer is None or not self._positions:
            self._positions.clear()
            return True
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in self._positions.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Not fatal: the records are in ClickHouse; a later commit covers them, or they are re-read and the
            # ReplacingMergeTree tables and insert tokens absorb the repeat.
            log.warning("offset commit failed: %s", exc)
            return False
        self._positions.clear()
        return True

    def flush_and_commit(self) -> bool:
        """:meth:`flush`, then :meth:`commit` when every batch was written."""
        self._last_flush = started = time.monotonic()
        records = sum(self._held.values())
        if self.flush():
            self.commit()
            if records:
                metrics.batch_records.observe(records)
                metrics.batch_seconds.observe(time.monotonic() - started)
            return True
        return False

    # --- the loop --------------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, final_attempts: int = 3) -> None:
        """Consume until ``stop`` is set; then write what is held, commit, and close the consumer."""
        if self.consumer is None:
            self.consumer = make_consumer(self.cfg, group=sink_group(self.cfg))
        consumer = self.consumer
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not stop.is_set():
                self.poll(consumer)
            if self.cfg.embedded_broker:
                self._drain(consumer)
            for _ in range(final_attempts):
                if self.flush_and_commit():
                    break
                time.sleep(0.5)
            else:
                log.warning("stopping with %d rows not written: they will be read again", self.pending_rows)
                self._settle(self._held, "released")
        finally:
            consumer.close()

    def _drain(self, consumer: Consumer, limit_s: float = 15.0) -> None:
        """Read what the topics held when the stop came, to the end: the embedded broker's topics die with it, and
        what the sink has not written by then is lost (``cvm up`` stops the workers and the learner first, so their
        last outputs are in). Records that arrive after the stop are not waited for."""
        deadline = time.monotonic() + limit_s
        while not consumer.assignment() and time.monotonic() < deadline:  # a stop before the group's first join
            self.poll(consumer)
        try:
            ends = {
                (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)[1]
                for tp in consumer.assignment()
            }
        except KafkaException as exc:
            log.warning("stopping without reading the topics to their end: %s", exc)
            return
        while time.monotonic() < deadline:
            if self.poll(consumer, timeout=0.3):
                continue
            # Tansu's high watermark is the base offset of a partition's last batch: at or past it, and nothing more
            # came in a poll, the partition is read.
            positions = consumer.position([TopicPartition(t, p) for t, p in ends])
            if all(
                tp.offset >= ends[(tp.topic, tp.partition)] or ends[(tp.topic, tp.partition)] <= 0 for tp in positions
            ):
                return
        log.warning(
            "stopping before the topics were read to their end: what the sink did not read is lost with the broker"
        )

    def poll(self, consumer: Consumer, timeout: float = 0.2) -> int:
        """One round: consume a batch of records, then write and commit if it is time. Returns records consumed."""
        messages: list[Message] = consumer.consume(num_messages=5000, timeout=timeout)
        for msg in messages:
            err = msg.error()
            if err is not None:
                # Transient (the client recovers by itself); partition EOF events are not enabled.
                log.warning("consumer error: %s", err.str())
                continue
            self.add(msg.topic(), msg.partition(), msg.offset(), msg.value(), msg.key())
        now = time.monotonic()
        if self._paused:
            if self._repause:
                self._set_paused(consumer, True)
            if now >= self._retry_at:
                self._attempt(consumer)
        elif self._full or ((self._pending or self._positions) and now - self._last_flush >= self.cfg.sink_flush_s):
            self._attempt(consumer)
        self._sample(now, consumer)
        return len(messages)

    def _attempt(self, consumer: Consumer) -> None:
        if self.flush_and_commit():
            self._retry_s = 0.5
            if self._paused:
                self._set_paused(consumer, False)
                log.warning("ClickHouse accepts inserts again: consuming")
        else:
            if not self._paused:
                log.warning("ClickHouse refuses inserts: consumption paused, retrying")
            self._set_paused(consumer, True)
            self._retry_at = time.monotonic() + self._retry_s
            self._retry_s = min(self._retry_s * 2, _MAX_RETRY_S)

    def _set_paused(self, consumer: Consumer, paused: bool) -> None:
        self._paused = paused
        self._repause = False
        assignment = consumer.assignment()
        if not assignment:
            return
        try:
            if paused:
                consumer.pause(assignment)
            else:
                consumer.resume(assignment)
        except KafkaException as exc:
            log.warning("could not %s the consumer: %s", "pause" if paused else "resume", exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The assignment takes effect after this callback returns: pause the new partitions on the next round.
        if self._paused:
            self._repause = True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.flush():
            self.commit()
        else:
            self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        """Drop unwritten batches and uncommitted offsets of partitions this writer no longer owns.

        Nothing is lost: their offsets were never committed, so the new owner reads those records again.
        """
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._pending = [b for b in self._pending if (b.topic, b.partition) not in gone]
        self._open = {k: b for k, b in self._open.items() if (b.topic, b.partition) not in gone}
        inserts = []
        for ins in self._inserts:
            kept = [b for b in ins.batches if (b.topic, b.partition) not in gone]
            if len(kept) < len(ins.batches) and ins.fresh is not None:
                stay = {id(b) for b in kept}
                dropped = {id(r) for b in ins.batches if id(b) not in stay for r in b.records}
                ins.fresh = [r for r in ins.fresh if id(r) not in dropped]
            ins.batches = kept
            if kept:
                inserts.append(ins)
        self._inserts = inserts
        for pos in gone:
            self._positions.pop(pos, None)
        released = self._settle(Counter({pos: n for pos, n in self._held.items() if pos in gone}), "released")
        if released:
            log.info("%d records of partitions taken away not written: their new owner reads them again", released)

    # --- status ----------------------------------------------------------------------------------------------------

    def _sample(self, now: float, consumer: Consumer | None) -> None:
        with self._stats_lock:
            self._samples.append((now, self._consumed))
            while self._samples and now - self._samples[0][0] > _RATE_WINDOW_S:
                self._samples.popleft()
            self._pending_seen = self.pending_rows  # read here, in the writer's thread, for stats()
        metrics.sink_pending_rows.set(self._pending_seen)
        metrics.sink_paused.set(1 if self._paused else 0)
        if consumer is not None and now - self._last_lag >= _LAG_EVERY_S:
            self._last_lag = now
            per_partition = _lag(consumer)
            lag: dict[str, int] = {}
            for (topic, partition), n in per_partition.items():
                lag[topic] = lag.get(topic, 0) + n
                metrics.consumer_lag.labels(topic=metrics.topic_label(self.cfg, topic), partition=str(partition)).set(n)
            with self._stats_lock:
                self._lag = lag

    def stats(self) -> dict[str, Any]:
        """Counters for ``/api/status`` (safe to call from any thread)."""
        with self._stats_lock:
            rate = 0.0
            if len(self._samples) >= 2:
                (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
                rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
            return {
                "rows_written": dict(self._written),
                "records_consumed": self._consumed,
                "records_skipped": self._skipped,
                "events_per_s": round(rate, 1),
                "last_flush": self._last_flush_at,
                "pending_rows": self._pending_seen,
                "paused": self._paused,
                "last_error": self._last_error,
                "lag": dict(self._lag),
                "score_contract": {
                    "unknown_keys": dict(self.routes.contract.unknown),
                    "refused": dict(self.routes.contract.broken),
                },
            }


def sink_group(cfg: Config) -> str:
    """The sink's consumer group (a restore commits its offsets past what it wrote itself)."""
    return f"{cfg.app_id}-sink"


def _lag(consumer: Consumer) -> dict[tuple[str, int], int]:
    """Records behind the end of each assigned partition, from cached high watermarks (no broker round trip)."""
    lag: dict[tuple[str, int], int] = {}
    try:
        positions = consumer.position(consumer.assignment())
    except KafkaException:
        return lag
    for tp in positions:
        try:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
        except KafkaException:
            continue
        if high is None or high < 0 or tp.offset < 0:
            continue
        lag[(tp.topic, tp.partition)] = max(0, high - tp.offset)
    return lag
