"""Churn learning with delayed labels: the label rule, compact snapshots, a customer's pending labels, the model.

A churn label is known only long after the features that should have predicted it. The loop:

1. on a customer's event, :meth:`PendingLabels.offer` keeps a **snapshot** of the features the model just scored
   (at most one per ``every_ms``, at most ``max_pending`` per customer, packed in about 100 bytes);
2. a purchase (:meth:`PendingLabels.purchase`) or stream time passing a deadline (:meth:`PendingLabels.advance`)
   **matures** a snapshot's label under :class:`LabelRule`; the snapshot then leaves the customer's state, so each
   (features, label) pair is produced exactly once per state;
3. the trainer scores each matured pair before learning it (progressive validation, :mod:`scoring.metrics`),
   learns it with :meth:`ChurnModel.learn_one`, and publishes :meth:`ChurnModel.to_bytes` as new versions;
4. workers score every feature update with :meth:`ChurnModel.churn_probability` and :meth:`ChurnModel.reasons`,
   which never change the model.

``docs/churn.md`` states the rule and the design in prose.

>>> rule = LabelRule.from_days(silence_days=90, grace_days=30)
>>> pending = PendingLabels()
>>> pending.offer(0, {"recency_days": 3.0, "frequency": 5.0}, every_ms=30 * DAY_MS, max_pending=2)
True
>>> pending.purchase(10 * DAY_MS, rule)  # a purchase within 90 days: not churned, known at once
[Matured(snapshot_ms=0, label_ms=864000000, label=0, features={'recency_days': 3.0, 'frequency': 5.0})]
>>> model = ChurnModel()
>>> model.learn_one({"recency_days": 3.0, "frequency": 5.0}, 0)
>>> model.n_learned, 0.0 < model.churn_probability({"recency_days": 3.0}) < 0.5
(1, True)
"""

from __future__ import annotations

import math
import pickle
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import river
from river import forest, linear_model, optim, preprocessing, tree
from river.utils.math import sigmoid

