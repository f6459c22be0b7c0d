"""CustomerState: exact totals, idempotence, order independence within the allowed lateness, compactness."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.state import RECENT_IDS, CustomerState

DAY = 86_400_000
T0 = 1_700_000_000_000
COSTS = {"phone": 6.0, "email": 2.5}


def tx(i: int, t: int, amount: float, margin: float | None = None) -> tuple[str, dict]:
    return "transactions", {"event_id": f"e{i}", "event_time": t, "amount": amount, "gross_margin": margin}


def contact(i: int, t: int, channel: str = "phone", cost: float | None = None) -> tuple[str, dict]:
    return "contacts", {"event_id": f"e{i}", "event_time": t, "channel": channel, "cost": cost}


def fold(events, lateness_ms=3 * DAY, offsets=None) -> CustomerState:
    s = CustomerState()
    for n, (kind, rec) in enumerate(events):
        s.apply(kind, rec, -1 if offsets is None else offsets[n], 0.3, COSTS, lateness_ms)
    return s


def test_money_is_exact_in_cents() -> None:
    s = fold([tx(i, T0 + i, 0.1) for i in range(10)] + [tx(99, T0 + 99, -0.3)])
    assert s.revenue_cents == 70
    assert s.scores("c")["revenue"] == 0.7


def test_margin_and_cost_defaults() -> None:
    s = fold([tx(1, T0, 100.0), tx(2, T0 + 1, 50.0, margin=20.0), contact(3, T0 + 2), contact(4, T0 + 3, cost=1.0)])
    assert s.margin_cents == 3000 + 2000
    assert s.cost_cents == 600 + 100
    assert s.scores("c")["profitability"] == 43.0


def test_redelivered_offsets_change_nothing() -> None:
    events = [tx(i, T0 + i * 1000, 5.0) for i in range(5)]
    s = fold(events, offsets=[10, 11, 12, 13, 14])
    before = s.to_bytes()
    for kind, rec in events:
        assert s.apply(kind, rec, 12, 0.3, COSTS, 3 * DAY) == "redelivered"
    assert s.to_bytes() == before


def test_late_events_are_not_applied() -> None:
    s = fold([tx(1, T0 + 10 * DAY, 5.0)])
    assert s.apply(*tx(2, T0, 7.0), -1, 0.3, COSTS, 3 * DAY) == "late"
    assert s.revenue_cents == 500


def test_duplicates_beyond_the_id_memory_are_still_never_counted_twice() -> None:
    # Many events inside the lateness window: more than the id memory holds.
    events = [tx(i, T0 + i * 60_000, 1.0) for i in range(RECENT_IDS * 3)]
    s = fold(events)
    total = s.revenue_cents
    for kind, rec in events:
        assert s.apply(kind, rec, -1, 0.3, COSTS, 3 * DAY) in ("duplicate", "late")
    assert s.revenue_cents == total


def test_a_dense_burst_beyond_the_id_memory_is_still_exact_in_order() -> None:
    events = [tx(i, T0 + i, 1.0) for i in range(RECENT_IDS * 4)]
    assert fold(events).revenue_cents == RECENT_IDS * 4 * 100


def test_state_is_compact() -> None:
    s = fold([tx(i, T0 + i * 60_000, 1.0) for i in range(200)])
    assert len(s.to_bytes()) <= 512


events_st = st.lists(
    st.tuples(
        st.sampled_from(["transactions", "contacts", "payments"]),
        st.integers(0, 2 * DAY),  # spread within the lateness
        st.integers(-5000, 50000),  # cents
    ),
    min_size=1,
    max_size=RECENT_IDS,  # within the id memory, order cannot matter (beyond it, see the next tests)
)


def _records(spec):
    out = []
    for i, (kind, dt, cents) in enumerate(spec):
        rec = {"event_id": f"e{i}", "event_time": T0 + dt, "amount": cents / 100, "gross_margin": None}
        rec.update({"channel": "email", "cost": None})
        out.append((kind, rec))
    return out


@settings(max_examples=200, deadline=None)
@given(events_st, st.randoms(use_true_random=False))
def test_order_within_lateness_is_irrelevant(spec, rnd: random.Random) -> None:
    events = _records(spec)
    shuffled = events[:]
    rnd.shuffle(shuffled)
    a, b = fold(events), fold(shuffled)
    assert a.scores("c") == b.scores("c")


@settings(max_examples=200, deadline=None)
@given(events_st, st.randoms(use_true_random=False))
def test_duplicates_are_ignored(spec, rnd: random.Random) -> None:
    events = _records(spec)
    with_dups = events + [rnd.choice(events) for _ in range(len(events))]
    rnd.shuffle(with_dups)
    assert fold(events).scores("c") == fold(with_dups).scores("c")


def test_a_long_silence_does_not_break_the_id_memory() -> None:
    s = fold([tx(i, T0 + i, 1.0) for i in range(5)] + [tx(9, T0 + 400 * DAY, 1.0)])
    assert CustomerState.from_bytes(s.to_bytes()) == s
    assert len(s.recent) == 1


def test_lateness_is_measured_within_a_topic() -> None:
    """Topics are consumed at different paces: contacts far ahead must not make older purchases late."""
    s = fold([contact(1, T0 + 80 * DAY), tx(2, T0, 5.0), tx(3, T0 + DAY, 5.0)])
    assert s.revenue_cents == 1000 and s.n_contacts == 1
    assert s.apply(*tx(4, T0 - 5 * DAY, 1.0), -1, 0.3, COSTS, 3 * DAY) == "late"


def test_a_burst_of_one_kind_does_not_make_another_kind_late() -> None:
    """Contacts consumed far ahead fill the id memory; purchases behind them must still apply."""
    contacts = [contact(100 + i, T0 + 80 * DAY + i) for i in range(RECENT_IDS * 2)]
    s = fold(contacts + [tx(1, T0, 5.0), tx(2, T0 + DAY, 5.0)])
    assert s.revenue_cents == 1000 and s.n_contacts == RECENT_IDS * 2
