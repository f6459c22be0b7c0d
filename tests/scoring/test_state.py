"""CustomerState: exact totals, idempotence, order independence within the allowed lateness, compactness."""

from __future__ import annotations

from scoring.features import compute
from scoring.state import RECENT_IDS, CustomerState, FoldRules

DAY = 86_400_000
T0 = 1_700_000_000_000
COSTS = {"phone": 6.0, "email": 2.5}
RULES = FoldRules(margin_rate=0.3, contact_costs=COSTS, lateness_ms=3 * DAY)


def tx(i: int, t: int, amount: float, margin: float | None = None) -> tuple[str, dict]:
    return "transactions", {"event_id": f"e{i}", "event_time": t, "amount": amount, "gross_margin": margin}


def contact(i: int, t: int, channel: str = "phone", cost: float | None = None) -> tuple[str, dict]:
    return "contacts", {"event_id": f"e{i}", "event_time": t, "channel": channel, "reason": "sales", "cost": cost}


def fold(events, offsets=None) -> CustomerState:
    s = CustomerState()
    for n, (kind, rec) in enumerate(events):
        s.apply(kind, rec, -1 if offsets is None else offsets[n], RULES)
    return s


def scores(s: CustomerState) -> dict:
    return compute(s, s.last_time)


def test_money_is_exact_in_cents() -> None:
    s = fold([tx(i, T0 + i, 0.1) for i in range(10)] + [tx(99, T0 + 99, -0.3)])
    assert s.revenue_cents == 70
    assert scores(s)["revenue"] == 0.7


def test_margin_and_cost_defaults() -> None:
    s = fold([tx(1, T0, 100.0), tx(2, T0 + 1, 50.0, margin=20.0), contact(3, T0 + 2), contact(4, T0 + 3, cost=1.0)])
    assert s.margin_cents == 3000 + 2000
    assert s.cost_cents == 600 + 100
    assert scores(s)["profitability"] == 43.0


def test_redelivered_offsets_change_nothing() -> None:
    events = [tx(i, T0 + i * 1000, 5.0) for i in range(5)]
    s = fold(events, offsets=[10, 11, 12, 13, 14])
    before = s.to_bytes()
    for kind, rec in events:
        assert s.apply(kind, rec, 12, RULES) == "redelivered"
    assert s.to_bytes() == before


def test_late_events_are_not_applied() -> None:
    s = fold([tx(1, T0 + 10 * DAY, 5.0)])
    assert s.apply(*tx(2, T0, 7.0), -1, RULES) == "late"
    assert s.revenue_cents == 500


def test_duplicates_beyond_the_id_memory_are_still_never_counted_twice() -> None:
    # Many events inside the lateness window: more than the id memory holds.
    events = [tx(i, T0 + i * 60_000, 1.0) for i in range(RECENT_IDS * 3)]
    s = fold(events)
    total = s.revenue_cents
    for kind, rec in events:
        assert s.apply(kind, rec, -1, RULES) in ("duplicate", "late")
    assert s.revenue_cents == total


def test_a_dense_burst_beyond_the_id_memory_is_still_exact_in_order() -> None:
    events = [tx(i, T0 + i, 1.0) for i in range(RECENT_IDS * 4)]
    assert fold(events).revenue_cents == RECENT_IDS * 4 * 100


def test_state_is_compact() -> None:
    s = fold([tx(i, T0 + i * 60_000, 1.0) for i in range(200)])
    assert len(s.to_bytes()) <= 512


def test_values_too_large_for_the_narrow_layout_round_trip_in_the_wide_one() -> None:
    s = fold([tx(i, T0 + i * 60_000, 1.0) for i in range(5)], offsets=list(range(5)))
    narrow = s.to_bytes()
    for change in ({"n_transactions": 70_000}, {"past_due_hours": 0xFFFF + 1}, {"offsets": [2**31, -1, 7]}):
        wide = CustomerState.from_bytes(narrow)
        for name, value in change.items():
            setattr(wide, name, value)
        data = wide.to_bytes()
        assert len(data) == len(narrow) + 52 and data[0] == narrow[0] - 1, change
        assert CustomerState.from_bytes(data) == wide
    assert CustomerState.from_bytes(narrow) == s


def test_a_long_silence_does_not_break_the_id_memory() -> None:
    s = fold([tx(i, T0 + i, 1.0) for i in range(5)] + [tx(9, T0 + 400 * DAY, 1.0)])
    assert CustomerState.from_bytes(s.to_bytes()) == s
    assert len(s.recent) == 1


def test_lateness_is_measured_within_a_topic() -> None:
    """Topics are consumed at different paces: contacts far ahead must not make older purchases late."""
    s = fold([contact(1, T0 + 80 * DAY), tx(2, T0, 5.0), tx(3, T0 + DAY, 5.0)])
    assert s.revenue_cents == 1000 and s.n_contacts == 1
    assert s.apply(*tx(4, T0 - 5 * DAY, 1.0), -1, RULES) == "late"


def test_a_burst_of_one_kind_does_not_make_another_kind_late() -> None:
    """Contacts consumed far ahead fill the id memory; purchases behind them must still apply."""
    contacts = [contact(100 + i, T0 + 80 * DAY + i) for i in range(RECENT_IDS * 2)]
    s = fold(contacts + [tx(1, T0, 5.0), tx(2, T0 + DAY, 5.0)])
    assert s.revenue_cents == 1000 and s.n_contacts == RECENT_IDS * 2


def test_the_state_of_cvm_0_1_still_reads_its_new_counters_from_nothing() -> None:
    """Formats 5 and 6 had 11 decayed counters: a state stored by them reads, the 8 new counters at 0."""
    import struct

    from scoring import state as st

    s = fold([tx(1, T0, 10.0), contact(2, T0 + 1)], offsets=[3, 4])
    new = s.to_bytes()
    head = st._HEAD_NARROW if new[0] == 8 else st._HEAD
    fields = list(head.unpack_from(new, 1))
    at = len(fields) - 1 - len(st.DECAYED)  # the counters sit just before the count of remembered ids
    old_fields = fields[: at + 11] + fields[-1:]
    old_head = st._HEAD_V6 if new[0] == 8 else st._HEAD_V5
    old = bytes([new[0] - 2]) + old_head.pack(*old_fields) + new[1 + head.size :]
    back = CustomerState.from_bytes(old)
    assert back.decayed[:11] == s.decayed[:11] and back.decayed[11:] == [0.0] * (len(st.DECAYED) - 11)
    assert (back.revenue_cents, back.n_contacts, back.recent) == (s.revenue_cents, s.n_contacts, s.recent)
    assert CustomerState.from_bytes(back.to_bytes()) == back and struct.calcsize("<B") == 1
