"""The Faust application of a scoring worker: the scoring service, the label timer, the model feed. Thin on purpose.

Faust runs the worker: its lifecycle, signals and graceful shutdown, the label timer, the background tasks. The
hot path does not go through Faust's per-event streams, whose asyncio machinery costs more per event than all of
cvm's scoring (docs/benchmarks.md): the :class:`Scorer` service consumes the three event topics in batches with
confluent-kafka, in one consumer group whose range assignment gives a worker the same partition numbers of each
topic (a customer's events, by key, all land on one partition number). Per batch it

1. decodes, validates and folds the batch per customer (:class:`streams.processor.BatchProcessor`),
2. sends the outputs (scores, alerts, labels, dead letters, late events, CLV summaries) and waits for the acks,
3. writes one table entry per changed customer (:class:`streams.table.CustomerTable`) and waits for the acks,
4. commits the batch's offsets, which are contiguous per partition: nothing is committed that was not applied.

Outputs go before state so that a crash between the two leaves the state behind, not the outputs: the re-delivered
records are scored again and their outputs sent again (the same score version, the same alert episode, the same
label pair — idempotent downstream). The other order would lose them, as the re-delivered records would be no-ops
against a state that already has them.

All Kafka and table work runs on one thread, in order; the event loop only awaits it. A rebalance happens inside
the consumer's poll, between two batches: revoked partitions are dropped, assigned ones rebuilt from the changelog.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from mode import Service

from cvm.codec import Codec, make_registry
from cvm.config import EVENT_TOPICS, Config
from cvm.kafka import make_consumer, make_producer
from streams.models import ModelFeed
from streams.processor import BatchOutput, BatchProcessor, Folded, RawRecord, dumps
from streams.table import CustomerTable

__all__ = ["Scorer", "create_app"]

log = logging.getLogger("cvm.worker")


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge a write: the batch is not committed."""


