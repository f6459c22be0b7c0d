"""Kafka plumbing shared by every process: topic specs and creation, producers, consumers, reachability.

Partitioning: every producer of cvm uses librdkafka's ``murmur2_random`` partitioner, the one of the Java client
and of aiokafka (Faust). A customer's events, its table entries and its scores therefore land on the same
partition number whichever client wrote them — the co-partitioning the workers' tables rely on.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cvm import metrics
from cvm.config import Config
from cvm.exceptions import BrokerUnavailable, ConfigError, ModelRejected

__all__ = [
    "MODEL_SIGNATURE",
    "ModelKey",
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


def make_producer(cfg: Config, *, compressed: bool = False, **extra: Any) -> Producer:
    """A confluent-kafka producer with cvm's partitioner and batching.

    ``compressed``: its record batches are compressed with ``CVM_KAFKA_COMPRESSION`` (what the workers and the
    learner write); the producers that stand in for upstream (``cvm simulate``, ``replay``, ``restore``, the bench's
    load) publish uncompressed, as most upstream systems do.
    """
    conf = _client_conf(
        cfg,
        **{
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
            "compression.type": cfg.kafka_compression if compressed else "none",
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


#: A group member that stops heartbeating (a killed worker) loses its partitions after this many seconds.
SESSION_TIMEOUT_S = 6.0


def read_to_end(consumer: Consumer, partitions: Iterable[int], timeout: float, what: str) -> Iterator[Message]:
    """The records of ``partitions`` (of the one topic ``consumer`` is assigned, with ``enable.partition.eof``) up
    to where each ends; ``TimeoutError`` naming ``what`` when that takes over ``timeout`` seconds."""
    pending = set(partitions)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: partitions {sorted(pending)} took over {timeout:g}s")
        for msg in consumer.consume(num_messages=10000, timeout=0.5):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - its public name
                    pending.discard(msg.partition())
                continue
            yield msg


def make_consumer(cfg: Config, group: str, **extra: Any) -> Consumer:
    """A confluent-kafka consumer that commits only when told (at-least-once)."""
    conf = _client_conf(
        cfg,
        **{
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(SESSION_TIMEOUT_S * 1000),
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": 100,
        },
    )
    if cfg.embedded_broker:
        conf.update(EMBEDDED_CONSUMER)
    conf.update(extra)
    return Consumer(conf)


# --- model messages: signed, so that whoever can write the models topic cannot run code on the workers -------------

#: First line of a signed model message: this tag, a space, the hex HMAC-SHA256 of everything after the line.
MODEL_SIGNATURE = b"cvm-model-hmac-sha256"
_MIN_KEY_CHARS = 16
_KEY_FILE = "model.key"


@dataclass(frozen=True)
class ModelKey:
    """The HMAC keys of model messages: the first signs, any of them verifies (so a key can be rotated).

    Build it once per process with :meth:`from_config`. ``CVM_MODEL_KEY`` holds one key or several, comma-separated.
    Without it, on the embedded broker, the key is ``$CVM_DATA_DIR/model.key``, generated (mode 0600) by the first
    process that needs it, so ``cvm up`` works out of the box; with an external Kafka a key must be configured.

    >>> key = ModelKey((b"k" * 32,))
    >>> decode_model(encode_model({"kind": "clv", "version": 3}, b"\\x00\\n", key=key), key=key)[1]
    b'\\x00\\n'
    """

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys or any(len(k) < _MIN_KEY_CHARS for k in self.keys):
            raise ConfigError(f"every CVM_MODEL_KEY needs at least {_MIN_KEY_CHARS} characters")

    @classmethod
    def from_config(cls, cfg: Config) -> ModelKey:
        """The keys of ``CVM_MODEL_KEY``, else the data directory's (embedded broker only); :class:`ConfigError`."""
        if cfg.model_key:
            return cls(tuple(k.strip().encode() for k in cfg.model_key.split(",") if k.strip()))
        if not cfg.embedded_broker:
            raise ConfigError(
                "set CVM_MODEL_KEY (the same secret on the learner, every worker and the sink, e.g. from "
                "'python -c \"import secrets; print(secrets.token_hex(32))\"'): model messages are signed with it"
            )
        return cls((_data_dir_key(cfg.data_path / _KEY_FILE),))

    def sign(self, payload: bytes) -> bytes:
        return hmac.new(self.keys[0], payload, hashlib.sha256).hexdigest().encode()

    def verify(self, payload: bytes, tag: bytes) -> bool:
        return any(
            hmac.compare_digest(hmac.new(k, payload, hashlib.sha256).hexdigest().encode(), tag) for k in self.keys
        )


def _data_dir_key(path: Path) -> bytes:
    """The key stored at ``path``, created first if missing; concurrent first starts agree on one key."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    spare = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    try:
        os.link(spare, path)  # atomic, and fails when another process got there first: its key wins
    except FileExistsError:
        pass
    finally:
        spare.unlink()
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_text().strip().encode()
    if len(key) < _MIN_KEY_CHARS:
        raise ConfigError(f"{path} holds no usable model key: delete it (a new one is made) or set CVM_MODEL_KEY")
    return key


@functools.cache
def _process_key() -> ModelKey:
    return ModelKey.from_config(Config.load())


def encode_model(meta: dict[str, Any], blob: bytes = b"", *, key: ModelKey | None = None) -> bytes:
    """A signed ``models`` / ``model-metrics`` message: the signature line, one JSON line of metadata, the blob.

    Pass ``key=ModelKey.from_config(cfg)``; without it, the key of this process's own configuration (its
    environment and ``CVM_CONFIG``) is used. ``signed_at`` (epoch seconds) is added to the metadata:
    :func:`cvm.metrics.model_in_force` takes the model's age from it.
    """
    key = key or _process_key()
    payload = json.dumps({**meta, "signed_at": round(time.time(), 3)}, separators=(",", ":")).encode() + b"\n" + blob
    return MODEL_SIGNATURE + b" " + key.sign(payload) + b"\n" + payload


def decode_model(value: bytes, *, key: ModelKey | None = None) -> tuple[dict[str, Any], bytes]:
    """The metadata and blob of a signed model message (``key`` as for :func:`encode_model`).

    Raises :class:`ModelRejected` (and counts it in ``cvm_model_messages_refused_total{reason}``) when the message
    is unsigned, forged or malformed: nothing of it is unpickled or used.
    """
    key = key or _process_key()
    head, _, payload = value.partition(b"\n")
    tag_name, _, tag = head.partition(b" ")
    if tag_name != MODEL_SIGNATURE:
        raise _refuse("unsigned", "a model message without cvm's signature line: refused")
    if not key.verify(payload, tag):
        raise _refuse("forged", "a model message whose signature does not match CVM_MODEL_KEY: refused")
    line, _, blob = payload.partition(b"\n")
    try:
        meta = json.loads(line)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise _refuse("malformed", "a signed model message whose metadata is not a JSON object: refused")
    return meta, blob


def _refuse(reason: str, message: str) -> ModelRejected:
    metrics.model_refused.labels(reason=reason).inc()
    return ModelRejected(reason, message)
