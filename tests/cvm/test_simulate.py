"""The simulator: deterministic, true to the event contracts, and realistic enough to drive the features."""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from cvm.codec import Codec
from cvm.config import EVENT_TOPICS, Config
from cvm.events import from_json, iso, parse_time, to_json, validate
from cvm.exceptions import CvmError
from cvm.kafka import make_consumer
from cvm.simulate import main
from cvm.simulation import ANCHOR_MS, DAY_MS, Simulation, generate
from cvm.simulation_model import SEGMENTS

Event = tuple[str, dict[str, Any]]


def args(**overrides: Any) -> argparse.Namespace:
    base: dict[str, Any] = dict(
        customers=100, days=60, rate=None, seed=1, out=None, truth=None, end=None, duration=None, published=0
    )
    return argparse.Namespace(**(base | overrides))


@pytest.fixture(scope="module")
def year() -> tuple[Simulation, list[Event]]:
    """A year of history for 1500 customers (about 45k events, a second to generate)."""
    sim = Simulation(1500, 365, seed=3, end_ms=ANCHOR_MS)
    return sim, list(sim.history())


def profits(events: list[Event], cfg: Config) -> dict[str, float]:
    """Gross margin minus cost to serve, as the scoring counts them (defaults for missing margins and costs)."""
    out: dict[str, float] = defaultdict(float)
    for kind, rec in events:
        if kind == "transactions":
            margin = rec["gross_margin"]
            out[rec["customer_id"]] += rec["amount"] * cfg.default_margin_rate if margin is None else margin
        elif kind == "contacts":
            cost = rec["cost"]
            out[rec["customer_id"]] -= cfg.contact_costs[rec["channel"]] if cost is None else cost
    return out


# --- determinism ------------------------------------------------------------------------------------------------


def test_same_seed_same_file_other_seed_other_file(tmp_path: Path) -> None:
    paths = [tmp_path / f"{name}.jsonl" for name in ("a", "b", "c")]
    assert main(Config(), args(out=str(paths[0]))) == 0
    assert main(Config(), args(out=str(paths[1]))) == 0
    assert main(Config(), args(out=str(paths[2]), seed=2)) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    assert paths[0].stat().st_size > 10_000


