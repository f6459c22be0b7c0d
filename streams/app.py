"""The Faust application of a scoring worker: lifecycle, signals and graceful shutdown around the :class:`Scorer`.

Faust runs the worker: its lifecycle, signals and graceful shutdown, the background tasks. The hot path does not go
through Faust's per-event streams, whose asyncio machinery costs more per event than all of cvm's scoring and which
left holes around rebalances (docs/benchmarks.md): the :class:`streams.scorer.Scorer` consumes the event topics in
batches with confluent-kafka, in one consumer group whose range assignment gives a worker the same partition
numbers of each topic (a customer's events, by key, all land on one partition number). Its batch order, and why,
is at the top of :mod:`streams.scorer`.

All Kafka and table work runs on one thread, in order; the event loop only awaits it. A rebalance happens inside
the consumer's poll, between two batches: revoked partitions are dropped, assigned ones rebuilt from the changelog.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import KafkaError, Message
from mode import Service

from cvm import metrics
from cvm.codec import Codec, make_registry
from cvm.config import Config
from cvm.kafka import TopicSpec, create_topic, make_consumer, make_producer
from streams.models import ModelFeed
from streams.scorer import Scorer
from streams.table import CustomerTable

__all__ = ["build_scorer", "create_app"]

log = logging.getLogger("cvm.worker")


def build_scorer(cfg: Config, models: ModelFeed) -> Scorer:
    """A :class:`Scorer` with real clients: the group consumer, the producers, the changelog-backed table."""
    scorers: list[Scorer] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        scorers[0].delivery.delivered(err, msg)

    producer = make_producer(cfg, compressed=True, on_delivery=delivered, **{"delivery.report.only.error": True})
    consumer = make_consumer(
        cfg,
        group=cfg.app_id,
        **{
            # Range assignment gives a member the same partition numbers of every topic: co-partitioning.
            "partition.assignment.strategy": "range",
            "fetch.wait.max.ms": 50,
            "max.poll.interval.ms": 300_000,
        },
    )
    table = CustomerTable(cfg, producer)
    table.create_topic()
    create_topic(cfg, TopicSpec(f"{cfg.app_id}-rekey", doc="Records re-keyed by customer id."), prefixed=False)
    scorer = Scorer(
        cfg,
        consumer=consumer,
        producer=producer,
        learn_producer=make_producer(cfg, compressed=True),
        table=table,
        models=models,
        codec=Codec(make_registry(cfg.schema_registry_url, cfg.schema_registry_wait_s)),
    )
    scorers.append(scorer)
    return scorer


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
    scorer = build_scorer(cfg, models)
    server = metrics.serve(cfg, cfg.worker_metrics_port, "CVM_WORKER_METRICS_PORT")
    kafka = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvm-kafka")  # the Scorer's one thread

    async def on_kafka(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(kafka, fn, *args)

    @app.service
    class Scoring(Service):
        """Consumes and scores batches until the worker stops; then leaves the group."""

        async def on_start(self) -> None:
            models.start()
            await asyncio.get_running_loop().run_in_executor(None, models.ready.wait, 15.0)
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
            if server is not None:
                server.stop()

    return app
