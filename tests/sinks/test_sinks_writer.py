"""The writer on the real chDB engine, fed records directly (no broker): mapping, batching, retries."""

from __future__ import annotations

import json
import math
import time

import pytest
from confluent_kafka import TopicPartition

from cvm.codec import Codec
from cvm.config import Config
from cvm.epoch import Epoch
from cvm.kafka import encode_model
from schemas.scores import ScoreContract
from sinks.clickhouse import ClickHouse, Migration, load_migrations, migrate
from sinks.writer import Writer

NOW = int(time.time() * 1000)


def _score(cid: str, version: int, **extra: object) -> bytes:
    """A score message as the contract wants it: every required field, the nullable ones left out."""
    body = ScoreContract.load().example(cid)
    body.update(
        version=version,
        as_of=NOW - 1000,
        updated_at=NOW,
        revenue=1234.56,
        gross_margin=370.37,
        n_transactions=12,
        n_contacts=3,
        n_payments=4,
        first_event_time=NOW - 86_400_000,
        last_event_time=NOW - 1000,
        cost_to_serve=12.5,
        profitability=357.87,
    )
    body.update(extra)
    return json.dumps(body).encode()


def test_scores_json_lands_in_customers_and_history(cfg: Config, ch: ClickHouse) -> None:
    writer = Writer(cfg, ch)
    topic = cfg.topic("customer-scores")
    assert writer.add(topic, 0, 10, _score("c42", 56, p_alive=0.25, clv_params_version=3))
    assert writer.add(topic, 0, 11, _score("c42", 57, p_alive=0.5, clv_params_version=3))
    assert writer.add(topic, 1, 3, _score("c7", 1, customer_id=""), key=b"c7")
    assert writer.flush()
    db = ch.database
    latest = ch.rows(
        f"SELECT customer_id, version, revenue, n_transactions, toUnixTimestamp64Milli(as_of), "
        f"toUnixTimestamp64Milli(updated_at), p_alive, clv_params_version, churn_reasons "
        f"FROM {db}.customers FINAL ORDER BY customer_id"
    )
    assert latest == [
        ("c42", 57, 1234.56, 12, NOW - 1000, NOW, 0.5, 3, []),
        ("c7", 1, 1234.56, 12, NOW - 1000, NOW, None, None, []),  # no CLV model yet: NULL, not 0
    ]
    assert ch.rows(f"SELECT count() FROM {db}.customer_scores")[0][0] == 3
    assert writer.stats()["rows_written"] == {"customers": 3, "customer_scores": 3}


def test_an_idle_scoring_refreshes_the_current_row_and_stays_out_of_the_history(cfg: Config, ch: ClickHouse) -> None:
    """A quiet stream scores every customer as of each tick (scored_by idle): customers FINAL shows it, the history
    keeps the event and tick scorings only (else a row per customer per hour of quiet)."""
    writer = Writer(cfg, ch)
    topic = cfg.topic("customer-scores")
    assert writer.add(topic, 0, 1, _score("c1", 10, scored_by="tick", p_alive=0.9))
    for offset, version in ((2, 11), (3, 12)):
        assert writer.add(topic, 0, offset, _score("c1", version, scored_by="idle", p_alive=0.8))
    assert writer.flush()
    db = ch.database
    assert ch.rows(f"SELECT version, scored_by, p_alive FROM {db}.customers FINAL") == [(12, "idle", 0.8)]
    assert ch.rows(f"SELECT version, scored_by FROM {db}.customer_scores") == [(10, "tick")]
    assert writer.stats()["rows_written"] == {"customers": 3, "customer_scores": 1}


