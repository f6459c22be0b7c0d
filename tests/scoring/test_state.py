"""CustomerState: exact totals, idempotence, order independence within the allowed lateness, compactness."""

from __future__ import annotations

import math
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.features import compute
from scoring.state import RECENT_IDS, REKEYED, CustomerState, FoldRules
from scoring.state_format import COUNTS, DECAYED, MAX_BACK_MS

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
    # 8 remembered transaction ids (96 bytes), a floor and its hash, the 9 decayed counters that transactions feed
    # (72 bytes) are most of it (formats 7 to 10: 530 bytes)
    assert len(s.to_bytes()) <= 300


def test_values_too_large_for_the_narrow_layout_round_trip_in_the_wide_one() -> None:
    s = fold([tx(i, T0 + i * 60_000, 1.0) for i in range(5)], offsets=list(range(5)))
    narrow = s.to_bytes()
    for change in ({"n_transactions": 70_000}, {"past_due_hours": 0xFFFF + 1}, {"offsets": [2**31, -1, 7, -1]}):
        wide = CustomerState.from_bytes(narrow)
        for name, value in change.items():
            setattr(wide, name, value)
        data = wide.to_bytes()
        # the header's last bit says every value is at its wide type: 16-bit counts become 32-bit, 32-bit values 64-bit
        assert data[0] == narrow[0] == 11 and data[10] >> 4 == 1 and narrow[10] >> 4 == 0, change
        assert len(narrow) + 20 < len(data) < len(narrow) + 60, change
        assert CustomerState.from_bytes(data) == wide
    assert CustomerState.from_bytes(narrow) == s


def test_times_far_from_the_stream_time_are_stored_whole() -> None:
    """A time within 32 bits of last_time (~49 days) takes 4 bytes, one further the 8 of its own: each on its own."""
    s = fold([contact(1, T0), tx(2, T0 + 100 * DAY, 5.0)])
    s.as_of = s.last_time + 200 * DAY
    data = s.to_bytes()
    near = fold([contact(1, T0 + 99 * DAY), tx(2, T0 + 100 * DAY, 5.0)])
    near.as_of = near.last_time + DAY
    # the contacts' stream time, the first time and as of: 4 bytes more each
    assert len(data) == len(near.to_bytes()) + 12
    assert exact(CustomerState.from_bytes(data)) == exact(s)


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


# --- the format's exactness and size (issue 17: at most 512 bytes per customer) -------------------------------------


def exact(s: CustomerState) -> tuple:
    """Every stored value of a state, floats as their bits: equal only when the states are equal bit for bit."""

    def bits(v):
        return struct.pack("<d", v) if isinstance(v, float) else v

    out = []
    for name in CustomerState.__slots__:
        v = getattr(s, name)
        out.append((name, type(v).__name__, [bits(x) for x in v] if isinstance(v, list) else bits(v)))
    return tuple(out)


def test_the_usual_customer_takes_few_bytes() -> None:
    """A bench-like customer: a few purchases and a contact over three weeks, scored, with its alert and churn sections
    (26 and 61 bytes on the bench): formats 7 to 10 took 536 bytes for it."""
    s = fold([tx(1, T0, 25.0), contact(2, T0 + 2 * DAY), tx(3, T0 + 9 * DAY, 40.0), tx(4, T0 + 20 * DAY, 12.5)])
    s.as_of, s.tick_version, s.ranked_clv = T0 + 21 * DAY, s.version, 150.25
    s.alert_bytes, s.churn_bytes = bytes(26), bytes(61)
    data = s.to_bytes()
    assert len(data) <= 340, len(data)
    assert exact(CustomerState.from_bytes(data)) == exact(s)


