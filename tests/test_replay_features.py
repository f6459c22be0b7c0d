"""Issue 3's acceptance path: a simulator history replayed through the running system (real Tansu, Faust worker,
sink, chDB) gives, in ``cvm.customers FINAL``, features equal to those computed independently from the file — and
replaying the file again changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from cvm.codec import Codec
from cvm.config import EVENT_TOPICS, Config
from cvm.events import parse_time
from cvm.kafka import make_producer
from tests.conftest import spawn, stop
from tests.test_e2e import sql, wait_http

pytestmark = pytest.mark.integration
DAY = 86_400_000
SENTINEL = "~sentinel"
REAL = f"WHERE customer_id NOT LIKE '{SENTINEL}%'"  # the file's customers, not the sentinels


def expected_from_file(path: Path) -> dict[str, dict]:
    """Per customer, the figures the issue names, computed from the distinct events of the file."""
    seen: set[str] = set()
    out: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    days: dict[str, set[int]] = defaultdict(set)
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        kind = rec["type"]
        if rec["event_id"] in seen:
            continue
        seen.add(rec["event_id"])
        c = out[rec["customer_id"]]
        if kind == "transactions":
            cents = round(rec["amount"] * 100)
            c["n_transactions"] += 1
            c["revenue_cents"] += cents
            if cents > 0:
                days[rec["customer_id"]].add(parse_time(rec["event_time"]) // DAY)
        elif kind == "contacts":
            c["n_contacts"] += 1
            c["n_complaints"] += rec["reason"] == "complaint"
        else:
            c["n_payments"] += 1
    for cid, d in days.items():
        out[cid]["frequency"] = len(d)
    return out


def publish_sentinels(cfg: Config, producer, codec: Codec, n: int) -> int:
    """One event per topic-partition: once all are scored, everything published before them has been."""
    count = 0
    for topic in EVENT_TOPICS:
        for p in range(cfg.partitions):
            cid = f"{SENTINEL}-{topic}-{p}-{n}"
            rec = {"event_id": cid, "customer_id": cid, "event_time": 1_767_225_600_000}
            if topic == "transactions":
                rec["amount"] = 0.0
            elif topic == "contacts":
                rec.update(channel="email", reason="information")
            else:
                rec.update(invoice_id="x", amount_due=0.0, due_date=rec["event_time"], status="paid")
            producer.produce(cfg.topic(topic), key=cid.encode(), value=codec.encode(topic, rec), partition=p)
            count += 1
    producer.flush(10)
    return count


def wait_sentinels(cfg: Config, n: int, expected: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    db = cfg.clickhouse_database
    while time.monotonic() < deadline:
        rows = sql(cfg, f"SELECT count() AS n FROM {db}.customers FINAL WHERE customer_id LIKE '{SENTINEL}-%-{n}'")
        if int(rows[0]["n"]) == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"the worker did not score all sentinels of round {n}")


def replay(cfg: Config, path: Path, log: Path) -> None:
    env = {**cfg.to_env()}
    proc = subprocess.run(
        [sys.executable, "-m", "cvm.cli", "replay", str(path)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-2000:]


def check_clv_fit(cfg: Config, history: Path) -> None:
    """Issue 4: `cvm clv fit --as-of T --json` on the replayed events gives the fit of summaries computed directly
    from the file (Python, no ClickHouse: scoring.clv.occasion_facts), within 0.5%."""
    from scoring import bgnbd, clv

    rows = [json.loads(line) for line in history.read_text().splitlines()]
    tx = {r["event_id"]: r for r in rows if r["type"] == "transactions"}
    as_of = max(parse_time(r["event_time"]) for r in tx.values()) - 10 * DAY
    per_customer: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in tx.values():
        per_customer[r["customer_id"]].append((parse_time(r["event_time"]), r["amount"]))
    facts = [f for f in (clv.occasion_facts(v, as_of_ms=as_of) for v in per_customer.values()) if f is not None]
    x, t_x, age, _ = clv.summaries(
        [f.first_period for f in facts],
        [f.last_period for f in facts],
        [f.n_occasions for f in facts],
        [f.repeat_value_sum for f in facts],
        as_of // DAY,
    )
    reference = bgnbd.fit_bgnbd(x, t_x, age)
    out = subprocess.run(
        [sys.executable, "-m", "cvm.cli", "clv", "fit", "--as-of", str(as_of), "--json"],
        env={**os.environ, **cfg.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    fit = json.loads(out.stdout)
    assert fit["customers"] == len(facts) and fit["bgnbd"]["time_unit"] == "week"
    assert fit["bgnbd"]["log_likelihood"] == pytest.approx(reference.log_likelihood, rel=1e-6)
    for name, value in reference.params.to_dict().items():
        assert fit["bgnbd"][name] == pytest.approx(value, rel=0.005), name


def test_a_replayed_history_gives_the_features_of_the_file_and_replaying_again_changes_nothing(
    cfg: Config, tmp_path: Path
) -> None:
    history = tmp_path / "history.jsonl"
    gen = subprocess.run(
        [sys.executable, "-m", "cvm.cli", "simulate", "--customers", "300", "--days", "90", "--seed", "7"]
        + ["--out", str(history)],
        env={**os.environ, **cfg.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    expected = expected_from_file(history)
    db = cfg.clickhouse_database
    columns = "customer_id, n_transactions, toInt64(round(revenue * 100)) AS revenue_cents, n_contacts, "
    columns += "n_complaints, n_payments, frequency"

    sink = spawn(cfg, "sink", log=tmp_path / "sink.log")
    worker = spawn(cfg, "worker", "--id", "w1", log=tmp_path / "worker.log")
    try:
        wait_http(cfg)
        codec, producer = Codec(), make_producer(cfg)
        first: list[dict] = []
        for n in (1, 2):  # the second round replays the same file again
            replay(cfg, history, tmp_path / f"replay{n}.log")
            wait_sentinels(cfg, n, publish_sentinels(cfg, producer, codec, n))
            rows = sql(
                cfg,
                f"SELECT {columns} FROM {db}.customers FINAL {REAL} ORDER BY customer_id",
            )
            got = {r["customer_id"]: {k: int(v) for k, v in r.items() if k != "customer_id"} for r in rows}
            assert set(got) == set(expected)
            for cid, figures in expected.items():
                assert {k: got[cid][k] for k in figures} == dict(figures), cid
            total = sql(
                cfg,
                f"SELECT sum(n_transactions) AS tx, round(sum(revenue), 2) AS revenue FROM {db}.customers FINAL "
                f"WHERE customer_id NOT LIKE '{SENTINEL}%'",
            )
            file_tx = sum(c["n_transactions"] for c in expected.values())
            file_revenue = sum(c["revenue_cents"] for c in expected.values()) / 100
            assert int(total[0]["tx"]) == file_tx and float(total[0]["revenue"]) == pytest.approx(
                file_revenue, abs=0.001
            )
            if n == 1:
                first = rows
            else:
                assert rows == first  # the second replay changed nothing
        check_clv_fit(cfg, history)
        tiers = sql(
            cfg,
            f"SELECT value_tier, count() AS n FROM {db}.customers FINAL {REAL} GROUP BY value_tier",
        )
        assert {r["value_tier"] for r in tiers} == {"A", "B", "C"}
    finally:
        stop(worker)
        assert stop(sink) == 0, (tmp_path / "sink.log").read_text()[-2000:]