def test_score_messages_are_held_to_their_contract(
    cfg: Config, ch: ClickHouse, caplog: pytest.LogCaptureFixture
) -> None:
    extra = Migration(
        9001,
        "clv",
        (
            "ALTER TABLE {db}.customers ADD COLUMN IF NOT EXISTS clv_12m Float64 DEFAULT -1",
            "ALTER TABLE {db}.customer_scores ADD COLUMN IF NOT EXISTS clv_12m Float64 DEFAULT -1",
        ),
    )
    migrate(ch, [*load_migrations(), extra])
    writer = Writer(cfg, ch)
    topic = cfg.topic("customer-scores")
    with caplog.at_level("WARNING", logger="cvm.contract"):
        assert writer.add(topic, 0, 0, _score("a", 1, clv_12m=99.5))  # a key the contract does not know
        assert writer.add(topic, 0, 1, _score("b", 1, clv_12m=1.0, renamed_feature=2))
        assert not writer.add(topic, 0, 2, _score("c", 1, revenue=None))  # a required field null
        body = json.loads(_score("d", 1))
        del body["loyalty_score"]
        assert not writer.add(topic, 0, 3, json.dumps(body).encode())  # a required field missing
    assert writer.flush()
    got = ch.rows(f"SELECT customer_id, clv_12m FROM {ch.database}.customers FINAL ORDER BY customer_id")
    assert got == [("a", -1.0), ("b", -1.0)], "unknown keys are not written, even where a column has their name"
    contract = writer.stats()["score_contract"]
    assert contract == {
        "unknown_keys": {"clv_12m": 2, "renamed_feature": 1},
        "refused": {"with null revenue": 1, "without loyalty_score": 1},
    }
    warned = [r.getMessage() for r in caplog.records]
    assert sum("'clv_12m'" in m for m in warned) == 1, "logged once per key"
    assert sum("'renamed_feature'" in m for m in warned) == 1
    assert any("without loyalty_score" in m for m in warned)


def test_raw_events_dead_letters_and_late_events(cfg: Config, ch: ClickHouse) -> None:
    codec = Codec()
    writer = Writer(cfg, ch)
    tx = {"event_id": "e1", "customer_id": "c1", "event_time": NOW, "amount": 9.5, "channel": "app"}
    pay = {
        "event_id": "p1",
        "customer_id": "c1",
        "event_time": NOW,
        "invoice_id": "i1",
        "amount_due": 20.0,
        "due_date": NOW - 5000,
        "status": "late",
    }
    assert writer.add(cfg.topic("transactions"), 2, 100, codec.encode("transactions", tx))
    assert writer.add(cfg.topic("transactions"), 2, 101, codec.encode("transactions", tx))  # upstream duplicate
    assert writer.add(cfg.topic("payments"), 0, 7, codec.encode("payments", pay))
    # Skipped, not failed: garbage, a contact on the transactions topic, an invalid event, a JSON array.
    assert not writer.add(cfg.topic("transactions"), 2, 102, b"garbage")
    contact = {"event_id": "k", "customer_id": "c1", "event_time": NOW, "channel": "phone", "reason": "sales"}
    assert not writer.add(cfg.topic("transactions"), 2, 103, codec.encode("contacts", contact))
    assert not writer.add(cfg.topic("transactions"), 2, 104, codec.encode("transactions", dict(tx, customer_id="")))
    assert not writer.add(cfg.topic("late-events"), 0, 1, b"[1, 2]")
    dead = {
        "time": NOW,
        "topic": cfg.topic("contacts"),
        "partition": 3,
        "offset": 9,
        "key": "c9",
        "raw_b64": "AAAA" * 50_000,
        "error_class": "DecodeError",
        "error": "bad magic",
    }
    assert writer.add(cfg.topic("dead-letters"), 0, 0, json.dumps(dead).encode())
    late = {
        "time": NOW,
        "topic": cfg.topic("transactions"),
        "partition": 1,
        "offset": 5,
        "customer_id": "c1",
        "event_id": "old",
        "event_time": NOW - 10 * 86_400_000,
        "stream_time": NOW,
        "lateness_ms": 864_000_000,
    }
    assert writer.add(cfg.topic("late-events"), 0, 2, json.dumps(late).encode())
    assert writer.flush()

    db = ch.database
    # One row: the duplicate collapses on insert already (optimize_on_insert), and with FINAL in any case; the copy
    # kept is the first one read, the one the worker applied (a restore replays it in its place).
    assert ch.rows(
        f"SELECT event_id, amount, gross_margin, channel, currency, topic, partition, offset "
        f"FROM {db}.transactions FINAL"
    ) == [("e1", 9.5, None, "app", "EUR", cfg.topic("transactions"), 2, 100)]
    assert ch.rows(f"SELECT status, paid_date, toUnixTimestamp64Milli(due_date) FROM {db}.payments") == [
        ("late", None, NOW - 5000)
    ]
    assert ch.rows(f"SELECT partition, offset, length(raw), error_class FROM {db}.dead_letters") == [
        (3, 9, 65_536, "DecodeError")
    ]
    assert ch.rows(f"SELECT event_id, lateness_ms FROM {db}.late_events") == [("old", 864_000_000)]
    stats = writer.stats()
    assert stats["records_skipped"] == 4 and stats["records_consumed"] == 9


