"""A worker's batches, in order: consume → decode → fold and score phase by phase → outputs → table → commit.

The :class:`Scorer` takes its clients (consumer, producers, table, model feed) so that this order can be tested
without Kafka; :func:`streams.app.create_app` builds the real ones. Per batch (:meth:`Scorer.step`):

1. **consume** up to ``CVM_WORKER_BATCH`` records of the worker's partitions of the three event topics and of its
   re-key topic (range assignment gives a worker the same partition numbers of each: a customer's events all land
   on one partition number);
2. **decode** (:mod:`streams.decode`): poison goes to the dead letters, a record keyed otherwise than by its
   customer id is copied to the re-key topic; the rest queue up in their source partition (:mod:`streams.clock`);
3. **ticks**: while every source has passed the next tick, fold that tick's phase (:mod:`streams.fold`) and score
   at the tick (:mod:`streams.score`), with the models valid at it (:mod:`streams.versions`), waiting for the learner
   if it is behind; then fold what has come of the next phase and score those customers as of their events; while
   the stream is idle, score the customers last scored before the last tick as of it (:mod:`streams.catch_up`);
4. **outputs** (scores, alerts, late events, dead letters, re-keyed copies, labels, CLV facts) are sent and
   acknowledged (:mod:`streams.delivery`), then the learner is told how far the worker's partitions have ticked.
   Scores and alerts are handed to the producer as each scoring of step 3 ends, the rest at the batch's end: a
   batch that re-scores its whole table holds its messages as bytes in the producer, not as dicts;
5. **table**: one write per changed customer and per partition whose clock moved, acknowledged;
6. **commit** each source partition up to its first record not processed yet (the held ones come again after a
   crash); pause the sources that hold records for a later tick, resume the others (:mod:`streams.partitions`).

Outputs go before state so that a crash between the two leaves the state behind, not the outputs: the re-delivered
records are scored again and their outputs sent again (the same score version, the same alert episode, the same
label pair — idempotent downstream). The other order would lose them, as the re-delivered records would be no-ops
against a state that already has them.

Each stage of a batch is charged the CPU it used, and the worker logs where it stands every 10 s
(:mod:`streams.status`).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from cvm import metrics
from cvm.codec import Codec
from cvm.config import EVENT_TOPICS, Config
from scoring.currency import Rates
from scoring.population import Population
from scoring.state import CustomerState
from streams.catch_up import CatchUp
from streams.clock import Item, StreamClock, Timers, closing_tick
from streams.decode import Decoder
from streams.delivery import Delivery, DeliveryFailed
from streams.fold import Folder
from streams.models import ModelFeed, grid_point
from streams.partitions import CLOCK_KEY, Partitions, pack_clock
from streams.records import Event, Outputs, RawRecord, dead_letter
from streams.score import Assessor, Candidate, InForce, ranked
from streams.status import Laps, status_line
from streams.table import Table
from streams.trim import Trimmer
from streams.versions import Versions, versions_of

__all__ = ["Scorer"]

log = logging.getLogger("cvm.worker")


class Scorer:
    """A worker's consumer, producers, table and steps; every method runs on the worker's Kafka thread."""

    def __init__(
        self,
        cfg: Config,
        *,
        consumer: Any,
        producer: Any,
        learn_producer: Any,
        table: Table,
        models: ModelFeed,
        codec: Codec,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.consumer = consumer
        self.table = table
        self.monotonic = monotonic
        self.rekey_topic = f"{cfg.app_id}-rekey"
        self.sources = [cfg.topic(kind) for kind in EVENT_TOPICS] + [self.rekey_topic]
        kinds: dict[str, str | None] = {cfg.topic(kind): kind for kind in EVENT_TOPICS}
        kinds[self.rekey_topic] = None
        self.decoder = Decoder(codec, kinds, cfg.partitions, Rates.from_config(cfg), cfg.min_event_time_ms)
        self.tick_ms = int(cfg.tick_s * 1000)
        self.grid_ms = int(cfg.model_every_days * 86_400_000)
        self.spread_ticks = max(1, int(cfg.model_rescore_spread_s * 1000) // self.tick_ms)
        self.clock = StreamClock(self.tick_ms, cfg.idle_partition_s, monotonic)
        self.timers = Timers()
        self.population = Population(cfg.tier_a_share, cfg.tier_b_share)
        self.assessor = Assessor(cfg, self.population)
        self.folder = Folder(self.assessor.rules, self.assessor.label_rules, self.rekey_topic)
        self.out = Outputs()
        self.fates: Counter[tuple[str, int, str]] = Counter()  # every record consumed, by fate (cumulative)
        self.counters: Counter[str] = Counter()  # scorings by occasion, model waits, ...
        self.changed: dict[str, int] = {}  # customer -> partition: events folded since its last tick scoring
        self.entries: dict[str, Candidate] = {}  # the customers this batch touched, states decoded
        self.unscored: set[str] = set()  # folded in this batch and not scored since
        self.in_force = InForce()  # the models of the last tick
        self.versions = Versions(cfg, models, self.counters, monotonic)  # the models in force at a stream time
        self.catch_up = CatchUp(table)  # while the stream is idle: everyone up to the last tick
        self.reported_idle: set[int] = set()
        self.stopping = threading.Event()
        self.delivery = Delivery(cfg, producer, learn_producer, self.rekey_topic, self.stopping)
        self.partitions = Partitions(cfg, table, self.clock, self.sources, self.rekey_topic)
        self._next_status = 0.0
        self.laps = Laps()  # CPU seconds of this (the Kafka) thread by stage of a batch
        self.trimmer = Trimmer(cfg.worker_trim_s, monotonic)  # freed memory back to the system (streams.trim)

    # --- group membership ----------------------------------------------------------------------------------------

    def subscribe(self) -> None:
        """Join the consumer group on the source topics (after checking they are co-partitioned)."""
        self.partitions.subscribe(self.consumer)

    def close(self) -> None:
        """Leave the group (every applied batch is committed already) and flush what is left to send."""
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
            log.info("left the group %s", self.cfg.app_id)
        try:
            self.delivery.flush()
        except DeliveryFailed as exc:  # nothing was committed past what was acknowledged: nothing is lost
            log.warning("%s", exc)

    # --- a batch ---------------------------------------------------------------------------------------------------

    def step(self) -> int:
        """Consume and process one batch; the number of records it held."""
        self.laps.lap("other")
        msgs = self.consumer.consume(num_messages=self.cfg.worker_batch, timeout=self.cfg.worker_batch_s)
        self.laps.lap("consume")
        started = time.perf_counter()
        if self.partitions.assigned_now:
            msgs = self._from_committed(msgs)
        now_ms = int(time.time() * 1000)
        n = self._take(msgs, now_ms)
        self.laps.lap("decode")
        self._positions()
        if self.partitions.rebalanced:
            self.partitions.rebalanced = False
            self._rebuild()
        self.laps.lap("other")
        if self.clock.start():
            self._ticks(now_ms)
            self._open_phase(now_ms)
            self._idle()
        self._finish()
        if n:
            metrics.batch_records.observe(n)
            metrics.batch_seconds.observe(time.perf_counter() - started)
        self._gauges()
        self.trimmer.maybe()
        self.laps.lap("other")
        self.laps.publish()
        now = self.monotonic()
        if now >= self._next_status:
            self._next_status = now + 10.0
            log.info("%s", self.status())
        return n

    def _gauges(self) -> None:
        clock = self.clock
        if clock.tick is not None:
            metrics.stream_tick.set(clock.tick / 1000)
        metrics.held_records.set(sum(len(s.items) for s in clock.sources.values()))
        for p, entries in self.table.partitions.items():
            metrics.customers_held.labels(partition=str(p)).set(len(entries) - (CLOCK_KEY in entries))

    def status(self) -> str:
        """One line on where the worker stands in stream time (logged every 10 s)."""
        return status_line(
            self.clock,
            self.monotonic(),
            paused=len(self.partitions.paused),
            waiting_for_models=self.versions.waiting_since is not None,
            changed=len(self.changed),
            timers=len(self.timers),
            scored=self.counters,
        )

    def _take(self, msgs: list[Message], now_ms: int) -> int:
        """Decode a batch's records into their sources' queues; poison and re-keyed records are dealt with now."""
        by_source: dict[tuple[str, int], list[Item]] = {}
        out, decoder = self.out, self.decoder
        for msg in msgs:
            if msg.error() is not None:
                self._consumer_error(msg)
                continue
            rec = RawRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())
            item = decoder.decode(rec, now_ms)
            if isinstance(item, Event):
                if decoder.needs_rekey(item):  # copied to the re-key topic when its phase comes (see _fold)
                    item = Event(rec, item.kind, item.record, rekeyed=True)
                by_source.setdefault((rec.topic, rec.partition), []).append(item)
            else:
                out.dead_letters.append((rec.key, dead_letter(rec, item.error, now_ms)))
                out.count(rec, "dead")
                by_source.setdefault((rec.topic, rec.partition), []).append(rec)
        consumed: Counter[str] = Counter()  # every record without error is in its source's list: counted there
        for (topic, partition), items in by_source.items():
            consumed[topic] += len(items)
            self.clock.offer(topic, partition, items)
        for topic, count in consumed.items():
            metrics.records_consumed.labels(topic=metrics.topic_label(self.cfg, topic)).inc(count)
        return sum(consumed.values())

    def _from_committed(self, msgs: list[Message]) -> list[Message]:
        """After an assignment, start each assigned partition exactly at its committed offset.

        Records fetched before the rebalance can come out of the same poll as the assignment, ahead of the committed
        offset: folding those first would make the records between the committed offset and them look re-delivered
        (a hole). They are dropped and the partitions read again from their committed offsets.
        """
        fresh, self.partitions.assigned_now = self.partitions.assigned_now, set()
        kept = [m for m in msgs if (m.topic(), m.partition()) not in fresh]
        committed = self.consumer.committed([TopicPartition(t, p) for t, p in fresh], timeout=10)
        for tp in committed:
            self.consumer.seek(
                TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
            )
        if len(kept) < len(msgs):
            log.info("%d records fetched before the rebalance dropped: read again from the committed offsets",
                     len(msgs) - len(kept))  # fmt: skip
        return kept

    def _positions(self) -> None:
        """Which sources have read everything the broker holds (from the consumer's own figures, no round trip).

        Tansu may report as high watermark the base offset of a partition's last record batch rather than its end:
        a source at the watermark may then be one batch short, which the next fetch brings well within the second
        the clock waits before it counts a source that has read to the end as idle.
        """
        sources = self.clock.sources
        if not sources:
            return
        try:
            positions = self.consumer.position([TopicPartition(t, p) for t, p in sources])
        except KafkaException:
            return
        committed = self.clock.commit_positions()
        for tp in positions:
            key = (tp.topic, tp.partition)
            try:
                high = self.consumer.get_watermark_offsets(tp, cached=True)[1]
            except KafkaException:
                high = None
            if high is None or high < 0:
                self.clock.read_to_end(key, False)
                continue
            position = tp.offset if tp.offset >= 0 else committed.get(key, 0)
            label = metrics.topic_label(self.cfg, tp.topic)
            metrics.consumer_lag.labels(topic=label, partition=str(tp.partition)).set(max(0, high - position))
            if not sources[key].items:
                self.clock.read_to_end(key, high == 0 or position >= high)

    def _ticks(self, now_ms: int) -> None:
        """Evaluate every tick that every source has passed, each after folding its phase."""
        clock = self.clock
        while True:
            t = clock.next_tick()
            if not clock.ready(t):
                return
            models = self.versions.at(t)
            if models is None:
                return  # the learner is behind: wait for it (sources that passed the tick stay paused)
            items = clock.take(t)
            due = self.timers.next_due()
            if (
                not items
                and not self.changed
                and (due is None or due > t)
                and versions_of(models) == versions_of(self.in_force)
            ):
                # Nothing happens at this tick: go straight to the last tick before something does.
                limits = [clock.horizon() or t, grid_point(t, self.grid_ms) + self.grid_ms]
                earliest = clock.earliest_held()
                if earliest is not None:
                    limits.append(closing_tick(earliest, self.tick_ms) - self.tick_ms)
                if due is not None:
                    limits.append(-(-due // self.tick_ms) * self.tick_ms - self.tick_ms)
                clock.advance(max(t, min(limits)))
                continue
            self.laps.lap("other")
            self._fold(items, t, now_ms)
            self.laps.lap("fold")
            self._tick(t, models)
            self.laps.lap("score")
            clock.advance(t)

    def _open_phase(self, now_ms: int) -> None:
        """Fold what has come of the next tick's phase, for fresh scores until the tick."""
        t = self.clock.next_tick()
        self.laps.lap("other")
        self._fold(self.clock.take(t), t, now_ms)
        self.laps.lap("fold")

    def _fold(self, items: list[Item], known_ms: int, now_ms: int) -> None:
        by_customer: dict[str, list[Event]] = {}
        out = self.out
        for item in items:
            if not isinstance(item, Event):
                continue
            if item.rekeyed:  # in phase order: the re-key topic's order stays close to event time
                out.rekeyed.append((item.time, item.customer_id.encode(), item.rec.value or b""))
                out.count(item.rec, "rekeyed")
            else:
                by_customer.setdefault(item.customer_id, []).append(item)
        for customer_id, events in by_customer.items():
            partition = events[-1].rec.partition
            entry = self._entry(customer_id, partition)
            try:
                changed = self.folder.fold(customer_id, entry.state, events, known_ms, now_ms, out)
            except Exception as exc:  # a bug must not stop scoring: the records go to dead letters
                log.exception("folding customer %s failed; its records go to dead-letters", customer_id)
                self.entries.pop(customer_id, None)  # its state is as it was before
                for ev in events:
                    out.dead_letters.append((ev.rec.key, dead_letter(ev.rec, exc, now_ms)))
                    out.count(ev.rec, "dead")
                continue
            entry.forget_pending()
            if changed:
                self.changed[customer_id] = partition
                self.unscored.add(customer_id)

    def _tick(self, t: int, models: InForce) -> None:
        """Score at tick ``t``: the customers changed or due. New model versions give every customer a slot among the
        ticks of ``CVM_MODEL_RESCORE_SPREAD_S`` from ``t`` (:meth:`_spread`): each is re-scored under them by then,
        and no tick scores the whole population at once."""
        evaluate = {p for p, c in self.clock.clocks.items() if c is None or c < t}
        new_versions = versions_of(models) != versions_of(self.in_force)
        if new_versions:
            queued = self._spread(t)
            log.info(
                "model versions %s at stream time %d: %d customers re-scored under them within %d ticks",
                versions_of(models),
                t,
                queued,
                self.spread_ticks,
            )
            kinds = [
                kind
                for kind, old, new in (
                    ("clv", self.in_force.clv_version, models.clv_version),
                    ("churn", self.in_force.churn_version, models.churn_version),
                )  # fmt: skip
                if old != new
            ]
            for kind in kinds:
                metrics.rescorings.labels(kind=kind).inc()
            # one slot per customer, whichever versions are new: a CLV and a churn version at one grid point give
            # each customer one scoring (the label says which kinds were new)
            metrics.rescored_customers.labels(kind="+".join(kinds)).inc(queued)
        ids = self.timers.pop_due(t)  # customer -> the partition of its state
        metrics.silent_rescorings.inc(sum(1 for c in ids if c not in self.changed))
        ids.update(self.changed)
        cands, later = [], []
        for customer_id, partition in ids.items():
            if partition in evaluate:
                cands.append(self._entry(customer_id, partition))
            else:
                later.append((customer_id, partition))  # its partition ticked past t under a previous owner
        self._assess(cands, "tick", models, at=t)
        for c in cands:
            self.changed.pop(c.customer_id, None)
            self.unscored.discard(c.customer_id)
            self.timers.set(c.customer_id, self.assessor.due(c), c.partition)
        for customer_id, partition in later:
            self.timers.set(customer_id, t + self.tick_ms, partition)
        self.in_force = models

    def _spread(self, t: int) -> int:
        """Give every customer of the table a tick among the ``spread_ticks`` from ``t`` (a fixed slot of its id: the
        same in a replay), unless its timer comes first; return how many."""
        ticks, tick_ms, timers = self.spread_ticks, self.tick_ms, self.timers
        queued = 0
        for p, entries in self.table.partitions.items():
            for key in entries:
                if key != CLOCK_KEY:
                    timers.earlier(key.decode(), t + zlib.crc32(key) % ticks * tick_ms, p)
                    queued += 1
        return queued

    def _idle(self) -> None:
        """While the stream is idle, score a share of the customers last scored before the last tick, as of it."""
        clock = self.clock
        t = clock.tick
        if not self.catch_up.due(t) or not clock.all_idle():
            return
        assert t is not None
        cands = self.catch_up.take(t, self.entries.get, self.unscored)
        self.laps.lap("other")
        self._assess(cands, "idle", self.versions.valid_at(t), at=t)
        self.laps.lap("score")

    def _finish(self) -> None:
        """Event scores, then outputs → table → commit; pause what waits for a tick."""
        self.laps.lap("other")
        if self.unscored:
            cands = [self.entries[c] for c in self.unscored if c in self.entries]
            t = self.clock.tick  # folded in an open phase: the clock has started
            assert t is not None
            self._assess(cands, "event", self.versions.valid_at(t), at=t)
            self.unscored.clear()
        self.laps.lap("score")
        self.delivery.send(self.out)
        self._count_fates()
        self.delivery.flush()
        self.laps.lap("emit")
        written: set[int] = set()
        for entry in self.entries.values():
            self.table.put(entry.partition, entry.customer_id.encode(), entry.state.to_bytes())
            written.add(entry.partition)
        self.entries.clear()
        clocks, reported = dict(self.clock.clocks), self.partitions.reported
        moved = {p: c for p, c in clocks.items() if c is not None and reported.get(p) != c}
        for p, c in moved.items():
            self.table.put(p, CLOCK_KEY, pack_clock(c))
            written.add(p)
        idle = self.clock.idle_partitions()
        if moved or idle != self.reported_idle:
            self.delivery.report(clocks, idle)
        self.delivery.flush()
        if written:  # the marker Tansu's recovery needs; the table's periodic checkpoint is taken there too
            self.table.seal(written)
            self.delivery.flush()
        self.laps.lap("changelog")
        reported.update(moved)
        self.reported_idle = idle
        self.partitions.commit(self.consumer, self.clock.commit_positions())
        self.partitions.flow(self.consumer)
        self.laps.lap("commit")

    def _assess(self, cands: list[Candidate], scored_by: str, models: InForce, **at: Any) -> None:
        cpu = time.process_time()
        assessor = self.assessor
        models_before, features_before = assessor.models_cpu, assessor.features_cpu
        assessor.assess(cands, scored_by, models, self.out, **at)
        self.laps.move(assessor.models_cpu - models_before, "score", "models")
        self.laps.move(assessor.features_cpu - features_before, "score", "features")
        self.counters[scored_by] += len(cands)
        metrics.scorings.labels(scored_by=scored_by).inc(len(cands))
        metrics.scoring_seconds.labels(scored_by=scored_by).inc(time.process_time() - cpu)
        self.laps.lap("score")
        self.delivery.send_scores(self.out)  # now, not at the batch's end: the messages wait as bytes, not dicts
        self.laps.lap("emit")

    # --- state -----------------------------------------------------------------------------------------------------

    def _entry(self, customer_id: str, partition: int, state: CustomerState | None = None) -> Candidate:
        """This batch's view of a customer: its state, decoded once per batch, and what the population holds."""
        entry = self.entries.get(customer_id)
        if entry is None:
            if state is None:
                data = self.table.get(partition, customer_id.encode())
                state = CustomerState.from_bytes(data) if data else CustomerState()
            entry = Candidate(customer_id, partition, state, ranked(state))
            self.entries[customer_id] = entry
        return entry

    def _rebuild(self) -> None:
        """After a rebalance: the population, the timers and the changed customers, from the table's entries."""
        values, self.changed = [], {}
        self.timers.clear()
        self.catch_up.reset()
        for p, entries in self.table.partitions.items():
            for key, data in entries.items():
                if key == CLOCK_KEY or not data:
                    continue
                state = CustomerState.from_bytes(data)
                customer_id = key.decode()
                values.append(ranked(state))
                self.timers.set(customer_id, self.assessor.due(Candidate(customer_id, p, state, {})), p)
                if state.version != state.tick_version:
                    self.changed[customer_id] = p
        self.population.rebuild(values)
        self.in_force = InForce()  # the first tick re-scores everyone under the models of its time (spread)

    # --- fates, consumer errors -------------------------------------------------------------------------------------

    def _count_fates(self) -> None:
        """Count the fates of the records whose outputs were just sent; the outputs start over."""
        out = self.out
        self.fates.update(out.fates)
        for (topic, _, fate), count in out.fates.items():
            label = metrics.topic_label(self.cfg, topic)
            metrics.records.labels(topic=label, fate="dead_lettered" if fate == "dead" else fate).inc(count)
        out.clear()

    def _consumer_error(self, msg: Message) -> None:
        err = msg.error()
        if err.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001 - its public name
            log.warning("consumer: %s", err.str())
