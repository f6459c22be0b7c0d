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
    "MODELS",
    "ChurnModel",
    "LabelRule",
    "Matured",
    "PendingLabels",
    "Snapshot",
    "pack_snapshot",
    "prepare",
    "unpack_snapshot",
]

DAY_MS = 86_400_000

#: The churn model's inputs, in their packed order. Append only: a snapshot records how many of these it holds,
#: so snapshots packed before a feature was added still unpack (the new feature is missing from them).
FEATURES: tuple[str, ...] = (
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

#: Heavy-tailed features (counts, money, days): the model sees ``sign(v) * log1p(|v|)`` of them.
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

    The **deadline** of a snapshot is ``s + silence_ms``, or ``c + grace_ms`` when a cancellation request ``c``
    follows the snapshot (``c > s``) and that comes first. The first decisive thing after ``s`` settles the label:

    * a purchase ``p`` with ``s < p <= deadline`` gives **0**, known at ``p``;
    * stream time passing the deadline with no such purchase gives **1**, known at the deadline.

    So a customer silent for ``silence_ms`` after a snapshot has churned, and so has one who asked to cancel and did
    not buy within ``grace_ms`` of asking. "Purchase" means a transaction with a positive amount (a refund is not
    one). Times are event times in ms.

    >>> rule = LabelRule.from_days(silence_days=90, grace_days=30)
    >>> rule.deadline(0) // DAY_MS, rule.deadline(0, cancel_ms=20 * DAY_MS) // DAY_MS
    (90, 50)
    >>> rule.on_purchase(0, 89 * DAY_MS), rule.on_purchase(0, 91 * DAY_MS)
    (0, None)
    >>> rule.on_time(0, 90 * DAY_MS), rule.on_time(0, 90 * DAY_MS + 1)
    (None, 1)
    >>> rule.on_time(0, 51 * DAY_MS, cancel_ms=20 * DAY_MS)  # asked to cancel, then 30 days without a purchase
    1
    """

    silence_ms: int = 90 * DAY_MS
    grace_ms: int = 30 * DAY_MS

    def __post_init__(self) -> None:
        if self.silence_ms <= 0 or self.grace_ms < 0:
            raise ValueError(f"churn label rule: silence {self.silence_ms} ms must be > 0, grace >= 0")

    @classmethod
    def from_days(cls, silence_days: float, grace_days: float) -> LabelRule:
        """The rule for ``CVM_CHURN_SILENCE_DAYS`` and ``CVM_CHURN_CANCEL_GRACE_DAYS``."""
        return cls(int(silence_days * DAY_MS), int(grace_days * DAY_MS))

    def deadline(self, snapshot_ms: int, cancel_ms: int | None = None) -> int:
        """The event time after which a snapshot with no purchase since is labelled 1 (set a timer at it)."""
        end = snapshot_ms + self.silence_ms
        if cancel_ms is not None and cancel_ms > snapshot_ms:
            end = min(end, cancel_ms + self.grace_ms)
        return end

    def on_purchase(self, snapshot_ms: int, purchase_ms: int, cancel_ms: int | None = None) -> int | None:
        """0 when a purchase at ``purchase_ms`` settles the snapshot, else None (it says nothing about it).

        A purchase after the deadline settles nothing by itself: the deadline passing does (:meth:`on_time`),
        unless a purchase within it, delivered late, arrives first.
        """
        if snapshot_ms < purchase_ms <= self.deadline(snapshot_ms, cancel_ms):
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
        """The label as known at ``now_ms``, from the first purchase after the snapshot (None: none yet).

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
_FLOATS = {n: struct.Struct(f"<{n}f") for n in range(len(FEATURES) + 1)}


def pack_snapshot(time_ms: int, features: Mapping[str, float]) -> bytes:
    """A snapshot as bytes: its time and the :data:`FEATURES` as float32, in order (93 bytes for 21 features).

    A feature missing from ``features`` (or None) is packed as NaN and comes back missing; names outside
    :data:`FEATURES` are not kept.

    >>> data = pack_snapshot(1_700_000_000_000, {"recency_days": 2.5, "frequency": 3.0})
    >>> len(data)
    93
    >>> unpack_snapshot(data)
    Snapshot(time_ms=1700000000000, features={'recency_days': 2.5, 'frequency': 3.0})
    """
    values = []
    for name in FEATURES:
        v = features.get(name)
        values.append(math.nan if v is None else float(v))
    return _SNAP_HEAD.pack(len(FEATURES), time_ms) + _FLOATS[len(FEATURES)].pack(*values)


def unpack_snapshot(data: bytes, offset: int = 0) -> Snapshot:
    """The :class:`Snapshot` that :func:`pack_snapshot` packed (starting at ``offset`` of ``data``)."""
    n, time_ms = _SNAP_HEAD.unpack_from(data, offset)
    values = _FLOATS[n].unpack_from(data, offset + _SNAP_HEAD.size)
    return Snapshot(time_ms, {name: v for name, v in zip(FEATURES, values, strict=False) if v == v})


def _snapshot_size(data: bytes, offset: int) -> int:
    return _SNAP_HEAD.size + 4 * data[offset]


# --- a customer's pending labels ------------------------------------------------------------------------------------


class Matured(NamedTuple):
    """A snapshot whose label is known: learn ``(features, label)`` once. ``label_ms`` is when it became known."""

    snapshot_ms: int
    label_ms: int
    label: int
    features: dict[str, float]


_PENDING_HEAD = struct.Struct("<BqB")  # format, time of the last snapshot taken, number pending
_CANCEL = struct.Struct("<Q")  # ms from the snapshot to the first cancellation request after it (> 0); 0: none
_PENDING_FORMAT = 1
_NEVER = -(1 << 62)  # the time of the last snapshot before the first one


class PendingLabels:
    """One customer's snapshots waiting for their label, bounded; kept in the customer's state as bytes.

    Pure and deterministic: the worker calls :meth:`offer` when it scores the customer, :meth:`purchase` and
    :meth:`cancellation` on those events, :meth:`advance` when stream time moves (per-customer timer at
    :meth:`next_deadline`), and sends every :class:`Matured` it gets back to the trainer. A pair's identity is
    ``(customer_id, snapshot_ms)``: the trainer can drop a pair it has seen (redelivery after a crash).

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
    """

    __slots__ = ("last_snapshot_ms", "entries")

    def __init__(self) -> None:
        self.last_snapshot_ms = _NEVER
        # [snapshot_ms, packed snapshot, first cancellation request after it (ms) or None], oldest first
        self.entries: list[list[Any]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def offer(self, now_ms: int, features: Mapping[str, float], every_ms: int, max_pending: int) -> bool:
        """Keep a snapshot of ``features`` at ``now_ms`` if the last one is ``every_ms`` old and there is room."""
        if now_ms - self.last_snapshot_ms < every_ms:
            return False
        if len(self.entries) >= max_pending or any(e[0] >= now_ms for e in self.entries):
            return False
        self.entries.append([now_ms, pack_snapshot(now_ms, features), None])
        self.last_snapshot_ms = now_ms
        return True

    def cancellation(self, t_ms: int) -> None:
        """Record a cancellation request at ``t_ms`` against the snapshots it follows (the earliest one counts)."""
        for e in self.entries:
            if e[0] < t_ms and (e[2] is None or t_ms < e[2]):
                e[2] = t_ms

    def purchase(self, t_ms: int, rule: LabelRule) -> list[Matured]:
        """A purchase at ``t_ms``: the snapshots it settles as 0, removed from the pending ones."""
        if not self.entries:
            return []
        done = [e for e in self.entries if rule.on_purchase(e[0], t_ms, e[2]) == 0]
        if not done:
            return []
        self.entries = [e for e in self.entries if e not in done]
        return [Matured(e[0], t_ms, 0, unpack_snapshot(e[1]).features) for e in done]

    def advance(self, now_ms: int, rule: LabelRule) -> list[Matured]:
        """Stream time is ``now_ms``: the snapshots whose deadline it passed, labelled 1 and removed."""
        if not self.entries:
            return []
        done = [e for e in self.entries if rule.on_time(e[0], now_ms, e[2]) == 1]
        if not done:
            return []
        self.entries = [e for e in self.entries if e not in done]
        return [Matured(e[0], rule.deadline(e[0], e[2]), 1, unpack_snapshot(e[1]).features) for e in done]

    def next_deadline(self, rule: LabelRule) -> int | None:
        """The earliest deadline among the pending snapshots: when to call :meth:`advance` next."""
        return min((rule.deadline(e[0], e[2]) for e in self.entries), default=None)

    def to_bytes(self) -> bytes:
        out = [_PENDING_HEAD.pack(_PENDING_FORMAT, self.last_snapshot_ms, len(self.entries))]
        for s, packed, cancel in self.entries:
            out.append(_CANCEL.pack(0 if cancel is None else cancel - s))
            out.append(packed)
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> PendingLabels:
        fmt, last, n = _PENDING_HEAD.unpack_from(data, 0)
        if fmt != _PENDING_FORMAT:
            raise ValueError(f"unknown pending-labels format {fmt}")
        p = cls()
        p.last_snapshot_ms = last
        pos = _PENDING_HEAD.size
        for _ in range(n):
            (delta,) = _CANCEL.unpack_from(data, pos)
            pos += _CANCEL.size
            size = _snapshot_size(data, pos)
            packed = bytes(data[pos : pos + size])
            s = _SNAP_HEAD.unpack_from(packed, 0)[1]
            p.entries.append([s, packed, s + delta if delta else None])
            pos += size
        return p

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PendingLabels):
            return NotImplemented
        return self.last_snapshot_ms == other.last_snapshot_ms and self.entries == other.entries

    def __repr__(self) -> str:
        return f"PendingLabels(pending={[e[0] for e in self.entries]})"


# --- the model ------------------------------------------------------------------------------------------------------


def prepare(x: Mapping[str, float | None]) -> dict[str, float]:
    """The model's view of a feature dict: known features only, heavy tails compressed, missing values dropped.

    >>> prepare({"recency_days": math.e - 1, "profitability": -(math.e - 1), "p_alive": 0.5, "other": 1.0})
    {'recency_days': 1.0, 'p_alive': 0.5, 'profitability': -1.0}
    >>> prepare({"recency_days": None, "frequency": float("nan")})
    {}
    """
    out = {}
    for name in FEATURES:
        v = x.get(name)
        if v is None or v != v:
            continue
        v = float(v)
        if name in _LOG_FEATURES:
            v = math.copysign(math.log1p(abs(v)), v)
        out[name] = v
    return out


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
    ) -> None:
        if kind not in MODELS:
            raise ValueError(f"unknown churn model {kind!r}: use one of {', '.join(MODELS)}")
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
            self._clf = linear_model.LogisticRegression(optimizer=optim.AdaGrad(lr), l2=l2, intercept_lr=lr)
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

    def learn_one(self, x: Mapping[str, float | None], y: int | bool) -> None:
        """Learn one matured pair: features ``x`` (as snapshotted) and label ``y`` (1: churned)."""
        z = prepare(x)
        self._scaler.learn_one(z)
        self._clf.learn_one(self._inputs(z), bool(y))
        self.n_learned += 1

    def predict_proba_one(self, x: Mapping[str, float | None]) -> dict[bool, float]:
        """``{False: p(stays), True: p(churns)}``, river's form; changes nothing."""
        p = self.churn_probability(x)
        return {False: 1.0 - p, True: p}

    def churn_probability(self, x: Mapping[str, float | None]) -> float:
        """The probability that the customer churns under the label rule; changes nothing."""
        return self._p(self._inputs(prepare(x)))

    def _p(self, inputs: dict[str, float]) -> float:
        return float(self._clf.predict_proba_one(inputs).get(True, 0.0))

    def contributions(self, x: Mapping[str, float | None]) -> dict[str, float]:
        """Each present feature's signed push on the churn log-odds, measured against the feature's running mean.

        Logistic regression: weight × scaled value (exact). Trees: the change of the log-odds when the feature is
        set to its mean (one extra prediction per feature). Positive: raises the churn risk.
        """
        return self._explain(prepare(x))[1]

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
        p, contributions = self._explain(prepare(x))
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
            or not isinstance(self._clf.loss, optim.losses.Log)
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
