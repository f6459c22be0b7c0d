"""Features: each one against a brute-force reference computed from the list of events, and the stream properties
(order within the lateness irrelevant, duplicates ignored, batching and replay irrelevant)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scoring.features import compute, exposure_days, loyalty_score, next_rescore_ms, spend_trend
from scoring.state import CHANNELS, DAY_MS, DECAYED, TAU_MS, CustomerState, FoldRules

T0 = 1_767_225_600_000  # 2026-01-01
LATENESS = 3 * DAY_MS
RULES = FoldRules(margin_rate=0.3, contact_costs={"phone": 6.0, "email": 2.5}, lateness_ms=LATENESS)
REASONS = ("information", "complaint", "cancellation_request", "sales")
STATUSES = ("paid", "late", "failed", "chargeback")


def make(i: int, kind: str, t: int, x: int) -> tuple[str, dict]:
    """An event of ``kind`` at time ``t``; ``x`` (an arbitrary int) picks its amount, channel, reason, status."""
    rec: dict = {"event_id": f"e{i}", "event_time": t}
    if kind == "transactions":
        rec.update(amount=(x % 30000 - 3000) / 100, gross_margin=None if x % 3 else (x % 700) / 100)
    elif kind == "contacts":
        rec.update(channel=CHANNELS[x % 5], reason=REASONS[x % 4], resolved=x % 7 != 0, cost=None if x % 2 else 1.25)
    else:
        due = t - (x % 20 - 10) * DAY_MS
        status = STATUSES[x % 4]
        paid = None if status in ("failed", "chargeback") else t
        rec.update(invoice_id=f"i{i}", amount_due=50.0, due_date=due, paid_date=paid, status=status)
    return kind, rec


def fold(events, rules: FoldRules = RULES) -> tuple[CustomerState, list[str]]:
    s = CustomerState()
    outcomes = [s.apply(kind, rec, -1, rules) for kind, rec in events]
    return s, outcomes


def reference(events, now: int) -> dict:
    """The features computed the slow, obvious way from the distinct applied events."""
    seen, applied = set(), []
    for kind, rec in events:
        if rec["event_id"] not in seen:
            seen.add(rec["event_id"])
            applied.append((kind, rec))
    txs = [r for k, r in applied if k == "transactions"]
    contacts = [r for k, r in applied if k == "contacts"]
    pays = [r for k, r in applied if k == "payments"]
    purchases = [r for r in txs if round(r["amount"] * 100) > 0]
    days = sorted({r["event_time"] // DAY_MS for r in purchases})
    gaps = [b - a for a, b in zip(days, days[1:], strict=False)]
    if len(gaps) >= 2:
        mean = sum(gaps) / len(gaps)
        cv = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean
    else:
        cv = 0.0
    months = {datetime.fromtimestamp(d * 86400, UTC).strftime("%Y-%m") for d in days}
    contact_days = [r["event_time"] // DAY_MS for r in contacts]
    fresh_days = {d for d in contact_days if not any(d - 7 <= e < d for e in contact_days)}

    def decayed(rows, value) -> list[float]:
        return [sum(value(r) * math.exp(-(now - r["event_time"]) / tau) for r in rows) for tau in TAU_MS]

    spend = decayed([r for r in txs if round(r["amount"] * 100)], lambda r: r["amount"])
    count = decayed(purchases, lambda r: 1.0)
    contact_n = decayed(contacts, lambda r: 1.0)
    complaints = [r for r in contacts if r["reason"] == "complaint"]
    first = min(r["event_time"] for _, r in applied)
    late = [r for r in pays if r["status"] not in ("failed", "chargeback") and r["paid_date"] > r["due_date"]]
    late += [r for r in pays if r["status"] == "late" and r["paid_date"] <= r["due_date"]]
    return {
        "revenue": sum(round(r["amount"] * 100) for r in txs) / 100,
        "cost_to_serve": sum(
            round((r["cost"] if r["cost"] is not None else RULES.contact_costs.get(r["channel"], 0)) * 100)
            for r in contacts
        )
        / 100,  # fmt: skip
        "n_purchases": len(purchases),
        "n_refunds": sum(1 for r in txs if round(r["amount"] * 100) < 0),
        "frequency": len(days),
        "regularity_cv": cv,
        "active_months": len(months),
        "n_repeat_contacts": len(contacts) - len(fresh_days),
        "n_complaints": len(complaints),
        "n_unresolved": sum(1 for r in contacts if not r["resolved"]),
        "n_late_payments": len(late),
        "n_failed_payments": sum(1 for r in pays if r["status"] == "failed"),
        "tenure_days": (now - first) / DAY_MS,
        "recency_days": (now - max(r["event_time"] for r in purchases)) / DAY_MS
        if purchases
        else (now - first) / DAY_MS,
        **{f"contacts_{c}": sum(1 for r in contacts if r["channel"] == c) for c in CHANNELS},
        **{n: v for n, v in zip(DECAYED[0:3], spend[0:3], strict=True)},
        **{n: v for n, v in zip(DECAYED[3:6], count[3:6], strict=True)},
        **{n: v for n, v in zip(DECAYED[6:9], contact_n[6:9], strict=True)},
        "complaints_30d": sum(math.exp(-(now - r["event_time"]) / (30 * DAY_MS)) for r in complaints),
        **leaving_reference(txs, purchases, contacts, pays, days, first, now),
    }


def _decay(rows, days: float, now: int, value=lambda r: 1.0) -> float:
    return sum(value(r) * math.exp(-(now - r["event_time"]) / (days * DAY_MS)) for r in rows)


def leaving_reference(txs, purchases, contacts, pays, days, first, now) -> dict:
    """The long-run baselines and the signals of leaving, from the event lists (docs/features.md's definitions)."""
    tenure = (now - first) / DAY_MS
    unresolved = [r for r in contacts if not r["resolved"]]
    complaints = [r for r in contacts if r["reason"] == "complaint"]
    refunds = [r for r in txs if round(r["amount"] * 100) < 0]
    late = [r for r in pays if r["status"] == "failed"]
    late += [r for r in pays if r["status"] not in ("failed", "chargeback") and r["paid_date"] > r["due_date"]]
    late += [r for r in pays if r["status"] == "late" and r["paid_date"] <= r["due_date"]]
    out = {
        "purchases_365d": _decay(purchases, 365, now),
        "spend_365d": _decay([r for r in txs if round(r["amount"] * 100)], 365, now, lambda r: r["amount"]),
        "contacts_365d": _decay(contacts, 365, now),
        "complaints_365d": _decay(complaints, 365, now),
        "unresolved_30d": _decay(unresolved, 30, now),
        "unresolved_365d": _decay(unresolved, 365, now),
        "refunds_90d": _decay(refunds, 90, now),
        "late_payments_90d": _decay(late, 90, now),
    }
    e = {tau: max(1.0, tau * (1 - math.exp(-tenure / tau))) for tau in (30, 90, 365)}
    gap = ((days[-1] - days[0] if days else 0) + 30.0) / max(len(days), 1)
    recency = (now - max(r["event_time"] for r in purchases)) / DAY_MS if purchases else tenure

    def vs(recent: float, usual: float) -> float:
        return math.log((recent + 0.5) / (usual / e[365] * e[30] + 0.5))

    spend365 = out["spend_365d"] / e[365]
    spend30 = _decay([r for r in txs if round(r["amount"] * 100)], 30, now, lambda r: r["amount"])
    cancels = [r["event_time"] for r in contacts if r["reason"] == "cancellation_request"]
    since = (now - max(cancels)) / DAY_MS if cancels else math.inf
    out.update(
        typical_gap_days=gap,
        silence_gaps=recency / gap,
        silence_rate=recency * out["purchases_365d"] / e[365],
        purchases_vs_usual=vs(_decay(purchases, 30, now), out["purchases_365d"]),
        spend_vs_usual=min(3.0, max(0.0, spend30 / e[30] / spend365)) if spend365 > 0 else 1.0,
        contacts_vs_usual=vs(_decay(contacts, 30, now), out["contacts_365d"]),
        complaints_vs_usual=vs(_decay(complaints, 30, now), out["complaints_365d"]),
        unresolved_vs_usual=vs(out["unresolved_30d"], out["unresolved_365d"]),
        recent_cancellation=math.exp(-since / 30) if cancels else 0.0,
        days_since_cancellation=min(365.0, since),
    )
    return out


def same(a: dict, b: dict, keys=None) -> None:
    for key in keys or a:
        x, y = a[key], b[key]
        if isinstance(x, float) or isinstance(y, float):
            assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), (key, x, y)
        else:
            assert x == y, (key, x, y)


