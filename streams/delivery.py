"""Step 4 of a batch: its outputs are sent, and acknowledged by the broker, before its state is written.

A worker has two producers. The output producer sends the scores, late events, alerts, dead letters and re-keyed
copies (and the table's writes: :mod:`streams.table` shares it); it reports failed deliveries only. The learner's
producer sends the churn labels, the CLV facts and the worker's progress, and reports every delivery: the progress
message tells the learner which CLV facts are acknowledged (``summaries``, the newest offset) along with how far the
worker's partitions have ticked, so it is sent once the labels of those ticks are acknowledged.

:meth:`Delivery.flush` waits for both producers: a write the broker refused raises :class:`DeliveryFailed`, and the
batch is then not committed (its records come again, and their outputs are sent again: idempotent downstream).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, Message

from cvm.config import Config
from streams.records import Outputs, dumps

__all__ = ["Delivery", "DeliveryFailed"]

log = logging.getLogger("cvm.worker")


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge a write: the batch is not committed."""


class Delivery:
    """Sends a batch's outputs on the worker's producers and waits for their acknowledgements.

    Parameters
    ----------
    cfg
        The topics' names.
    producer
        Outputs and table writes; delivery reports of errors only (its callback calls :meth:`delivered`).
    learn_producer
        Labels, CLV facts and progress; every delivery reported.
    rekey_topic
        The worker's re-key topic.
    stopping
        Set once the worker stops: the wait for acknowledgements then gives up after 10 s.
    """

    def __init__(
        self, cfg: Config, producer: Any, learn_producer: Any, rekey_topic: str, stopping: threading.Event
    ) -> None:
        self.cfg = cfg
        self.producer = producer  # outputs and table writes, delivery reports of errors only
        self.learn_producer = learn_producer  # labels, CLV facts and progress, every delivery reported
        self.rekey_topic = rekey_topic
        self.stopping = stopping
        self.summaries_offset = -1  # newest clv-summaries offset acknowledged
        self.failed: list[str] = []

    def send_scores(self, out: Outputs) -> None:
        """Send the score messages and alerts made so far, and forget them (``out.scores``, ``out.alerts`` empty).

        The worker calls it after each scoring (a tick's customers, an idle share, the event scorings), not once per
        batch: a batch whose ticks re-score the whole table under a new model version would otherwise hold every
        score message as a dict until its end (about 4 KB each: 180 MB for 44,000 scorings). Sent messages wait in
        the producer as bytes until the batch's :meth:`flush`, which still comes before the table's writes.
        """
        cfg, produce = self.cfg, self.producer.produce
        for topic, items in ((cfg.topic("customer-scores"), out.scores), (cfg.topic("alerts"), out.alerts)):
            for customer_id, value in items:
                produce(topic, key=customer_id.encode(), value=dumps(value))
            items.clear()

    def send(self, out: Outputs) -> None:
        """Send a batch's outputs not sent yet (the records' fates are the caller's to count)."""
        self.send_scores(out)
        cfg, produce = self.cfg, self.producer.produce
        for customer_id, value in out.late:
            produce(cfg.topic("late-events"), key=customer_id.encode(), value=dumps(value))
        for raw_key, letter in out.dead_letters:
            produce(cfg.topic("dead-letters"), key=raw_key, value=dumps(letter))
        # In event-time order: the re-key topic interleaves several partitions' records, and lateness is measured
        # within its order.
        for _, key, raw in sorted(out.rekeyed, key=lambda r: r[0]):
            produce(self.rekey_topic, key=key, value=raw)
        learn = self.learn_producer.produce
        for customer_id, summary in out.summaries:
            learn(cfg.topic("clv-summaries"), key=customer_id.encode(), value=dumps(summary), on_delivery=self._summary)
        for customer_id, pair in out.labels:
            learn(cfg.topic("churn-labels"), key=customer_id.encode(), value=dumps(pair), on_delivery=self._delivered)
        if out.dead_letters:
            log.warning("%d records sent to dead-letters", len(out.dead_letters))

    def report(self, clocks: dict[int, int | None], idle: set[int]) -> None:
        """Tell the learner how far our partitions have ticked (after the labels of those ticks were acknowledged)."""
        message = {
            "kind": "progress",
            "partitions": {str(p): c for p, c in clocks.items() if c is not None},
            "idle": sorted(idle),
            "summaries": self.summaries_offset,
        }
        self.learn_producer.produce(self.cfg.topic("churn-labels"), key=b"progress", value=dumps(message))

    def flush(self) -> None:
        """Wait until everything sent so far is acknowledged; :class:`DeliveryFailed` if the broker refused any.

        Kafka unreachable: the wait lasts until the writes time out (``message.timeout.ms``), or 10 s once the
        worker is stopping. Either way the batch is not committed, and is delivered again later.
        """
        for producer in (self.producer, self.learn_producer):
            waited = 0
            while producer.flush(1.0):
                waited += 1
                if waited == 10:
                    log.warning("Kafka has not acknowledged this batch's writes for 10 s: waiting")
                if self.stopping.is_set() and waited >= 10:
                    raise DeliveryFailed(f"{len(producer)} writes not acknowledged at shutdown; not committed")
        if self.failed:
            first, n = self.failed[0], len(self.failed)
            self.failed.clear()
            raise DeliveryFailed(f"{n} writes were not acknowledged by Kafka ({first}); the batch is not committed")

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        """Delivery report of the output producer (errors only)."""
        self._delivered(err, msg)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(f"{msg.topic()}: {err.str()}")

    def _summary(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivered(err, msg)
        elif msg.offset() > self.summaries_offset:
            self.summaries_offset = msg.offset()
