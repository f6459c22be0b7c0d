"""The ``models`` topic: versioned CLV parameters and churn models on a stream-time grid, and the learner's clock.

The learner (:mod:`streams.learner`) publishes model versions on a grid of event time (``CVM_MODEL_EVERY_DAYS``):
a version published at grid point ``G`` learned only from what was known at ``G`` (churn labels that matured, CLV
facts), and is **valid from** ``G``: a score at stream time ``T`` uses the newest version valid before ``T``. After
each grid point it publishes a ``clock`` message: every version valid up to ``through`` is out. So a worker knows
whether the version of its stream time is out yet, and waits for it when the learner is behind: the models a replay
scores with do not depend on how fast it runs.

Every worker reads the topic from the beginning with a consumer of its own (no group: each worker sees every
message) in a background thread, and keeps the versions of each kind (the last :data:`KEEP` of them), so a worker
behind the others still finds the version of its own stream time.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from cvm import metrics
from cvm.config import Config
from cvm.exceptions import ModelRejected
from cvm.kafka import ModelKey, decode_model, make_consumer

__all__ = ["KEEP", "ModelFeed", "grid_point", "pack_churn", "unpack_churn"]

log = logging.getLogger("cvm.models")

#: Versions of each kind a feed keeps.
KEEP = 64


def grid_point(t: int, grid_ms: int) -> int:
    """The last grid point strictly before stream time ``t``: the versions valid at ``t`` were made there or before.

    >>> grid_point(10, 10), grid_point(11, 10), grid_point(20, 10)
    (0, 10, 10)
    """
    return (t - 1) // grid_ms * grid_ms


class ModelFeed:
    """The versions on the ``models`` topic, kept current by a daemon thread."""

    def __init__(self, cfg: Config, key: ModelKey | None = None) -> None:
        self.cfg = cfg
        self.key = key or ModelKey.from_config(cfg)
        self._versions: dict[str, list[tuple[int, int, dict[str, Any], bytes]]] = {}  # (valid_from, version, ...)
        self._clock: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: Set once the feed has read what the topic held when it started (its first empty poll).
        self.ready = threading.Event()
        self.refused = 0  # messages that were not model messages (or failed their check)
        self._thread = threading.Thread(target=self._run, name="cvm-model-feed", daemon=True)

    def start(self) -> ModelFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    # --- reading ---------------------------------------------------------------------------------------------------

    def get(self, kind: str) -> tuple[dict[str, Any], bytes] | None:
        """The newest (metadata, blob) of ``kind``, or ``None`` before the first version."""
        with self._lock:
            found = self._versions.get(kind)
            return (found[-1][2], found[-1][3]) if found else None

    def at(self, kind: str, t: int) -> tuple[dict[str, Any], bytes] | None:
        """The version of ``kind`` in force at stream time ``t``: the newest valid before ``t`` (``None``: none)."""
        with self._lock:
            found = self._versions.get(kind)
            if not found:
                return None
            i = bisect.bisect_left(found, t, key=lambda v: v[0])
            return (found[i - 1][2], found[i - 1][3]) if i else None

    @property
    def clock(self) -> dict[str, Any] | None:
        """The learner's newest ``clock`` message (``None``: no learner has published yet)."""
        with self._lock:
            return self._clock

    def covers(self, t: int) -> bool:
        """Whether every version that could be in force at stream time ``t`` is out (always, without a learner)."""
        clock = self.clock
        if clock is None:
            return True
        through = clock.get("through")
        return through is not None and int(through) >= grid_point(t, int(clock["grid_ms"]))

    # --- writing ---------------------------------------------------------------------------------------------------

    def offer(self, value: bytes) -> None:
        """Take one ``models`` message (a version of a kind, or the learner's clock); :class:`ModelRejected` when it
        is not signed with ``CVM_MODEL_KEY`` (nothing of it is used)."""
        meta, blob = decode_model(value, key=self.key)
        kind = str(meta.get("kind", ""))
        with self._lock:
            if kind == "clock":
                if self._clock is None or _newer(meta, self._clock):
                    self._clock = meta
                return
            version = int(meta["version"])
            entry = (int(meta.get("valid_from", 0)), version, meta, blob)
            found = self._versions.setdefault(kind, [])
            if any(v[1] == version for v in found):
                return
            found.append(entry)
            found.sort(key=lambda v: (v[0], v[1]))
            del found[:-KEEP]
        if version == found[-1][1]:
            metrics.model_in_force(kind, version, float(meta.get("signed_at", 0.0)))

    def _run(self) -> None:
        consumer = make_consumer(self.cfg, f"{self.cfg.app_id}-model-feed-{uuid.uuid4().hex[:8]}")
        tp = TopicPartition(self.cfg.topic("models"), 0, OFFSET_BEGINNING)
        consumer.assign([tp])
        # Ready once what the topic held at the start is read. Tansu reports as high watermark the base offset of
        # the last record batch + 1 (measured: 5 after five batches of one record, 1 after one batch of five): the
        # record before it is the last batch's first, fetched with the rest of its batch.
        try:
            end = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        except KafkaException:
            end = 0
        position = 0
        try:
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                msgs = ([msg] if msg is not None else []) + consumer.consume(1000, timeout=0)
                for msg in msgs:
                    if not msg.error():
                        position = msg.offset() + 1
                    value = msg.value()
                    if msg.error() or not value:
                        continue
                    try:
                        self.offer(value)
                    except ModelRejected as exc:  # counted by decode_model: unsigned, forged or malformed
                        self.refused += 1
                        log.warning("models offset %s refused: %s", msg.offset(), exc)
                    except (ValueError, KeyError, TypeError) as exc:  # signed, but not a model message we know
                        self.refused += 1
                        log.warning("models offset %s is not a model message: %s", msg.offset(), exc)
                if position >= end:
                    self.ready.set()
        finally:
            consumer.close()


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("through") or 0, a.get("seq", 0)) >= (b.get("through") or 0, b.get("seq", 0))


def pack_churn(models: list[bytes], metrics: list[bytes]) -> bytes:
    """The blob of a churn ``models`` message: each head's model and its progressive metrics, in head order.

    >>> unpack_churn(pack_churn([b"m0", b"m1"], [b"x0", b"x1"]))
    {'models': [b'm0', b'm1'], 'metrics': [b'x0', b'x1']}
    """
    parts = [*models, *metrics]
    head = json.dumps({"format": 3, "heads": len(models)}).encode() + b"\n"
    return head + b"".join(len(p).to_bytes(8, "little") + p for p in parts)


def unpack_churn(blob: bytes) -> dict[str, list[bytes]]:
    head, _, rest = blob.partition(b"\n")
    meta = json.loads(head)
    if meta.get("format") != 3:
        raise ValueError(f"a churn model of another format ({meta.get('format')}): the learner trains a new one")
    parts, pos = [], 0
    while pos < len(rest):
        n = int.from_bytes(rest[pos : pos + 8], "little")
        parts.append(rest[pos + 8 : pos + 8 + n])
        pos += 8 + n
    heads = int(meta["heads"])
    return {"models": parts[:heads], "metrics": parts[heads : 2 * heads]}