# --- strategies: histories spread over months, delivered with bounded disorder --------------------------------------

history_st = st.lists(
    st.tuples(
        st.sampled_from(["transactions", "transactions", "contacts", "payments"]),
        st.integers(0, 200 * DAY_MS),
        st.integers(0, 10**6),
    ),
    min_size=1,
    max_size=40,
)


def events_of(spec) -> list[tuple[str, dict]]:
    return sorted((make(i, kind, T0 + t, x) for i, (kind, t, x) in enumerate(spec)), key=lambda e: e[1]["event_time"])


def disorder(events, rnd: random.Random, lateness: int = LATENESS) -> list:
    """Deliver each event up to ``lateness`` after its time: every event stays within the allowed lateness."""
    return sorted(events, key=lambda e: e[1]["event_time"] + rnd.randint(0, lateness))


# --- each feature against the reference ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(history_st)
def test_features_match_the_brute_force_reference(spec) -> None:
    events = events_of(spec)
    s, outcomes = fold(events)
    assume("late" not in outcomes)  # many events at one timestamp, beyond the id memory (scoring.state)
    expected = reference(events, s.last_time)
    same(compute(s, s.last_time), expected, expected.keys())


def test_an_occasion_is_a_day_with_a_purchase_and_refunds_make_none() -> None:
    events = [make(1, "transactions", T0, 5000), make(2, "transactions", T0 + 3600_000, 7000)]
    events.append(("transactions", {"event_id": "r", "event_time": T0 + 2 * DAY_MS, "amount": -20.0}))
    f = compute(fold(events)[0], T0 + 2 * DAY_MS)
    assert (f["frequency"], f["n_purchases"], f["n_refunds"]) == (1, 2, 1)
    assert f["recency_days"] == pytest.approx(2 - 1 / 24)  # from the last purchase, not the refund


