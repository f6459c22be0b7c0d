"""Per-customer state: what a customer's events add up to, updated one event at a time, idempotently.

Money is kept in integer cents so totals are exact and independent of the order events arrive in.

Idempotence has two layers:

* a Kafka record re-delivered after a crash has an offset at or below the last one applied for its topic, and
  changes nothing;
* an upstream duplicate (same ``event_id``, new offset) is recognised by a bounded memory of recent event-id
  hashes. Only events inside the allowed lateness need remembering: anything older is late and never applied.
  When the memory is full (more than ``RECENT_IDS`` events inside the lateness window), the oldest entry is
  forgotten and its time becomes a floor (per kind) at or below which events of that kind are treated as
  late — so a duplicate is never counted twice, even past the bound. The price: a burst of more than
  ``RECENT_IDS`` events of one kind inside the window, delivered out of order, may see its oldest stragglers
  classified late (reported on ``late-events``).

>>> s = CustomerState()
>>> tx = {"event_id": "e1", "event_time": 1_000_000, "amount": 10.0, "gross_margin": None}
>>> s.apply("transactions", tx, offset=5, margin_rate=0.3, contact_costs={}, lateness_ms=0)
'applied'
>>> s.apply("transactions", tx, offset=5, margin_rate=0.3, contact_costs={}, lateness_ms=0)
'redelivered'
>>> s.apply("transactions", tx, offset=6, margin_rate=0.3, contact_costs={}, lateness_ms=0)
'duplicate'
>>> s.revenue_cents, s.margin_cents, s.n_transactions, s.version
(1000, 300, 1, 1)
>>> CustomerState.from_bytes(s.to_bytes()) == s
True
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

__all__ = ["KIND_INDEX", "CustomerState", "event_hash"]

#: Position of each event kind in per-kind arrays (offsets).
KIND_INDEX = {"transactions": 0, "contacts": 1, "payments": 2}

#: How many recent event ids a customer remembers (see the module docstring).
RECENT_IDS = 16

_HEAD = struct.Struct("<QqqqIIIqq3q3q3qB")
_RECENT = struct.Struct("<qQ")  # (event time, event hash)
_FORMAT_VERSION = 2


def event_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (Python's ``hash`` changes between processes).

    >>> event_hash("e1") == event_hash("e1"), event_hash("e1") == event_hash("e2")
    (True, False)
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def _cents(amount: float) -> int:
    return int(round(amount * 100))


class CustomerState:
    """What one customer's events add up to; :meth:`apply` folds one event in."""

    __slots__ = (
        "version",
        "revenue_cents",
        "margin_cents",
        "cost_cents",
        "n_transactions",
        "n_contacts",
        "n_payments",
        "first_time",
        "last_time",
        "floors",
        "offsets",
        "kind_times",
        "recent",
    )

    def __init__(self) -> None:
        self.version = 0  # events applied: the version of the customer's scores
        self.revenue_cents = 0
        self.margin_cents = 0
        self.cost_cents = 0
        self.n_transactions = 0
        self.n_contacts = 0
        self.n_payments = 0
        self.first_time = 0  # ms; 0 = no event yet
        self.last_time = 0  # the customer's stream time: latest event time applied
        self.floors = [0, 0, 0]  # per kind: events at or before it may be forgotten duplicates, treated as late
        self.offsets = [-1, -1, -1]  # last Kafka offset seen per kind
        self.kind_times = [0, 0, 0]  # stream time per kind: lateness is measured within a topic's order
        self.recent: list[tuple[int, int]] = []  # (event_time, event_hash), oldest first

    # --- folding events in ---------------------------------------------------------------------------------------

    def apply(
        self,
        kind: str,
        record: Mapping[str, Any],
        offset: int,
        margin_rate: float,
        contact_costs: Mapping[str, float],
        lateness_ms: int,
    ) -> str:
        """Fold one event in; return ``applied``, ``redelivered``, ``duplicate`` or ``late``.

        ``offset`` is the record's Kafka offset (``-1`` when it has none, e.g. in tests and replays of files).
        """
        k = KIND_INDEX[kind]
        if offset >= 0:
            if offset <= self.offsets[k]:
                return "redelivered"
            self.offsets[k] = offset
        t = int(record["event_time"])
        # Kafka orders records within a partition only: a customer's three topics are consumed at different
        # paces, so an event is late only against the stream time of its own kind.
        if self.kind_times[k] and t < self.kind_times[k] - lateness_ms or t <= self.floors[k]:
            return "late"
        h = (event_hash(record["event_id"]) & ~3) | k  # the low bits say the kind, for pruning and floors
        for _, seen in self.recent:
            if seen == h:
                return "duplicate"
        self._fold(kind, record, t, margin_rate, contact_costs)
        if t > self.kind_times[k]:
            self.kind_times[k] = t
        self._remember(t, h, lateness_ms)
        return "applied"

    def _remember(self, t: int, h: int, lateness_ms: int) -> None:
        # An entry older than its kind's lateness horizon can never match again: an event that old is late.
        times = self.kind_times
        recent = [(rt, rh) for rt, rh in self.recent if rt >= times[rh & 3] - lateness_ms]
        recent.append((t, h))
        recent.sort()
        while len(recent) > RECENT_IDS:
            ot, oh = recent.pop(0)
            self.floors[oh & 3] = max(self.floors[oh & 3], ot)
        self.recent = recent

    def _fold(
        self, kind: str, r: Mapping[str, Any], t: int, margin_rate: float, contact_costs: Mapping[str, float]
    ) -> None:
        self.version += 1
        if not self.first_time or t < self.first_time:
            self.first_time = t
        if t > self.last_time:
            self.last_time = t
        if kind == "transactions":
            amount = float(r["amount"])
            margin = r.get("gross_margin")
            self.revenue_cents += _cents(amount)
            self.margin_cents += _cents(amount * margin_rate if margin is None else float(margin))
            self.n_transactions += 1
        elif kind == "contacts":
            cost = r.get("cost")
            self.cost_cents += _cents(contact_costs.get(r["channel"], 0.0) if cost is None else float(cost))
            self.n_contacts += 1
        else:
            self.n_payments += 1

    # --- outputs --------------------------------------------------------------------------------------------------

    def scores(self, customer_id: str) -> dict[str, Any]:
        """The customer's figures as emitted on ``customer-scores`` (times in epoch ms)."""
        return {
            "customer_id": customer_id,
            "version": self.version,
            "as_of": self.last_time,
            "revenue": self.revenue_cents / 100,
            "gross_margin": self.margin_cents / 100,
            "cost_to_serve": self.cost_cents / 100,
            "profitability": (self.margin_cents - self.cost_cents) / 100,
            "n_transactions": self.n_transactions,
            "n_contacts": self.n_contacts,
            "n_payments": self.n_payments,
            "first_event_time": self.first_time,
            "last_event_time": self.last_time,
        }

    # --- serialisation (the table's value bytes) -------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        head = _HEAD.pack(
            self.version,
            self.revenue_cents,
            self.margin_cents,
            self.cost_cents,
            self.n_transactions,
            self.n_contacts,
            self.n_payments,
            self.first_time,
            self.last_time,
            *self.floors,
            *self.offsets,
            *self.kind_times,
            len(self.recent),
        )
        return bytes([_FORMAT_VERSION]) + head + b"".join(_RECENT.pack(t, h) for t, h in self.recent)

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerState:
        if data[0] != _FORMAT_VERSION:
            raise ValueError(f"unknown customer state format {data[0]}")
        s = cls()
        fields = _HEAD.unpack_from(data, 1)
        (
            s.version,
            s.revenue_cents,
            s.margin_cents,
            s.cost_cents,
            s.n_transactions,
            s.n_contacts,
            s.n_payments,
            s.first_time,
            s.last_time,
        ) = fields[:9]
        s.floors = list(fields[9:12])
        s.offsets = list(fields[12:15])
        s.kind_times = list(fields[15:18])
        pos, size = 1 + _HEAD.size, _RECENT.size
        s.recent = [_RECENT.unpack_from(data, pos + i * size) for i in range(fields[18])]
        return s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CustomerState):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __repr__(self) -> str:
        return f"CustomerState(version={self.version}, revenue_cents={self.revenue_cents})"