class Scorer:
    """A worker's consumer, producer, table and processor; every method runs on the worker's Kafka thread."""

    def __init__(self, cfg: Config, models: ModelFeed) -> None:
        self.cfg = cfg
        self.models = models
        self.failed: list[str] = []
        self.producer = make_producer(cfg, on_delivery=self._delivered, **{"delivery.report.only.error": True})
        self.table = CustomerTable(cfg, self.producer)
        self.processor = BatchProcessor(
            cfg,
            Codec(make_registry(cfg.schema_registry_url)),
            {cfg.topic(name): name for name in EVENT_TOPICS},
            models,
        )
        self.consumer: Consumer | None = None
        self.stopping = threading.Event()
        self.rebalanced = True
        self.topics = {kind: cfg.topic(kind) for kind in ("customer-scores", "dead-letters", "late-events", "alerts")}
        self.labels_topic = cfg.topic("churn-labels")
        self.summaries_topic = cfg.topic("clv-summaries")

    # --- group membership ----------------------------------------------------------------------------------------

    def subscribe(self) -> None:
        self.table.create_topic()
        self.consumer = make_consumer(
            self.cfg,
            group=self.cfg.app_id,
            **{
                # Range assignment gives a member the same partition numbers of every topic: co-partitioning.
                "partition.assignment.strategy": "range",
                "fetch.wait.max.ms": 50,
                "max.poll.interval.ms": 300_000,
            },
        )
        self.consumer.subscribe(
            [self.cfg.topic(name) for name in EVENT_TOPICS],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        partitions = {tp.partition for tp in assigned}
        log.info("assigned partitions %s", " ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned) or "none")
        read = self.table.recover(partitions - set(self.table.partitions))
        log.info(
            "table ready: %d customers on partitions %s (%d changelog records read)",
            len(self.table),
            sorted(partitions),
            read,
        )
        self.rebalanced = True

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        log.info("revoked partitions %s", " ".join(f"{tp.topic}[{tp.partition}]" for tp in revoked) or "none")
        self.table.drop({tp.partition for tp in revoked})
        self.rebalanced = True

    def close(self) -> None:
        """Leave the group (every applied batch is committed already) and flush what is left to send."""
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
            log.info("left the group %s", self.cfg.app_id)
        try:
            self._flush()
        except DeliveryFailed as exc:  # nothing was committed past what was acknowledged: nothing is lost
            log.warning("%s", exc)

    # --- batches -------------------------------------------------------------------------------------------------

    def step(self) -> int:
        """Consume and score one batch; the number of records it held."""
        assert self.consumer is not None
        msgs = self.consumer.consume(num_messages=self.cfg.worker_batch, timeout=self.cfg.worker_batch_s)
        records: list[RawRecord] = []
        ends: dict[tuple[str, int], int] = {}
        for msg in msgs:
            if msg.error() is not None:
                self._consumer_error(msg)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            records.append(RawRecord(topic, partition, offset, msg.key(), msg.value()))
            ends[(topic, partition)] = offset + 1
        if records:
            self.score(records)
            self._commit(ends)
        return len(records)

    def score(self, records: list[RawRecord]) -> None:
        """Score a batch: outputs first, then the table, each acknowledged before the caller commits."""
        processor = self.processor
        processor.start_batch()
        if self.rebalanced or processor.clv_rebuild:
            self.rebalanced = False
            self._rebuild()
        out = BatchOutput()
        folded: list[tuple[Folded, int]] = []
        table = self.table
        for customer_id, items in processor.decode(records, out).items():
            partition = items[-1][0].partition  # the table entry lives on the partition of the customer's events
            try:
                folded.append(
                    (processor.fold(customer_id, items, table.get(partition, customer_id.encode()), out), partition)
                )
            except Exception as exc:  # a bug must not stop scoring: the records go to dead letters
                log.exception("scoring customer %s failed; its records go to dead-letters", customer_id)
                processor.reject(items, exc, out)
        processor.finish([f for f, _ in folded], out)
        self._send_outputs(out)
        if out.dead_letters:
            log.warning("%d records sent to dead-letters", len(out.dead_letters))
        self._flush()
        states = out.states
        for f, partition in folded:
            table.put(partition, f.customer_id.encode(), states[f.customer_id])
        self._seal({partition for _, partition in folded})

    def mature_labels(self) -> int:
        """Silence produces labels: customers whose deadline the stream time passed, with or without new events.

        The stream time is the latest event time this worker applied on any of its partitions (an idle partition
        does not hold its customers' labels back). The number of customers whose state changed.
        """
        due = self.processor.due()
        if not due:
            return 0
        out = BatchOutput()
        writes: list[tuple[int, bytes, bytes]] = []
        for customer_id in due:
            key = customer_id.encode()
            partition = self.table.locate(key)
            if partition is None:
                continue
            try:
                data = self.processor.mature(customer_id, self.table.get(partition, key), out)
            except Exception:  # a bug must not stop the worker: the customer's labels wait for its next event
                log.exception("maturing the labels of customer %s failed", customer_id)
                continue
            if data is not None:
                writes.append((partition, key, data))
        self._send_labels(out)  # the labels first, then the states that no longer hold them (see score)
        self._flush()
        for partition, key, data in writes:
            self.table.put(partition, key, data)
        self._seal({partition for partition, _, _ in writes})
        return len(writes)

    def _rebuild(self) -> None:
        # The percentiles rank a customer among the customers of this worker's partitions, and the label timers
        # cover them: after a rebalance, those are the table's (recovered) entries.
        entries = [(key.decode(), value) for key, value in self.table.items() if value]
        self.processor.rebuild_population(value for _, value in entries)
        self.processor.rebuild_deadlines(entries)

    def _send_outputs(self, out: BatchOutput) -> None:
        produce = self.producer.produce
        for topic, items in (
            (self.topics["customer-scores"], out.scores),
            (self.topics["late-events"], out.late),
            (self.topics["alerts"], out.alerts),
            (self.summaries_topic, out.summaries),
        ):
            for customer_id, value in items:
                produce(topic, key=customer_id.encode(), value=dumps(value))
        for raw_key, letter in out.dead_letters:
            produce(self.topics["dead-letters"], key=raw_key, value=dumps(letter))
        self._send_labels(out)

    def _send_labels(self, out: BatchOutput) -> None:
        for customer_id, pair in out.labels:
            self.producer.produce(self.labels_topic, key=customer_id.encode(), value=dumps(pair))

    def _seal(self, partitions: set[int]) -> None:
        self._flush()
        if partitions and self.cfg.embedded_broker:
            self.table.seal(partitions)
            self._flush()

    def _flush(self) -> None:
        """Wait until everything sent so far is acknowledged; :class:`DeliveryFailed` if the broker refused any.

        Kafka unreachable: the wait lasts until the writes time out (``message.timeout.ms``), or 10 s once the
        worker is stopping. Either way the batch is not committed, and is delivered again later.
        """
        waited = 0
        while self.producer.flush(1.0):
            waited += 1
            if waited == 10:
                log.warning("Kafka has not acknowledged this batch's writes for 10 s: waiting")
            if self.stopping.is_set() and waited >= 10:
                raise DeliveryFailed(f"{len(self.producer)} writes not acknowledged at shutdown; not committed")
        if self.failed:
            first, n = self.failed[0], len(self.failed)
            self.failed.clear()
            raise DeliveryFailed(f"{n} writes were not acknowledged by Kafka ({first}); the batch is not committed")

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(f"{msg.topic()}: {err.str()}")

    def _commit(self, ends: dict[tuple[str, int], int]) -> None:
        assert self.consumer is not None
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance took the partitions: the new owner re-applies (no-ops)
            log.warning("offsets not committed (%s): the records will be delivered again", exc.args[0])

    def _consumer_error(self, msg: Message) -> None:
        err = msg.error()
        if err.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001 - its public name
            log.warning("consumer: %s", err.str())


def create_app(cfg: Config, worker_id: str = "") -> faust.App:
    """The Faust app of a scoring worker."""
    datadir = cfg.data_path / "workers" / (worker_id or "default")
    Path(datadir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        cfg.app_id,
        broker=[f"kafka://{server}" for server in cfg.bootstrap.split(",")],
        datadir=str(datadir),
        web_enabled=False,
    )
    # The worker's Kafka clients are the Scorer's: Faust's own consumer and producer stay off.
    app.boot_strategy = app.BootStrategy(app, enable_kafka=False, enable_web=False)
    models = ModelFeed(cfg)
    scorer = Scorer(cfg, models)
    kafka = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvm-kafka")  # the Scorer's one thread

    async def on_kafka(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(kafka, fn, *args)

    @app.service
    class Scoring(Service):
        """Consumes and scores batches until the worker stops; then leaves the group."""

        async def on_start(self) -> None:
            models.start()
            await on_kafka(scorer.subscribe)

        @Service.task
        async def _run(self) -> None:
            while not scorer.stopping.is_set():
                await on_kafka(scorer.step)

        async def on_stop(self) -> None:
            # The batch in flight finishes and is committed; then the consumer leaves the group.
            scorer.stopping.set()
            await on_kafka(scorer.close)
            models.stop()

    @app.timer(interval=cfg.label_tick_s)
    async def _mature_labels() -> None:
        if scorer.consumer is not None:
            await on_kafka(scorer.mature_labels)

    return app