def test_a_busy_customer_with_every_field_fits_512_bytes() -> None:
    """Every kind of event over three weeks, complaints, cancellations, refunds, late and failed payments (all 19
    decayed counters), 9 remembered ids, both sections: formats 7 to 10 took 620 bytes for it, as for the largest
    customer of the bench's load (which has 17 counters and 6 ids: 448 bytes in format 11)."""
    rules = FoldRules(margin_rate=0.3, contact_costs=COSTS, lateness_ms=3 * DAY)
    s = CustomerState()
    n = 0
    for day in range(14):
        t = T0 + day * 3 * DAY // 2 + 3_600_000
        events = [
            ("transactions", {"event_id": f"t{day}", "event_time": t, "amount": -5.0 if day % 7 == 3 else 30.0}),
            ("contacts", {"event_id": f"c{day}", "event_time": t + 1, "channel": ["phone", "chat", "web"][day % 3],
                          "reason": "complaint" if day % 2 else "cancellation_request", "resolved": day % 4 != 1}),
            ("payments", {"event_id": f"p{day}", "event_time": t + 2, "status": ["paid", "failed", "late"][day % 3]}),
        ]  # fmt: skip
        for kind, rec in events:
            assert s.apply(kind, rec, 1000 + n, rules) == "applied"
            n += 1
    s.as_of, s.tick_version, s.ranked_clv = T0 + 22 * DAY, s.version, 4321.5
    s.alert_bytes, s.churn_bytes = bytes(26), bytes(61)
    assert len(s.recent) == 9 and all(s.decayed)
    data = s.to_bytes()
    assert len(data) <= 512, len(data)
    assert exact(CustomerState.from_bytes(data)) == exact(s)


def _old_format_sample(fmt: int) -> CustomerState:
    """The states that tests/scoring/fixtures/state_formats_7_to_10.txt holds in formats 7 to 10 (written by the encoder
    of cvm before format 11): every kind of event, a re-keyed record (7, 8), counts beyond 16 bits (7, 9)."""
    s = CustomerState()
    events = [
        ("transactions", {"event_id": "t1", "event_time": T0, "amount": 12.5, "gross_margin": None}),
        ("contacts", {"event_id": "c1", "event_time": T0 + DAY, "channel": "phone", "reason": "complaint",
                      "resolved": False}),
        ("transactions", {"event_id": "t2", "event_time": T0 + 3 * DAY, "amount": -2.25, "gross_margin": None}),
        ("payments", {"event_id": "p1", "event_time": T0 + 4 * DAY, "status": "paid", "due_date": T0 + 2 * DAY,
                      "paid_date": T0 + 4 * DAY}),
        ("transactions", {"event_id": "t3", "event_time": T0 + 9 * DAY, "amount": 40.0, "gross_margin": 11.0}),
    ]  # fmt: skip
    for n, (kind, rec) in enumerate(events):
        assert s.apply(kind, rec, 100 + n, RULES) == "applied"
    if fmt in (7, 8):
        old = {"event_id": "t0", "event_time": T0 - 30 * DAY, "amount": 5.0}
        assert s.apply("transactions", old, 3, RULES, REKEYED) == "applied"
    if fmt in (7, 9):
        s.n_transactions = 70_000
    s.as_of, s.tick_version, s.ranked_clv = T0 + 10 * DAY, s.version, 123.456
    s.alert_bytes, s.churn_bytes = b"\x02" + bytes(25), bytes(range(61))
    return s


def test_the_formats_7_to_10_of_existing_changelogs_still_decode() -> None:
    lines = (Path(__file__).parent / "fixtures" / "state_formats_7_to_10.txt").read_text().split("\n")
    stored = {int(f): bytes.fromhex(h) for f, h in (line.split() for line in lines if line)}
    assert sorted(stored) == [7, 8, 9, 10]
    for fmt, data in stored.items():
        assert data[0] == fmt
        s = CustomerState.from_bytes(data)
        assert exact(s) == exact(_old_format_sample(fmt)), fmt
        assert (s.rekey_times[0] == T0 - 30 * DAY) == (fmt in (7, 8)) and (s.n_transactions == 70_000) == (
            fmt in (7, 9)
        )
        again = s.to_bytes()
        # these customers have nearly every field: 114 to 134 bytes less (the bench's customers: 255 on average)
        assert again[0] == 11 and len(again) <= len(data) - 114, (fmt, len(again), len(data))
        assert exact(CustomerState.from_bytes(again)) == exact(s)


# Values anywhere in the ranges formats 7 to 10 store (their wide layouts), weighted towards the usual ones (zero,
# -1, small, near the customer's stream time) so that every narrow and wide choice of the format is taken.
_I64 = st.integers(-(2**63), 2**63 - 1)
_U64 = st.integers(0, 2**64 - 1)
_U32 = st.integers(0, 2**32 - 1)
_I32 = st.integers(-(2**31), 2**31 - 1)


def _usually(small: st.SearchStrategy, wide: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just(0), small, wide)


