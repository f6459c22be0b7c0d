"""The learner: the one process that fits the population models from the stream and publishes their versions.

Model versions live on a grid of **stream time** (``CVM_MODEL_EVERY_DAYS``, weekly by default), not of the wall
clock: the version made at grid point ``G`` knows exactly what the workers knew at ``G``, and workers score stream
time ``T`` with the newest version made before ``T`` (:mod:`streams.models`). So a replay of a history scores with
the same models as live processing did, whatever its speed.

* **What the workers send.** On ``churn-labels`` (one partition, in order): each matured churn pair, stamped with the
  tick at which it became known (``known_ms``), and, after the pairs of their ticks were acknowledged, **progress**
  messages — how far each of their partitions has ticked, which are idle, and the newest ``clv-summaries`` offset
  they wrote. On ``clv-summaries`` (compacted, one partition): each customer's purchase-occasion facts when they
  change, stamped likewise (``k``).
* **The clock.** Once every partition has ticked past the next grid point ``G`` (or is idle) and the CLV facts the
  workers wrote up to then are read, the learner moves to ``G``: it learns the churn pairs known by ``G`` in a fixed
  order (known time, customer, snapshot), predicting each first (progressive validation, ``scoring.metrics``),
  refits BG/NBD and Gamma-Gamma (``scoring.bgnbd``, ``scoring.gamma_gamma``) as of ``G`` on the facts known by
  ``G`` when at least ``CVM_CLV_REFIT_MIN_CUSTOMERS`` customers have facts and a share ``CVM_CLV_REFIT_CHANGE`` of
  them changed since the last fit, publishes what changed as versions valid from ``G``, then a ``clock`` message
  (versions through ``G`` are out). Metrics and fits also go to ``model-metrics`` (``cvm.model_metrics``,
  ``cvm.clv_params``).
* **Duplicates.** A pair known at or before the learner's clock was learned (or was due to be) already: after a
  worker's crash its re-emitted pairs are recognised so, without keeping anything per customer.
* **Restart.** The clock message carries what a restarted learner needs (the clock, the partitions' progress, the
  ``churn-labels`` offset of the first pair not learned yet); the churn model and its metrics are in the newest churn
  version. CLV facts are re-read from the compacted ``clv-summaries``.

Run exactly one learner (``cvm learner``; ``cvm up`` starts it). Versions continue from the newest one on the
``models`` topic, so a restarted learner never reuses a version number.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from cvm import metrics
from cvm.config import Config
from cvm.kafka import ModelKey, check_broker, create_topics, encode_model, make_consumer, make_producer
from cvm.signals import StopSignals
from scoring import clv
from scoring.bgnbd import fit_bgnbd
from scoring.churn import ChurnModel
from scoring.gamma_gamma import fit_gamma_gamma
from scoring.metrics import ProgressiveMetrics
from streams.models import ModelFeed, pack_churn, unpack_churn
from streams.score import heads_of

__all__ = ["ChurnTrainer", "ClvFitter", "Learner", "main"]

log = logging.getLogger("cvm.learner")


class ClvFitter:
    """Every customer's occasion facts as known at the learner's clock, and the fit over them."""

    def __init__(self, period_days: int = 1) -> None:
        self.period_days = period_days
        self.facts: dict[str, tuple[int, int, int, int]] = {}  # first, last, occasions, repeat cents
        self.later: dict[str, list[tuple[int, tuple[int, int, int, int]]]] = {}  # known after the clock
        self.changed = 0  # customers whose facts changed since the last fit

    def offer(self, customer_id: str, summary: dict[str, Any], clock: int | None) -> None:
        """Take one ``clv-summaries`` message; facts known after ``clock`` wait for it."""
        facts = (int(summary["f"]), int(summary["l"]), int(summary["n"]), int(summary["r"]))
        known = int(summary.get("k", 0))
        if clock is None or known > clock:
            self.later.setdefault(customer_id, []).append((known, facts))
        else:
            self._set(customer_id, facts)

    def _set(self, customer_id: str, facts: tuple[int, int, int, int]) -> None:
        if self.facts.get(customer_id) != facts:
            self.facts[customer_id] = facts
            self.changed += 1

    def move_to(self, clock: int) -> None:
        """The clock is at ``clock``: facts known by then count."""
        for customer_id in list(self.later):
            waiting = self.later[customer_id]
            ready = [f for k, f in waiting if k <= clock]
            if ready:
                self._set(customer_id, ready[-1])
                rest = [(k, f) for k, f in waiting if k > clock]
                if rest:
                    self.later[customer_id] = rest
                else:
                    del self.later[customer_id]

    def due(self, min_customers: int, min_change: float) -> bool:
        """Whether enough customers changed since the last fit to refit."""
        n = len(self.facts)
        return n >= min_customers and self.changed >= max(1, min_change * n)

    def fit(self, as_of: int) -> dict[str, Any]:
        """Fit both models as of stream time ``as_of``; the fit's description (params, likelihoods, counts).

        Rows go in customer order: the same facts give the same floating-point fit, whatever the order they came in.
        """
        started = time.perf_counter()
        rows = np.array([self.facts[c] for c in sorted(self.facts)], dtype=np.int64).reshape(-1, 4)
        as_of_period = clv.occasion_period(as_of, self.period_days)
        x, t_x, age, m = clv.summaries(
            rows[:, 0],
            rows[:, 1],
            rows[:, 2],
            rows[:, 3] / 100.0,
            max(as_of_period, int(rows[:, 1].max())),
            self.period_days,
        )
        bg = fit_bgnbd(x, t_x, age)
        gg_part: dict[str, Any] = {"customers": int((x > 0).sum())}
        if (x > 0).any():
            gg = fit_gamma_gamma(x, m)
            gg_part.update(gg.params.to_dict(), log_likelihood=gg.log_likelihood)
        self.changed = 0
        return {
            "as_of": as_of,
            "time_unit": "week",
            "customers": bg.customers,
            "bgnbd": {**bg.params.to_dict(), "log_likelihood": bg.log_likelihood},
            "gamma_gamma": gg_part,
            "fit_seconds": round(time.perf_counter() - started, 4),
        }


class ChurnTrainer:
    """Learns the matured (features, label) pairs known by each grid point, in a fixed order, predicting each first
    (progressive validation): one model per churn head (scoring.labels), published together as one version.

    The metrics a head keeps compare its prediction of the *label* (:meth:`ChurnModel.label_probability`, which
    knows the label's noise) with the label.
    """

    def __init__(self, cfg: Config, latest: tuple[dict[str, Any], bytes] | None) -> None:
        heads = len(heads_of(cfg))
        parts = None
        if latest is not None:
            try:
                parts = unpack_churn(latest[1])
            except ValueError as exc:
                log.warning("%s", exc)
        if parts is not None and len(parts["models"]) == heads:
            self.models = [ChurnModel.from_bytes(m) for m in parts["models"]]
            self.metrics = [ProgressiveMetrics.from_bytes(m) for m in parts["metrics"]]
        else:
            self.models = [ChurnModel(kind=cfg.churn_model, noise_days=cfg.churn_silence_days) for _ in range(heads)]
            self.metrics = [ProgressiveMetrics() for _ in range(heads)]
        # (customer, snapshot, head) -> (offset, pair): the pairs known after the clock, waiting for it
        self.waiting: dict[tuple[str, int, int], tuple[int, dict[str, Any]]] = {}
        self.duplicates = 0

    @property
    def model(self) -> ChurnModel:
        """The model of the first head (``churn_probability``)."""
        return self.models[0]

    def offer(self, pair: dict[str, Any], offset: int, clock: int | None) -> bool:
        """Take a pair from ``churn-labels`` at ``offset``; False when it is known at or before ``clock`` (learned)."""
        known = int(pair.get("known_ms", pair["label_ms"]))
        head = int(pair.get("head", 0))
        key = (str(pair["customer_id"]), int(pair["snapshot_ms"]), head)
        if (clock is not None and known <= clock) or key in self.waiting or not 0 <= head < len(self.models):
            self.duplicates += 1
            return False
        self.waiting[key] = (offset, pair)
        return True

    def learn_through(self, clock: int) -> int:
        """Learn the pairs known by ``clock``, in (known time, customer, snapshot, head) order; how many."""
        ready = [(k, v) for k, v in self.waiting.items() if int(v[1].get("known_ms", v[1]["label_ms"])) <= clock]
        ready.sort(key=lambda kv: (int(kv[1][1].get("known_ms", kv[1][1]["label_ms"])), kv[0]))
        for key, (_, pair) in ready:
            model, figures = self.models[key[2]], self.metrics[key[2]]
            features, label = pair["features"], int(pair["label"])
            figures.update(model.label_probability(features), label, int(pair["label_ms"]))
            model.learn_one(features, label)
            del self.waiting[key]
        return len(ready)

    def first_waiting_offset(self) -> int | None:
        return min((offset for offset, _ in self.waiting.values()), default=None)

    def publication(self, version: int, valid_from: int, key: ModelKey | None = None) -> tuple[bytes, bytes]:
        """The ``models`` message of this state as ``version``, and its ``model-metrics`` message (the first head's
        metrics under their names, the others' with the head's suffix: ``roc_auc_60d``)."""
        for model in self.models:
            model.version = version
        first = self.models[0]
        meta = {"kind": "churn", "version": version, "model": first.kind, "n_learned": first.n_learned}
        meta.update(valid_from=valid_from, time=valid_from, heads=len(self.models))
        blob = pack_churn([m.to_bytes() for m in self.models], [m.to_bytes() for m in self.metrics])
        figures: dict[str, float] = {}
        for i, head in enumerate(self.metrics):
            suffix = _HEAD_SUFFIX[i] if i < len(_HEAD_SUFFIX) else f"_head{i}"
            figures.update({f"{k}{suffix}": v for k, v in head.snapshot().items() if math.isfinite(v)})
        metrics_meta = {"kind": "metrics", "time": valid_from, "model_version": version, "metrics": figures}
        return encode_model(meta, blob, key=key), encode_model(metrics_meta, key=key)


#: The suffix of each churn head's metric names (as its probability's score key: churn_probability_60d).
_HEAD_SUFFIX = ("", "_60d")


class Learner:
    """Reads the learning topics, moves its clock on the stream-time grid, publishes versions; one per deployment."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.grid_ms = int(cfg.model_every_days * 86_400_000)
        self.clv = ClvFitter(cfg.clv_period_days)
        self.key = ModelKey.from_config(cfg)
        self.feed = ModelFeed(cfg, self.key)
        self.producer = make_producer(cfg, compressed=True)
        self.summaries = make_consumer(cfg, f"{cfg.app_id}-learner-{uuid.uuid4().hex[:8]}")
        self.summaries.assign([TopicPartition(cfg.topic("clv-summaries"), 0, OFFSET_BEGINNING)])
        self.summaries_read = -1  # the newest clv-summaries offset taken
        self.labels = make_consumer(cfg, f"{cfg.app_id}-trainer-{uuid.uuid4().hex[:8]}")
        self.labels_read = -1
        self.trainer: ChurnTrainer | None = None
        self.clock: int | None = None
        self.progress: dict[int, int] = {}
        self.idle: set[int] = set()
        self.summaries_needed = -1  # the newest clv-summaries offset a progress message vouched for
        self.seq = 0

    def start(self, timeout: float = 15.0) -> None:
        """Read the models topic, resume from the newest clock message, and say the learner is here."""
        self.feed.start()
        self.feed.ready.wait(timeout)
        self.trainer = ChurnTrainer(self.cfg, self.feed.get("churn"))
        start: int = OFFSET_BEGINNING
        clock = self.feed.clock
        if clock is not None:
            self.clock = clock.get("through")
            self.progress = {int(p): int(t) for p, t in (clock.get("progress") or {}).items()}
            self.idle = set(clock.get("idle") or [])
            self.seq = int(clock.get("seq", 0))
            if clock.get("labels_offset") is not None:
                start = int(clock["labels_offset"])
        self.labels.assign([TopicPartition(self.cfg.topic("churn-labels"), 0, start)])
        self._publish_clock()  # workers wait for the versions of their stream time from now on
        self.producer.flush(10)

    def next_version(self, kind: str) -> int:
        current = self.feed.get(kind)
        return int(current[0]["version"]) + 1 if current else 1

    # --- reading ---------------------------------------------------------------------------------------------------

    def poll(self, timeout: float = 0.2) -> int:
        """Take what arrived and move the clock as far as it can go; the number of messages taken."""
        n = 0
        msg = self.labels.poll(timeout)
        msgs = ([msg] if msg is not None else []) + self.labels.consume(5000, timeout=0)
        for msg in msgs:
            if msg.error() or not msg.value():
                continue
            n += 1
            self.labels_read = msg.offset()
            fate = "taken"
            try:
                message = json.loads(msg.value())
                if message.get("kind") == "progress":
                    self._progress(message)
                else:
                    assert self.trainer is not None
                    fate = "taken" if self.trainer.offer(message, msg.offset(), self.clock) else "duplicate"
            except (ValueError, KeyError, TypeError, AssertionError):
                fate = "malformed"
                log.warning("ignoring a malformed churn-labels message at offset %s", msg.offset())
            metrics.records.labels(topic="churn-labels", fate=fate).inc()
        for msg in self.summaries.consume(5000, timeout=0):
            if msg.error() or not msg.value() or not msg.key():
                continue
            n += 1
            self.summaries_read = msg.offset()
            fate = "taken"
            try:
                self.clv.offer(msg.key().decode(), json.loads(msg.value()), self.clock)
            except (ValueError, KeyError, TypeError):
                fate = "malformed"
                log.warning("ignoring a malformed clv-summaries message at offset %s", msg.offset())
            metrics.records.labels(topic="clv-summaries", fate=fate).inc()
        self.advance()
        return n

    def _progress(self, message: dict[str, Any]) -> None:
        for p, t in message["partitions"].items():
            self.progress[int(p)] = max(self.progress.get(int(p), t), int(t))
        self.idle = set(message.get("idle") or []) | (self.idle - {int(p) for p in message["partitions"]})
        self.summaries_needed = max(self.summaries_needed, int(message.get("summaries", -1)))

    # --- the clock ---------------------------------------------------------------------------------------------------

    def reachable(self) -> int | None:
        """The furthest grid point every partition has passed (idle ones do not hold it back)."""
        if self.summaries_read < self.summaries_needed:
            return None
        if any(p not in self.progress and p not in self.idle for p in range(self.cfg.partitions)):
            return None  # a partition has not said where it is yet
        busy = [t for p, t in self.progress.items() if p not in self.idle]
        if busy:
            top = min(busy)
        elif self.progress:
            top = max(self.progress.values())
        else:
            return None
        return top // self.grid_ms * self.grid_ms

    def advance(self) -> None:
        """Move the clock grid point by grid point as far as every partition allows, publishing what changed."""
        top = self.reachable()
        if top is None:
            return
        if self.clock is None:
            self.clock = top
            self._publish_clock()
            self.producer.flush(10)
            return
        moved = False
        while self.clock + self.grid_ms <= top:
            g = self.clock + self.grid_ms
            self.clv.move_to(g)
            assert self.trainer is not None
            learned = self.trainer.learn_through(g)
            metrics.records.labels(topic="churn-labels", fate="learned").inc(learned)
            if self.clv.due(self.cfg.clv_refit_min_customers, self.cfg.clv_refit_change):
                self.publish_clv(g)
            if learned:
                self.publish_churn(g)
            self.clock, moved = g, True
        if moved:
            self._publish_clock()
            self.producer.flush(10)

    def publish_clv(self, at: int) -> dict[str, Any]:
        """Fit and publish a new CLV version valid from stream time ``at``."""
        try:
            fit = self.clv.fit(at)
        except (ValueError, FloatingPointError) as exc:
            log.warning("CLV fit failed, keeping the current version: %s", exc)
            return {}
        meta = {"kind": "clv", "version": self.next_version("clv"), "valid_from": at, "fit_time": at, **fit}
        value = encode_model(meta, key=self.key)
        self.producer.produce(self.cfg.topic("models"), key=f"clv:{meta['version']}".encode(), value=value)
        self.producer.produce(self.cfg.topic("model-metrics"), key=b"clv", value=value)
        self.feed.offer(value)  # our own next version must not wait for the feed to read it back
        metrics.models_published.labels(kind="clv").inc()
        log.info("CLV version %s on %s customers (%.2fs)", meta["version"], meta["customers"], meta["fit_seconds"])
        return meta

    def publish_churn(self, at: int) -> None:
        """Publish the churn model as it stands, valid from stream time ``at``, and its metrics."""
        assert self.trainer is not None
        version = self.next_version("churn")
        model, figures = self.trainer.publication(version, at, self.key)
        self.producer.produce(self.cfg.topic("models"), key=f"churn:{version}".encode(), value=model)
        self.producer.produce(self.cfg.topic("model-metrics"), key=b"churn", value=figures)
        self.feed.offer(model)
        metrics.models_published.labels(kind="churn").inc()
        log.info("churn version %s after %s pairs", version, [m.n_learned for m in self.trainer.models])

    def _publish_clock(self) -> None:
        assert self.trainer is not None
        self.seq += 1
        first = self.trainer.first_waiting_offset()
        meta = {
            "kind": "clock",
            "through": self.clock,
            "grid_ms": self.grid_ms,
            "seq": self.seq,
            "progress": {str(p): t for p, t in self.progress.items()},
            "idle": sorted(self.idle),
            "labels_offset": first if first is not None else self.labels_read + 1,
        }
        value = encode_model(meta, key=self.key)
        self.producer.produce(self.cfg.topic("models"), key=b"clock", value=value)
        self.feed.offer(value)

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                self.poll()
        finally:
            self.feed.stop()
            self.summaries.close()
            self.labels.close()
            self.producer.flush(10)


def main(cfg: Config, args: Any) -> int:
    check_broker(cfg)
    create_topics(cfg)
    server = metrics.serve(cfg, cfg.learner_metrics_port, "CVM_LEARNER_METRICS_PORT")
    try:
        with StopSignals() as stop:
            Learner(cfg).run(stop.event)
    finally:
        if server is not None:
            server.stop()
    return 0
