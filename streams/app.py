"""The Faust application: topics, the per-customer table and the scoring agent. Thin on purpose.

The agent takes events in batches (``take_events``), hands them to :class:`streams.processor.BatchProcessor`
and writes back one table entry and one score message per customer per batch.

A batch mixes partitions, so before touching a customer's table entry the agent makes one of that customer's
events the "current event" Faust uses to pick the store partition and the changelog partition: table, changelog
and source stay co-partitioned.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from faust.streams import _current_event
from faust.types import EventT

from cvm.codec import Codec, make_registry
from cvm.config import EVENT_TOPICS, Config
from streams.models import ModelFeed
from streams.processor import BatchOutput, BatchProcessor, Folded, RawRecord, dumps

__all__ = ["MARKER", "create_app"]

#: Key of the changelog marker records (see ``_seal``); never a customer id, never read as state.
MARKER = b"\x00cvm-seal"

log = logging.getLogger("cvm.worker")


def _store_url(cfg: Config) -> str:
    if cfg.store == "memory":
        return "memory://"
    if cfg.store in ("rocksdb", "auto"):
        try:
            import rocksdict  # noqa: F401
        except ImportError:
            if cfg.store == "rocksdb":
                raise
            return "memory://"
        return "rocksdb://"
    raise ValueError(f"CVM_STORE={cfg.store!r}: expected rocksdb, memory or auto")


class _Message:
    __slots__ = ("topic", "partition")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition


class _Route:
    """Stands for an event of a source partition when no event is at hand (timers): Faust's table store and
    changelog read only ``current_event().message`` topic and partition to route a write."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


def murmur2(key: bytes) -> int:
    """The Java client's key hash (what cvm's producers and Faust partition by), as a non-negative int."""
    return aiokafka_murmur2(key) & 0x7FFFFFFF


