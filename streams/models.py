"""The ``models`` topic: versioned CLV parameters and churn models, read by every worker, written by the learner.

The topic has one partition, keyed by kind (``clv``, ``churn``); the newest message of a kind is the model in
force. Every worker reads it from the beginning with a consumer of its own (no group: each worker sees every
message) in a background thread, so a new version reaches all workers within a poll, without restart, and a
restarted worker starts with the latest version.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from cvm.config import Config
from cvm.kafka import decode_model, make_consumer

__all__ = ["ModelFeed"]


class ModelFeed:
    """The latest message per kind on the ``models`` topic, kept current by a daemon thread."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.latest: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: Set once the feed has read what the topic held when it started (its first empty poll).
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cvm-model-feed", daemon=True)

    def start(self) -> ModelFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def get(self, kind: str) -> tuple[dict[str, Any], bytes] | None:
        """The newest (metadata, blob) of ``kind``, or ``None`` before the first version."""
        with self._lock:
            return self.latest.get(kind)

    def offer(self, value: bytes) -> None:
        """Take one ``models`` message (newer versions replace older ones; a stale one is ignored)."""
        meta, blob = decode_model(value)
        kind = str(meta.get("kind", ""))
        with self._lock:
            current = self.latest.get(kind)
            if current is None or int(meta.get("version", 0)) >= int(current[0].get("version", 0)):
                self.latest[kind] = (meta, blob)

    def _run(self) -> None:
        consumer = make_consumer(self.cfg, f"{self.cfg.app_id}-model-feed-{uuid.uuid4().hex[:8]}")
        consumer.assign([TopicPartition(self.cfg.topic("models"), 0, OFFSET_BEGINNING)])
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(100, timeout=0.5)
                if not msgs:
                    self.ready.set()
                for msg in msgs:
                    if msg.error():
                        continue
                    value = msg.value()
                    if value:
                        try:
                            self.offer(value)
                        except (ValueError, KeyError):
                            continue  # not a model message: nothing to take
        finally:
            consumer.close()
