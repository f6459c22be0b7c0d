"""Replaying history files: the three formats, event ids from the file's content, bad rows, and the real broker."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import fastavro
import pytest

from cvm.codec import Codec, load_schema
from cvm.config import Config
from cvm.events import parse_time
from cvm.exceptions import BrokerUnavailable, CvmError
from cvm.replay import RowCheck, main
from cvm.replay_file import HistoryFile, Parsed, Rejected, file_id
from cvm.simulate import write_jsonl
from cvm.simulation import ANCHOR_MS, generate
from tests.cvm.test_simulate import consume_all

T = "2025-03-14T09:30:00Z"


def rows(path: Path, **options: Any) -> list[Parsed | Rejected]:
    return list(HistoryFile(path, **options))


def good(items: list[Parsed | Rejected]) -> list[Parsed]:
    return [item for item in items if isinstance(item, Parsed)]


def bad(items: list[Parsed | Rejected]) -> list[Rejected]:
    return [item for item in items if isinstance(item, Rejected)]


def replay_args(path: Path, **overrides: Any) -> argparse.Namespace:
    base: dict[str, Any] = dict(file=str(path), type=None, format=None, map=[], time_format=None, rate=None, max_bad=0)
    return argparse.Namespace(**(base | overrides))


# --- formats ----------------------------------------------------------------------------------------------------


def test_the_simulators_files_replay_to_the_same_events(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    events = list(generate(60, 45, seed=1, end_ms=ANCHOR_MS))
    write_jsonl(events, str(path))
    parsed = rows(path)
    assert not bad(parsed)
    assert [(p.kind, p.record) for p in good(parsed)] == events
    assert [p.line for p in parsed] == list(range(1, len(events) + 1))


def test_jsonl_fills_defaults_and_takes_the_type_option(tmp_path: Path) -> None:
    path = tmp_path / "tx.ndjson"
    path.write_text(
        json.dumps({"customer_id": "c1", "event_time": 1_700_000_000, "amount": "12,5"})
        + "\n\n"
        + json.dumps({"type": "contacts", "customer_id": "c2", "event_time": T, "channel": "chat", "reason": "sales"})
        + "\n"
    )
    first, second = good(rows(path, kind="transactions"))
    assert first.record == {
        "event_id": f"{file_id(path)}:1",
        "customer_id": "c1",
        "event_time": 1_700_000_000_000,
        "amount": 12.5,
        "currency": "EUR",
        "gross_margin": None,
        "channel": "web",
        "category": "other",
    }
    assert second.kind == "contacts" and second.line == 3
    assert second.record["resolved"] is True and second.record["cost"] is None


def test_csv_with_map_time_format_and_french_conventions(tmp_path: Path) -> None:
    path = tmp_path / "ventes.csv"
    path.write_bytes(
        "client;date;montant;marge;canal\n"
        "C-001;14/03/2025 09:30;1 234,50;300,10;store\n"
        "C-002;15/03/2025 18:05;-19,90;;web\n"
        "C-003;16/03/2025 08:00;5;1;caf\xe9\n".encode()
        + "C-004;16/03/2025 08:00;7;2;caf\xe9\n".encode("cp1252")
    )
    options = dict(
        kind="transactions",
        mapping={"customer_id": "client", "event_time": "date", "amount": "montant", "gross_margin": "marge",
                 "channel": "canal"},
        time_format="%d/%m/%Y %H:%M",
    )  # fmt: skip
    parsed = good(rows(path, **options))
    assert [p.line for p in parsed] == [2, 3, 4, 5]
    first, second, third, fourth = (p.record for p in parsed)
    assert first["customer_id"] == "C-001" and first["amount"] == 1234.5 and first["gross_margin"] == 300.1
    assert first["event_time"] == parse_time("2025-03-14T09:30:00Z")
    assert second["amount"] == -19.9 and second["gross_margin"] is None
    assert third["channel"] == fourth["channel"] == "caf\xe9", "UTF-8, or Windows-1252 from a spreadsheet"
    assert first["category"] == "other" and first["currency"] == "EUR"


def test_csv_columns_named_like_fields_need_no_map_and_a_type_column_picks_the_kind(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "type,event_id,customer_id,event_time,amount,channel,reason,resolved,invoice_id,amount_due,due_date,status\n"
        f"transactions,e1,c1,{T},10,app,,,,,,\n"
        f"contacts,e2,c1,1741944600000,,phone,complaint,non,,,,\n"
        f"payments,e3,c1,{T},,,,,inv-1,49.9,2025-03-31,late\n"
    )
    tx, contact, payment = good(rows(path))
    assert (tx.kind, tx.record["event_id"], tx.record["channel"]) == ("transactions", "e1", "app")
    assert contact.record["resolved"] is False and contact.record["event_time"] == 1_741_944_600_000
    assert payment.record["due_date"] == parse_time("2025-03-31") and payment.record["paid_date"] is None


def test_avro_container_files(tmp_path: Path) -> None:
    schema = fastavro.parse_schema(load_schema("transactions"))
    path = tmp_path / "tx.avro"
    records = [
        {"event_id": f"e{i}", "customer_id": f"c{i % 3}", "event_time": 1_741_944_600_000 + i, "amount": i * 1.5,
         "currency": "EUR", "gross_margin": None, "channel": "web", "category": "books"}
        for i in range(5)
    ]  # fmt: skip
    with open(path, "wb") as fh:
        fastavro.writer(fh, schema, records)
    parsed = good(rows(path))
    assert [p.kind for p in parsed] == ["transactions"] * 5, "the kind comes from the schema name"
    assert [p.record for p in parsed] == records, "timestamps read back as integer milliseconds"

    other = tmp_path / "export.bin"
    plain = {
        "type": "record",
        "name": "Sale",
        "fields": [
            {"name": "client", "type": "string"},
            {"name": "ts", "type": "long"},
            {"name": "total", "type": "double"},
        ],
    }
    with open(other, "wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(plain), [{"client": "c9", "ts": 1_741_944_600, "total": 3.0}])
    with pytest.raises(CvmError, match="give --type"):
        HistoryFile(other, fmt="avro")
    (sale,) = good(
        rows(other, fmt="avro", kind="transactions", mapping={"customer_id": "client", "event_time": "ts",
                                                                 "amount": "total"})
    )  # fmt: skip
    assert sale.record["event_time"] == 1_741_944_600_000 and sale.record["event_id"] == f"{file_id(other)}:1"


def test_parquet_files(tmp_path: Path) -> None:
    import datetime as dt
    from decimal import Decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "sales.parquet"
    table = pa.table(
        {
            "client": ["c1", "c2", None, "c4"],
            "sold_at": pa.array(
                [dt.datetime(1997, 1, 1, 9, 30), dt.datetime(1997, 3, 2), dt.datetime(1997, 3, 3), None],
                pa.timestamp("ms"),
            ),
            "total": pa.array([Decimal("12.50"), Decimal("-3.10"), Decimal("1"), Decimal("2")], pa.decimal128(9, 2)),
            "currency": ["EUR", None, "EUR", "EUR"],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    items = rows(path, kind="transactions", mapping={"customer_id": "client", "event_time": "sold_at",
                                                       "amount": "total"})  # fmt: skip
    first, second = good(items)
    assert first.record["event_time"] == parse_time("1997-01-01T09:30:00Z") and first.record["amount"] == 12.5
    assert first.record["event_id"] == f"{file_id(path)}:1"
    assert second.record["amount"] == -3.1 and second.record["currency"] == "EUR"
    assert [(r.line, r.reason) for r in bad(items)] == [(3, "missing customer_id"), (4, "missing event_time")]
    src = HistoryFile(path, kind="transactions", mapping={"customer_id": "client", "event_time": "sold_at",
                                                          "amount": "total"}, default_currency="USD")  # fmt: skip
    assert src.unit == "row" and [p.record["currency"] for p in good(list(src))] == ["EUR", "USD"]
    with pytest.raises(CvmError, match="no column for transactions field customer_id"):
        HistoryFile(path, kind="transactions")
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(CvmError, match="is not a Parquet file"):
        HistoryFile(not_parquet, kind="transactions")


def test_a_1997_export_with_yyyymmdd_dates(tmp_path: Path) -> None:
    """The layout of the CDNOW purchase history: customer, YYYYMMDD date, quantity, dollars."""
    path = tmp_path / "cdnow.csv"
    path.write_text("cust,date,qty,dollars\n00001,19970101,1,11.77\n00002,19970112,1,12.00\n00003,19980630,5,77.00\n")
    parsed = good(rows(path, kind="transactions", mapping={"customer_id": "cust", "event_time": "date",
                                                             "amount": "dollars"}))  # fmt: skip
    assert [p.record["event_time"] for p in parsed] == [
        parse_time("1997-01-01T00:00:00Z"),
        parse_time("1997-01-12T00:00:00Z"),
        parse_time("1998-06-30T00:00:00Z"),
    ]
    check = RowCheck(Config())
    assert [check(p) for p in parsed] == [None, None, None], "1997 is history"


def test_rows_in_other_currencies_need_a_rate(tmp_path: Path) -> None:
    path = tmp_path / "usd.csv"
    path.write_text(
        "customer_id,event_time,amount,currency\n"
        "c1,1997-01-02,10,USD\n"  # 2: a rate that day
        "c1,1997-01-05,10,USD\n"  # 3: Sunday, Thursday's rate
        "c1,1997-03-01,10,USD\n"  # 4: the last rate is too old
        "c2,1997-01-02,10,JPY\n"  # 5: no JPY rate at all
        "c3,1997-01-02,10,\n"  # 6: no currency: the base currency
    )
    parsed = good(rows(path, kind="transactions", default_currency="EUR"))
    assert [p.record["currency"] for p in parsed] == ["USD", "USD", "USD", "JPY", "EUR"]
    no_rates = RowCheck(Config())
    assert [r.what if r else None for r in map(no_rates, parsed)] == ["no exchange rate"] * 4 + [None]
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate_to_base\n1997-01-02,USD,0.77\n")
    check = RowCheck(Config(fx_rates=str(rates)))
    found = [check(p) for p in parsed]
    assert found[:2] == [None, None] and found[4] is None
    assert found[2] is not None and "more than 7 days old" in found[2].reason
    assert found[3] is not None and "JPY is not in" in found[3].reason
    assert parsed[0].record["amount"] == 10.0 and parsed[0].record["currency"] == "USD", "the row keeps what it says"


# --- event ids --------------------------------------------------------------------------------------------------


def test_event_ids_come_from_the_file_content_and_the_line(tmp_path: Path) -> None:
    line = f"c1,{T},9.99\n"
    path = tmp_path / "dup.csv"
    path.write_text("customer_id,event_time,amount\n" + line + line)
    first = [p.record["event_id"] for p in good(rows(path, kind="transactions"))]
    again = [p.record["event_id"] for p in good(rows(path, kind="transactions"))]
    assert first == again, "replaying the same file gives the same ids"
    assert len(set(first)) == 2, "identical rows stay two events"
    assert first == [f"{file_id(path)}:2", f"{file_id(path)}:3"]
    copy = tmp_path / "copy.csv"
    copy.write_bytes(path.read_bytes())
    assert [p.record["event_id"] for p in good(rows(copy, kind="transactions"))] == first, "content, not name"
    path.write_text("customer_id,event_time,amount\n" + line + line + line)
    assert [p.record["event_id"] for p in good(rows(path, kind="transactions"))][0] != first[0]


# --- bad rows and bad options -----------------------------------------------------------------------------------


def test_bad_rows_are_reported_with_their_line_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "customer_id,event_time,amount\n"
        f"c1,{T},1\n"  # 2: good
        f",{T},1\n"  # 3: no customer
        f"c3,{T},abc\n"  # 4: not a number
        "c4,yesterday,1\n"  # 5: not a time
        f"c5,{T}\n"  # 6: a cell short
        f'"c6\nsplit",{T},2\n'  # 7-8: a quoted newline, good
        f"c9,{T},\n"  # 9: no amount
        f"c10,{T},3\n"  # 10: good
    )
    parsed = rows(path, kind="transactions")
    assert [p.line for p in good(parsed)] == [2, 7, 10]
    problems = {r.line: r.reason for r in bad(parsed)}
    assert sorted(problems) == [3, 4, 5, 6, 9]
    assert problems[3] == "missing customer_id"
    assert "amount" in problems[4] and "not a number" in problems[4]
    assert "event_time" in problems[5] and "not a time" in problems[5]
    assert "cells" in problems[6]
    assert problems[9] == "missing amount"

    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"type": "transactions", "customer_id": "c1", "event_time": 0, "amount": 1}\n{oops\n[1]\n'
                     '{"type": "refunds", "customer_id": "c1"}\n{"customer_id": "c1"}\n')  # fmt: skip
    assert [(r.line, r.reason.split(" (")[0]) for r in bad(rows(jsonl))] == [
        (2, "not JSON"),
        (3, "not a JSON object"),
        (4, "unknown type 'refunds'"),
        (5, "no type: give --type"),
    ]


def test_mistakes_in_the_options_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CvmError, match="does not exist"):
        HistoryFile(tmp_path / "missing.csv")
    path = tmp_path / "tx.csv"
    path.write_text(f"client,event_time,amount\nc1,{T},1\n")
    with pytest.raises(CvmError, match="no 'type' column: give --type"):
        HistoryFile(path)
    with pytest.raises(CvmError, match="no column for transactions field customer_id: add --map customer_id="):
        HistoryFile(path, kind="transactions")
    with pytest.raises(CvmError, match="has no column 'cliente'"):
        HistoryFile(path, kind="transactions", mapping={"customer_id": "cliente"})
    with pytest.raises(CvmError, match="montant is no field of transactions"):
        HistoryFile(path, kind="transactions", mapping={"montant": "amount"})
    odd = tmp_path / "events.dat"
    odd.write_text("")
    with pytest.raises(CvmError, match="give --format"):
        HistoryFile(odd)
    with pytest.raises(CvmError, match="expected FIELD=COLUMN"):
        main(Config(), replay_args(path, map=["customer_id"]))
    assert len(good(rows(path, kind="transactions", mapping={"customer_id": "client"}))) == 1


def test_an_unreachable_broker_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    write_jsonl(generate(5, 10, seed=1, end_ms=ANCHOR_MS), str(path))
    with pytest.raises(BrokerUnavailable):
        main(Config(kafka_bootstrap="127.0.0.1:9"), replay_args(path))


# --- the real broker --------------------------------------------------------------------------------------------


def murmur2(data: bytes) -> int:
    """The Java client's murmur2 (Kafka's default partitioner for keyed records)."""
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length - length % 4
    rest = length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


@pytest.mark.integration
def test_replay_publishes_through_the_live_topics(
    cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "history.jsonl"
    events = list(generate(40, 30, seed=6, end_ms=ANCHOR_MS))
    write_jsonl(events, str(path))
    lines = path.read_text().splitlines()
    lines.insert(2, '{"type": "transactions", "customer_id": "c1", "event_time": "not a time", "amount": 1}')
    lines.insert(5, '{"type": "contacts", "customer_id": "c1", "event_time": "2025-01-01", "channel": "pigeon",'
                    ' "reason": "information"}')  # fmt: skip
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(CvmError, match=r"2 bad lines in history.jsonl, more than --max-bad 0: nothing published"):
        main(cfg, replay_args(path))
    err = capsys.readouterr().err
    assert "line 3: bad time" in err
    assert "line 6: unknown contact channel 'pigeon'" in err
    assert f"2 bad lines of {len(events) + 2:,} in history.jsonl: 1 bad time, 1 unknown contact channel" in err
    assert not consume_all(cfg, 1, timeout=2), "nothing is published when there are too many bad rows"

    assert main(cfg, replay_args(path, max_bad=2)) == 0
    err = capsys.readouterr().err
    assert f"published {len(events):,}" in err and "skipped 2 bad lines" in err

    messages = consume_all(cfg, len(events))
    assert len(messages) == len(events)
    codec = Codec()
    partitions: dict[str, set[int]] = defaultdict(set)
    ids = set()
    for message in messages:
        kind, record = codec.decode(message.value())
        assert message.key() == record["customer_id"].encode()
        assert message.topic() == cfg.topic(kind)
        partitions[record["customer_id"]].add(message.partition())
        ids.add(record["event_id"])
    assert ids == {rec["event_id"] for _, rec in events}
    for customer, seen in partitions.items():
        assert seen == {(murmur2(customer.encode()) & 0x7FFFFFFF) % cfg.partitions}, customer
    assert len({p for seen in partitions.values() for p in seen}) > 1


@pytest.mark.integration
def test_one_bad_row_in_a_thousand_fails_the_command_unless_allowed(
    cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvm.cli import main as cli

    for name, value in cfg.to_env().items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "sales.csv"
    lines = ["customer_id,event_time,amount"] + [f"c{i % 37},1997-{1 + i % 12:02d}-15,{i % 90}.5" for i in range(1000)]
    lines[612] = "c5,1997-02-30,3.5"  # line 613 of the file (the header is line 1): no such day
    path.write_text("\n".join(lines) + "\n")

    assert cli(["replay", str(path), "--type", "transactions"]) == 1
    err = capsys.readouterr().err
    assert "line 613: event_time: '1997-02-30' is not a time" in err
    assert "1 bad line of 1,000 in sales.csv: 1 event_time: not a time" in err
    assert err.strip().splitlines()[-1].startswith("cvm replay: 1 bad line in sales.csv, more than --max-bad 0")
    assert not consume_all(cfg, 1, timeout=2)

    assert cli(["replay", str(path), "--type", "transactions", "--max-bad", "1"]) == 0
    err = capsys.readouterr().err
    assert "published 999 (transactions 999), skipped 1 bad line" in err
    assert len(consume_all(cfg, 999)) == 999

    empty = tmp_path / "empty.csv"
    empty.write_text("customer_id,event_time,amount\n")
    assert cli(["replay", str(empty), "--type", "transactions"]) == 1
    assert "nothing published: empty.csv holds no event" in capsys.readouterr().err
    assert cli(["replay", str(path), "--type", "transactions", "--max-bad", "5000", "--map", "amount=customer_id"]) == 1
    assert "nothing published: sales.csv holds no event (1,000 lines, all bad)" in capsys.readouterr().err
