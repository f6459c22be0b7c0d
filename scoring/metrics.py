"""How good the churn model is: progressive validation on matured pairs, and the simulator's ground truth.

Progressive validation scores each matured (features, label) pair with the current model *before* learning it, so
every pair is an honest out-of-sample test. :class:`ProgressiveMetrics` keeps, over all pairs and over the last
``window`` pairs, ROC AUC, log loss, Brier score and expected calibration error, plus ADWIN drift detection on the
per-pair log loss. :meth:`ProgressiveMetrics.rows` gives the ``cvm.model_metrics`` rows.

ROC AUC: river's ``metrics.ROCAUC`` interpolates a ROC curve over ``n_thresholds`` (10 by default) evenly spaced
probability thresholds; with churn probabilities crowded below 0.2 it is coarse. Here the all-pairs AUC counts
scores in 2,400 bins of width 0.01 on the log-odds scale (ties within a bin count one half, as tied scores do in
the exact AUC): memory and update are constant and the error is below the share of positive/negative pairs that
share a bin. The window AUC is exact (ranks with ties averaged).

>>> pm = ProgressiveMetrics(window=100)
>>> for p, y in [(0.1, 0), (0.2, 0), (0.7, 1), (0.4, 1), (0.3, 0)]:
...     _ = pm.update(p, y)
>>> m = pm.snapshot()
>>> m["n_pairs"], m["positive_rate"], m["roc_auc"], m["roc_auc_window"]
(5.0, 0.4, 1.0, 1.0)
>>> round(m["brier"], 3)
0.118
"""

from __future__ import annotations

import json
import math
import pickle
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from river import drift

__all__ = [
    "DriftEvent",
    "GroundTruth",
    "ProgressiveMetrics",
    "read_truth",
    "roc_auc",
    "truth_auc",
]