def test_a_late_purchase_between_two_occasions_splits_the_gap() -> None:
    tx = [("transactions", {"event_id": f"t{d}", "event_time": T0 + d * DAY_MS, "amount": 10.0}) for d in (0, 4, 2)]
    s, outcomes = fold(tx)
    assert outcomes == ["applied"] * 3
    assert s.n_occasions == 3 and s.gap_sq_sum == 2 * 2 + 2 * 2
    assert compute(s, s.last_time)["regularity"] == 1.0  # perfectly regular: every two days


def test_months_and_repeat_contacts_across_a_month_boundary() -> None:
    jan31, feb1 = T0 + 30 * DAY_MS, T0 + 31 * DAY_MS
    events = [("transactions", {"event_id": "a", "event_time": feb1, "amount": 1.0})]
    events += [("transactions", {"event_id": "b", "event_time": jan31, "amount": 1.0})]  # late, January
    events += [make(3, "contacts", jan31, 0), make(4, "contacts", feb1 + 6 * DAY_MS, 1)]
    f = compute(fold(events)[0], feb1 + 6 * DAY_MS)
    assert f["active_months"] == 2
    assert f["n_repeat_contacts"] == 1  # 7 days after the first: still a repeat


def test_the_decayed_views_are_what_the_window_names_say_for_a_steady_customer() -> None:
    # One purchase a day for a year: a decayed counter with τ = 30 days reads ≈ 30 (a 30-day window's count).
    events = [
        ("transactions", {"event_id": f"t{d}", "event_time": T0 + d * DAY_MS, "amount": 10.0}) for d in range(365)
    ]
    f = compute(fold(events)[0], T0 + 364 * DAY_MS)
    assert f["purchases_30d"] == pytest.approx(30.5, rel=0.02)
    assert f["purchases_7d"] == pytest.approx(7.5, rel=0.02)
    assert f["spend_trend"] == pytest.approx(0.0, abs=0.02)


def test_a_customer_s_own_rhythm_and_baselines() -> None:
    """Every two weeks for a year, then silence: the silence is counted in the customer's own gaps; the purchases
    and spend of the last 30 days against its own long-run rate."""
    events = [("transactions", {"event_id": f"t{d}", "event_time": T0 + d * DAY_MS, "amount": 20.0})
              for d in range(0, 365, 14)]  # fmt: skip
    s = fold(events)[0]
    steady = compute(s, s.last_time + 7 * DAY_MS)  # half-way to its next purchase
    assert steady["typical_gap_days"] == pytest.approx((364 + 30) / 27)
    assert steady["silence_gaps"] == pytest.approx(7 / ((364 + 30) / 27))
    assert abs(steady["purchases_vs_usual"]) < 0.1 and steady["spend_vs_usual"] == pytest.approx(1.0, abs=0.1)
    gone = compute(s, s.last_time + 60 * DAY_MS)
    assert gone["silence_gaps"] == pytest.approx(60 / ((364 + 30) / 27))
    assert gone["purchases_vs_usual"] < -0.8 and gone["spend_vs_usual"] < 0.25
    assert gone["silence_rate"] == pytest.approx(60 * gone["purchases_365d"] / exposure_days(gone["tenure_days"], 365))


def test_a_new_customer_s_rates_are_not_diluted_by_the_counters_warming_up() -> None:
    """exposure_days: a 30-day-old customer buying daily reads as usual, not as 12 times its yearly average."""
    events = [("transactions", {"event_id": f"t{d}", "event_time": T0 + d * DAY_MS, "amount": 5.0}) for d in range(30)]
    f = compute(fold(events)[0], T0 + 29 * DAY_MS)
    assert abs(f["purchases_vs_usual"]) < 0.05 and f["spend_vs_usual"] == pytest.approx(1.0, abs=0.05)