def test_the_end_anchors_the_history(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    main(Config(), args(out=str(path), end="2025-06-01T00:00:00Z", days=10))
    times = [from_json(json.loads(line))[1]["event_time"] for line in path.read_text().splitlines()]
    end = 1_748_736_000_000  # 2025-06-01
    assert times and all(end - 10 * DAY_MS <= t <= end for t in times)


def test_a_customers_life_does_not_depend_on_the_others() -> None:
    small = [rec for _, rec in generate(20, 90, seed=5, end_ms=ANCHOR_MS) if rec["customer_id"] == "c000007"]
    large = [rec for _, rec in generate(200, 90, seed=5, end_ms=ANCHOR_MS) if rec["customer_id"] == "c000007"]
    assert small == large


def test_the_file_is_what_to_json_writes(tmp_path: Path) -> None:
    """The writer's fast path produces the text of cvm.events.to_json, line for line."""
    path = tmp_path / "f.jsonl"
    main(Config(), args(out=str(path), customers=50, seed=9))
    expected = [
        json.dumps(to_json(kind, rec), separators=(",", ":"), ensure_ascii=False)
        for kind, rec in generate(50, 60, seed=9, end_ms=ANCHOR_MS)
    ]
    assert path.read_text().splitlines() == expected


# --- the contracts ----------------------------------------------------------------------------------------------


def test_every_event_fits_its_schema_and_passes_validation() -> None:
    codec = Codec()
    ids = set()
    last = n = 0
    for kind, rec in generate(300, 120, seed=4, end_ms=ANCHOR_MS):
        n += 1
        validate(kind, rec, now_ms=ANCHOR_MS)
        kind_back, back = codec.decode(codec.encode(kind, rec))
        assert (kind_back, back) == (kind, rec)
        assert rec["event_time"] >= last, "history is in event-time order"
        last = rec["event_time"]
        ids.add(rec["event_id"])
        assert rec["customer_id"].startswith("c") and len(rec["customer_id"]) == 7
    assert len(ids) == n > 3000, "event ids are unique"


def test_field_values_cover_the_contracts(year: tuple[Simulation, list[Event]]) -> None:
    _, events = year
    tx = [rec for kind, rec in events if kind == "transactions"]
    contacts = [rec for kind, rec in events if kind == "contacts"]
    payments = [rec for kind, rec in events if kind == "payments"]
    assert {c["channel"] for c in contacts} == {"phone", "email", "chat", "web", "store"}
    assert {c["reason"] for c in contacts} == {
        "information", "complaint", "cancellation_request", "sales", "technical", "billing",
    }  # fmt: skip
    assert {p["status"] for p in payments} == {"paid", "late", "failed", "chargeback"}
    assert 0.1 < sum(t["gross_margin"] is None for t in tx) / len(tx) < 0.3
    assert 0.03 < sum(t["amount"] < 0 for t in tx) / len(tx) < 0.15, "refunds"
    assert 0.1 < sum(c["cost"] is not None for c in contacts) / len(contacts) < 0.4
    assert 0.1 < sum(not c["resolved"] for c in contacts) / len(contacts) < 0.4
    for p in payments:
        assert (p["paid_date"] is not None) == (p["status"] in ("paid", "late"))
        if p["status"] == "late":
            assert p["paid_date"] > p["due_date"]
    mix = Counter(kind for kind, _ in events)
    assert 0.4 < mix["transactions"] / len(events) < 0.7
    assert 0.1 < mix["payments"] / len(events) < 0.3


# --- realism ----------------------------------------------------------------------------------------------------


def test_churn_share_and_new_customers(year: tuple[Simulation, list[Event]]) -> None:
    sim, _ = year
    truth = sim.truth()
    assert len(truth) == 1500
    churned = [t for t in truth if t["churned"]]
    assert 0.18 < len(churned) / len(truth) < 0.38
    assert {t["cause"] for t in churned} == {"dissatisfaction", "price", "payment_trouble", "silent"}
    assert all(t["churn_time"] and t["churn_time"] >= t["acquired_at"] for t in churned)
    assert all(t["churn_time"] is None and t["cause"] is None for t in truth if not t["churned"])
    start = "2025-01-01"
    new = sum(t["acquired_at"] >= start for t in truth)
    assert 0.25 < new / len(truth) < 0.55, "customers are acquired during the history"
    assert {t["segment"] for t in truth} == {s.name for s in SEGMENTS}

    short = Simulation(1500, 120, seed=3, end_ms=ANCHOR_MS)
    for _ in short.history():
        pass
    assert sum(t["churned"] for t in short.truth()) < len(churned) * 0.7


def test_churned_customers_go_silent(year: tuple[Simulation, list[Event]]) -> None:
    sim, events = year
    churn = {c.customer_id: c.churn_at for c in sim.customers if c.churn_at <= sim.end_ms}
    after: Counter[str] = Counter()
    for kind, rec in events:
        t = churn.get(rec["customer_id"])
        if t is not None and rec["event_time"] > t:
            after[kind] += 1
            assert rec["event_time"] <= t + 60 * DAY_MS, "a churned customer's tail is short"
            if kind == "transactions":
                assert rec["amount"] < 0, "no purchase after churning, only refunds under way"
    assert after["transactions"] + after["payments"] > 0, "outstanding refunds and invoices still settle"


def test_profit_is_concentrated_and_some_customers_cost_more_than_they_bring(
    year: tuple[Simulation, list[Event]],
) -> None:
    sim, events = year
    cfg = Config()
    by_customer = profits(events, cfg)
    values = sorted((by_customer.get(c.customer_id, 0.0) for c in sim.customers), reverse=True)
    total = sum(values)
    top = sum(values[: len(values) // 5])
    assert total > 0
    assert top / total > 0.8
    assert sum(v < 0 for v in values) / len(values) > 0.1
    segment = {c.customer_id: c.segment for c in sim.customers}
    mean = {
        s.name: sum(v for c, v in by_customer.items() if segment[c] == s.name)
        / sum(x == s.name for x in segment.values())
        for s in SEGMENTS
    }
    assert mean["premium"] > mean["regular"] > mean["bargain"] > mean["costly"]
    assert mean["costly"] < 0


def test_churners_complain_more_before_leaving(year: tuple[Simulation, list[Event]]) -> None:
    sim, events = year
    complaints: dict[str, list[int]] = defaultdict(list)
    cancellations: dict[str, list[int]] = defaultdict(list)
    for kind, rec in events:
        if kind == "contacts" and rec["reason"] == "complaint":
            complaints[rec["customer_id"]].append(rec["event_time"])
        if kind == "contacts" and rec["reason"] == "cancellation_request":
            cancellations[rec["customer_id"]].append(rec["event_time"])
    rng = random.Random(0)
    window = 60 * DAY_MS

    def count(times: list[int], at: int) -> int:
        return sum(at - window <= t < at for t in times)

    churners, stayers, cancel_c, cancel_s = [], [], [], []
    for c in sim.customers:
        if c.churn_at <= sim.end_ms:
            at = c.churn_at
            churners.append(count(complaints[c.customer_id], at))
            cancel_c.append(count(cancellations[c.customer_id], at) > 0)
        else:
            at = sim.end_ms - int(rng.uniform(0, 120) * DAY_MS)
            stayers.append(count(complaints[c.customer_id], at))
            cancel_s.append(count(cancellations[c.customer_id], at) > 0)
    assert sum(churners) / len(churners) > 2.5 * sum(stayers) / len(stayers)
    assert sum(cancel_c) / len(cancel_c) > 5 * sum(cancel_s) / len(cancel_s)
    assert any(stayers), "some customers who stay complain too"
    assert sum(x == 0 for x in churners) > 0.15 * len(churners), "some churners show nothing"


def test_live_continues_the_history_in_order() -> None:
    sim = Simulation(300, 60, seed=2, end_ms=ANCHOR_MS)
    last_seen: dict[str, int] = {}
    for _, rec in sim.history():
        last_seen[rec["customer_id"]] = rec["event_time"]
    live = sim.live()
    times = []
    for _ in range(2000):
        t, kind, rec = next(live)
        assert t == rec["event_time"] > ANCHOR_MS
        assert t >= last_seen.get(rec["customer_id"], 0)
        last_seen[rec["customer_id"]] = t
        times.append(t)
    assert times == sorted(times)
    assert len(sim.customers) > 300, "new customers arrive in live mode"
    assert len(sim.truth()) == len(sim.customers)


def test_truth_file(tmp_path: Path) -> None:
    out, truth = tmp_path / "e.jsonl", tmp_path / "t.jsonl"
    main(Config(), args(out=str(out), truth=str(truth), customers=200, days=200))
    lines = [json.loads(line) for line in truth.read_text().splitlines()]
    assert [line["customer_id"] for line in lines] == [f"c{i:06d}" for i in range(200)]
    assert set(lines[0]) == {"customer_id", "segment", "acquired_at", "churned", "churn_time", "cause"}
    customers_with_events = {json.loads(line)["customer_id"] for line in out.read_text().splitlines()}
    assert len(customers_with_events) > 180


# --- publishing -------------------------------------------------------------------------------------------------


def consume_all(cfg: Config, expected: int, timeout: float = 30.0) -> list[Any]:
    """Every message of the event topics, read from the start (assigned partitions: no group join to wait for)."""
    consumer = make_consumer(cfg, group="test-reader")
    consumer.assign(
        [TopicPartition(cfg.topic(kind), p, OFFSET_BEGINNING) for kind in EVENT_TOPICS for p in range(cfg.partitions)]
    )
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(5000, 0.5) if m.error() is None]
    finally:
        consumer.close()
    return messages


@pytest.mark.integration
def test_publishes_the_history_then_live_events(
    cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = tmp_path / "truth.jsonl"
    started_ms = int(time.time() * 1000)
    # 8 s: with seed 1 the first live event is due 4.6 s after the history's end (2.5 s never saw one)
    assert main(cfg, args(customers=300, days=None, duration=8, truth=str(truth))) == 0
    summary = capsys.readouterr().err
    match = re.search(r"cvm simulate: ([\d,]+) events", summary)
    assert match, summary
    published = int(match.group(1).replace(",", ""))
    codec = Codec()
    events = [codec.decode(m.value()) for m in consume_all(cfg, published)]
    assert len(events) == published
    assert set(kind for kind, _ in events) == set(EVENT_TOPICS)
    live = [rec for _, rec in events if rec["event_time"] > started_ms]
    assert len(events) - len(live) > 3000, "the history (180 days by default)"
    assert live, "live events follow the history, stamped with the wall clock"
    assert all(rec["event_time"] <= int(time.time() * 1000) for rec in live)
    assert len(truth.read_text().splitlines()) >= 300


def _published(capsys: pytest.CaptureFixture[str]) -> int:
    summary = capsys.readouterr().err
    match = re.search(r"cvm simulate: ([\d,]+) events \(", summary)
    assert match, summary
    return int(match.group(1).replace(",", ""))


@pytest.mark.integration
def test_a_second_start_goes_on_from_every_event_the_first_published(
    cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second `cvm up` gave the restored customers a second, overlapping history (their transactions doubled);
    then, drawing the history without publishing it, it published the first run's live events again, restamped (the
    customers that had arrived live arrived a second time). With ``--published N`` the simulator draws the first N
    events it would publish and publishes what follows: no event of a customer's life is published twice."""
    # what cvm up passes both runs (the anchor it keeps in the data directory); the second start comes days later
    end = iso(int(time.time()) * 1000 - 3 * DAY_MS)
    assert main(cfg, args(customers=300, days=30, duration=6, end=end)) == 0
    first = _published(capsys)
    started_ms = int(time.time() * 1000)
    assert main(cfg, args(customers=300, days=30, duration=6, end=end, published=first)) == 0
    second = _published(capsys)
    assert second > 0, "live events follow"
    events = [Codec().decode(m.value()) for m in consume_all(cfg, first + second)]
    assert len(events) == first + second
    later = [rec for _, rec in events if rec["event_time"] >= started_ms]
    assert len(later) >= second, "the second run published live events only, stamped with the wall clock"
    # every event once: the same lives, drawn from the same end, carry the same ids
    ids = Counter(rec["event_id"] for _, rec in events)
    assert [key for key, n in ids.items() if n > 1] == []
    with pytest.raises(CvmError, match="--published"):
        main(cfg, args(out=str(tmp_path / "x.jsonl"), published=5))


@pytest.mark.integration
def test_a_history_ending_in_1998_goes_on_from_its_end(
    cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    end = parse_time("1998-06-30T00:00:00Z")
    assert main(cfg, args(customers=300, days=None, duration=8, end="1998-06-30T00:00:00Z")) == 0
    published = int(re.search(r"cvm simulate: ([\d,]+) events", capsys.readouterr().err).group(1).replace(",", ""))
    events = [Codec().decode(m.value()) for m in consume_all(cfg, published)]
    assert len(events) == published
    for kind, rec in events:
        validate(kind, rec)
    history = [rec for _, rec in events if rec["event_time"] <= end]
    live = [rec for _, rec in events if rec["event_time"] > end]
    assert min(rec["event_time"] for rec in history) >= end - 180 * DAY_MS
    assert live, "live events follow the history"
    assert all(end < rec["event_time"] <= end + 60_000 for rec in live), "continuing from 1998, not from today"


def test_a_history_the_workers_would_refuse_is_refused(tmp_path: Path) -> None:
    out = str(tmp_path / "h.jsonl")
    with pytest.raises(CvmError, match="would start on 1969-12-02.*not after CVM_MIN_EVENT_TIME"):
        main(Config(), args(out=out, end="1970-03-01T00:00:00Z", days=89))
    with pytest.raises(CvmError, match="not after CVM_MIN_EVENT_TIME \\(1990-01-01"):
        main(Config(min_event_time="1990-01-01"), args(out=out, end="1990-03-01T00:00:00Z", days=90))
    with pytest.raises(CvmError, match="more than 7 days ahead"):
        main(Config(), args(out=out, end="2999-01-01T00:00:00Z", days=10))
    assert main(Config(), args(out=out, end="1970-06-01T00:00:00Z", days=120)) == 0


def test_the_simulated_money_is_in_the_base_currency(tmp_path: Path) -> None:
    eur, usd = tmp_path / "eur.jsonl", tmp_path / "usd.jsonl"
    assert main(Config(), args(out=str(eur))) == 0
    assert main(Config(base_currency="USD"), args(out=str(usd))) == 0
    a = [json.loads(line) for line in eur.read_text().splitlines()]
    b = [json.loads(line) for line in usd.read_text().splitlines()]
    assert {r["currency"] for r in b if r["type"] == "transactions"} == {"USD"}
    assert [dict(r, currency=None) for r in a] == [dict(r, currency=None) for r in b], "the same events otherwise"
