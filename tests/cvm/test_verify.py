"""The verifier's expectation and comparison (pure), its agreement with the worker's fold, and the command's errors.

The end-to-end use — a real pipeline, then ``cvm verify`` — is in tests/test_chaos.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvm.config import Config
from cvm.events import to_json
from cvm.replay_file import HistoryFile
from cvm.verify import Actual, Expectation, Published, Totals, compare, expect_file
from scoring.state import RECENT_IDS, CustomerState, FoldRules

DAY = 86_400_000
T0 = 1_750_000_000_000  # 2025-06-15


def tx(cid: str, eid: str, t: int, amount: float, margin: float | None = None) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "event_time": t, "amount": amount, "gross_margin": margin}


def contact(cid: str, eid: str, t: int, channel: str = "phone", cost: float | None = None) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "event_time": t, "channel": channel, "reason": "billing", "cost": cost}


def pay(cid: str, eid: str, t: int) -> dict[str, Any]:
    return {"event_id": eid, "customer_id": cid, "event_time": t, "invoice_id": "i", "amount_due": 1.0}


def expectation(lateness_days: float = 3) -> Expectation:
    return Expectation(margin_rate=0.3, contact_costs={"phone": 6.0, "chat": 3.0}, lateness_ms=int(lateness_days * DAY))


def actual_of(e: Expectation, **overrides: Any) -> Actual:
    """What ClickHouse would hold if the pipeline did exactly what ``e`` expects."""
    customers = {
        cid: {
            "customer_id": cid,
            "n_transactions": t.n_transactions,
            "revenue": t.revenue_cents / 100,
            "gross_margin": t.margin_cents / 100,
            "cost_to_serve": t.cost_cents / 100,
            "n_contacts": t.n_contacts,
            "n_payments": t.n_payments,
        }
        for cid, t in e.customers.items()
    }
    base = Actual(
        customers=customers,
        raw={kind: len(ids) for kind, ids in e.raw.items()},
        dead_letters=0,
        dead_letter_classes={},
        late=e.late_ids(),
        late_records=len(e.late),
        score_rows=0,
        score_versions=0,
        conflicting_versions=0,
    )
    for key, value in overrides.items():
        setattr(base, key, value)
    return base


# --- the expectation ---------------------------------------------------------------------------------------------


def test_money_is_summed_in_cents_with_the_default_margin_and_contact_costs() -> None:
    e = expectation()
    e.add("transactions", tx("c1", "t1", T0, 212.55))  # no margin: 30% of 212.55 = 63.765 → 63.76 (float rounding)
    e.add("transactions", tx("c1", "t2", T0 + 1, -10.01, margin=-3.0))  # a refund
    e.add("contacts", contact("c1", "k1", T0))  # no cost: the phone default
    e.add("contacts", contact("c1", "k2", T0, channel="store"))  # no cost, no default: 0
    e.add("contacts", contact("c1", "k3", T0, cost=1.234))
    e.add("payments", pay("c1", "p1", T0))
    assert e.customers["c1"] == Totals(
        n_transactions=2, n_contacts=3, n_payments=1, revenue_cents=20254, margin_cents=6076, cost_cents=723
    )


def test_lateness_is_per_topic_per_customer_and_late_events_do_not_move_stream_time() -> None:
    e = expectation(lateness_days=3)
    assert e.add("transactions", tx("c1", "t1", T0 + 10 * DAY, 1.0)) == "counted"
    assert e.add("transactions", tx("c1", "t2", T0 + 8 * DAY, 1.0)) == "counted"  # 2 days behind: within
    assert e.add("transactions", tx("c1", "t3", T0 + 6 * DAY, 1.0)) == "late"  # 4 days behind
    assert e.add("contacts", contact("c1", "k1", T0)) == "counted"  # 10 days behind, but on another topic
    assert e.add("transactions", tx("c2", "t1", T0, 1.0)) == "counted"  # another customer
    assert e.add("transactions", tx("c1", "t4", T0 + 7 * DAY - 1, 1.0)) == "late"  # the stream time is still day 10
    assert [(x.event_id, x.behind_ms) for x in e.late] == [("t3", 4 * DAY), ("t4", 3 * DAY + 1)]


def test_duplicates_count_once_per_kind_and_customer_and_late_wins_over_duplicate() -> None:
    e = expectation(lateness_days=3)
    assert e.add("transactions", tx("c1", "t1", T0, 5.0)) == "counted"
    assert e.add("transactions", tx("c1", "t1", T0, 5.0)) == "duplicate"
    assert e.add("contacts", contact("c1", "t1", T0)) == "counted"  # same id, another kind: another event
    assert e.add("transactions", tx("c2", "t1", T0, 5.0)) == "counted"  # same id, another customer
    e.add("transactions", tx("c1", "t9", T0 + 10 * DAY, 1.0))
    assert e.add("transactions", tx("c1", "t1", T0, 5.0)) == "late"  # the worker checks lateness first
    assert e.customers["c1"].n_transactions == 2 and e.customers["c1"].revenue_cents == 600
    assert e.raw["transactions"] == {("c1", "t1"), ("c1", "t9"), ("c2", "t1")}
    assert e.duplicates == {("transactions", "c1", "t1")}
    assert e.outcomes == {"counted": 4, "duplicate": 1, "late": 1}


def test_a_file_is_read_like_replay_reads_it_and_rows_replay_skips_count_nowhere(tmp_path: Path) -> None:
    rows = [
        to_json("transactions", tx("c1", "t1", T0, 10.0)),
        to_json("transactions", tx("", "t2", T0, 10.0)),  # missing customer_id: replay skips it
        to_json("transactions", tx("c1", "t3", T0 + 365 * 3 * DAY + 10**12, 10.0)),  # far future: skipped
        {"type": "transactions", "customer_id": "c1", "event_time": "not a time", "amount": 1},
        to_json("contacts", contact("c2", "k1", T0)),
    ]
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    cfg = Config.load(env={"CVM_DATA_DIR": str(tmp_path)})
    e, published = expect_file(cfg, HistoryFile(path), replays=2)
    assert published.rows == 12 and dict(published.published) == {"transactions": 2, "contacts": 2}
    assert dict(published.skipped) == {"transactions": 6, "unknown": 2}
    assert e.customers["c1"].n_transactions == 1 and e.customers["c2"].n_contacts == 1
    assert e.outcomes == {"counted": 2, "duplicate": 2}


def test_money_in_other_currencies_is_expected_converted_and_history_goes_back_to_1970(tmp_path: Path) -> None:
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate_to_base\n1997-01-02,USD,0.5\n")
    path = tmp_path / "f.csv"
    path.write_text(
        "customer_id,event_time,amount,currency,gross_margin\n"
        "c1,19970102,10.01,USD,4\n"  # 5.005 EUR: 5.00 or 5.01 as the worker's conversion rounds, margin 2
        "c1,1997-01-03,3,,\n"  # no currency: the base currency
        "c2,1997-01-02,7,JPY,\n"  # no rate: replay refuses it
        "c3,1969-12-31,7,EUR,\n"  # before 1970
        "c4,1970-01-26,2,EUR,\n"  # history too
        "c5,1970-01-01T00:00:00.001Z,2,EUR,\n"  # 1 in seconds or in milliseconds: a time in seconds, refused
    )
    cfg = Config.load(env={"CVM_DATA_DIR": str(tmp_path), "CVM_FX_RATES": str(rates)})
    source = HistoryFile(path, kind="transactions", default_currency=cfg.base_currency)
    e, published = expect_file(cfg, source)
    assert dict(published.published) == {"transactions": 3} and dict(published.skipped) == {"transactions": 3}
    from scoring.currency import Rates

    day = 852_163_200_000  # 1997-01-02
    five = Rates.from_config(cfg).convert("transactions", {"event_time": day, "amount": 10.01, "currency": "USD"})
    assert e.customers["c1"].revenue_cents == round(five["amount"] * 100) + 300
    assert e.customers["c1"].margin_cents == 200 + 90
    assert set(e.customers) == {"c1", "c4"}


# --- the comparison ----------------------------------------------------------------------------------------------


def _sample() -> Expectation:
    e = expectation()
    e.add("transactions", tx("c1", "t1", T0 + 10 * DAY, 10.0))
    e.add("transactions", tx("c1", "t0", T0, 3.0))  # late
    e.add("transactions", tx("c1", "t1", T0 + 10 * DAY, 10.0))  # duplicate
    e.add("contacts", contact("c2", "k1", T0))
    return e


def test_an_exact_match_is_ok() -> None:
    e = _sample()
    report = compare(e, expect_published(e), actual_of(e))
    assert report.ok and report.n_mismatches == 0, report.text()
    assert report.text().endswith("exact match") and report.late == (1, 1)
    assert report.to_dict()["ok"] is True


def expect_published(e: Expectation) -> Any:
    from cvm.verify import Published

    return Published(rows=sum(e.outcomes.values()))


def test_every_kind_of_difference_is_a_mismatch_named_on_one_line() -> None:
    e = _sample()
    got = actual_of(e)
    got.customers["c1"]["revenue"] = 10.01
    got.customers["c2"]["n_contacts"] = 2
    got.customers["c3"] = dict(got.customers["c2"], customer_id="c3")
    got.raw["contacts"] = 2
    got.dead_letters = 1
    report = compare(e, expect_published(e), got, dead_letters=0)
    assert not report.ok and report.customers_wrong == 3
    assert report.mismatches == [
        "customer c1: revenue 10.01 (expected 10.00)",
        "customer c2: n_contacts 2 (expected 1)",
        "customer c3: in customers FINAL but no event of it should count",
        "raw table contacts: 2 rows with FINAL (expected 1)",
        "dead_letters: 1 records (expected 0)",
    ]
    assert report.text().endswith("NOT an exact match")
    del got.customers["c1"]
    assert "customer c1: missing from customers FINAL" in compare(e, expect_published(e), got).mismatches


def test_late_events_missing_or_counted_ones_reported_late_are_mismatches_but_late_duplicates_are_not() -> None:
    e = _sample()
    assert not compare(e, expect_published(e), actual_of(e, late=set(), late_records=0)).ok
    # The worker's bounded id memory may report an upstream duplicate as late instead of dropping it silently.
    dup_late = actual_of(e, late=e.late_ids() | {("transactions", "c1", "t1")}, late_records=2)
    assert compare(e, expect_published(e), dup_late).ok
    # ... but an event the verifier counted must not be reported late (e.g. a straggler behind a burst).
    counted_late = actual_of(e, late=e.late_ids() | {("contacts", "c2", "k1")}, late_records=2)
    report = compare(e, expect_published(e), counted_late)
    assert report.mismatches == [
        "late event contacts/c2/k1: reported late, but within the allowed lateness (it was counted)"
    ]


# --- agreement with the worker's fold ------------------------------------------------------------------------------

_KINDS = st.sampled_from(["transactions", "contacts", "payments"])


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """A few customers' events in publish order: each kind in time order with some stragglers (some beyond the
    lateness), and upstream duplicates; per customer, at most as many events of a kind as the worker's id memory
    holds (scoring.state.RECENT_IDS)."""
    events: list[tuple[str, dict[str, Any]]] = []
    for c in range(draw(st.integers(1, 4))):
        cid = f"c{c}"
        room = dict(zip(("transactions", "contacts", "payments"), RECENT_IDS, strict=True))
        for i in range(draw(st.integers(1, 12))):
            kind = draw(_KINDS)
            if not room[kind]:
                continue
            room[kind] -= 1
            t = T0 + draw(st.integers(0, 20 * DAY))
            eid = f"{cid}-{i}" if not events or draw(st.integers(0, 4)) else events[-1][1]["event_id"]
            if kind == "transactions":
                rec = tx(cid, eid, t, draw(st.integers(-5000, 50000)) / 100, draw(st.sampled_from([None, 1.25])))
            elif kind == "contacts":
                rec = contact(cid, eid, t, draw(st.sampled_from(["phone", "chat"])), draw(st.sampled_from([None, 2.5])))
            else:
                rec = pay(cid, eid, t)
            events.append((kind, rec))
    return events


@settings(max_examples=200, deadline=None)
@given(streams())
def test_the_verifier_agrees_with_the_workers_fold(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Two independent implementations of the same rules: the verifier's and scoring.state's. A difference is a
    bug in one of them (or a documented limit of the worker's bounded memory, kept out of reach here)."""
    e = expectation(lateness_days=3)
    rules = FoldRules(margin_rate=0.3, contact_costs={"phone": 6.0, "chat": 3.0}, lateness_ms=3 * DAY)
    states: dict[str, CustomerState] = {}
    offsets: dict[str, int] = {}
    for kind, rec in events:
        e.add(kind, rec)
        offsets[kind] = offsets.get(kind, -1) + 1
        states.setdefault(rec["customer_id"], CustomerState()).apply(kind, rec, offsets[kind], rules)
    for cid, totals in e.customers.items():
        s = states[cid]
        got = Totals(s.n_transactions, s.n_contacts, s.n_payments, s.revenue_cents, s.margin_cents, s.cost_cents)
        assert got == totals, cid
    assert {cid for cid, s in states.items() if s.version} == set(e.customers)


