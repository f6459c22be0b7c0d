"""The learner: the one process that fits the population models from the stream and publishes their versions.

Workers score every customer with the models in force; the learner makes those models:

* **CLV refit.** Workers publish each customer's purchase-occasion facts on the single-partition, compacted
  ``clv-summaries`` topic whenever they change. The learner reads that topic from the beginning (so a restart
  rebuilds every customer's latest facts), and refits BG/NBD and Gamma-Gamma (``scoring.clv``) on a schedule
  when enough has changed: at least ``CVM_CLV_REFIT_MIN_CUSTOMERS`` customers, and since the last fit a share
  ``CVM_CLV_REFIT_CHANGE`` of them changed, checked every ``CVM_CLV_REFIT_S`` seconds. The fit is as of the newest
  event time in the summaries (T measured to it). Each fit goes to the ``models`` topic as a new version (every
  worker picks it up, see :mod:`streams.models`) and to ``model-metrics``, which the sink writes to
  ``cvm.clv_params``.

* **Churn training.** Workers publish each matured (features, label) pair on the single-partition
  ``churn-labels`` topic. The learner predicts each pair before learning it (progressive validation,
  ``scoring.metrics``), learns it, and every ``CVM_CHURN_PUBLISH_S`` seconds publishes the model (with its
  metrics, the ``churn-labels`` offset it covers and the last pair learned per customer) as a new version on
  ``models``, and its metrics on ``model-metrics`` (``cvm.model_metrics``).

Run exactly one learner (``cvm learner``; ``cvm up`` starts it). Versions continue from the newest one on the
``models`` topic, so a restarted learner never reuses a version number.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
import uuid
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from cvm.config import Config
from cvm.kafka import check_broker, create_topics, encode_model, make_consumer, make_producer
from scoring import clv
from scoring.churn import ChurnModel
from scoring.metrics import ProgressiveMetrics
from streams.models import ModelFeed
from streams.processor import pack_churn_blob, unpack_churn_blob

__all__ = ["ChurnTrainer", "ClvFitter", "Learner", "main"]

log = logging.getLogger("cvm.learner")


class ClvFitter:
    """Every customer's latest occasion facts, and the fit over them."""

    def __init__(self, period_days: int = 1) -> None:
        self.period_days = period_days
        self.facts: dict[str, tuple[int, int, int, int]] = {}  # first, last, occasions, repeat cents
        self.as_of = 0  # newest event time seen
        self.changed = 0  # customers whose facts changed since the last fit

    def offer(self, customer_id: str, summary: dict[str, Any]) -> None:
        """Take one ``clv-summaries`` message."""
        facts = (int(summary["f"]), int(summary["l"]), int(summary["n"]), int(summary["r"]))
        if self.facts.get(customer_id) != facts:
            self.facts[customer_id] = facts
            self.changed += 1
        self.as_of = max(self.as_of, int(summary["t"]))

    def due(self, min_customers: int, min_change: float) -> bool:
        """Whether enough customers changed since the last fit to refit."""
        n = len(self.facts)
        return n >= min_customers and self.changed >= max(1, min_change * n)

    def fit(self) -> dict[str, Any]:
        """Fit both models as of the newest event time; the fit's description (params, likelihoods, counts)."""
        started = time.perf_counter()
        rows = np.array(list(self.facts.values()), dtype=np.int64).reshape(-1, 4)
        as_of_period = clv.occasion_period(self.as_of, self.period_days)
        x, t_x, age, m = clv.summaries(
            rows[:, 0],
            rows[:, 1],
            rows[:, 2],
            rows[:, 3] / 100.0,
            max(as_of_period, int(rows[:, 1].max())),
            self.period_days,
        )
        bg = clv.fit_bgnbd(x, t_x, age)
        gg_part: dict[str, Any] = {"customers": int((x > 0).sum())}
        if (x > 0).any():
            gg = clv.fit_gamma_gamma(x, m)
            gg_part.update(gg.params.to_dict(), log_likelihood=gg.log_likelihood)
        self.changed = 0
        return {
            "as_of": self.as_of,
            "time_unit": "week",
            "customers": bg.customers,
            "bgnbd": {**bg.params.to_dict(), "log_likelihood": bg.log_likelihood},
            "gamma_gamma": gg_part,
            "fit_seconds": round(time.perf_counter() - started, 4),
        }


