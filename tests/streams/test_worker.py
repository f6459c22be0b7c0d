"""A real Faust worker on the real Tansu broker: exact scores per customer and poison to dead letters."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cvm.codec import Codec
from cvm.config import Config
from cvm.kafka import create_topics, make_consumer, make_producer
from tests.conftest import spawn, stop

pytestmark = pytest.mark.integration
DAY = 86_400_000


def publish(cfg: Config, start: int, n: int, customers: int, t0: int) -> float:
    codec, producer = Codec(), make_producer(cfg)
    total = 0.0
    for i in range(start, start + n):
        cid = f"c{i % customers}"
        amount = round((i % 97) * 1.37 - 20, 2)
        total += amount
        rec = {"event_id": f"e{i}", "customer_id": cid, "event_time": t0 + i * 1000, "amount": amount}
        producer.produce(cfg.topic("transactions"), key=cid.encode(), value=codec.encode("transactions", rec))
        producer.poll(0)
    producer.flush(10)
    return total


def latest_scores(consumer, latest: dict, expect_tx: int, timeout: float = 90, sizes: list | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in consumer.consume(2000, 0.5):
            if m.error() is None:
                if sizes is not None:
                    sizes.append(len(m.value()))
                d = json.loads(m.value())
                if d["version"] >= latest.get(d["customer_id"], {}).get("version", -1):
                    latest[d["customer_id"]] = d
        if sum(d["n_transactions"] for d in latest.values()) >= expect_tx:
            break
    return latest


def received_bytes(stats: str) -> int:
    """Bytes a consumer received from the brokers, from librdkafka's statistics: what crossed the wire."""
    return sum(b["rxbytes"] for b in json.loads(stats)["brokers"].values())


def test_worker_scores_exactly_and_dead_letters_poison(cfg: Config, tmp_path: Path) -> None:
    create_topics(cfg)
    t0 = int(time.time() * 1000) - 30 * DAY
    total = publish(cfg, 0, 3000, 300, t0)
    producer = make_producer(cfg)
    producer.produce(cfg.topic("transactions"), key=b"c1", value=b"\x00\x00\x00\x00\x09not avro")
    producer.produce(cfg.topic("contacts"), key=b"c1", value=b"plain text")
    producer.flush(10)

    stats: list[str] = []
    consumer = make_consumer(cfg, group="test-reader", **{"statistics.interval.ms": 500, "stats_cb": stats.append})
    consumer.subscribe([cfg.topic("customer-scores")])
    dead = make_consumer(cfg, group="test-dead")
    dead.subscribe([cfg.topic("dead-letters")])

    worker = spawn(cfg, "worker", "--id", "a", log=tmp_path / "worker-a.log")
    sizes: list[int] = []
    try:
        latest = latest_scores(consumer, {}, 3000, sizes=sizes)
        seen = len(stats)
        deadline = time.monotonic() + 10
        while len(stats) <= seen and time.monotonic() < deadline:  # statistics taken after the last record read
            sizes += [len(m.value()) for m in consumer.consume(100, 0.5) if m.error() is None]
    finally:
        assert stop(worker) == 0, (tmp_path / "worker-a.log").read_text()[-2000:]
        consumer.close()
    # the score records came zstd-compressed: far fewer bytes on the wire than their JSON (more without compression)
    assert len(stats) > seen and received_bytes(stats[-1]) < 0.5 * sum(sizes), (received_bytes(stats[-1]), sum(sizes))
    assert len(latest) == 300
    assert sum(d["n_transactions"] for d in latest.values()) == 3000
    assert round(sum(d["revenue"] for d in latest.values()), 2) == round(total, 2)

    letters = []
    deadline = time.monotonic() + 30
    while len(letters) < 2 and time.monotonic() < deadline:
        letters += [json.loads(m.value()) for m in dead.consume(10, 0.5) if m.error() is None]
    dead.close()
    assert sorted(x["error_class"] for x in letters) == ["DecodeError", "DecodeError"]


