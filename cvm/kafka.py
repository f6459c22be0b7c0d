"""Kafka plumbing shared by every process: topic specs and creation, producers, consumers, reachability.

Partitioning: every producer of cvm uses librdkafka's ``murmur2_random`` partitioner, the one of the Java client
and of aiokafka (Faust). A customer's events, its table entries and its scores therefore land on the same
partition number whichever client wrote them — the co-partitioning the workers' tables rely on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cvm.config import Config
from cvm.exceptions import BrokerUnavailable

__all__ = [
    "TOPICS",
    "TopicSpec",
    "check_broker",
    "create_topic",
    "create_topics",
    "decode_model",
    "encode_model",
    "make_consumer",
    "make_producer",
]

_quiet = logging.getLogger("cvm.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

_WEEK_MS = 7 * 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    """A topic cvm owns. ``partitions=None`` means the configured event-topic partition count."""

    name: str
    partitions: int | None = None
    compact: bool = False
    retention_ms: int = 30 * 86_400_000
    doc: str = ""

    def configs(self) -> dict[str, str]:
        # Explicit configs: Tansu returns them from describe_configs only when they were given (Quix needs them).
        return {
            "cleanup.policy": "compact" if self.compact else "delete",
            "retention.ms": "-1" if self.compact else str(self.retention_ms),
            "retention.bytes": "-1",
        }


#: Every topic cvm creates, by base name (the configured prefix is added).
TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec("transactions", doc="Purchases and refunds, keyed by customer_id (Avro)."),
        TopicSpec("contacts", doc="Customer-service contacts, keyed by customer_id (Avro)."),
        TopicSpec("payments", doc="Invoice payment outcomes, keyed by customer_id (Avro)."),
        TopicSpec("customer-scores", doc="Each customer's latest scores, emitted by workers (JSON)."),
        TopicSpec("late-events", doc="Events later than the allowed lateness: kept, not applied to state (JSON)."),
        TopicSpec("dead-letters", doc="Records that could not be decoded or validated, with the reason (JSON)."),
        TopicSpec("alerts", doc="Alerts on at-risk high-value customers, keyed by customer_id (JSON)."),
        TopicSpec("clv-summaries", 1, compact=True, doc="Each customer's purchase-occasion facts, for the CLV fit."),
        TopicSpec("churn-labels", 1, doc="Matured (features, label) pairs the churn model learns from, once each."),
        TopicSpec(
            "models",
            1,
            compact=True,
            doc="CLV parameters and churn models, keyed by kind:version, and the learner's clock.",
        ),
        TopicSpec("model-metrics", 1, doc="Progressive-validation metrics and fits, for cvm.model_metrics."),
    )
}


def _client_conf(cfg: Config, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = dict(cfg.kafka_client_config())
    conf["logger"] = _quiet
    conf.update(extra)
    return conf


def check_broker(cfg: Config, timeout: float = 5.0) -> AdminClient:
    """An admin client to a broker that answered, or :class:`BrokerUnavailable` with what to do."""
    admin = AdminClient(_client_conf(cfg))
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        hint = (
            "start it with 'cvm broker' (or 'cvm up')"
            if cfg.embedded_broker
            else "check CVM_KAFKA_BOOTSTRAP and the broker"
        )
        raise BrokerUnavailable(f"Kafka at {cfg.bootstrap} did not answer within {timeout:g}s: {hint}") from None
    return admin


def create_topics(cfg: Config, names: Iterable[str] | None = None, timeout: float = 10.0) -> list[str]:
    """Create cvm's topics that do not exist yet, with explicit configs; return the full names created."""
    return _create(cfg, [(cfg.topic(TOPICS[base].name), TOPICS[base]) for base in names or TOPICS], timeout)


def create_topic(cfg: Config, spec: TopicSpec, prefixed: bool = True, timeout: float = 10.0) -> list[str]:
    """Create one topic if it does not exist yet (``prefixed=False``: ``spec.name`` is the full name)."""
    return _create(cfg, [(cfg.topic(spec.name) if prefixed else spec.name, spec)], timeout)


def _create(cfg: Config, specs: list[tuple[str, TopicSpec]], timeout: float) -> list[str]:
    admin = check_broker(cfg)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            full,
            num_partitions=spec.partitions or cfg.partitions,
            replication_factor=cfg.replication_factor,
            config=spec.configs(),
        )
        for full, spec in specs
        if full not in existing
    ]
    created = []
    for topic, future in admin.create_topics(wanted, request_timeout=timeout).items() if wanted else []:
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # a concurrent process created it: fine
                raise BrokerUnavailable(f"could not create topic {topic}: {exc}") from None
    return created


def make_producer(cfg: Config, **extra: Any) -> Producer:
    """A confluent-kafka producer with cvm's partitioner and batching."""
    conf = _client_conf(
        cfg,
        **{
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
            "compression.type": "none",
            "acks": "all",
        },
    )
    conf.update(extra)
    return Producer(conf)


#: Consumer settings for the embedded broker. Tansu (memory storage) spends CPU on every fetch in proportion to
#: the partition's size, and answers a fetch at once when records are there (it ignores ``fetch.min.bytes``): a
#: consumer following a live stream at 5k events/s fetched so often that the broker used a whole core once the
#: topic held ~100k records. Fetching only once the local queue is empty, at most every 100 ms per partition, cut
#: that to about a quarter, for at most 0.1 s of added latency (docs/benchmarks.md).
EMBEDDED_CONSUMER = {"queued.min.messages": 1, "fetch.queue.backoff.ms": 100}


def make_consumer(cfg: Config, group: str, **extra: Any) -> Consumer:
    """A confluent-kafka consumer that commits only when told (at-least-once)."""
    conf = _client_conf(
        cfg,
        **{
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": 100,
        },
    )
    if cfg.embedded_broker:
        conf.update(EMBEDDED_CONSUMER)
    conf.update(extra)
    return Consumer(conf)


def encode_model(meta: dict[str, Any], blob: bytes = b"") -> bytes:
    """A ``models`` message: one JSON line of metadata (``kind``, ``version``, ...), then an optional blob.

    >>> decode_model(encode_model({"kind": "clv", "version": 3}, b"\\x00\\n"))
    ({'kind': 'clv', 'version': 3}, b'\\x00\\n')
    """
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + blob


def decode_model(value: bytes) -> tuple[dict[str, Any], bytes]:
    """The metadata and blob of a ``models`` message."""
    head, _, blob = value.partition(b"\n")
    return json.loads(head), blob