_FLOATS = st.one_of(
    st.just(0.0), st.just(-0.0), st.just(math.nan), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(0, 2**64 - 1).map(lambda b: struct.unpack("<d", b.to_bytes(8, "little"))[0]),  # any bits: NaN payloads
)  # fmt: skip


@st.composite
def states(draw: st.DrawFn) -> CustomerState:
    s = CustomerState()
    last = draw(st.one_of(st.just(0), st.just(T0), _I64))
    s.last_time = last

    def time() -> int:
        return draw(st.one_of(st.just(0), st.just(last), st.integers(-(2**33), 2**33).map(lambda d: last + d)).filter(
            lambda t: -(2**63) <= t < 2**63) | _I64)  # fmt: skip

    s.version = draw(_usually(st.integers(1, 100), _U32))
    s.offsets = [draw(st.one_of(st.just(-1), st.integers(0, 2**31), _I64)) for _ in range(4)]
    s.kind_times = [time() for _ in range(3)]
    if draw(st.booleans()):
        s.rekey_times = [time() for _ in range(3)]
    if draw(st.booleans()):
        s.floors = [time() for _ in range(3)]
        s.floor_hashes = [draw(_usually(st.integers(1, 3), _U64)) for _ in range(3)]
    s.first_time = time()
    for name in ("revenue_cents", "margin_cents", "cost_cents", "purchase_cents", "first_occasion_cents"):
        setattr(s, name, draw(_usually(st.integers(-(10**6), 10**6), _I64)))
    for name in COUNTS:
        setattr(s, name, draw(_usually(st.integers(1, 300), _U32)))
    for name in ("first_occasion", "last_occasion", "prior_occasion", "last_contact_day"):
        setattr(s, name, draw(st.one_of(st.just(-1), st.integers(0, 70_000), _I32)))
    s.occasion_bits, s.contact_bits, s.gap_sq_sum = (draw(_usually(_U32, _U64)) for _ in range(3))
    s.active_months = draw(_usually(st.integers(1, 12), _U32))
    s.last_purchase_time, s.last_cancellation_time, s.as_of = time(), time(), time()
    s.decayed = [draw(_FLOATS) for _ in DECAYED]
    s.tick_version = draw(_usually(st.integers(1, 100), _U32))
    s.ranked_clv = draw(_FLOATS)
    times = [max(a, b) for a, b in zip(s.kind_times, s.rekey_times, strict=True)]
    recent = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, MAX_BACK_MS), _U64), max_size=40))
    s.recent = [(times[k] - back, (h & ~3) | k) for k, back, h in recent]
    s.alert_bytes = draw(st.binary(max_size=255))
    s.churn_bytes = draw(st.one_of(st.binary(max_size=100), st.binary(min_size=300, max_size=70_000)))
    return s


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(states())
def test_every_state_round_trips_exactly(s: CustomerState) -> None:
    data = s.to_bytes()
    assert exact(CustomerState.from_bytes(data)) == exact(s)
    assert data[0] == 11


def test_extreme_states_round_trip_exactly() -> None:
    """The corners, one by one: the empty state, values at the ends of their range (formats 7 to 10 could not write an
    offset below -2**31), a full id memory, special floats, sections at their longest."""
    empty = CustomerState()
    assert exact(CustomerState.from_bytes(empty.to_bytes())) == exact(empty)
    for value in (2**63 - 1, -(2**63), 1, -1, 2**32, -(2**32)):
        s = fold([tx(1, T0, 10.0), contact(2, T0 + DAY)])
        for name in ("first_time", "last_time", "as_of", "last_purchase_time", "revenue_cents", "margin_cents"):
            setattr(s, name, value)
        s.kind_times = [value, 0, value]
        s.offsets = [value, -1, value, -(2**63)]
        s.recent = []
        assert exact(CustomerState.from_bytes(s.to_bytes())) == exact(s), value
    s = fold([tx(1, T0, 10.0)])
    s.recent = [(T0 - i, (i << 2) | 0) for i in range(255)]
    s.decayed = [-0.0, math.inf, -math.inf, 5e-324, *([math.nan] * 14), 1.0]
    s.ranked_clv = -0.0
    s.n_transactions, s.past_due_hours, s.version = 2**32 - 1, 2**32 - 1, 2**32 - 1
    s.alert_bytes, s.churn_bytes = bytes(range(255)), bytes(65_535)
    assert exact(CustomerState.from_bytes(s.to_bytes())) == exact(s)