def committed(cfg: Config, topic: str) -> int:
    """Sum over partitions of the worker group's committed offsets on ``topic``."""
    from confluent_kafka import TopicPartition

    probe = make_consumer(cfg, group=cfg.app_id)
    try:
        tps = probe.committed([TopicPartition(cfg.topic(topic), p) for p in range(cfg.partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        probe.close()


def test_restarted_worker_recovers_its_table_and_counts_nothing_twice(cfg: Config, tmp_path: Path) -> None:
    """The table is recovered from the changelog on restart (on Tansu, thanks to the seal markers: see
    streams.app) and Faust's re-delivery around the committed offset is a no-op thanks to per-customer offsets."""
    create_topics(cfg)
    t0 = int(time.time() * 1000) - 30 * DAY
    total = publish(cfg, 0, 3000, 300, t0)
    consumer = make_consumer(cfg, group="test-reader")
    consumer.subscribe([cfg.topic("customer-scores")])
    try:
        worker = spawn(cfg, "worker", "--id", "a", log=tmp_path / "worker-a.log")
        try:
            latest = latest_scores(consumer, {}, 3000)
        finally:
            assert stop(worker) == 0
        assert committed(cfg, "transactions") == 3000  # every batch acked, once its writes were acknowledged
        total += publish(cfg, 3000, 600, 300, t0)
        worker = spawn(cfg, "worker", "--id", "a", log=tmp_path / "worker-a2.log")
        try:
            latest = latest_scores(consumer, latest, 3600)
            time.sleep(2)  # anything counted twice would show up as extra transactions now
            latest = latest_scores(consumer, latest, 10**9, timeout=1)
        finally:
            stop(worker)
    finally:
        consumer.close()
    assert sum(d["n_transactions"] for d in latest.values()) == 3600
    assert round(sum(d["revenue"] for d in latest.values()), 2) == round(total, 2)


def test_silence_produces_churn_labels_as_stream_time_passes(cfg: Config, tmp_path: Path) -> None:
    """Customers who never send another event are labelled 1 once the worker's stream time passes their deadline;
    labels reach churn-labels once each, and a customer who keeps buying gets only 0s."""
    # labels: gone by the snapshot + 10 days, silent for 30 after that; one head
    cfg = cfg.replace(
        churn_silence_days=30.0,
        churn_offset_days=10.0,
        churn_early_offset_days=0.0,
        churn_snapshot_every_days=10.0,
        idle_partition_s=1.0,
    )
    create_topics(cfg)
    codec, producer = Codec(), make_producer(cfg)
    t0 = int(time.time() * 1000) - 200 * DAY

    def buy(i: int, cid: str, day: float) -> None:
        rec = {"event_id": f"b{i}", "customer_id": cid, "event_time": t0 + int(day * DAY), "amount": 10.0}
        producer.produce(cfg.topic("transactions"), key=cid.encode(), value=codec.encode("transactions", rec))

    for k in range(12):
        buy(k, f"silent{k}", 0)  # spread over the partitions; never heard of again
    buy(100, "busy", 0)
    for day in range(5, 60, 5):  # 'busy' moves the stream time on, 5 days at a time
        buy(100 + day, "busy", day)
    producer.flush(10)
    worker = spawn(cfg, "worker", "--id", "w1", log=tmp_path / "worker.log")
    consumer = make_consumer(cfg, "labels-reader")
    consumer.subscribe([cfg.topic("churn-labels")])
    labels: list[dict] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len({p["customer_id"] for p in labels}) < 12:
            found = [json.loads(m.value()) for m in consumer.consume(500, 0.5) if m.error() is None]
            labels += [p for p in found if p.get("kind") != "progress"]
    finally:
        consumer.close()
        assert stop(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    silent = {(p["customer_id"], p["label"]) for p in labels if p["customer_id"].startswith("silent")}
    assert silent == {(f"silent{k}", 1) for k in range(12)}
    assert {p["label"] for p in labels if p["customer_id"] == "busy"} == {0}  # it kept buying
    assert len({(p["customer_id"], p["snapshot_ms"]) for p in labels}) == len(labels)  # each pair once
