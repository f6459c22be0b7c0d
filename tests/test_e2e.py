"""The whole path on the embedded default: real Tansu, a real Faust worker, a real sink on real chDB.

Events published as upstream systems would are found, exactly, in ClickHouse and through the HTTP API."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cvm.codec import Codec
from cvm.config import Config
from cvm.kafka import create_topics, make_producer
from tests.conftest import spawn, stop

pytestmark = pytest.mark.integration
DAY = 86_400_000


def sql(cfg: Config, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{cfg.http_port}/api/sql?" + urllib.parse.urlencode({"query": query, "format": "json"})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return list(json.loads(resp.read()))


def wait_http(cfg: Config, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{cfg.http_port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the sink did not start")


def test_events_reach_clickhouse_exactly(cfg: Config, tmp_path: Path) -> None:
    create_topics(cfg)
    codec, producer = Codec(), make_producer(cfg)
    t0 = int(time.time() * 1000) - 20 * DAY
    revenue = 0.0
    for i in range(2000):
        cid = f"c{i % 150}"
        amount = round((i % 53) * 2.11 - 9, 2)
        revenue += amount
        rec = {"event_id": f"t{i}", "customer_id": cid, "event_time": t0 + i * 60_000, "amount": amount}
        producer.produce(cfg.topic("transactions"), key=cid.encode(), value=codec.encode("transactions", rec))
        if i % 4 == 0:
            contact = {"event_id": f"k{i}", "customer_id": cid, "event_time": t0 + i * 60_000 + 1}
            contact.update(channel="phone", reason="complaint")
            producer.produce(cfg.topic("contacts"), key=cid.encode(), value=codec.encode("contacts", contact))
    # an upstream duplicate and a poison record
    dup = {"event_id": "t5", "customer_id": "c5", "event_time": t0 + 5 * 60_000, "amount": 999.0}
    producer.produce(cfg.topic("transactions"), key=b"c5", value=codec.encode("transactions", dup))
    producer.produce(cfg.topic("payments"), key=b"c1", value=b"\x00\x00\x00\x00\x01\xff\xff")
    producer.flush(10)

    sink = spawn(cfg, "sink", log=tmp_path / "sink.log")
    worker = spawn(cfg, "worker", "--id", "w1", log=tmp_path / "worker.log")
    try:
        wait_http(cfg)
        db = cfg.clickhouse_database
        deadline = time.monotonic() + 90
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = sql(
                cfg,
                f"SELECT count() AS n, sum(n_transactions) AS tx, sum(n_contacts) AS ct, "
                f"round(sum(revenue), 2) AS revenue FROM {db}.customers FINAL",
            )
            if rows and int(rows[0]["n"]) == 150 and int(rows[0]["tx"]) == 2000 and int(rows[0]["ct"]) == 500:
                break
            time.sleep(0.5)
        assert rows[0]["n"] in (150, "150")
        assert int(rows[0]["tx"]) == 2000 and int(rows[0]["ct"]) == 500
        assert float(rows[0]["revenue"]) == round(revenue, 2)
        raw = sql(cfg, f"SELECT count() AS n FROM {db}.transactions FINAL")
        assert int(raw[0]["n"]) == 2000  # the duplicate event_id collapses
        letters: list[dict] = []
        while time.monotonic() < deadline and not letters:
            letters = sql(cfg, f"SELECT topic, error_class FROM {db}.dead_letters")
            time.sleep(0.3)
        assert letters == [{"topic": cfg.topic("payments"), "error_class": "DecodeError"}]
    finally:
        stop(worker)
        assert stop(sink) == 0, (tmp_path / "sink.log").read_text()[-2000:]
