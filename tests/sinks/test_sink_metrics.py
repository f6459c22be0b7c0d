"""The sink's Prometheus metrics, read as Prometheus reads them (prometheus_client's parser): every record consumed
has exactly one fate, rows and refusals are counted, and a partition taken away releases what was not written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cvm.config import Config
from cvm.kafka import ModelKey, create_topics, encode_model, make_producer
from cvm.metrics import sample_sums
from schemas.scores import ScoreContract
from sinks.clickhouse import ClickHouse
from sinks.writer import Writer
from tests.conftest import free_port
from tests.sinks.test_sinks_integration import _produce, _read_line, _wait

SINK_FATES = ("written", "skipped", "released")


def scrape(url: str, token: str = "") -> list[object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(url, headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return list(text_string_to_metric_families(answer.text))


def fates_add_up(families: list[object], topics: list[str], fates: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per topic, the records consumed and each fate; asserts the fates add up to the records consumed."""
    out = {}
    for topic in topics:
        consumed = sample_sums(families, "cvm_records_consumed_total", topic=topic)
        per_fate = {fate: sample_sums(families, "cvm_records_total", topic=topic, fate=fate) for fate in fates}
        assert sum(per_fate.values()) == consumed, (topic, consumed, per_fate)
        out[topic] = {"consumed": consumed, **per_fate}
    return out


@pytest.mark.integration
def test_the_sinks_metrics_account_for_every_record(cfg: Config, tmp_path: Path) -> None:
    port = free_port()
    cfg = cfg.replace(clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}", http_port=port, sink_flush_s=0.2)
    create_topics(cfg)
    env = dict(os.environ, **cfg.to_env())
    sink = subprocess.Popen(
        [sys.executable, "-m", "cvm.cli", "sink"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert _read_line(sink, 60).startswith("cvm sink: HTTP API"), sink.poll()
        # 22 transactions (a duplicate, one not Avro), 5 contacts, 5 scores, a dead letter, a late event
        sent = _produce(cfg)
        producer = make_producer(cfg)
        key = ModelKey.from_config(cfg)
        signed = {"kind": "metrics", "time": 1_700_000_000_000, "model_version": 3, "metrics": {"roc_auc": 0.8}}
        producer.produce(cfg.topic("model-metrics"), key=b"churn", value=encode_model(signed, key=key))
        forged = encode_model({**signed, "model_version": 4}, key=ModelKey((b"not-the-key-0123456789",)))
        producer.produce(cfg.topic("model-metrics"), key=b"churn", value=forged)
        assert producer.flush(10) == 0
        sent[cfg.topic("model-metrics")] += 2
        url = f"http://127.0.0.1:{port}/metrics"
        topics = [t.removeprefix(cfg.topic_prefix) for t in sent]

        def settled() -> bool:
            families = scrape(url)
            return all(
                sample_sums(families, "cvm_records_total", topic=topic) == n
                for topic, n in zip(topics, sent.values(), strict=True)
            )

        assert _wait(settled, 60), scrape(url)
        families = scrape(url)
        counts = fates_add_up(families, topics, SINK_FATES)
        assert {t: c["consumed"] for t, c in counts.items()} == dict(
            zip(topics, map(float, sent.values()), strict=True)
        )
        assert counts["transactions"]["skipped"] == 1 and counts["transactions"]["written"] == 21  # a duplicate too
        assert counts["model-metrics"] == {"consumed": 2, "written": 1, "skipped": 1, "released": 0}
        assert sample_sums(families, "cvm_model_messages_refused_total", reason="forged") == 1
        assert sample_sums(families, "cvm_rows_written_total", table="transactions") == 21  # the duplicate too
        assert sample_sums(families, "cvm_rows_written_total", table="customers") == 5
        assert sample_sums(families, "cvm_rows_written_total", table="model_metrics") == 1
        assert sample_sums(families, "cvm_insert_seconds_count", table="customers") >= 1
        assert sample_sums(families, "cvm_batch_records_count") >= 1

        def lag() -> dict[tuple[str, str], float]:
            return {
                (s.labels["topic"], s.labels["partition"]): s.value  # type: ignore[attr-defined]
                for f in scrape(url)
                for s in f.samples  # type: ignore[attr-defined]
                if s.name == "cvm_consumer_lag_records"  # type: ignore[attr-defined]
            }

        # Sampled every 2 s per partition the sink reads from; caught up, nothing is behind.
        assert _wait(lambda: {"transactions", "contacts", "customer-scores"} <= {t for t, _ in lag()}, 30), lag()
        assert set(lag().values()) == {0.0}
        assert sample_sums(families, "cvm_http_requests_total", route="/metrics", status="200") >= 1
    finally:
        sink.terminate()
        _, err = sink.communicate(timeout=30)
    assert sink.returncode == 0, err


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_revoked_partition_releases_its_unwritten_records(cfg: Config, ch: ClickHouse) -> None:
    from confluent_kafka import TopicPartition

    writer = Writer(cfg, ch)
    topic = cfg.topic("customer-scores")
    label = "customer-scores"
    before = Counter({fate: _sample("cvm_records_total", topic=label, fate=fate) for fate in SINK_FATES})
    consumed = _sample("cvm_records_consumed_total", topic=label)
    contract = ScoreContract.load()
    for offset in range(3):
        assert writer.add(topic, 0, offset, json.dumps(contract.example(f"a{offset}")).encode())
        assert writer.add(topic, 1, offset, json.dumps(contract.example(f"b{offset}")).encode())
    assert not writer.add(topic, 1, 3, b"[not an object]")
    writer._forget([TopicPartition(topic, 1)])  # a rebalance took partition 1 before its batch was written
    assert writer.flush()
    after = Counter({fate: _sample("cvm_records_total", topic=label, fate=fate) for fate in SINK_FATES})
    assert after - before == Counter({"written": 3, "released": 3, "skipped": 1})
    assert _sample("cvm_records_consumed_total", topic=label) - consumed == 7
    assert ch.rows(f"SELECT count() FROM {ch.database}.customers")[0][0] == 3


def test_a_refused_insert_is_counted_and_tried_again_by_the_writer(cfg: Config, ch: ClickHouse) -> None:
    writer = Writer(cfg, ch)
    topic = cfg.topic("customer-scores")
    failures = _sample("cvm_insert_failures_total", table="customers")
    assert writer.add(topic, 0, 0, json.dumps({**ScoreContract.load().example("c1"), "version": 1}).encode())
    ch.command(f"RENAME TABLE {ch.database}.customers TO {ch.database}.customers_away")
    try:
        started = time.monotonic()
        assert not writer.flush()
        assert time.monotonic() - started < 5  # tried once: the retry is the writer's loop, not a loop inside
        assert _sample("cvm_insert_failures_total", table="customers") == failures + 1
    finally:
        ch.command(f"RENAME TABLE {ch.database}.customers_away TO {ch.database}.customers")
    assert writer.flush()
    assert ch.rows(f"SELECT count() FROM {ch.database}.customers")[0][0] == 1