# --- the command ---------------------------------------------------------------------------------------------------


def run_cvm(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CVM_DATA_DIR=str(tmp_path / "data"), CVM_HTTP_PORT="1")
    return subprocess.run([sys.executable, "-m", "cvm.cli", *argv], env=env, capture_output=True, text=True)


def test_the_command_says_what_is_wrong_on_one_line(tmp_path: Path) -> None:
    done = run_cvm(tmp_path, "verify", str(tmp_path / "nope.jsonl"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(to_json("transactions", tx("c1", "t1", T0, 1.0))) + "\n")
    done = run_cvm(tmp_path, "verify", str(path))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "no embedded ClickHouse data" in done.stderr


def test_the_wait_outlasts_a_worker_taking_over_and_holding_a_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed worker's partitions wait for the session timeout, then the new owner holds the tick's records until
    its sources are idle: ClickHouse may not change for that long while the pipeline still works (the chaos
    scenario's verify gave up 1 s before the idle scoring came). The verifier waits that long, then gives up."""
    import cvm.verify as verifier

    e = expectation()
    e.add("transactions", tx("c1", "t1", DAY, 10.0))
    clock = [0.0]
    monkeypatch.setattr(verifier.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(verifier.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(verifier, "read_actual", lambda cfg: actual_of(Expectation(0.3, {}, 0)))
    cfg = Config.load(env={"CVM_IDLE_PARTITION_S": "10"})
    report = verifier.verify(cfg, e, Published(), wait=600)
    assert not report.ok
    assert clock[0] >= verifier.SESSION_TIMEOUT_S + 2 * cfg.idle_partition_s + 20
    assert clock[0] < 60, "an idle pipeline is not waited for until --wait"
