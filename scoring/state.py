"""Per-customer state: what a customer's events add up to, updated one event at a time, idempotently.

The state holds only sufficient statistics — sums, counts, a few times, two small bitmaps and decayed counters —
from which :mod:`scoring.features` derives every feature. Each statistic is chosen so that folding the same set
of events in any order (within the allowed lateness) gives the same state:

* money is kept in integer cents, so totals are exact;
* purchase occasions (periods with a purchase, one UTC day by default) are a set: a bitmap of the last 64 periods
  plus the newest period that fell out of it, enough to insert a late occasion between its neighbours and keep the
  sum of squared gaps (purchase regularity) and the active months exact;
* contact days likewise (a 64-day bitmap) for repeat contacts: a contact is a repeat when the customer had already
  contacted the company that day or in the 7 days before;
* the 7/30/90-day views are exponentially decayed sums, each kept as of the stream time of the one event kind that
  feeds it (spend and purchases: transactions; contacts and complaints: contacts; failed payments: payments). Kafka
  orders a customer's events of one kind (one partition), not across kinds: kept per kind, the sums are the same
  floats whatever the interleaving of the kinds, so a replay gives bit-identical values. Within a kind, adding an
  event of time t to a sum kept at time T is the same operation whichever of the two is later, so an out-of-order
  event only changes float rounding (within 1e-9 relative; see the tests).

The state's bytes (``to_bytes``/``from_bytes``, the worker table's values) are :mod:`scoring.state_format`'s,
kept apart from the fold; the stored field lists (:data:`DECAYED`, the counts) live there too. The set arithmetic
of the two bitmaps (purchase occasions, contact days) is :mod:`scoring.occasions`'s, a base class of the state
(:class:`~scoring.occasions.OccasionSets`) whose methods the fold calls as its own.

Idempotence has two layers:

* a Kafka record re-delivered after a crash has an offset at or below the last one applied for its topic, and
  changes nothing;
* an upstream duplicate (same ``event_id``, new offset) is recognised by a bounded memory of recent event-id
  hashes, per event kind (so that one kind's burst never changes how another kind's events are classified).
  Only events inside the allowed lateness need remembering: anything older is late and never applied.
  When a kind's memory is full (more than ``RECENT_IDS[kind]`` of its events inside the lateness window), its
  entry first in (time, hash) order is forgotten and becomes its kind's floor: an event of that kind at or before
  the floor, in the same order, may be a forgotten duplicate and is treated as late, so a duplicate is never
  counted twice, even past the bound. The price, paid only by customers with more than ``RECENT_IDS[kind]``
  events of a kind inside the lateness window: a straggler delivered after newer events, or one of many events
  sharing one timestamp, may be classified late (reported on ``late-events`` and kept in the raw tables, never
  applied).

>>> rules = FoldRules(margin_rate=0.3, contact_costs={}, lateness_ms=0)
>>> s = CustomerState()
>>> tx = {"event_id": "e1", "event_time": 1_000_000, "amount": 10.0, "gross_margin": None}
>>> s.apply("transactions", tx, 5, rules)
'applied'
>>> s.apply("transactions", tx, 5, rules)
'redelivered'
>>> s.apply("transactions", tx, 6, rules)
'duplicate'
>>> s.revenue_cents, s.margin_cents, s.n_transactions, s.version
(1000, 300, 1, 1)
>>> CustomerState.from_bytes(s.to_bytes()) == s
True
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left, insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scoring.occasions import OccasionSets
from scoring.state_format import COUNTS, DECAYED, MAX_BACK_MS, decode, encode

__all__ = [
    "CHANNELS",
    "DAY_MS",
    "DECAYED",
    "DECAYED_KIND",
    "KIND_INDEX",
    "RECENT_IDS",
    "REKEYED",
    "TAU_MS",
    "CustomerState",
    "FoldRules",
    "event_hash",
]

#: Position of each event kind in per-kind arrays (offsets, stream times, floors).
KIND_INDEX = {"transactions": 0, "contacts": 1, "payments": 2}

#: The offsets slot of records that reach the customer through the worker's re-key topic (any kind): a customer's
#: records come from at most four partitions, its three topics' and the re-key topic's, each in offset order.
REKEYED = 3

#: Contact channels counted one by one (the contact schema's channels).
CHANNELS = ("phone", "email", "chat", "web", "store")

#: How many recent event ids of each kind (:data:`KIND_INDEX` order) a customer remembers (module docstring).
RECENT_IDS = (8, 4, 4)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

#: The time constant of each decayed counter (:data:`DECAYED`), from its name.
TAU_MS = tuple(int(name.rsplit("_", 1)[1][:-1]) * DAY_MS for name in DECAYED)
_SPEND = tuple(i for i, name in enumerate(DECAYED) if name.startswith("spend_"))
_PURCHASES = tuple(i for i, name in enumerate(DECAYED) if name.startswith("purchases_"))
_CONTACTS = tuple(i for i, name in enumerate(DECAYED) if name.startswith("contacts_"))
_COMPLAINTS = tuple(i for i, name in enumerate(DECAYED) if name.startswith("complaints_"))
_UNRESOLVED = tuple(i for i, name in enumerate(DECAYED) if name.startswith("unresolved_"))
_REFUNDS = tuple(i for i, name in enumerate(DECAYED) if name.startswith("refunds_"))
_FAILED = (DECAYED.index("failed_payments_90d"),)
_LATE = (DECAYED.index("late_payments_90d"),)
#: The event kind (:data:`KIND_INDEX`) that feeds each decayed counter: its stream time is the counter's time.
DECAYED_KIND = tuple(
    0
    if name.startswith(("spend_", "purchases_", "refunds_"))
    else 1
    if name.startswith(("contacts_", "complaints_", "unresolved_"))
    else 2
    for name in DECAYED
)
#: Per event kind, the (position, time constant) of the decayed counters it feeds.
_DECAYED_OF_KIND = tuple(tuple((i, TAU_MS[i]) for i, kind in enumerate(DECAYED_KIND) if kind == k) for k in range(3))


@dataclass(frozen=True)
class FoldRules:
    """The configuration that folding events depends on.

    Parameters
    ----------
    margin_rate
        Gross margin rate of a transaction that carries no margin.
    contact_costs
        Cost of a contact per channel when the event carries none.
    lateness_ms
        How far behind its topic's stream time (per customer) an event may arrive and still be applied.
    period_days
        Length of a purchase occasion: purchases in the same period count as one occasion (CLV, regularity).
    """

    margin_rate: float = 0.3
    contact_costs: Mapping[str, float] = field(default_factory=dict)
    lateness_ms: int = 3 * DAY_MS
    period_days: int = 1

    @property
    def period_ms(self) -> int:
        return self.period_days * DAY_MS


def event_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (Python's ``hash`` changes between processes).

    >>> event_hash("e1") == event_hash("e1"), event_hash("e1") == event_hash("e2")
    (True, False)
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def _cents(amount: float) -> int:
    return int(round(amount * 100))


class CustomerState(OccasionSets):
    """What one customer's events add up to; :meth:`apply` folds one event in."""

    __slots__ = (
        "version",
        "offsets",
        "kind_times",
        "rekey_times",
        "floors",
        "floor_hashes",
        "first_time",
        "last_time",
        "revenue_cents",
        "margin_cents",
        "cost_cents",
        "purchase_cents",
        "first_occasion_cents",
        *COUNTS,
        "first_occasion",
        "last_occasion",
        "prior_occasion",
        "occasion_bits",
        "gap_sq_sum",
        "active_months",
        "last_purchase_time",
        "last_cancellation_time",
        "last_contact_day",
        "contact_bits",
        "decayed",
        "as_of",
        "tick_version",
        "ranked_clv",
        "recent",
        "alert_bytes",
        "churn_bytes",
    )

    def __init__(self) -> None:
        self.version = 0  # events applied: the version of the customer's scores
        self.offsets = [-1, -1, -1, -1]  # last Kafka offset seen per source: the three kinds' topics, the re-key topic
        # Stream time per kind, of the records from the kind's topic and of those re-keyed by the worker: lateness is
        # measured within one partition's order, and a customer's records of a kind come from those two.
        self.kind_times = [0, 0, 0]
        self.rekey_times = [0, 0, 0]
        # Per kind, the (time, hash) of the last entry the id memory forgot: an event at or before it (in that
        # order) may be a forgotten duplicate and is treated as late; one after it is remembered if ever seen.
        self.floors = [0, 0, 0]
        self.floor_hashes = [0, 0, 0]
        self.first_time = 0  # ms; 0 = no event yet
        self.last_time = 0  # the customer's stream time: latest event time applied
        self.revenue_cents = 0  # net: refunds are negative
        self.margin_cents = 0
        self.cost_cents = 0
        self.purchase_cents = 0  # gross: positive amounts only
        self.first_occasion_cents = 0  # positive amounts on the first purchase occasion
        self.n_transactions = 0
        self.n_purchases = 0  # transactions with a positive amount
        self.n_refunds = 0
        self.n_occasions = 0  # periods with a purchase
        self.n_contacts = 0
        self.n_complaints = 0
        self.n_cancellations = 0
        self.n_unresolved = 0
        self.n_fresh_contact_days = 0  # contact days with no contact in the 7 days before
        self.n_phone = self.n_email = self.n_chat = self.n_web = self.n_store = 0
        self.n_payments = 0
        self.n_on_time = 0
        self.n_late = 0
        self.n_failed = 0
        self.n_chargebacks = 0
        self.past_due_hours = 0  # over late payments, started hours between due and paid dates
        self.first_occasion = -1  # purchase occasion periods since the epoch; -1 = none yet
        self.last_occasion = -1
        self.prior_occasion = -1  # newest occasion older than the bitmap, -1 = none
        self.occasion_bits = 0  # bit i: an occasion at period last_occasion - i
        self.gap_sq_sum = 0  # sum over consecutive occasions of (gap in periods)²
        self.active_months = 0  # calendar months with an occasion
        self.last_purchase_time = 0
        self.last_cancellation_time = 0
        self.last_contact_day = -1
        self.contact_bits = 0  # bit i: a contact on day last_contact_day - i
        self.decayed = [0.0] * len(DECAYED)  # each as of the stream time of its kind (DECAYED_KIND)
        # What the worker scored last (streams/): the stream time of that score (ms; 0: never scored), the version
        # of the last stream-time tick scoring (a version past it: changed since), and the CLV the customer
        # holds in the population's ranking (NaN: none).
        self.as_of = 0
        self.tick_version = 0
        self.ranked_clv = math.nan
        self.recent: list[tuple[int, int]] = []  # (event_time, event_hash), oldest first
        # Opaque sections owned by other scoring modules, kept with the state so they change atomically with it:
        # the alert episodes (scoring.alert_state.AlertState) and the churn snapshots awaiting labels (scoring.churn).
        self.alert_bytes = b""
        self.churn_bytes = b""

    # --- folding events in ---------------------------------------------------------------------------------------

    def apply(
        self, kind: str, record: Mapping[str, Any], offset: int, rules: FoldRules, source: int | None = None
    ) -> str:
        """Fold one event in; return ``applied``, ``redelivered``, ``duplicate`` or ``late``.

        ``offset`` is the record's Kafka offset (``-1`` when it has none, e.g. in tests and replays of files), in the
        partition ``source`` (its kind's topic by default, :data:`REKEYED` for the re-key topic).
        """
        k = KIND_INDEX[kind]
        rekeyed = source == REKEYED
        if offset >= 0:
            slot = REKEYED if rekeyed else k
            offsets = self.offsets
            if offset <= offsets[slot]:
                return "redelivered"
            offsets[slot] = offset
        t = int(record["event_time"])
        # Kafka orders records within a partition only: a customer's topics (and the re-key topic) are consumed at
        # different paces, so an event is late only against the stream time of its own kind and partition.
        times = self.rekey_times if rekeyed else self.kind_times
        latest = times[k]
        if latest and t < latest - rules.lateness_ms:
            return "late"
        h = (event_hash(record["event_id"]) & ~3) | k  # the low bits say the kind, for pruning and floors
        floor = self.floors[k]
        if t < floor or t == floor and h <= self.floor_hashes[k]:  # (t, h) <= the floor, in (time, hash) order
            return "late"
        for _, seen in self.recent:
            if seen == h:
                return "duplicate"
        now = self.stream_time(k)
        if t > latest:
            times[k] = t
            if t > now:
                if now:
                    self._decay_kind(k, t - now)
                now = t
        self._fold(kind, record, t, now - t, rules)
        self._remember(t, h, rules.lateness_ms)
        return "applied"

    def stream_time(self, k: int) -> int:
        """The stream time of kind ``k``: its latest event time, from either of its partitions."""
        a, b = self.kind_times[k], self.rekey_times[k]
        return a if a >= b else b  # max(a, b), without the call

    def _remember(self, t: int, h: int, lateness_ms: int) -> None:
        # An entry older than its kind's lateness horizon can never match again: an event that old is late from
        # every partition that has brought the kind. The horizon of a kind: the earlier of its two stream times when
        # both are set, else the one set, minus the lateness (0: neither set).
        kind_times, rekey_times = self.kind_times, self.rekey_times
        k = h & 3
        recent: list[tuple[int, int]] = []  # the same tuples, kept (in order)
        mine, oldest = 1, t  # the kind's entries, the new one included, and the earliest of their times
        for e in self.recent:
            j = e[1] & 3
            a, b = kind_times[j], rekey_times[j]
            if b and (not a or b < a):
                a = b
            if e[0] >= (a - lateness_ms if a else 0):
                recent.append(e)
                if j == k:
                    mine += 1
                    if e[0] < oldest:
                        oldest = e[0]
        insort(recent, (t, h))
        # Forgotten: beyond the count, and (when one partition of the kind lags far behind the other) entries too old
        # to store against the kind's stream time. A kind's entries leave in (time, hash) order: its floor only grows.
        back = self.stream_time(k) - MAX_BACK_MS
        if mine > RECENT_IDS[k] or oldest < back:
            kept = [e for e in recent if e[1] & 3 == k]
            for ot, oh in kept[: max(len(kept) - RECENT_IDS[k], bisect_left(kept, (back,)))]:
                recent.remove((ot, oh))
                self.floors[k], self.floor_hashes[k] = ot, oh
        self.recent = recent

    def _fold(self, kind: str, r: Mapping[str, Any], t: int, dt: int, rules: FoldRules) -> None:
        # dt: how far the event (time t) is behind its kind's stream time, the time of the counters it feeds.
        self.version += 1
        if not self.first_time or t < self.first_time:
            self.first_time = t
        if t > self.last_time:
            self.last_time = t
        if kind == "transactions":
            self._transaction(r, t, dt, rules)
        elif kind == "contacts":
            self._contact(r, t, dt, rules)
        else:
            self._payment(r, dt)

    def _decay_kind(self, k: int, dt: int) -> None:
        # The counters of kind k move forward by dt ms with their kind's stream time (in place: one list per state).
        decayed, exp = self.decayed, math.exp
        for i, tau in _DECAYED_OF_KIND[k]:
            if decayed[i]:
                decayed[i] *= exp(-dt / tau)

    def _add_decayed(self, counters: tuple[int, ...], value: float, dt: int) -> None:
        # These counters (all fed by one kind) receive `value` at dt ms before their kind's stream time (apply() has
        # moved it to the event's time already when that is the latest: the usual case, dt = 0).
        decayed = self.decayed
        if dt:
            exp = math.exp
            for i in counters:
                decayed[i] += value * exp(-dt / TAU_MS[i])
        else:
            for i in counters:
                decayed[i] += value

    def _transaction(self, r: Mapping[str, Any], t: int, dt: int, rules: FoldRules) -> None:
        amount = float(r["amount"])
        margin = r.get("gross_margin")
        cents = _cents(amount)
        self.revenue_cents += cents
        self.margin_cents += _cents(amount * rules.margin_rate if margin is None else float(margin))
        self.n_transactions += 1
        if cents < 0:
            self.n_refunds += 1
        if cents <= 0:  # refunds and zero amounts are no purchase: no occasion, no basket, no recency
            if cents:
                self._add_decayed(_SPEND, amount, dt)
                self._add_decayed(_REFUNDS, 1.0, dt)
            return
        self.n_purchases += 1
        self.purchase_cents += cents
        if t > self.last_purchase_time:
            self.last_purchase_time = t
        self._add_decayed(_SPEND, amount, dt)
        self._add_decayed(_PURCHASES, 1.0, dt)
        self._add_occasion(t // rules.period_ms, cents, rules.period_days)

    def _contact(self, r: Mapping[str, Any], t: int, dt: int, rules: FoldRules) -> None:
        channel = r["channel"]
        cost = r.get("cost")
        self.cost_cents += _cents(rules.contact_costs.get(channel, 0.0) if cost is None else float(cost))
        self.n_contacts += 1
        if channel in CHANNELS:
            name = "n_" + channel
            setattr(self, name, getattr(self, name) + 1)
        reason = r.get("reason")
        complaint = reason == "complaint"
        self._add_decayed(_CONTACTS, 1.0, dt)
        if complaint:
            self.n_complaints += 1
            self._add_decayed(_COMPLAINTS, 1.0, dt)
        elif reason == "cancellation_request":
            self.n_cancellations += 1
            if t > self.last_cancellation_time:
                self.last_cancellation_time = t
        if not r.get("resolved", True):
            self.n_unresolved += 1
            self._add_decayed(_UNRESOLVED, 1.0, dt)
        self._add_contact_day(t // DAY_MS)

    def _payment(self, r: Mapping[str, Any], dt: int) -> None:
        self.n_payments += 1
        status = r.get("status")
        paid, due = r.get("paid_date"), r.get("due_date")
        if status == "failed":
            self.n_failed += 1
            self._add_decayed(_FAILED, 1.0, dt)
            self._add_decayed(_LATE, 1.0, dt)
        elif status == "chargeback":
            self.n_chargebacks += 1
        elif paid is not None and due is not None and paid > due:
            self.n_late += 1
            self.past_due_hours += -(-(int(paid) - int(due)) // HOUR_MS)  # started hours count
            self._add_decayed(_LATE, 1.0, dt)
        elif status == "late":
            self.n_late += 1
            self._add_decayed(_LATE, 1.0, dt)
        else:
            self.n_on_time += 1

    # --- serialisation (the table's value bytes): scoring.state_format -------------------------------------------
    # The format's functions themselves, bound as methods: no wrapper on the worker's hot path.
    to_bytes = encode
    from_bytes = classmethod(decode)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CustomerState):
            return NotImplemented
        return all(_same(getattr(self, a), getattr(other, a)) for a in self.__slots__)

    def __repr__(self) -> str:
        return f"CustomerState(version={self.version}, revenue_cents={self.revenue_cents})"


def _same(a: Any, b: Any) -> bool:
    """Equality in which NaN equals NaN (an unset ranked CLV)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