class ChurnTrainer:
    """Learns each matured (features, label) pair once, predicting it first (progressive validation).

    Its whole state — model, metrics, the last pair learned per customer and the ``churn-labels`` offset — is what
    it publishes, so a restarted trainer resumes from the latest version: pairs after that offset are learned
    (again, if a crash lost them from an unpublished model), pairs a worker emitted twice are recognised by
    (customer, snapshot time) and learned once.
    """

    def __init__(self, cfg: Config, latest: tuple[dict[str, Any], bytes] | None) -> None:
        if latest is None:
            self.model = ChurnModel(kind=cfg.churn_model)
            self.metrics = ProgressiveMetrics()
            self.learned: dict[str, int] = {}
            self.offset = -1
            self.time = 0
        else:
            meta, blob = latest
            parts = unpack_churn_blob(blob)
            self.model = ChurnModel.from_bytes(parts["model"])
            self.metrics = ProgressiveMetrics.from_bytes(parts["metrics"])
            self.learned = {str(k): int(v) for k, v in parts["learned"].items()}
            self.offset = int(meta["offset"])
            self.time = int(meta.get("time", 0))
        self.fresh = 0  # pairs learned since the last publication

    def offer(self, pair: dict[str, Any], offset: int) -> bool:
        """Learn one pair from ``churn-labels`` at ``offset``; False when it was learned before."""
        self.offset = max(self.offset, offset)
        customer_id, snapshot = str(pair["customer_id"]), int(pair["snapshot_ms"])
        if snapshot <= self.learned.get(customer_id, -1):
            return False
        features, label = pair["features"], int(pair["label"])
        self.metrics.update(self.model.churn_probability(features), label, int(pair["label_ms"]))
        self.model.learn_one(features, label)
        self.learned[customer_id] = snapshot
        self.time = max(self.time, int(pair["label_ms"]))
        self.fresh += 1
        return True

    def publication(self, version: int) -> tuple[bytes, bytes]:
        """The ``models`` message of this state as ``version``, and its ``model-metrics`` message."""
        self.model.version = version
        meta = {"kind": "churn", "version": version, "model": self.model.kind, "n_learned": self.model.n_learned}
        meta.update(offset=self.offset, time=self.time)
        blob = pack_churn_blob(self.model.to_bytes(), self.metrics.to_bytes(), self.learned)
        metrics = {k: v for k, v in self.metrics.snapshot().items() if math.isfinite(v)}
        metrics_meta = {"kind": "metrics", "time": self.time, "model_version": version, "metrics": metrics}
        self.fresh = 0
        return encode_model(meta, blob), encode_model(metrics_meta)


class Learner:
    """Reads the learning topics, fits and publishes model versions; one instance per deployment."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.clv = ClvFitter(cfg.clv_period_days)
        self.feed = ModelFeed(cfg)
        self.producer = make_producer(cfg)
        self.consumer = make_consumer(cfg, f"{cfg.app_id}-learner-{uuid.uuid4().hex[:8]}")
        self.consumer.assign([TopicPartition(cfg.topic("clv-summaries"), 0, OFFSET_BEGINNING)])
        self._next_check = time.monotonic() + cfg.clv_refit_s
        self.trainer: ChurnTrainer | None = None
        self.labels = make_consumer(cfg, f"{cfg.app_id}-trainer-{uuid.uuid4().hex[:8]}")
        self._next_publish = time.monotonic() + cfg.churn_publish_s

    def start(self, timeout: float = 15.0) -> None:
        """Read the latest model versions, then resume training after the offset the churn model covers."""
        self.feed.start()
        self.feed.ready.wait(timeout)
        self.trainer = ChurnTrainer(self.cfg, self.feed.get("churn"))
        start = self.trainer.offset + 1 if self.trainer.offset >= 0 else OFFSET_BEGINNING
        self.labels.assign([TopicPartition(self.cfg.topic("churn-labels"), 0, start)])

    def next_version(self, kind: str) -> int:
        current = self.feed.get(kind)
        return int(current[0]["version"]) + 1 if current else 1

    def poll(self, timeout: float = 0.5) -> int:
        """Take what arrived; refit when due. Returns the number of messages taken."""
        msgs = self.consumer.consume(2000, timeout=timeout)
        for msg in msgs:
            if msg.error() or not msg.value() or not msg.key():
                continue
            try:
                self.clv.offer(msg.key().decode(), json.loads(msg.value()))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed clv-summaries message at offset %s", msg.offset())
        if self.trainer is not None:
            for msg in self.labels.consume(2000, timeout=0.05):
                if msg.error() or not msg.value():
                    continue
                try:
                    self.trainer.offer(json.loads(msg.value()), msg.offset())
                except (ValueError, KeyError, TypeError):
                    log.warning("ignoring a malformed churn-labels message at offset %s", msg.offset())
            if self.trainer.fresh and time.monotonic() >= self._next_publish:
                self.publish_churn()
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.cfg.clv_refit_s
            if self.clv.due(self.cfg.clv_refit_min_customers, self.cfg.clv_refit_change):
                self.publish_clv()
        return len(msgs)

    def publish_clv(self) -> dict[str, Any]:
        """Fit and publish a new CLV version now."""
        try:
            fit = self.clv.fit()
        except (ValueError, FloatingPointError) as exc:
            log.warning("CLV fit failed, keeping the current version: %s", exc)
            return {}
        meta = {"kind": "clv", "version": self.next_version("clv"), "fit_time": int(time.time() * 1000), **fit}
        value = encode_model(meta)
        self.producer.produce(self.cfg.topic("models"), key=b"clv", value=value)
        self.producer.produce(self.cfg.topic("model-metrics"), key=b"clv", value=value)
        self.producer.flush(10)
        self.feed.offer(value)  # our own next version must not wait for the feed to read it back
        log.info("CLV version %s on %s customers (%.2fs)", meta["version"], meta["customers"], meta["fit_seconds"])
        return meta

    def publish_churn(self) -> None:
        """Publish the churn model as it stands, and its metrics."""
        assert self.trainer is not None
        version = self.next_version("churn")
        model, metrics = self.trainer.publication(version)
        self.producer.produce(self.cfg.topic("models"), key=b"churn", value=model)
        self.producer.produce(self.cfg.topic("model-metrics"), key=b"churn", value=metrics)
        self.producer.flush(10)
        self.feed.offer(model)
        self._next_publish = time.monotonic() + self.cfg.churn_publish_s
        log.info("churn version %s after %s pairs", version, self.trainer.model.n_learned)

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                self.poll()
        finally:
            if self.trainer is not None and self.trainer.fresh:
                self.publish_churn()
            self.feed.stop()
            self.consumer.close()
            self.labels.close()
            self.producer.flush(10)


def main(cfg: Config, args: Any) -> int:
    check_broker(cfg)
    create_topics(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Learner(cfg).run(stop)
    return 0