_EPS = 1e-7  # probabilities are clipped to [_EPS, 1 - _EPS] for the log loss
_AUC_BINS = 2400
_AUC_LOGIT = 12.0  # the bins cover log-odds -12..12; beyond, the edge bins


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The exact ROC AUC (Mann-Whitney, tied scores averaged); NaN when one class is absent.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> roc_auc([0.5, 0.5], [0, 1]), math.isnan(roc_auc([0.1], [1]))
    (0.5, True)
    """
    n = len(scores)
    n_pos = sum(1 for y in labels if y)
    n_neg = n - n_pos
    if not n_pos or not n_neg:
        return math.nan
    order = sorted(range(n), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if labels[order[k]])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _clip(p: float) -> float:
    return min(1.0 - _EPS, max(_EPS, p))


def _log_loss(p: float, y: int) -> float:
    p = _clip(p)
    return -math.log(p if y else 1.0 - p)


def _ece(pairs: Iterable[tuple[float, int]], bins: int = 10) -> float:
    """Expected calibration error: the gap between mean score and positive rate, over equal-width score bins.

    >>> round(_ece([(0.05, 0), (0.15, 0), (0.95, 1)]), 4)
    0.0833
    """
    n = [0] * bins
    sum_p = [0.0] * bins
    sum_y = [0] * bins
    for p, y in pairs:
        b = min(bins - 1, int(p * bins))
        n[b] += 1
        sum_p[b] += p
        sum_y[b] += y
    total = sum(n)
    if not total:
        return math.nan
    return sum(abs(sum_p[b] - sum_y[b]) for b in range(bins) if n[b]) / total


class DriftEvent(NamedTuple):
    """ADWIN saw the loss change: after ``n_pairs`` pairs, at event time ``time_ms``; ``loss`` is its new mean."""

    n_pairs: int
    time_ms: int
    loss: float


class ProgressiveMetrics:
    """Progressive-validation metrics of a binary probabilistic classifier: call :meth:`update` with each pair's
    score (computed before learning the pair) and label.

    Parameters
    ----------
    window
        How many recent pairs the ``*_window`` metrics cover.
    ece_bins
        Equal-width score bins of the expected calibration error.
    drift_delta
        ADWIN's confidence: smaller, fewer and surer drift detections.
    """

    def __init__(self, window: int = 5000, ece_bins: int = 10, drift_delta: float = 0.002) -> None:
        self.window = window
        self.ece_bins = ece_bins
        self.drift_delta = drift_delta
        self.n = 0
        self.n_pos = 0
        self.sum_log_loss = 0.0
        self.sum_brier = 0.0
        self._pos_bins = [0] * _AUC_BINS
        self._neg_bins = [0] * _AUC_BINS
        self._cal_n = [0] * ece_bins
        self._cal_p = [0.0] * ece_bins
        self._cal_y = [0] * ece_bins
        self._recent: deque[tuple[float, int]] = deque(maxlen=window)
        self._adwin = drift.ADWIN(delta=drift_delta)
        self.drifts: list[DriftEvent] = []  # since the last :meth:`take_drifts`
        self.n_drifts = 0

    def update(self, p: float, y: int | bool, time_ms: int = 0) -> bool:
        """Count one pair: ``p`` the churn probability predicted before learning, ``y`` the label. True on drift."""
        y = int(bool(y))
        p = float(p)
        loss = _log_loss(p, y)
        self.n += 1
        self.n_pos += y
        self.sum_log_loss += loss
        self.sum_brier += (p - y) ** 2
        z = math.log(_clip(p) / (1.0 - _clip(p)))
        b = min(_AUC_BINS - 1, max(0, int((z + _AUC_LOGIT) * _AUC_BINS / (2 * _AUC_LOGIT))))
        (self._pos_bins if y else self._neg_bins)[b] += 1
        c = min(self.ece_bins - 1, int(p * self.ece_bins))
        self._cal_n[c] += 1
        self._cal_p[c] += p
        self._cal_y[c] += y
        self._recent.append((p, y))
        self._adwin.update(loss)
        if self._adwin.drift_detected:
            self.n_drifts += 1
            self.drifts.append(DriftEvent(self.n, time_ms, self._adwin.estimation))
            del self.drifts[:-100]  # bounded if nobody takes them
            return True
        return False

    def take_drifts(self) -> list[DriftEvent]:
        """The drift events since the last call (for ``cvm.model_metrics``), and forget them."""
        out, self.drifts = self.drifts, []
        return out

    def roc_auc(self) -> float:
        """ROC AUC over every pair so far, from the log-odds bins (see the module docstring)."""
        n_pos, n_neg = self.n_pos, self.n - self.n_pos
        if not n_pos or not n_neg:
            return math.nan
        below = 0
        wins = 0.0
        for neg, pos in zip(self._neg_bins, self._pos_bins, strict=True):
            wins += pos * (below + 0.5 * neg)
            below += neg
        return wins / (n_pos * n_neg)

    def snapshot(self) -> dict[str, float]:
        """Metric name → value, over all pairs and (``*_window``) the last ``window`` pairs; NaN when undefined."""
        n = self.n
        recent = list(self._recent)
        nw = len(recent)
        total = sum(self._cal_n)
        ece = (
            sum(abs(self._cal_p[b] - self._cal_y[b]) for b in range(self.ece_bins) if self._cal_n[b]) / total
            if total
            else math.nan
        )
        return {
            "n_pairs": float(n),
            "positive_rate": self.n_pos / n if n else math.nan,
            "roc_auc": self.roc_auc(),
            "log_loss": self.sum_log_loss / n if n else math.nan,
            "brier": self.sum_brier / n if n else math.nan,
            "ece": ece,
            "roc_auc_window": roc_auc([p for p, _ in recent], [y for _, y in recent]),
            "log_loss_window": sum(_log_loss(p, y) for p, y in recent) / nw if nw else math.nan,
            "brier_window": sum((p - y) ** 2 for p, y in recent) / nw if nw else math.nan,
            "ece_window": _ece(recent, self.ece_bins),
            "positive_rate_window": sum(y for _, y in recent) / nw if nw else math.nan,
            "drift_loss_mean": self._adwin.estimation if n else math.nan,
            "n_drifts": float(self.n_drifts),
        }

    def rows(self, time_ms: int, model_version: int) -> list[tuple[int, int, str, float]]:
        """``(time, model_version, metric, value)`` rows for ``cvm.model_metrics``: the defined metrics, then one
        ``drift`` row (value: the loss mean after the change) per drift event since the last call.

        >>> pm = ProgressiveMetrics()
        >>> _ = pm.update(0.9, 1)
        >>> [(metric, value) for _, _, metric, value in pm.rows(1000, 3)][:2]
        [('n_pairs', 1.0), ('positive_rate', 1.0)]
        """
        rows = [(time_ms, model_version, k, v) for k, v in self.snapshot().items() if not math.isnan(v)]
        rows += [(d.time_ms or time_ms, model_version, "drift", d.loss) for d in self.take_drifts()]
        return rows

    def to_bytes(self) -> bytes:
        """The metrics' state, so that a restarted trainer goes on counting (a pickle: trusted storage only)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> ProgressiveMetrics:
        obj = pickle.loads(data)
        if not isinstance(obj, cls):
            raise ValueError("not progressive churn metrics")
        return obj