def create_app(cfg: Config, worker_id: str = "") -> faust.App:
    """The Faust app of a scoring worker."""
    datadir = cfg.data_path / "workers" / (worker_id or "default")
    Path(datadir).mkdir(parents=True, exist_ok=True)
    broker_credentials = None
    if cfg.kafka_sasl_mechanism:
        broker_credentials = faust.SASLCredentials(
            username=cfg.kafka_sasl_username,
            password=cfg.kafka_sasl_password,
            mechanism=cfg.kafka_sasl_mechanism,
        )
    app = faust.App(
        cfg.app_id,
        broker=[f"kafka://{server}" for server in cfg.bootstrap.split(",")],
        broker_credentials=broker_credentials,
        store=_store_url(cfg),
        datadir=str(datadir),
        topic_partitions=cfg.partitions,
        topic_replication_factor=cfg.replication_factor,
        # Tansu joins a group in about half the session timeout: keep it short (FACTS.md).
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        producer_linger=0.005,
        producer_acks=-1,
    )
    events = app.topic(*(cfg.topic(name) for name in EVENT_TOPICS), key_type=bytes, value_type=bytes)
    scores_topic = app.topic(cfg.topic("customer-scores"), key_type=bytes, value_type=bytes)
    dead_topic = app.topic(cfg.topic("dead-letters"), key_type=bytes, value_type=bytes)
    late_topic = app.topic(cfg.topic("late-events"), key_type=bytes, value_type=bytes)
    alerts_topic = app.topic(cfg.topic("alerts"), key_type=bytes, value_type=bytes)
    labels_topic = app.topic(cfg.topic("churn-labels"), partitions=1, key_type=bytes, value_type=bytes)
    summaries_topic = app.topic(cfg.topic("clv-summaries"), partitions=1, key_type=bytes, value_type=bytes)
    models = ModelFeed(cfg)
    customers = app.Table(
        "customers",
        partitions=cfg.partitions,
        key_type=bytes,
        value_type=bytes,
    )
    processor = BatchProcessor(
        cfg,
        Codec(make_registry(cfg.schema_registry_url)),
        {cfg.topic(name): name for name in EVENT_TOPICS},
        models,
    )

    rebalanced = [True]

    @app.on_rebalance_complete.connect
    def _on_rebalance(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        rebalanced[0] = True

    def _rebuild() -> None:
        # The percentiles rank a customer among the customers of this worker's partitions, and the label timers
        # cover them: after a rebalance, those are the table's (recovered) entries.
        entries = [(key.decode(), value) for key, value in customers.items() if key != MARKER and value]
        processor.rebuild_population(value for _, value in entries)
        processor.rebuild_deadlines(entries)

    # The agent's batches and the label timer both read and write customers: one at a time.
    lock = asyncio.Lock()

    @app.agent(events)
    async def score(stream: Any) -> None:
        async for batch in stream.take_events(cfg.worker_batch, within=cfg.worker_batch_s):
            # take_events acks a batch in a `finally`, so also when the agent is cancelled half-way through it
            # (a SIGTERM): the offsets would be committed without the batch's writes. Hold a reference of our
            # own on every message, released only once the batch's outputs and table writes are acknowledged:
            # an interrupted batch stays unacked, and is delivered again after a restart.
            for event in batch:
                event.message.incref()
            async with lock:
                await _score_batch(batch)
            for event in batch:
                event.ack()

    async def _score_batch(batch: list[Any]) -> None:
        """Score a batch: outputs first, then the table, each drained before the batch's offsets are acked.

        Outputs go before state so that a crash between the two leaves the state behind, not the outputs: the
        re-delivered records are scored again and their outputs sent again (the same score version, the same
        alert episode, the same label pair — idempotent downstream). The other order would lose them, as the
        re-delivered records would be no-ops against a state that already has them.
        """
        processor.start_batch()
        if rebalanced[0] or processor.clv_rebuild:
            rebalanced[0] = False
            _rebuild()
        out = BatchOutput()
        records = (RawRecord(m.topic, m.partition, m.offset, m.key, m.value, e) for e in batch for m in (e.message,))
        folded: list[tuple[Folded, Any]] = []
        try:
            for customer_id, items in processor.decode(records, out).items():
                # The table's store and changelog pick the partition of the "current event": make it one of this
                # customer's events, so a batch mixing partitions reads and writes each customer where it belongs.
                origin = items[-1][0].origin
                _current_event.set(weakref.ref(origin))
                try:
                    folded.append(
                        (processor.fold(customer_id, items, customers.get(customer_id.encode()), out), origin)
                    )
                except Exception as exc:  # a bug must not stop scoring: the records go to dead letters
                    log.exception("scoring customer %s failed; its records go to dead-letters", customer_id)
                    processor.reject(items, exc, out)
            processor.finish([f for f, _ in folded], out)
        finally:
            _current_event.set(None)
        _send_outputs(out)
        if out.dead_letters:
            log.warning("%d records sent to dead-letters", len(out.dead_letters))
        await _drain()
        touched: set[int] = set()
        try:
            for f, origin in folded:
                _current_event.set(weakref.ref(origin))
                touched.add(origin.message.partition)
                customers[f.customer_id.encode()] = out.states[f.customer_id]
        finally:
            _current_event.set(None)
        await _drain()
        if touched and cfg.embedded_broker:
            await _seal(touched)

    def _send_outputs(out: BatchOutput) -> None:
        for customer_id, scores in out.scores:
            scores_topic.send_soon(key=customer_id.encode(), value=dumps(scores))
        for raw_key, letter in out.dead_letters:
            dead_topic.send_soon(key=raw_key, value=dumps(letter))
        for customer_id, late in out.late:
            late_topic.send_soon(key=customer_id.encode(), value=dumps(late))
        for customer_id, alert in out.alerts:
            alerts_topic.send_soon(key=customer_id.encode(), value=dumps(alert))
        for customer_id, facts in out.summaries:
            summaries_topic.send_soon(key=customer_id.encode(), value=dumps(facts))
        _send_labels(out)

    async def _drain() -> None:
        """Wait until everything sent so far is acknowledged by the broker.

        Faust's ``producer.flush()`` gives up after 0.1 s without a send and may return with messages still in its
        buffer (faust/transport/producer.py ``flush_atmost``); a batch acked on that basis could lose its
        changelog writes or outputs to a SIGKILL. Loop until the buffer is empty, then flush the client.
        """
        buffer = app.producer.buffer
        while buffer.size:
            await buffer.flush()
        await app.producer.flush()

    def _send_labels(out: BatchOutput) -> None:
        for customer_id, pair in out.labels:
            labels_topic.send_soon(key=customer_id.encode(), value=dumps(pair))

    @app.timer(interval=cfg.label_tick_s)
    async def _mature_labels() -> None:
        """Silence produces labels: customers whose deadline the stream time passed, with or without new events.

        The stream time is the latest event time this worker applied on any of its partitions, so an idle
        partition does not hold its customers' labels back. Runs between batches (no await until the writes are
        done), so it never interleaves with the agent's writes.
        """
        async with lock:
            due = processor.due()
            if not due:
                return
            source = cfg.topic("transactions")
            out = BatchOutput()
            writes: list[tuple[bytes, int, bytes]] = []
            for customer_id in due:
                key = customer_id.encode()
                partition = murmur2(key) % cfg.partitions
                route = cast(EventT, _Route(source, partition))  # held here: the context keeps a weak reference
                try:
                    _current_event.set(weakref.ref(route))
                    data = processor.mature(customer_id, customers.get(key), out)
                    if data is not None:
                        writes.append((key, partition, data))
                except Exception:  # a bug must not stop the worker: the customer's labels wait for its next event
                    log.exception("maturing the labels of customer %s failed", customer_id)
                finally:
                    _current_event.set(None)
            _send_labels(out)  # the labels first, then the states that no longer hold them (see _score_batch)
            await _drain()
            touched: set[int] = set()
            for key, partition, data in writes:
                route = cast(EventT, _Route(source, partition))
                _current_event.set(weakref.ref(route))
                try:
                    customers[key] = data
                    touched.add(partition)
                finally:
                    _current_event.set(None)
            await _drain()
            if touched and cfg.embedded_broker:
                await _seal(touched)

    async def _seal(partitions: set[int]) -> None:
        """End the batch's changelog writes with a marker record in a batch of its own, per partition.

        Tansu (memory storage) reports as high watermark the base offset of a partition's last record batch,
        not its last offset + 1, and Faust's changelog recovery stops at that watermark. With the marker alone in
        the last batch, the watermark is the marker's offset: every state record lies below it and is recovered.
        Any prefix of the changelog is a consistent state, because each customer's state carries the offsets it
        has applied. The offsets of the batch are acknowledged only after this returns.
        """
        changelog = customers.changelog_topic
        for partition in partitions:
            await changelog.send(key=MARKER, value=b"\x00", partition=partition)
        await _drain()

    @app.task
    async def _start_model_feed() -> None:
        models.start()

    @app.task
    async def _tune_producer() -> None:
        # Faust flushes its send buffer every 100 messages with a warning; a batch emits up to one score per
        # customer, so let the buffer hold a few batches.
        app.producer.buffer.max_messages = 4 * cfg.worker_batch

    return app
