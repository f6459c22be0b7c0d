"""The worker's source partitions in its consumer group: which it holds, each one's clock in the table, commits and
pauses.

An assignment recovers the partitions' table (:mod:`streams.table`) and the clock each partition keeps there under
:data:`CLOCK_KEY` (the last tick it evaluated), and hands them to the stream clock (:mod:`streams.clock`); the
scorer rebuilds its population and timers from the table before its next tick (``rebalanced``). A revocation drops
them. A batch commits each source partition up to its first record not processed yet, pauses the sources that hold
records for a later tick and resumes the others (:meth:`Partitions.flow`).

The consumer is the scorer's (:class:`streams.scorer.Scorer`): the methods that use it take it.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from cvm import metrics
from cvm.config import Config
from cvm.exceptions import ConfigError
from streams.clock import StreamClock
from streams.table import Table

__all__ = ["CLOCK_KEY", "Partitions", "clock_of", "pack_clock"]

log = logging.getLogger("cvm.worker")

#: Table key of a partition's clock (the last tick it evaluated); never a customer id.
CLOCK_KEY = b"\x00cvm-clock"
_CLOCK = struct.Struct("<q")


def pack_clock(tick: int) -> bytes:
    """A partition's clock as the table holds it."""
    return _CLOCK.pack(tick)


def clock_of(data: bytes | None) -> int | None:
    """A partition's clock from the table (``None``: it never ticked)."""
    return _CLOCK.unpack(data)[0] if data else None


class Partitions:
    """The worker's source partitions: group membership, the partitions' clocks, commits and flow control.

    Parameters
    ----------
    cfg
        The partition count every source topic must have.
    table
        The customer table: recovered for the partitions assigned, dropped for those revoked.
    clock
        The worker's stream clock: its sources follow the assignment.
    sources
        The topics the worker consumes: the event topics and its re-key topic.
    rekey_topic
        The worker's re-key topic: its sources follow the others' stream time.
    """

    def __init__(self, cfg: Config, table: Table, clock: StreamClock, sources: list[str], rekey_topic: str) -> None:
        self.cfg = cfg
        self.table = table
        self.clock = clock
        self.sources = sources
        self.rekey_topic = rekey_topic
        self.rebalanced = False  # partitions were assigned or revoked since the scorer last rebuilt
        self.reported: dict[int, int | None] = {}  # partition clocks last reported to the learner
        self.paused: set[tuple[str, int]] = set()
        self.resume_after_assign: set[tuple[str, int]] = set()
        self.assigned_now: set[tuple[str, int]] = set()  # assigned during the poll in progress

    # --- group membership ----------------------------------------------------------------------------------------

    def subscribe(self, consumer: Any) -> None:
        """Join the consumer group on the source topics (after checking they are co-partitioned)."""
        self.check(consumer)
        consumer.subscribe(self.sources, on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_revoke)

    def check(self, consumer: Any) -> None:
        """Refuse to start when a source topic's partitions are not ``CVM_PARTITIONS``: states would split."""
        meta = consumer.list_topics(timeout=10)
        for topic in [*self.sources, getattr(self.table, "topic", "")]:
            found = meta.topics.get(topic)
            if found is None or found.error is not None:
                continue
            n = len(found.partitions)
            if n != self.cfg.partitions:
                raise ConfigError(
                    f"topic {topic} has {n} partitions, cvm's topics have CVM_PARTITIONS={self.cfg.partitions}: "
                    "customers' events would land on other partitions than their states. Keep the partition count, "
                    "or move to new topics with the new count and replay the history into them (cvm rebuild)"
                )

    def on_assign(self, consumer: Any, assigned: list[TopicPartition]) -> None:
        """The group gave the worker these partitions: their table recovered, their clocks to the stream clock."""
        partitions = {tp.partition for tp in assigned}
        fresh = partitions - set(self.table.partitions)
        with metrics.table_recovery_seconds.time():
            read = self.table.recover(fresh)
        metrics.table_recovered_records.inc(read)
        clocks = {p: clock_of(self.table.get(p, CLOCK_KEY)) for p in partitions}
        self.clock.assign([(tp.topic, tp.partition) for tp in assigned], clocks, followers=[self.rekey_topic])
        log.info("assigned partitions %s", " ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned) or "none")
        log.info("table ready: %d partitions, %d changelog records read", len(partitions), read)
        self.rebalanced = True
        # A partition paused before the rebalance may still be paused in the client: resume them all, after the
        # callback (the assignment takes effect when it returns).
        self.resume_after_assign |= {(tp.topic, tp.partition) for tp in assigned}
        self.assigned_now |= {(tp.topic, tp.partition) for tp in assigned}
        self.paused -= self.resume_after_assign

    def on_revoke(self, consumer: Any, revoked: list[TopicPartition]) -> None:
        """The group took these partitions (or they were lost): their table, sources and gauges dropped."""
        partitions = {tp.partition for tp in revoked}
        for tp in revoked:
            try:
                metrics.consumer_lag.remove(metrics.topic_label(self.cfg, tp.topic), str(tp.partition))
            except KeyError:
                pass
        for p in partitions:
            try:
                metrics.customers_held.remove(str(p))
            except KeyError:
                pass
        log.info("revoked partitions %s", " ".join(f"{tp.topic}[{tp.partition}]" for tp in revoked) or "none")
        self.table.drop(partitions)
        self.clock.revoke(partitions)
        for p in partitions:
            self.reported.pop(p, None)
        self.paused -= {(tp.topic, tp.partition) for tp in revoked}
        self.assigned_now -= {(tp.topic, tp.partition) for tp in revoked}
        self.rebalanced = True

    # --- commit, flow control --------------------------------------------------------------------------------------

    def commit(self, consumer: Any, positions: dict[tuple[str, int], int]) -> None:
        """Commit each source partition up to ``positions`` (a failure is logged: the records come again)."""
        if not positions or consumer is None:
            return
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()], asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance took the partitions: the new owner re-applies (no-ops)
            log.warning("offsets not committed (%s): the records will be delivered again", exc.args[0])

    def flow(self, consumer: Any) -> None:
        """Pause the sources that hold records for a later tick; resume those that caught up."""
        held = self.clock.holding()
        if self.resume_after_assign:
            consumer.resume([TopicPartition(t, p) for t, p in self.resume_after_assign])
            self.resume_after_assign.clear()
        pause = held - self.paused
        resume = self.paused - held
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
        if resume:
            consumer.resume([TopicPartition(t, p) for t, p in resume])
            self.clock.touch(resume)  # a source we held is not idle: it has not been asked for records
        self.paused = held