def test_batches_are_per_partition_and_flush_when_full(cfg: Config, ch: ClickHouse) -> None:
    writer = Writer(cfg.replace(sink_batch_rows=3), ch)
    topic = cfg.topic("customer-scores")
    for offset in range(2):
        writer.add(topic, 0, offset, _score(f"a{offset}", 1))
        writer.add(topic, 1, offset, _score(f"b{offset}", 1))
    assert not writer._full and writer.pending_rows == 8  # 4 records × 2 tables, 4 batches
    writer.add(topic, 0, 2, _score("a2", 1))
    assert writer._full
    tokens = sorted(b.token for b in writer._pending)
    assert tokens[0] == f"{topic}:0:0:2:customer_scores" and tokens[-1] == f"{topic}:1:0:1:customers"


def test_failed_batch_is_retried_with_its_token_and_written_once(cfg: Config, ch: ClickHouse) -> None:
    db = ch.database
    writer = Writer(cfg, ch)
    topic = cfg.topic("customer-scores")
    writer.add(topic, 0, 0, _score("a", 1))
    ch.command(f"RENAME TABLE {db}.customer_scores TO {db}.customer_scores_away")  # ClickHouse "fails"
    try:
        assert not writer.flush()
        assert writer.stats()["last_error"] and writer.pending_rows == 1
        token = writer._pending[0].token
        writer.add(topic, 0, 1, _score("b", 1))  # arrives while failing: goes to a new batch
        assert writer._pending[0].token == token
    finally:
        ch.command(f"RENAME TABLE {db}.customer_scores_away TO {db}.customer_scores")
    assert writer.flush()
    assert ch.rows(f"SELECT customer_id FROM {db}.customer_scores ORDER BY customer_id") == [("a",), ("b",)]
    assert ch.rows(f"SELECT customer_id FROM {db}.customers FINAL ORDER BY customer_id") == [("a",), ("b",)]
    assert writer.stats()["last_error"] is None


def test_a_table_is_one_insert_per_flush_and_a_retry_keeps_its_token(cfg: Config, ch: ClickHouse) -> None:
    db = ch.database
    writer = Writer(cfg, ch)
    topic = cfg.topic("customer-scores")
    writer.add(topic, 1, 0, _score("b", 1))
    writer.add(topic, 0, 0, _score("a", 1))
    ch.command(f"RENAME TABLE {db}.customer_scores TO {db}.customer_scores_away")
    try:
        assert not writer.flush()
        tokens = {i.table: i.token for i in writer._inserts}
        expected = f"{writer.epoch.id}/{topic}:0:0:0:customer_scores|{topic}:1:0:0:customer_scores"
        assert tokens["customer_scores"] == expected
        writer.add(topic, 0, 1, _score("c", 1))  # a new batch: the sealed INSERT keeps its batches and token
        assert not writer.flush()
        assert writer._inserts[0].token == tokens["customer_scores"]
    finally:
        ch.command(f"RENAME TABLE {db}.customer_scores_away TO {db}.customer_scores")
    assert writer.flush() and not writer._inserts and writer.pending_rows == 0
    assert ch.rows(f"SELECT customer_id FROM {db}.customer_scores ORDER BY customer_id") == [("a",), ("b",), ("c",)]
    assert writer.stats()["rows_written"] == {"customers": 3, "customer_scores": 3}


def test_a_revoked_partition_leaves_the_sealed_insert(cfg: Config, ch: ClickHouse) -> None:
    db = ch.database
    writer = Writer(cfg, ch)
    topic = cfg.topic("customer-scores")
    writer.add(topic, 0, 5, _score("a", 1))
    writer.add(topic, 1, 7, _score("b", 1))
    ch.command(f"RENAME TABLE {db}.customer_scores TO {db}.customer_scores_away")
    try:
        assert not writer.flush()
        sealed = f"{writer.epoch.id}/{topic}:0:5:5:customer_scores|{topic}:1:7:7:customer_scores"
        assert [i.token for i in writer._inserts if i.table == "customer_scores"] == [sealed]
        writer._forget([TopicPartition(topic, 1)])  # its new owner reads it again from the committed offset
        # The rest keeps the token: had the failed attempt landed after all, writing the rest again is a no-op.
        rest = [i for i in writer._inserts if i.table == "customer_scores"]
        assert [i.token for i in rest] == [sealed] and [len(b.records) for b in rest[0].batches] == [1]
    finally:
        ch.command(f"RENAME TABLE {db}.customer_scores_away TO {db}.customer_scores")
    assert writer.flush()
    assert ch.rows(f"SELECT customer_id FROM {db}.customer_scores") == [("a",)]
    assert writer._positions == {(topic, 0): 5}