# --- the simulator's ground truth -----------------------------------------------------------------------------------


class GroundTruth(NamedTuple):
    """What ``cvm simulate --truth`` says about one customer: its churn time (ms) if it churned, and the cause."""

    churn_ms: int | None
    cause: str | None
    segment: str


def read_truth(lines: Iterable[str] | str) -> dict[str, GroundTruth]:
    """customer_id → :class:`GroundTruth`, from a ``--truth`` file's path or its lines.

    >>> line = '{"customer_id":"c1","segment":"regular","acquired_at":"2025-01-01T00:00:00.000Z",'
    >>> line += '"churned":true,"churn_time":"2025-03-01T00:00:00.000Z","cause":"price"}'
    >>> read_truth([line])["c1"]
    GroundTruth(churn_ms=1740787200000, cause='price', segment='regular')
    """
    from cvm.events import parse_time  # the wire's time format; cvm.events is pure

    if isinstance(lines, str):
        with open(lines, encoding="utf-8") as fh:
            return read_truth(fh.readlines())
    out = {}
    for line in lines:
        if not line.strip():
            continue
        rec = json.loads(line)
        churn = parse_time(rec["churn_time"]) if rec.get("churned") and rec.get("churn_time") else None
        out[rec["customer_id"]] = GroundTruth(churn, rec.get("cause"), rec.get("segment", ""))
    return out


def truth_auc(
    truth: Mapping[str, GroundTruth],
    scored: Iterable[tuple[str, int, float]],
    horizon_ms: int,
    as_of_ms: int,
) -> dict[str, Any]:
    """ROC AUC of scores against real churn: did the customer truly leave within ``horizon_ms`` of being scored?

    ``scored`` holds ``(customer_id, time_ms, churn_probability)``. Only scores whose horizon ends by ``as_of_ms``
    (the truth file's end) count, since a later churn is unknown; customers missing from ``truth`` are skipped.
    Returns the AUC, the counts and the AUC per churn cause (each cause's churners against all who stayed).

    >>> t = {"a": GroundTruth(100, "price", "regular"), "b": GroundTruth(None, None, "regular")}
    >>> r = truth_auc(t, [("a", 50, 0.8), ("b", 50, 0.3), ("b", 900, 0.9)], horizon_ms=60, as_of_ms=500)
    >>> r["roc_auc"], r["n"], r["n_churned"], r["by_cause"]
    (1.0, 2, 1, {'price': 1.0})
    """
    scores: list[float] = []
    labels: list[int] = []
    causes: list[str | None] = []
    for cid, t, p in scored:
        g = truth.get(cid)
        if g is None or t + horizon_ms > as_of_ms:
            continue
        y = int(g.churn_ms is not None and g.churn_ms <= t + horizon_ms)
        scores.append(p)
        labels.append(y)
        causes.append(g.cause if y else None)
    by_cause = {}
    stay = [i for i, y in enumerate(labels) if not y]
    for cause in sorted({c for c in causes if c}):
        idx = stay + [i for i, c in enumerate(causes) if c == cause]
        by_cause[cause] = roc_auc([scores[i] for i in idx], [labels[i] for i in idx])
    return {"roc_auc": roc_auc(scores, labels), "n": len(scores), "n_churned": sum(labels), "by_cause": by_cause}