def test_silent_customers_are_rescored_as_their_silence_grows() -> None:
    s = fold([("transactions", {"event_id": "t", "event_time": T0, "amount": 5.0})])[0]
    steps = []
    now = T0
    while now < T0 + 400 * DAY_MS:
        later = next_rescore_ms(s, now)
        steps.append((later - now) / DAY_MS)
        now = later
    assert steps[0] == 30.0 and steps[-1] == 30.0  # one purchase: a typical gap of 30 days
    assert len(steps) < 25  # a year and more of silence: a couple of dozen scorings, not 400
    regular = fold([("transactions", {"event_id": f"t{d}", "event_time": T0 + d * DAY_MS, "amount": 5.0})
                    for d in range(0, 100, 10)])[0]  # fmt: skip
    first = next_rescore_ms(regular, regular.last_time) - regular.last_time
    assert 10 * DAY_MS < first < 13 * DAY_MS  # once in its rhythm: about one typical gap later
    busy = fold([("transactions", {"event_id": f"t{d}", "event_time": T0 + d * DAY_MS, "amount": 5.0})
                 for d in range(0, 60, 2)])[0]  # fmt: skip
    step = next_rescore_ms(busy, busy.last_time) - busy.last_time
    assert DAY_MS <= step < 3 * DAY_MS  # a day at least; about its own gap (~2.9 days)


def test_payment_reliability() -> None:
    events = [make(i, "payments", T0 + i * DAY_MS, x) for i, x in enumerate([0, 1, 2, 3, 4])]  # paid, late, ...
    f = compute(fold(events)[0], T0 + 5 * DAY_MS)
    assert f["n_payments"] == 5 and f["n_failed_payments"] == 1 and f["n_chargebacks"] == 1
    assert f["on_time_rate"] == pytest.approx(2 / 5)


def test_spend_trend_and_loyalty_bounds() -> None:
    assert spend_trend(100.0, 100.0) > 0.4  # a month of spend that the quarter had not seen
    assert 0.0 <= loyalty_score(0.5, None, 100.0, 2.0, 0.0, 0.1) <= 100.0


# --- the stream properties ----------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(history_st, st.randoms(use_true_random=False))
def test_order_within_the_lateness_is_irrelevant(spec, rnd: random.Random) -> None:
    events = events_of(spec)
    a, out_a = fold(events)
    b, out_b = fold(disorder(events, rnd))
    assume("late" not in out_b)  # beyond the id memory, a straggler may be classified late (module docstring)
    assert out_a.count("applied") == out_b.count("applied")
    same(compute(a, a.last_time), compute(b, b.last_time))


@settings(max_examples=150, deadline=None)
@given(history_st, st.randoms(use_true_random=False))
def test_duplicates_are_ignored(spec, rnd: random.Random) -> None:
    events = events_of(spec)
    with_dups = events + [rnd.choice(events) for _ in range(len(events))]
    with_dups.sort(key=lambda e: e[1]["event_time"])
    a, b = fold(events)[0], fold(with_dups)[0]
    assert a.to_bytes() == b.to_bytes()


@settings(max_examples=100, deadline=None)
@given(history_st, st.lists(st.integers(1, 10), min_size=1, max_size=10))
def test_replay_equals_live_whatever_the_batches(spec, cuts) -> None:
    """Live: one event at a time through the table's bytes; replay: other batch boundaries. Same bytes."""
    events = events_of(spec)
    whole = fold(events)[0].to_bytes()
    data, i, n = None, 0, 0
    while i < len(events):
        step = cuts[n % len(cuts)]
        s = CustomerState.from_bytes(data) if data else CustomerState()
        for kind, rec in events[i : i + step]:
            s.apply(kind, rec, -1, RULES)
        data, i, n = s.to_bytes(), i + step, n + 1
    assert data == whole


def test_many_events_at_one_timestamp_are_never_counted_twice() -> None:
    events = [("transactions", {"event_id": f"t{i}", "event_time": T0, "amount": 1.0}) for i in range(30)]
    s, outcomes = fold(events)
    assert outcomes.count("applied") >= 8  # the id memory's size at least; the rest may be classified late
    again = [s.apply(kind, rec, -1, RULES) for kind, rec in events]
    assert "applied" not in again
    assert s.revenue_cents == 100 * outcomes.count("applied")


def test_state_stays_compact_for_a_busy_customer() -> None:
    rnd = random.Random(3)
    events = [make(i, rnd.choice(["transactions", "contacts", "payments"]), T0 + i * 3600_000, rnd.randint(0, 10**6))
              for i in range(2000)]  # fmt: skip
    s = fold(events)[0]
    # 16 remembered event ids (8 transactions, 4 contacts, 4 payments: 12 bytes each) fill up here; the rest is fixed
    assert len(s.to_bytes()) <= 620