def test_batches_with_other_keys_are_other_inserts(cfg: Config, ch: ClickHouse) -> None:
    extra = Migration(9001, "late", ("ALTER TABLE {db}.late_events ADD COLUMN IF NOT EXISTS note Int64 DEFAULT -1",))
    migrate(ch, [*load_migrations(), extra])
    writer = Writer(cfg, ch)
    topic = cfg.topic("late-events")
    late = {"time": NOW, "topic": "t", "partition": 0, "offset": 1, "customer_id": "a", "event_id": "e1",
            "event_time": NOW - 9 * 86_400_000, "stream_time": NOW, "lateness_ms": 9 * 86_400_000}  # fmt: skip
    writer.add(topic, 0, 0, json.dumps(dict(late, note=7)).encode())
    writer.add(topic, 1, 0, json.dumps(dict(late, customer_id="b")).encode())  # an older worker: the default applies
    assert writer.flush()
    got = ch.rows(f"SELECT customer_id, note FROM {ch.database}.late_events ORDER BY customer_id")
    assert got == [("a", 7), ("b", -1)]


def test_json_messages_are_read_with_orjson_and_the_json_module_reads_what_it_refuses() -> None:
    from sinks.routes import _json_object

    assert _json_object(b'{"customer_id":"c1","p_alive":0.5}') == {"customer_id": "c1", "p_alive": 0.5}
    assert math.isnan(_json_object(b'{"p_alive": NaN}')["p_alive"])  # written by json.dumps in earlier workers
    with pytest.raises(ValueError):
        _json_object(b"[1, 2]")
    with pytest.raises(ValueError):
        _json_object(b"not json")


def _metrics(version: int) -> bytes:
    return encode_model({"kind": "metrics", "time": NOW, "model_version": version, "metrics": {"roc_auc": 0.75}})


def test_the_same_offsets_in_a_new_broker_epoch_are_new_rows(cfg: Config, ch: ClickHouse) -> None:
    """Issue 14: a fresh broker starts its offsets at 0 again; with tokens of topic, partition and offsets alone, the
    second life's inserts repeated the first life's tokens and ClickHouse dropped them as duplicates."""
    db = ch.database
    topic = cfg.topic("model-metrics")
    for epoch in (Epoch(1, "first-life"), Epoch(2, "second-life")):
        writer = Writer(cfg, ch, epoch=epoch)
        assert writer.add(topic, 0, 0, _metrics(epoch.number))
        assert writer.flush()
    assert ch.rows(f"SELECT model_version FROM {db}.model_metrics ORDER BY model_version") == [(1,), (2,)]
    # Within one epoch a batch written again (a sink restarted before its commit) is still dropped.
    again = Writer(cfg, ch, epoch=Epoch(2, "second-life"))
    assert again.add(topic, 0, 0, _metrics(2)) and again.flush()
    assert ch.rows(f"SELECT count() FROM {db}.model_metrics")[0][0] == 2


def test_raw_rows_late_events_and_dead_letters_carry_the_epoch(cfg: Config, ch: ClickHouse) -> None:
    db = ch.database
    writer = Writer(cfg, ch, epoch=Epoch(7, "seventh"))
    tx = {"event_id": "e1", "customer_id": "c1", "event_time": NOW - 1000, "amount": 5.0}
    assert writer.add(cfg.topic("transactions"), 2, 41, Codec().encode("transactions", tx))
    late = {"topic": "t", "partition": 0, "offset": 3, "customer_id": "c1", "event_id": "e0", "event_time": NOW}
    assert writer.add(cfg.topic("late-events"), 0, 0, json.dumps(late).encode())
    assert writer.add(cfg.topic("dead-letters"), 0, 0, json.dumps({"topic": "t", "offset": 4}).encode())
    assert writer.flush()
    assert ch.rows(f"SELECT epoch, partition, offset FROM {db}.transactions FINAL") == [(7, 2, 41)]
    assert ch.rows(f"SELECT epoch, offset FROM {db}.late_events") == [(7, 3)]
    assert ch.rows(f"SELECT epoch, offset FROM {db}.dead_letters") == [(7, 4)]