__all__ = [
    "DAY_MS",
    "FEATURES",
    "LEGACY_FEATURES",
    "MODELS",
    "MODEL_FEATURES",
    "ChurnModel",
    "NoisyLog",
    "LabelRule",
    "MAX_HEADS",
    "Matured",
    "PendingLabels",
    "Snapshot",
    "pack_snapshot",
    "prepare",
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

#: The prior of a customer's purchase rate in :meth:`ChurnModel.noise`: Gamma with this shape and this many days
#: per unit of shape (mean: one purchase a month).
NOISE_PRIOR_SHAPE = 1.0
NOISE_PRIOR_DAYS = 30.0

#: Heavy-tailed features (counts, money, days; any model input): the model sees ``sign(v) * log1p(|v|)`` of them.
_LOG_FEATURES = frozenset(
    {
        "recency_days",
        "frequency",
        "monetary",
        "tenure_days",
        "spend_trend",
        "spend_30d",
        "spend_90d",
        "purchases_30d",
        "purchases_90d",
        "contacts_30d",
        "complaints_30d",
        "n_cancellation_requests",
        "avg_days_past_due",
        "failed_payments_90d",
        "profitability",
        "typical_gap_days",
        "silence_gaps",
        "silence_rate",
        "days_since_contact",
        "contacts_7d",
        "unresolved_30d",
        "refunds_90d",
        "late_payments_90d",
        "clv",
    }
)

#: Positions in :data:`FEATURES` of the heavy-tailed ones.
_LOG_INDEX = tuple(i for i, name in enumerate(FEATURES) if name in _LOG_FEATURES)

#: The model kinds :class:`ChurnModel` builds (``CVM_CHURN_MODEL``).
MODELS = ("logreg", "hat", "arf")


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
            raise ValueError(
                f"churn label rule: silence {self.silence_ms} ms must be > 0, grace and offset >= 0"
            )

    @classmethod
    def from_days(
        cls, silence_days: float, grace_days: float, offset_days: float = 0.0, hold: bool = False
    ) -> LabelRule:
        """The rule for ``CVM_CHURN_SILENCE_DAYS``, ``CVM_CHURN_CANCEL_GRACE_DAYS``, ``CVM_CHURN_OFFSET_DAYS`` and
        ``CVM_CHURN_HOLD``."""
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


# --- compact snapshots ----------------------------------------------------------------------------------------------


class Snapshot(NamedTuple):
    """The features a customer was scored with at ``time_ms`` (event time)."""

    time_ms: int
    features: dict[str, float]


_SNAP_HEAD = struct.Struct("<Bq")  # number of FEATURES packed, time
_FLOATS = struct.Struct(f"<{len(FEATURES)}f")


def pack_snapshot(time_ms: int, features: Mapping[str, float]) -> bytes:
    """A snapshot as bytes: its time and the :data:`FEATURES` as float32, in order (77 bytes for 17 features).

    A feature missing from ``features`` (or None) is packed as NaN and comes back missing; names outside
    :data:`FEATURES` are not kept.

    >>> data = pack_snapshot(1_700_000_000_000, {"silence_gaps": 2.5, "frequency": 3.0, "clv": 900.0})
    >>> len(data)
    77
    >>> unpack_snapshot(data)
    Snapshot(time_ms=1700000000000, features={'silence_gaps': 2.5, 'frequency': 3.0})
    """
    values = []
    for name in FEATURES:
        v = features.get(name)
        values.append(math.nan if v is None else float(v))
    return _SNAP_HEAD.pack(len(FEATURES), time_ms) + _FLOATS.pack(*values)


def unpack_snapshot(data: bytes, offset: int = 0, names: Sequence[str] = FEATURES) -> Snapshot:
    """The :class:`Snapshot` that :func:`pack_snapshot` packed (starting at ``offset`` of ``data``); ``names``: the
    layout it was packed with (:data:`LEGACY_FEATURES` for pending-labels format 1)."""
    n, time_ms = _SNAP_HEAD.unpack_from(data, offset)
    values = struct.unpack_from(f"<{n}f", data, offset + _SNAP_HEAD.size)
    return Snapshot(time_ms, {name: v for name, v in zip(names, values, strict=False) if v == v})


def _snapshot_size(data: bytes, offset: int) -> int:
    return _SNAP_HEAD.size + 4 * data[offset]


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
_DELTA_MASK = (1 << 56) - 1
_PENDING, _HELD, _RELEASED = 0, 1, 2
MAX_HEADS = 4
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

    __slots__ = ("last_snapshot_ms", "entries")

    def __init__(self) -> None:
        self.last_snapshot_ms = _NEVER
        # [snapshot_ms, packed snapshot, first cancellation request after it (ms) or None, status per head (list)],
        # oldest first
        self.entries: list[list[Any]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def offer(self, now_ms: int, features: Mapping[str, float], every_ms: int, max_pending: int) -> bool:
        """Keep a snapshot of ``features`` at ``now_ms`` if the last one is ``every_ms`` old and there is room."""
        if now_ms - self.last_snapshot_ms < every_ms:
            return False
        if len(self.entries) >= max_pending or any(e[0] >= now_ms for e in self.entries):
            return False
        self.entries.append([now_ms, pack_snapshot(now_ms, features), None, [_PENDING] * MAX_HEADS])
        self.last_snapshot_ms = now_ms
        return True

    def cancellation(self, t_ms: int) -> None:
        """Record a cancellation request at ``t_ms`` against the snapshots it follows (the earliest one counts)."""
        for e in self.entries:
            if e[0] < t_ms and (e[2] is None or t_ms < e[2]):
                e[2] = t_ms

    def purchase(self, t_ms: int, rules: Rules) -> list[Matured]:
        """A purchase at ``t_ms``: the labels it settles as 0 (a rule that holds its 0s keeps them, settled, until
        their deadline); snapshots with every label released leave."""
        if not self.entries:
            return []
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

    def next_deadline(self, rules: Rules) -> int | None:
        """The earliest deadline among the labels still to release: when to call :meth:`advance` next."""
        return min(
            (
                rule.deadline(e[0], e[2])
                for e in self.entries
                for i, rule in enumerate(_rules(rules))
                if e[3][i] != _RELEASED
            ),
            default=None,
        )

    def to_bytes(self) -> bytes:
        out = [_PENDING_HEAD.pack(_PENDING_FORMAT, self.last_snapshot_ms, len(self.entries))]
        for s, packed, cancel, status in self.entries:
            word = 0 if cancel is None else cancel - s
            for i, st in enumerate(status):
                word |= st << (56 + 2 * i)
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
        for _ in range(n):
            (word,) = _CANCEL.unpack_from(data, pos)
            pos += _CANCEL.size
            size = _snapshot_size(data, pos)
            packed = bytes(data[pos : pos + size])
            s = _SNAP_HEAD.unpack_from(packed, 0)[1]
            if fmt == 1:  # the features of those days that still are features; the others are gone
                packed = pack_snapshot(s, unpack_snapshot(packed, names=LEGACY_FEATURES).features)
            delta = word & _DELTA_MASK
            status = [(word >> (56 + 2 * i)) & 3 for i in range(MAX_HEADS)]
            p.entries.append([s, packed, s + delta if delta else None, status])
            pos += size
        return p

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PendingLabels):
            return NotImplemented
        return self.last_snapshot_ms == other.last_snapshot_ms and self.entries == other.entries

    def __repr__(self) -> str:
        return f"PendingLabels(pending={[e[0] for e in self.entries]})"


# --- the model ------------------------------------------------------------------------------------------------------


def prepare(x: Mapping[str, float | None], features: Sequence[str] = FEATURES) -> dict[str, float]:
    """The model's view of a feature dict: its ``features`` only, heavy tails compressed, missing values dropped.

    >>> prepare({"recency_days": math.e - 1, "profitability": -(math.e - 1), "p_alive": 0.5, "other": 1.0})
    {'recency_days': 1.0, 'p_alive': 0.5, 'profitability': -1.0}
    >>> prepare({"recency_days": None, "frequency": float("nan")})
    {}
    >>> prepare({"recency_days": 0.0, "frequency": 1.0}, features=("frequency",))
    {'frequency': 0.6931471805599453}
    """
    out = {}
    for name in features:
        v = x.get(name)
        if v is None or v != v:
            continue
        v = float(v)
        if name in _LOG_FEATURES:
            v = math.copysign(math.log1p(abs(v)), v)
        out[name] = v
    return out


class NoisyLog(optim.losses.Log):
    """Log loss of a label that is 1 for a leaver and, with a known probability ρ, for a stayer too.

    ``P(label 1) = q + (1 − q) ρ`` with ``q = sigmoid(z)`` the probability that the customer is gone. A label 0 is
    passed as 0 (the usual log loss of ``1 − q``); a label 1 as ``1 + ρ``. ``ρ = 0`` is the usual log loss; ``ρ = 1``
    (a stayer would be labelled 1 anyway) teaches nothing. The gradient is with respect to ``z``, as river's losses.

    >>> loss = NoisyLog()
    >>> round(loss.gradient(1.0, 0.0), 4), round(loss.gradient(1.5, 0.0), 4), loss.gradient(0, 0.0)
    (-0.5, -0.1667, 0.5)
    """

    def __call__(self, y_true: Any, y_pred: Any) -> Any:
        q = sigmoid(y_pred)
        if y_true < 1:
            return -math.log(max(1e-15, 1.0 - q))
        rho = min(1.0, float(y_true) - 1.0)
        return -math.log(max(1e-15, q + (1.0 - q) * rho))

    def gradient(self, y_true: Any, y_pred: Any) -> Any:
        q = sigmoid(y_pred)
        if y_true < 1:
            return q
        rho = min(1.0, float(y_true) - 1.0)
        return -q * (1.0 - q) * (1.0 - rho) / max(1e-15, q + (1.0 - q) * rho)


_MODEL_MAGIC = b"CVMCHURN"
_MODEL_FORMAT = 1


class ChurnModel:
    """An online churn classifier with river's verbs; predictions never change it.

    Parameters
    ----------
    kind
        ``logreg`` (standard-scaled logistic regression, the default), ``hat`` (Hoeffding adaptive tree) or ``arf``
        (adaptive random forest of ``n_models`` trees).
    lr
        Learning rate of the logistic regression: AdaGrad's for the weights (each feature's rate shrinks as its
        gradients add up, so the early pairs move the weights fast and later ones fine-tune), plain SGD's for the
        intercept.
    l2
        L2 penalty of the logistic regression.
    clip
        Scaled features are clipped to ``[-clip, clip]``: an outlier (or an early, barely-fitted scaler) cannot
        throw the weights off.
    n_models
        Trees of the ``arf`` forest.
    seed
        Seed of the tree models.
    features
        The model's inputs (None: :data:`MODEL_FEATURES`). Snapshots hold :data:`FEATURES`; the worker's rows too
        (:meth:`predict_many_with_reasons`), so a model reading other names is for studies only.
    noise_days
        The label rule's silence (after its offset), for a logistic regression that knows its labels are noisy: a
        customer who stays but buys less often than that is labelled 1 too, with probability
        ``ρ`` (:meth:`noise`, from the customer's own purchase record). The model then
        learns the probability ``q`` that the customer is gone, from ``P(label 1) = q + (1 − q) ρ`` (:class:`NoisyLog`).
        0 turns it off (plain log loss: the model learns the label's probability).

    Attributes
    ----------
    version
        The published version: the trainer increments it before :meth:`to_bytes` (0: never published).
    n_learned
        Pairs learned so far.

    Examples
    --------
    >>> m = ChurnModel()
    >>> for i in range(1000):
    ...     m.learn_one({"recency_days": float(i % 100), "frequency": 1.0}, int(i % 100 > 60))
    >>> m.churn_probability({"recency_days": 95.0}) > 0.5 > m.churn_probability({"recency_days": 5.0})
    True
    >>> m.reasons({"recency_days": 95.0, "frequency": 1.0}, k=1)
    ['recency_days +1.7']
    >>> copy = ChurnModel.from_bytes(m.to_bytes())
    >>> copy.n_learned, copy.churn_probability({"recency_days": 95.0}) == m.churn_probability({"recency_days": 95.0})
    (1000, True)
    >>> m.clone().n_learned
    0
    """

    def __init__(
        self,
        kind: str = "logreg",
        lr: float = 0.1,
        l2: float = 1e-4,
        clip: float = 5.0,
        n_models: int = 10,
        seed: int = 42,
        features: Sequence[str] | None = None,
        noise_days: float = 0.0,
    ) -> None:
        if kind not in MODELS:
            raise ValueError(f"unknown churn model {kind!r}: use one of {', '.join(MODELS)}")
        chosen = tuple(dict.fromkeys(MODEL_FEATURES if features is None else features))
        if not chosen:
            raise ValueError("a churn model needs at least one feature")
        if not noise_days >= 0:
            raise ValueError(f"noise_days must be >= 0, got {noise_days}")
        # FEATURES order first (the order rows come in), then any other names a study may give
        self.features = (*(n for n in FEATURES if n in chosen), *(n for n in chosen if n not in FEATURES))
        self.noise_days = float(noise_days)
        self.kind = kind
        self.lr = lr
        self.l2 = l2
        self.clip = clip
        self.n_models = n_models
        self.seed = seed
        self.version = 0
        self.n_learned = 0
        # Every kind keeps the scaler: the logistic regression learns on its output, and the reason codes of every
        # kind measure a feature against its running mean.
        self._scaler = preprocessing.StandardScaler()
        self._clf: Any
        if kind == "logreg":
            loss = NoisyLog() if self.noise_days else optim.losses.Log()
            self._clf = linear_model.LogisticRegression(
                optimizer=optim.AdaGrad(lr), loss=loss, l2=l2, intercept_lr=lr
            )
        elif kind == "hat":
            self._clf = tree.HoeffdingAdaptiveTreeClassifier(grace_period=100, seed=seed)
        else:
            self._clf = forest.ARFClassifier(n_models=n_models, seed=seed)

    # The scaler and the classifier are driven step by step rather than through a river Pipeline: a Pipeline's
    # predictions update its scaler inside `compose.learn_during_predict()`, a process-wide switch, and scoring
    # must never change the model whatever else runs in the process.

    def _scaled(self, z: dict[str, float]) -> dict[str, float]:
        c = self.clip
        return {k: min(c, max(-c, v)) for k, v in self._scaler.transform_one(z).items()}

    def _inputs(self, z: dict[str, float]) -> dict[str, float]:
        return self._scaled(z) if self.kind == "logreg" else z

    def noise(self, x: Mapping[str, float | None]) -> float:
        """ρ: the chance that this customer, staying, makes no purchase for ``noise_days`` and is labelled 1 anyway
        (0 when ``noise_days`` is off).

        The customer's purchases are Poisson at a rate unknown but for its ``frequency`` occasions in
        ``tenure_days``; with a Gamma(:data:`NOISE_PRIOR_SHAPE`, :data:`NOISE_PRIOR_DAYS`) prior on the rate, the
        chance of no purchase in H days is the negative binomial's ``((b + E) / (b + E + H)) ** (a + n)``: a customer
        seen buying rarely, or seen for a short time only, may well stay silent for H days.

        >>> m = ChurnModel(noise_days=60)
        >>> round(m.noise({"frequency": 0, "tenure_days": 0}), 3), round(m.noise({"frequency": 12, "tenure_days": 365}), 3)
        (0.333, 0.159)
        """
        if not self.noise_days:
            return 0.0
        n = x.get("frequency") or 0.0
        exposure = x.get("tenure_days") or 0.0
        if not (n == n and exposure == exposure):
            return 0.0
        b = NOISE_PRIOR_DAYS + max(0.0, float(exposure))
        return float((b / (b + self.noise_days)) ** (NOISE_PRIOR_SHAPE + max(0.0, float(n))))

    def learn_one(self, x: Mapping[str, float | None], y: int | bool) -> None:
        """Learn one matured pair: features ``x`` (as snapshotted) and label ``y`` (1: churned)."""
        z = prepare(x, self.features)
        self._scaler.learn_one(z)
        target: float | bool = bool(y)
        if self.kind == "logreg" and self.noise_days and y:
            target = 1.0 + self.noise(x)  # NoisyLog's encoding of a 1 and its ρ
        self._clf.learn_one(self._inputs(z), target)
        self.n_learned += 1

    def label_probability(self, x: Mapping[str, float | None]) -> float:
        """The probability that the label rule labels this customer 1: ``q + (1 − q) ρ``, what matured labels test
        (progressive validation); :meth:`churn_probability` without label noise."""
        q = self.churn_probability(x)
        rho = self.noise(x) if self.kind == "logreg" else 0.0
        return q + (1.0 - q) * rho

    def predict_proba_one(self, x: Mapping[str, float | None]) -> dict[bool, float]:
        """``{False: p(stays), True: p(churns)}``, river's form; changes nothing."""
        p = self.churn_probability(x)
        return {False: 1.0 - p, True: p}

    def churn_probability(self, x: Mapping[str, float | None]) -> float:
        """The probability that the customer churns under the label rule; changes nothing."""
        return self._p(self._inputs(prepare(x, self.features)))

    def _p(self, inputs: dict[str, float]) -> float:
        return float(self._clf.predict_proba_one(inputs).get(True, 0.0))

    def contributions(self, x: Mapping[str, float | None]) -> dict[str, float]:
        """Each present feature's signed push on the churn log-odds, measured against the feature's running mean.

        Logistic regression: weight × scaled value (exact). Trees: the change of the log-odds when the feature is
        set to its mean (one extra prediction per feature). Positive: raises the churn risk.
        """
        return self._explain(prepare(x, self.features))[1]

    def _explain(self, z: dict[str, float]) -> tuple[float, dict[str, float]]:
        if self.kind == "logreg":
            scaled = self._scaled(z)
            weights = self._clf.weights
            return self._p(scaled), {k: weights.get(k, 0.0) * v for k, v in scaled.items()}
        means = self._scaler.means
        p = self._p(z)
        base = _logit(p)
        return p, {k: base - _logit(self._p({**z, k: means[k]})) for k in z if k in means}

    def reasons(self, x: Mapping[str, float | None], k: int = 3) -> list[str]:
        """The ``k`` largest contributions (see :meth:`contributions`) as ``"name +1.8"`` (log-odds), largest first.

        Contributions that round to zero are left out, so a fresh model gives no reasons.
        """
        return _top(self.contributions(x), k)

    def predict_with_reasons(self, x: Mapping[str, float | None], k: int = 3) -> tuple[float, list[str]]:
        """:meth:`churn_probability` and :meth:`reasons` in one pass (what a worker calls on every update).

        >>> ChurnModel().predict_with_reasons({"recency_days": 10.0})
        (0.5, [])
        """
        p, contributions = self._explain(prepare(x, self.features))
        return p, _top(contributions, k)

    def predict_many_with_reasons(
        self, rows: Sequence[Sequence[float | None]], k: int = 3
    ) -> list[tuple[float, list[str]]]:
        """:meth:`predict_with_reasons` of many customers in one pass; ``rows`` hold the :data:`FEATURES` in order
        (None or NaN: missing).

        The logistic regression is scored with numpy over the whole batch in the very floating-point operations,
        in the same order, as one :meth:`predict_with_reasons` call per row, so the results are the same floats and
        the same strings; the transcendental steps (``log1p``, the sigmoid) stay in Python's ``math``, whose
        results numpy's vectorised versions need not match to the last bit. Tree models, and rows the vectorised
        form would treat differently (NaN after scaling), go through :meth:`predict_with_reasons` one at a time.

        >>> m = ChurnModel()
        >>> for i in range(200):
        ...     m.learn_one({"recency_days": float(i % 100), "frequency": 1.0}, int(i % 100 > 60))
        >>> rows = [[95.0, 1.0] + [None] * (len(FEATURES) - 2), [float("nan"), 3.0] + [0.5] * (len(FEATURES) - 2)]
        >>> m.predict_many_with_reasons(rows) == [m.predict_with_reasons(dict(zip(FEATURES, r))) for r in rows]
        True
        """
        if not rows:
            return []
        one = self.predict_with_reasons
        scaler = self._scaler
        if (
            self.kind != "logreg"
            or not isinstance(self._clf, linear_model.LogisticRegression)
            or type(self._clf.loss) not in (optim.losses.Log, NoisyLog)
            or getattr(scaler, "window_size", None) is not None
            or not scaler.with_std
        ):
            return [one(dict(zip(FEATURES, row, strict=True)), k) for row in rows]
        means, variances, weights = scaler.means, scaler.vars, self._clf.weights
        mean = [means.get(name, 0.0) for name in FEATURES]
        var = [variances.get(name, 0.0) for name in FEATURES]
        if not all(isinstance(v, float | int) and v >= 0 for v in var):  # v ** 0.5 would not be a real number
            return [one(dict(zip(FEATURES, row, strict=True)), k) for row in rows]
        z = _prepared(rows)
        present = ~np.isnan(z)
        c = self.clip
        with np.errstate(all="ignore"):
            scaled = np.zeros(z.shape)
            for j, v in enumerate(var):
                if v:
                    scaled[:, j] = (z[:, j] - mean[j]) / v**0.5
            bad = present & np.isnan(scaled)  # Python's min/max treat NaN apart from numpy's
            scaled = np.minimum(c, np.maximum(-c, scaled))
            # river's dot product: the present features in FEATURES order, those without a weight skipped
            acc = np.zeros(len(rows))
            for j, name in enumerate(FEATURES):
                if name in weights:
                    acc = np.where(present[:, j], acc + weights[name] * scaled[:, j], acc)
            raw = acc + self._clf.intercept
            contrib = scaled * np.array([weights.get(name, 0.0) for name in FEATURES])
            bad |= present & np.isnan(contrib)
            order = np.argsort(np.where(present, -np.abs(contrib), np.inf), axis=1, kind="stable")[:, :k]
        redo = bad.any(axis=1)
        out: list[tuple[float, list[str]]] = []
        for i in range(len(rows)):
            if redo[i]:
                out.append(one(dict(zip(FEATURES, rows[i], strict=True)), k))
                continue
            reasons = []
            for j in order[i].tolist():
                if not present[i, j]:
                    break
                value = float(contrib[i, j])
                if round(value, 1) != 0:
                    reasons.append(f"{FEATURES[j]} {value:+.1f}")
            out.append((float(sigmoid(float(raw[i]))), reasons))
        return out

    # --- lifecycle -------------------------------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The constructor's parameters."""
        return {
            "kind": self.kind,
            "lr": self.lr,
            "l2": self.l2,
            "clip": self.clip,
            "n_models": self.n_models,
            "seed": self.seed,
            "features": self.features,
            "noise_days": self.noise_days,
        }

    def clone(self) -> ChurnModel:
        """A fresh, untrained model with the same parameters."""
        return ChurnModel(**self.params())

    def to_bytes(self) -> bytes:
        """The model as published: a versioned header, then a pickle (trusted topics only: unpickling runs code)."""
        body = pickle.dumps(
            {
                "params": self.params(),
                "version": self.version,
                "n_learned": self.n_learned,
                "scaler": self._scaler,
                "clf": self._clf,
                "river": river.__version__,
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        return _MODEL_MAGIC + bytes([_MODEL_FORMAT]) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> ChurnModel:
        """The model that :meth:`to_bytes` wrote; ValueError when the bytes are not a churn model of this format."""
        head = len(_MODEL_MAGIC)
        if data[:head] != _MODEL_MAGIC or len(data) <= head:
            raise ValueError("not a cvm churn model")
        if data[head] != _MODEL_FORMAT:
            raise ValueError(f"unknown churn model format {data[head]}")
        state = pickle.loads(data[head + 1 :])
        m = cls(**state["params"])
        if "features" in state["params"]:  # the very objects the scaler's keys share: bytes round-trip exactly
            m.features = state["params"]["features"]
        m.version = state["version"]
        m.n_learned = state["n_learned"]
        m._scaler = state["scaler"]
        m._clf = state["clf"]
        return m

    def __repr__(self) -> str:
        return f"ChurnModel(kind={self.kind!r}, version={self.version}, n_learned={self.n_learned})"


def _prepared(rows: Sequence[Sequence[float | None]]) -> Any:
    """:func:`prepare` of rows of :data:`FEATURES` values, as a matrix (NaN: missing).

    The heavy tails are compressed with Python's ``math`` a column at a time, so each value is the float
    :func:`prepare` gives.
    """
    try:
        z = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # None among the values, or a number numpy will not convert
        z = np.array([[math.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != len(FEATURES):
        raise ValueError(f"churn rows must hold the {len(FEATURES)} FEATURES, got shape {z.shape}")
    log1p, copysign = math.log1p, math.copysign
    for j in _LOG_INDEX:
        z[:, j] = [copysign(log1p(abs(v)), v) for v in z[:, j].tolist()]
    return z


def _top(contributions: dict[str, float], k: int) -> list[str]:
    top = sorted(contributions.items(), key=lambda kv: -abs(kv[1]))[:k]
    return [f"{name} {c:+.1f}" for name, c in top if round(c, 1) != 0]


def _logit(p: float) -> float:
    p = min(1.0 - 1e-9, max(1e-9, p))
    return math.log(p / (1.0 - p))
