"""Churn labels: the label rule, compact feature snapshots, and a customer's snapshots waiting for their labels.

A churn label is known only long after the features that should have predicted it. The loop:

1. when the worker scores a customer whose events moved (not on a re-scoring of a silent customer),
   :meth:`PendingLabels.offer` keeps a **snapshot** of the features it scored (at most one per ``every_ms``, at most
   ``max_pending`` per customer, 43 bytes each);
2. a purchase (:meth:`PendingLabels.purchase`) or stream time passing a deadline (:meth:`PendingLabels.advance`)
   **settles** a snapshot's label under each :class:`LabelRule` (a *head*: "gone within 30 days", "gone within 60
   days"); a rule that holds its 0s releases them at the deadline, with the 1s of the same snapshot time;
3. each released (features, label) pair goes to the learner once (:class:`Matured`); the snapshot leaves the
   customer's state once every head released its label.

``docs/churn.md`` states the rules, the heads and the design in prose, with the measurements that chose them.

>>> rule = LabelRule.from_days(silence_days=45, grace_days=30, offset_days=30)
>>> pending = PendingLabels()
>>> pending.offer(0, {"silence_gaps": 0.5, "frequency": 5.0}, every_ms=30 * DAY_MS, max_pending=4)
True
>>> pending.purchase(10 * DAY_MS, rule)  # within the 30-day offset: says nothing about being gone by then
[]
>>> pending.purchase(40 * DAY_MS, rule)  # bought after day 30: not gone, known at once
[Matured(snapshot_ms=0, label_ms=3456000000, label=0, features={'silence_gaps': 0.5, 'frequency': 5.0}, head=0)]
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "DAY_MS",
    "FEATURES",
    "LEGACY_FEATURES",
    "MAX_HEADS",
    "MODEL_FEATURES",
    "LabelRule",
    "Matured",
    "PendingLabels",
    "Snapshot",
    "label_rules",
    "pack_snapshot",
    "unpack_snapshot",
]

DAY_MS = 86_400_000

#: What a churn snapshot holds, in its packed order: the model's inputs (:data:`MODEL_FEATURES`) and what its label
#: noise is computed from (``frequency``, ``tenure_days``). Append only: a snapshot records how many of these it
#: holds, so snapshots packed before a feature was added still unpack (the new feature is missing from them).
#: Every one is a signal of leaving measured against the customer's own rhythm or baseline (scoring.features.leaving,
#: docs/features.md), except ``tenure_days`` (new customers leave more often) and ``frequency`` (label noise only).
FEATURES: tuple[str, ...] = (
    "silence_gaps",
    "silence_rate",
    "purchases_vs_usual",
    "spend_vs_usual",
    "spend_trend",
    "contacts_vs_usual",
    "contacts_30d",
    "complaints_vs_usual",
    "complaints_30d",
    "unresolved_vs_usual",
    "unresolved_30d",
    "repeat_contact_share",
    "recent_cancellation",
    "days_since_contact",
    "late_payments_90d",
    "tenure_days",
    "frequency",
)

#: The default model's inputs (:class:`ChurnModel` ``features``): a customer's size (frequency, spend, value) and
#: age tell how often it buys, not whether it is leaving, and are left out (docs/churn.md); tenure stays because a new
#: customer is likelier to leave, but is never given as a reason (scoring.reasons).
MODEL_FEATURES: tuple[str, ...] = tuple(name for name in FEATURES if name != "frequency")

#: The snapshot layout of cvm ≤ 0.1 (pending-labels format 1): such snapshots are repacked on reading.
LEGACY_FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency",
    "monetary",
    "tenure_days",
    "regularity",
    "spend_trend",
    "spend_30d",
    "spend_90d",
    "purchases_30d",
    "purchases_90d",
    "contacts_30d",
    "complaints_30d",
    "complaint_share",
    "repeat_contact_share",
    "n_cancellation_requests",
    "on_time_rate",
    "avg_days_past_due",
    "failed_payments_90d",
    "p_alive",
    "profitability",
    "loyalty_score",
)


# --- the label rule -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRule:
    """When a snapshot taken at ``s`` is labelled churned (1) or not (0), and when that becomes known.

    The label says whether the customer is gone by ``s + offset``: whether it buys again after that. Purchases
    within ``(s, s + offset]`` settle nothing (a leaver often buys once more before going). The **deadline** of a
    snapshot is ``s + offset + silence``, or ``max(c, s + offset) + grace`` when a cancellation request ``c`` follows
    the snapshot (``c > s``) and that comes first. The first decisive thing settles the label:

    * a purchase ``p`` with ``s + offset < p <= deadline`` gives **0**, known at ``p``;
    * stream time passing the deadline with no such purchase gives **1**, known at the deadline.

    So a customer silent for ``silence`` after ``s + offset`` has churned, and so has one who asked to cancel and did
    not buy within ``grace`` of asking (or of ``s + offset``, whichever is later). "Purchase" means a transaction with
    a positive amount (a refund is not one). Times are event times in ms. With ``offset`` 0 this is the rule of
    cvm ≤ 0.1 (90 days of silence, 30 days of grace).

    >>> rule = LabelRule.from_days(silence_days=90, grace_days=30)
    >>> rule.deadline(0) // DAY_MS, rule.deadline(0, cancel_ms=20 * DAY_MS) // DAY_MS
    (90, 50)
    >>> rule.on_purchase(0, 89 * DAY_MS), rule.on_purchase(0, 91 * DAY_MS)
    (0, None)
    >>> rule.on_time(0, 90 * DAY_MS), rule.on_time(0, 90 * DAY_MS + 1)
    (None, 1)
    >>> rule.on_time(0, 51 * DAY_MS, cancel_ms=20 * DAY_MS)  # asked to cancel, then 30 days without a purchase
    1
    >>> gone = LabelRule.from_days(silence_days=120, grace_days=30, offset_days=30)
    >>> gone.on_purchase(0, 20 * DAY_MS), gone.on_purchase(0, 40 * DAY_MS), gone.deadline(0) // DAY_MS
    (None, 0, 150)
    >>> gone.deadline(0, cancel_ms=10 * DAY_MS) // DAY_MS  # grace counted from s + offset
    60
    """

    silence_ms: int = 90 * DAY_MS
    grace_ms: int = 30 * DAY_MS
    offset_ms: int = 0
    #: A 0 settled by a purchase is released (:meth:`PendingLabels.advance`) only at its deadline, with the 1s of
    #: the same snapshot time: a learner fed 0s weeks before the 1s of the same snapshots learns the label delay.
    hold: bool = False

    def __post_init__(self) -> None:
        if self.silence_ms <= 0 or self.grace_ms < 0 or self.offset_ms < 0:
            raise ValueError(f"churn label rule: silence {self.silence_ms} ms must be > 0, grace and offset >= 0")

    @classmethod
    def from_days(
        cls, silence_days: float, grace_days: float, offset_days: float = 0.0, hold: bool = False
    ) -> LabelRule:
        """The rule for ``CVM_CHURN_SILENCE_DAYS``, ``CVM_CHURN_CANCEL_GRACE_DAYS`` and ``CVM_CHURN_OFFSET_DAYS``."""
        return cls(int(silence_days * DAY_MS), int(grace_days * DAY_MS), int(offset_days * DAY_MS), hold)

    def deadline(self, snapshot_ms: int, cancel_ms: int | None = None) -> int:
        """The event time after which a snapshot with no purchase since is labelled 1 (set a timer at it)."""
        start = snapshot_ms + self.offset_ms
        end = start + self.silence_ms
        if cancel_ms is not None and cancel_ms > snapshot_ms:
            end = min(end, max(cancel_ms, start) + self.grace_ms)
        return end

    def on_purchase(self, snapshot_ms: int, purchase_ms: int, cancel_ms: int | None = None) -> int | None:
        """0 when a purchase at ``purchase_ms`` settles the snapshot, else None (it says nothing about it).

        A purchase after the deadline settles nothing by itself: the deadline passing does (:meth:`on_time`),
        unless a purchase within it, delivered late, arrives first.
        """
        if snapshot_ms + self.offset_ms < purchase_ms <= self.deadline(snapshot_ms, cancel_ms):
            return 0
        return None

    def on_time(self, snapshot_ms: int, now_ms: int, cancel_ms: int | None = None) -> int | None:
        """1 when stream time ``now_ms`` is past the deadline, else None.

        The caller guarantees that no purchase within the deadline has been seen (it would have labelled the
        snapshot 0 and removed it). Pass as ``now_ms`` a time after which no event within the deadline can still
        be accepted (the stream time minus the allowed lateness), or a late purchase could contradict the label.
        """
        return 1 if now_ms > self.deadline(snapshot_ms, cancel_ms) else None

    def label(
        self, snapshot_ms: int, now_ms: int, next_purchase_ms: int | None = None, cancel_ms: int | None = None
    ) -> int | None:
        """The label as known at ``now_ms``, from the first purchase after ``snapshot + offset`` (None: none yet).

        >>> rule = LabelRule.from_days(90, 30)
        >>> rule.label(0, 200 * DAY_MS, next_purchase_ms=60 * DAY_MS), rule.label(0, 200 * DAY_MS, None)
        (0, 1)
        >>> rule.label(0, 80 * DAY_MS, None), rule.label(0, 200 * DAY_MS, 60 * DAY_MS, cancel_ms=10 * DAY_MS)
        (None, 1)
        """
        if next_purchase_ms is not None and next_purchase_ms <= now_ms:
            if self.on_purchase(snapshot_ms, next_purchase_ms, cancel_ms) == 0:
                return 0
        return self.on_time(snapshot_ms, now_ms, cancel_ms)


def label_rules(
    silence_days: float, grace_days: float, offsets_days: Sequence[float], hold: bool = True
) -> tuple[LabelRule, ...]:
    """The heads' label rules: one per offset ("gone within 30 days", "within 60"), same silence and grace.

    >>> [r.offset_ms // DAY_MS for r in label_rules(45, 30, (30, 60))]
    [30, 60]
    """
    if not 1 <= len(offsets_days) <= MAX_HEADS:
        raise ValueError(f"between 1 and {MAX_HEADS} churn heads, got {len(offsets_days)}")
    return tuple(LabelRule.from_days(silence_days, grace_days, offset, hold) for offset in offsets_days)


# --- compact snapshots ----------------------------------------------------------------------------------------------


class Snapshot(NamedTuple):
    """The features a customer was scored with at ``time_ms`` (event time)."""

    time_ms: int
    features: dict[str, float]


_SNAP_HEAD = struct.Struct("<Bq")  # number of FEATURES packed, time
_HALVES = struct.Struct(f"<{len(FEATURES)}e")
_HALF_MAX = 65504.0  # the largest finite float16


def _half(v: float | None) -> float:
    if v is None or v != v:
        return math.nan
    return min(_HALF_MAX, max(-_HALF_MAX, float(v)))


def pack_snapshot(time_ms: int, features: Mapping[str, float]) -> bytes:
    """A snapshot as bytes: its time and the :data:`FEATURES` as float16, in order (43 bytes for 17 features).

    Half precision is enough: every feature is a ratio, a log-ratio, a count or a number of days, kept to 3 significant
    digits (values beyond ±65,504 are clipped; no feature is a sum of money). A feature missing from ``features`` (or
    None) is packed as NaN and comes back missing; names outside :data:`FEATURES` are not kept.

    >>> data = pack_snapshot(1_700_000_000_000, {"silence_gaps": 2.5, "frequency": 3.0, "clv": 900.0})
    >>> len(data)
    43
    >>> unpack_snapshot(data)
    Snapshot(time_ms=1700000000000, features={'silence_gaps': 2.5, 'frequency': 3.0})
    >>> unpack_snapshot(pack_snapshot(0, {"tenure_days": 1234.5678, "frequency": 1e9})).features
    {'tenure_days': 1235.0, 'frequency': 65504.0}
    """
    halves = [
        v if type(v) is float and -_HALF_MAX <= v <= _HALF_MAX else _half(v)  # in range: _half(v) is v
        for v in map(features.get, FEATURES)
    ]
    return _SNAP_HEAD.pack(len(FEATURES), time_ms) + _HALVES.pack(*halves)


def unpack_snapshot(data: bytes, offset: int = 0, names: Sequence[str] = FEATURES, width: int = 2) -> Snapshot:
    """The :class:`Snapshot` that :func:`pack_snapshot` packed (starting at ``offset`` of ``data``); ``names`` and
    ``width``: the layout it was packed with (:data:`LEGACY_FEATURES` in float32, ``width=4``, for pending-labels
    format 1)."""
    n, time_ms = _SNAP_HEAD.unpack_from(data, offset)
    values = struct.unpack_from(f"<{n}{'e' if width == 2 else 'f'}", data, offset + _SNAP_HEAD.size)
    return Snapshot(time_ms, {name: v for name, v in zip(names, values, strict=False) if v == v})


# --- a customer's pending labels ------------------------------------------------------------------------------------


class Matured(NamedTuple):
    """A snapshot whose label is known: learn ``(features, label)`` once. ``label_ms`` is when it became known;
    ``head`` is the index of the label rule that labelled it (:class:`PendingLabels` takes several)."""

    snapshot_ms: int
    label_ms: int
    label: int
    features: dict[str, float]
    head: int = 0


_PENDING_HEAD = struct.Struct("<BqB")  # format, time of the last snapshot taken, number pending
#: Per pending snapshot: the first cancellation request after it, as ms after the snapshot (> 0; 0: none), in the
#: low 56 bits; the status of each label rule (head) in two bits each from bit 56: pending, settled 0 (held until its
#: deadline), released.
_CANCEL = struct.Struct("<Q")
_ENTRY_HEAD = struct.Struct("<QBq")  # a pending snapshot's word, then its snapshot's head (_SNAP_HEAD)
_DELTA_MASK = (1 << 56) - 1
_PENDING, _HELD, _RELEASED = 0, 1, 2
MAX_HEADS = 4
_STATUS_SHIFTS = tuple(56 + 2 * i for i in range(MAX_HEADS))
_PENDING_FORMAT = 2  # 1: cvm <= 0.1, snapshots of LEGACY_FEATURES, no head status (repacked on reading)
_NEVER = -(1 << 62)  # the time of the last snapshot before the first one

Rules = LabelRule | Sequence[LabelRule]


def _rules(rules: Rules) -> Sequence[LabelRule]:
    if isinstance(rules, LabelRule):
        return (rules,)
    if not 1 <= len(rules) <= MAX_HEADS:
        raise ValueError(f"between 1 and {MAX_HEADS} label rules, got {len(rules)}")
    return rules


class PendingLabels:
    """One customer's snapshots waiting for their labels, bounded; kept in the customer's state as bytes.

    Pure and deterministic: the worker calls :meth:`offer` when it scores the customer, :meth:`purchase` and
    :meth:`cancellation` on those events, :meth:`advance` when stream time moves (per-customer timer at
    :meth:`next_deadline`), and sends every :class:`Matured` it gets back to the trainer. Several label rules
    (heads, e.g. "gone within 30 days" and "gone within 60 days") can label the same snapshots: pass the same
    sequence of rules to every call; a snapshot leaves once every rule released its label. A pair's identity is
    ``(customer_id, snapshot_ms, head)``: the trainer can drop a pair it has seen (redelivery after a crash).

    >>> rule = LabelRule.from_days(90, 30)
    >>> p = PendingLabels()
    >>> p.offer(0, {"recency_days": 1.0}, every_ms=30 * DAY_MS, max_pending=2)
    True
    >>> p.offer(5 * DAY_MS, {"recency_days": 6.0}, every_ms=30 * DAY_MS, max_pending=2)  # too soon
    False
    >>> p.cancellation(40 * DAY_MS)
    >>> p.next_deadline(rule) // DAY_MS
    70
    >>> p.advance(70 * DAY_MS, rule), [m.label for m in p.advance(70 * DAY_MS + 1, rule)]
    ([], [1])
    >>> len(p), len(PendingLabels().to_bytes())
    (0, 10)

    Two heads: a purchase on day 40 settles "gone within 30 days" (0, held until its deadline), while "gone within
    60 days" waits for a purchase after day 60.

    >>> heads = (LabelRule.from_days(45, 30, 30, hold=True), LabelRule.from_days(45, 30, 60, hold=True))
    >>> p = PendingLabels()
    >>> p.offer(0, {"recency_days": 1.0}, every_ms=30 * DAY_MS, max_pending=2)
    True
    >>> p.purchase(40 * DAY_MS, heads), p.next_deadline(heads) // DAY_MS
    ([], 75)
    >>> [(m.head, m.label, m.label_ms // DAY_MS) for m in p.advance(76 * DAY_MS, heads)], len(p)
    ([(0, 0, 75)], 1)
    >>> [(m.head, m.label, m.label_ms // DAY_MS) for m in p.advance(106 * DAY_MS, heads)], len(p)
    ([(1, 1, 105)], 0)
    """

    __slots__ = ("last_snapshot_ms", "entries", "_next")

    def __init__(self) -> None:
        self.last_snapshot_ms = _NEVER
        # [snapshot_ms, packed snapshot, first cancellation request after it (ms) or None, status per head (list)],
        # oldest first
        self.entries: list[list[Any]] = []
        self._next: tuple[Rules, int | None] | None = None  # (rules, next_deadline) until the entries change

    def __len__(self) -> int:
        return len(self.entries)

    def wants(self, now_ms: int, every_ms: int, max_pending: int) -> bool:
        """Whether :meth:`offer` would keep a snapshot at ``now_ms`` (ask first when the features cost to gather)."""
        if now_ms - self.last_snapshot_ms < every_ms:
            return False
        return len(self.entries) < max_pending and not any(e[0] >= now_ms for e in self.entries)

    def offer(self, now_ms: int, features: Mapping[str, float], every_ms: int, max_pending: int) -> bool:
        """Keep a snapshot of ``features`` at ``now_ms`` if the last one is ``every_ms`` old and there is room."""
        if not self.wants(now_ms, every_ms, max_pending):
            return False
        self.entries.append([now_ms, pack_snapshot(now_ms, features), None, [_PENDING] * MAX_HEADS])
        self.last_snapshot_ms = now_ms
        self._next = None
        return True

    def cancellation(self, t_ms: int) -> None:
        """Record a cancellation request at ``t_ms`` against the snapshots it follows (the earliest one counts)."""
        self._next = None
        for e in self.entries:
            if e[0] < t_ms and (e[2] is None or t_ms < e[2]):
                e[2] = t_ms

    def purchase(self, t_ms: int, rules: Rules) -> list[Matured]:
        """A purchase at ``t_ms``: the labels it settles as 0 (a rule that holds its 0s keeps them, settled, until
        their deadline); snapshots with every label released leave."""
        if not self.entries:
            return []
        self._next = None
        out: list[Matured] = []
        for e in self.entries:
            for i, rule in enumerate(_rules(rules)):
                if e[3][i] == _PENDING and rule.on_purchase(e[0], t_ms, e[2]) == 0:
                    if rule.hold:
                        e[3][i] = _HELD
                    else:
                        e[3][i] = _RELEASED
                        out.append(Matured(e[0], t_ms, 0, unpack_snapshot(e[1]).features, i))
        if out:
            self._drop_released(len(_rules(rules)))
        return out

    def advance(self, now_ms: int, rules: Rules) -> list[Matured]:
        """Stream time is ``now_ms``: the labels whose deadline it passed, released: 1, or 0 when a purchase
        settled them (held); snapshots with every label released leave."""
        if not self.entries:
            return []
        due = self.next_deadline(rules)
        if due is None or now_ms <= due:
            return []  # no deadline passed: nothing to release
        self._next = None
        out: list[Matured] = []
        for e in self.entries:
            for i, rule in enumerate(_rules(rules)):
                if e[3][i] != _RELEASED and rule.on_time(e[0], now_ms, e[2]) == 1:
                    label = 0 if e[3][i] == _HELD else 1
                    e[3][i] = _RELEASED
                    out.append(Matured(e[0], rule.deadline(e[0], e[2]), label, unpack_snapshot(e[1]).features, i))
        if out:
            self._drop_released(len(_rules(rules)))
        return out

    def _drop_released(self, heads: int) -> None:
        self.entries = [e for e in self.entries if any(status != _RELEASED for status in e[3][:heads])]
        self._next = None

    def next_deadline(self, rules: Rules) -> int | None:
        """The earliest deadline among the labels still to release: when to call :meth:`advance` next (kept until
        the snapshots change: a worker asks at every scoring)."""
        known = self._next
        if known is not None and known[0] is rules:
            return known[1]
        heads = _rules(rules)
        due: int | None = None
        for snapshot_ms, _, cancel_ms, status in self.entries:
            for i, rule in enumerate(heads):
                if status[i] != _RELEASED:
                    deadline = rule.deadline(snapshot_ms, cancel_ms)
                    if due is None or deadline < due:
                        due = deadline
        self._next = (rules, due)
        return due

    def to_bytes(self) -> bytes:
        out = [_PENDING_HEAD.pack(_PENDING_FORMAT, self.last_snapshot_ms, len(self.entries))]
        for s, packed, cancel, status in self.entries:
            word = 0 if cancel is None else cancel - s
            for st, shift in zip(status, _STATUS_SHIFTS, strict=True):
                word |= st << shift
            out.append(_CANCEL.pack(word))
            out.append(packed)
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> PendingLabels:
        fmt, last, n = _PENDING_HEAD.unpack_from(data, 0)
        if fmt not in (1, _PENDING_FORMAT):
            raise ValueError(f"unknown pending-labels format {fmt}")
        p = cls()
        p.last_snapshot_ms = last
        pos = _PENDING_HEAD.size
        width = 4 if fmt == 1 else 2
        entries = p.entries
        for _ in range(n):
            word, n_features, s = _ENTRY_HEAD.unpack_from(data, pos)
            pos += _CANCEL.size
            end = pos + _SNAP_HEAD.size + width * n_features
            packed = bytes(data[pos:end])
            if fmt == 1:  # the features of those days that still are features; the others are gone
                packed = pack_snapshot(s, unpack_snapshot(packed, names=LEGACY_FEATURES, width=4).features)
            delta = word & _DELTA_MASK
            entries.append([s, packed, s + delta if delta else None, [word >> shift & 3 for shift in _STATUS_SHIFTS]])
            pos = end
        return p

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PendingLabels):
            return NotImplemented
        return self.last_snapshot_ms == other.last_snapshot_ms and self.entries == other.entries

    def __repr__(self) -> str:
        return f"PendingLabels(pending={[e[0] for e in self.entries]})"
