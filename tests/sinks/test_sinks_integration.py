"""The sink with the real Tansu broker: records produced to Kafka end up in ClickHouse, offsets committed.

One test drives the :class:`Writer` in this process; the other runs ``cvm sink`` and ``cvm sql`` as commands.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from confluent_kafka import TopicPartition

from cvm.codec import Codec
from cvm.config import Config
from cvm.kafka import create_topics, make_consumer, make_producer
from schemas.scores import ScoreContract
from sinks.clickhouse import ClickHouse
from sinks.writer import Writer
from tests.conftest import free_port

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)


def _score(customer_id: str, **values: object) -> dict[str, object]:
    """A score message as the contract wants it (schemas/customer_score.avsc)."""
    return {**ScoreContract.load().example(customer_id), **values}


def _wait(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def _produce(cfg: Config, n_customers: int = 5) -> Counter[str]:
    """Events, scores, a dead letter and a late event; returns how many records each topic got."""
    codec = Codec()
    producer = make_producer(cfg)
    sent: Counter[str] = Counter()

    def send(base: str, key: str, value: bytes) -> None:
        producer.produce(cfg.topic(base), key=key.encode(), value=value)
        sent[cfg.topic(base)] += 1

    for i in range(20):
        cid = f"c{i % n_customers}"
        tx = {"event_id": f"t{i}", "customer_id": cid, "event_time": NOW - i * 1000, "amount": 10.0 + i}
        send("transactions", cid, codec.encode("transactions", tx))
    send(
        "transactions",
        "c0",
        codec.encode("transactions", {"event_id": "t0", "customer_id": "c0", "event_time": NOW, "amount": 10.0}),
    )  # upstream duplicate
    send("transactions", "c0", b"not avro")  # skipped by the sink (the worker dead-letters it)
    for i in range(5):
        contact = {
            "event_id": f"k{i}",
            "customer_id": f"c{i}",
            "event_time": NOW,
            "channel": "chat",
            "reason": "billing",
        }
        send("contacts", f"c{i}", codec.encode("contacts", contact))
    for i in range(n_customers):
        score = _score(f"c{i}", version=4, as_of=NOW, updated_at=NOW, revenue=50.0 + i)
        send("customer-scores", f"c{i}", json.dumps(score).encode())
    send(
        "dead-letters",
        "c0",
        json.dumps(
            {
                "time": NOW,
                "topic": cfg.topic("transactions"),
                "partition": 0,
                "offset": 21,
                "key": "c0",
                "raw_b64": "bm90IGF2cm8=",
                "error_class": "DecodeError",
                "error": "magic byte",
            }
        ).encode(),
    )
    send(
        "late-events",
        "c1",
        json.dumps(
            {
                "time": NOW,
                "topic": cfg.topic("transactions"),
                "partition": 1,
                "offset": 3,
                "customer_id": "c1",
                "event_id": "old",
                "event_time": NOW - 9 * 86_400_000,
                "stream_time": NOW,
                "lateness_ms": 9 * 86_400_000,
            }
        ).encode(),
    )
    assert producer.flush(10) == 0
    return sent


def test_writer_consumes_every_topic_and_commits(cfg: Config, ch: ClickHouse) -> None:
    cfg = cfg.replace(sink_flush_s=0.2)
    create_topics(cfg)
    sent = _produce(cfg)
    writer = Writer(cfg, ch)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    thread.start()
    db = ch.database

    def arrived() -> bool:
        counts = ch.rows(
            f"SELECT (SELECT count() FROM {db}.transactions FINAL), (SELECT count() FROM {db}.customers FINAL), "
            f"(SELECT count() FROM {db}.dead_letters), (SELECT count() FROM {db}.late_events), "
            f"(SELECT count() FROM {db}.contacts)"
        )[0]
        return counts == (20, 5, 1, 1, 5)

    try:
        assert _wait(arrived), writer.stats()
        assert ch.rows(f"SELECT sum(revenue) FROM {db}.customers FINAL")[0][0] == 260.0
        assert ch.rows(f"SELECT uniqExact(topic, partition, offset) FROM {db}.transactions")[0][0] == 20
        assert _wait(lambda: writer.stats()["pending_rows"] == 0)
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()
    stats = writer.stats()
    assert stats["records_consumed"] == sum(sent.values()) and stats["records_skipped"] == 1

    # Committed offsets cover every record: a restarted sink would not read them again.
    consumer = make_consumer(cfg, group=f"{cfg.app_id}-sink")
    try:
        parts = [TopicPartition(t, p) for t in sent for p in range(cfg.partitions)]
        committed: Counter[str] = Counter()
        for tp in consumer.committed(parts, timeout=10):
            committed[tp.topic] += max(tp.offset, 0)
    finally:
        consumer.close()
    assert committed == sent


def test_writer_pauses_while_clickhouse_refuses_and_loses_nothing(cfg: Config, ch: ClickHouse) -> None:
    cfg = cfg.replace(sink_flush_s=0.1)
    create_topics(cfg, ["customer-scores"])
    producer = make_producer(cfg)
    topic = cfg.topic("customer-scores")
    db = ch.database

    def send(first: int, last: int) -> None:
        for i in range(first, last):
            score = _score(f"c{i}", version=1, revenue=float(i))
            producer.produce(topic, key=f"c{i}".encode(), value=json.dumps(score).encode())
        assert producer.flush(10) == 0

    def count(table: str) -> int:
        return int(ch.rows(f"SELECT count() FROM {db}.{table}")[0][0])

    writer = Writer(cfg, ch)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        send(0, 5)
        assert _wait(lambda: count("customer_scores") == 5)
        ch.command(f"RENAME TABLE {db}.customers TO {db}.customers_away")  # ClickHouse refuses inserts
        try:
            send(5, 15)
            assert _wait(lambda: writer.stats()["paused"])
            assert writer.stats()["last_error"] and writer.stats()["pending_rows"] > 0
        finally:
            ch.command(f"RENAME TABLE {db}.customers_away TO {db}.customers")
        send(15, 20)
        assert _wait(lambda: count("customer_scores") == 20 and count("customers") == 20)
        assert _wait(lambda: not writer.stats()["paused"])
    finally:
        stop.set()
        thread.join(20)
    # Exactly once in the history table: retried batches kept their tokens, nothing was read twice.
    assert ch.rows(f"SELECT count(), uniqExact(customer_id) FROM {db}.customer_scores")[0] == (20, 20)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line and proc.poll() is not None:  # it died: say why, not only that the line is missing
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise AssertionError(f"{proc.args} exited with {proc.returncode} before its first line:\n{err[-3000:]}")
    return line


def test_sink_and_sql_commands(cfg: Config, tmp_path: Path) -> None:
    port = free_port()
    cfg = cfg.replace(
        clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}",  # the sink process owns its own engine
        http_port=port,
        clickhouse_database="cvm",
        sink_flush_s=0.2,
    )
    env = dict(os.environ, **cfg.to_env())
    sink = subprocess.Popen(
        [sys.executable, "-m", "cvm.cli", "sink"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(sink, 60)
        assert line.startswith(f"cvm sink: HTTP API on http://127.0.0.1:{port} "), (line, sink.poll())
        producer = make_producer(cfg)
        producer.produce(
            cfg.topic("customer-scores"),
            key=b"c1",
            value=json.dumps(_score("c1", version=1, revenue=3.5)).encode(),
        )
        producer.flush(10)

        def scored() -> bool:
            answer = httpx.get(
                f"http://127.0.0.1:{port}/api/sql", params={"query": "SELECT count() AS n FROM cvm.customers"}
            )
            return answer.status_code == 200 and answer.json() == [{"n": 1}]

        assert _wait(scored)
        status = httpx.get(f"http://127.0.0.1:{port}/api/status").json()
        assert status["customers"] == 1 and status["writer"]["rows_written"]["customers"] == 1

        # `cvm sql` goes through the sink's API: chDB belongs to the sink process.
        sql = subprocess.run(
            [
                sys.executable,
                "-m",
                "cvm.cli",
                "sql",
                "SELECT customer_id, revenue FROM cvm.customers FINAL",
                "--format",
                "json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sql.returncode == 0, sql.stderr
        assert json.loads(sql.stdout) == [{"customer_id": "c1", "revenue": 3.5}]
        # Told about another port, it finds no sink and may not open the data the sink owns.
        other = subprocess.run(
            [sys.executable, "-m", "cvm.cli", "sql", "SELECT 1"],
            env=dict(env, CVM_HTTP_PORT=str(free_port())),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 1 and "is a `cvm sink` running?" in other.stderr
        assert other.stderr.count("\n") == 1, other.stderr

        sink.send_signal(signal.SIGTERM)
        assert sink.wait(30) == 0, sink.stderr.read() if sink.stderr else ""
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
