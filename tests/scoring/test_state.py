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
    events = [tx(i, T0 + i * 60_000, 1.0) for i in range(RECENT_IDS[0] * 3)]
    s = fold(events)
    total = s.revenue_cents
    for kind, rec in events:
        assert s.apply(kind, rec, -1, RULES) in ("duplicate", "late")
    assert s.revenue_cents == total


def test_a_dense_burst_beyond_the_id_memory_is_still_exact_in_order() -> None:
    events = [tx(i, T0 + i, 1.0) for i in range(RECENT_IDS[0] * 4)]
    assert fold(events).revenue_cents == RECENT_IDS[0] * 4 * 100


def test_state_is_compact() -> None:
    s = fold([tx(i, T0 + i * 60_000, 1.0) for i in range(200)])
    # 19 decayed counters (152 bytes) and 8 remembered transaction ids (96 bytes) are most of it
    assert len(s.to_bytes()) <= 530


def test_values_too_large_for_the_narrow_layout_round_trip_in_the_wide_one() -> None:
    s = fold([tx(i, T0 + i * 60_000, 1.0) for i in range(5)], offsets=list(range(5)))
    narrow = s.to_bytes()
    for change in ({"n_transactions": 70_000}, {"past_due_hours": 0xFFFF + 1}, {"offsets": [2**31, -1, 7, -1]}):
        wide = CustomerState.from_bytes(narrow)
        for name, value in change.items():
            setattr(wide, name, value)
        data = wide.to_bytes()
        assert len(data) == len(narrow) + 56 and data[0] == narrow[0] - 1, change
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
    contacts = [contact(100 + i, T0 + 80 * DAY + i) for i in range(RECENT_IDS[1] * 2)]
    s = fold(contacts + [tx(1, T0, 5.0), tx(2, T0 + DAY, 5.0)])
    assert s.revenue_cents == 1000 and s.n_contacts == RECENT_IDS[1] * 2


def test_any_interleaving_of_the_kinds_gives_the_same_bytes() -> None:
    """Kafka orders a customer's events within a kind (one partition), not across kinds: every interleaving of the
    three kinds' sequences must fold to the same state, bit for bit (floats included), so that replays at any pace
    give identical scores."""
    import random

    rnd = random.Random(7)
    per_kind: dict[str, list[tuple[str, dict]]] = {"transactions": [], "contacts": [], "payments": []}
    for i in range(60):
        t = T0 + rnd.randint(0, 40 * DAY)
        per_kind["transactions"].append(tx(i, t, rnd.choice([5.0, 12.5, -3.0])))
        per_kind["contacts"].append(contact(1000 + i, t + rnd.randint(-DAY, DAY)))
        per_kind["payments"].append(
            ("payments", {"event_id": f"p{i}", "event_time": t, "status": rnd.choice(["paid", "failed", "late"])})
        )
    for seq in per_kind.values():  # in time order per kind, except a few stragglers within the lateness
        seq.sort(key=lambda e: e[1]["event_time"] + rnd.randint(0, DAY))
    results = set()
    for seed in range(5):
        order = random.Random(seed)
        queues = {k: list(v) for k, v in per_kind.items()}
        s = CustomerState()
        offsets = dict.fromkeys(queues, 0)
        while any(queues.values()):
            kind = order.choice([k for k, q in queues.items() if q])
            _, record = queues[kind].pop(0)
            s.apply(kind, record, offsets[kind], RULES)
            offsets[kind] += 1
        results.add(s.to_bytes())
    assert len(results) == 1


def test_a_state_of_cvm_0_1_is_refused_with_what_to_do() -> None:
    """Formats 5 and 6 (cvm 0.1) kept other fields and decayed their counters otherwise: such customers are rebuilt
    from history (cvm rebuild), never misread."""
    import pytest

    data = bytearray(fold([tx(1, T0, 10.0)]).to_bytes())
    data[0] = 6
    with pytest.raises(ValueError, match="cvm rebuild"):
        CustomerState.from_bytes(bytes(data))


def test_records_far_behind_through_the_rekey_topic_still_count_and_the_state_still_packs() -> None:
    """A record re-keyed by the worker reaches the customer through another partition, which may lag its others by
    more than the allowed lateness (and than the 64-day bitmaps of occasions and contact days reach): its money and
    counts are exact, the state stays packable."""
    from scoring.state import REKEYED

    s = CustomerState()
    for i in range(10):  # the direct partition runs 200 days ahead
        s.apply("transactions", tx(i, T0 + (100 + 10 * i) * DAY, 10.0)[1], i, RULES)
        s.apply("contacts", contact(100 + i, T0 + (100 + 10 * i) * DAY)[1], i, RULES)
    for i in range(5):  # the re-keyed copies of older records come now
        assert s.apply("transactions", tx(200 + i, T0 + i * DAY, 5.0)[1], 2 * i, RULES, REKEYED) == "applied"
        assert s.apply("contacts", contact(300 + i, T0 + i * DAY)[1], 2 * i + 1, RULES, REKEYED) == "applied"
    assert s.n_transactions == 15 and s.revenue_cents == 10 * 1000 + 5 * 500 and s.n_contacts == 15
    assert s.first_occasion == T0 // DAY and s.n_occasions == 11  # the oldest is a new first occasion
    assert CustomerState.from_bytes(s.to_bytes()) == s
