"""Alerts and churn scores judged against what really happened: the metrics of ``cvm backtest`` and docs/churn.md.

Every function takes plain arrays — the rows ``cvm backtest`` reads back from ClickHouse (score history, alerts)
and the churn times of ``cvm simulate --truth`` — so the offline study (``tests/scoring/churn_study.py``) and the
backtest of the running stack compute the same figures the same way. Customers are integer codes (use
:func:`codes` on ids), times are event times in ms, a churn time is ``inf`` for a customer who has not left.

Definitions (issue 13; docs/churn.md):

* **Evaluation window**: the last ``window_days`` (250) of the history, without the final ``outcome_days`` (90),
  so that every outcome in it is known: :meth:`Window.of_history`.
* **Checkpoints**: monthly (every 30 days) from the window's start. At a checkpoint a customer's score and tier are
  those of its latest scoring at or before it; customers who left by then are out.
* **Base rate**: among tier-A customers at the checkpoints, the share who leave within 90 days after it.
* **Precision** of an alert rule: the share of its alerts in the window whose customer leaves within 90 days after
  the alert (an alert after the customer left is a miss). **Lift** = precision / base rate.
* **Caught ahead**: among the high-value customers (tier A at some scoring in the 180 days before leaving) who leave
  in the window, the share whose first alert in the 90 days before leaving came at least 30 days before it. The
  **lead** of an alerted leaver is its leaving time minus that first alert.

>>> day = 86_400_000
>>> w = Window.of_history(history_end_ms=400 * day)
>>> (w.start_ms // day, w.end_ms // day), [int(c // day) for c in checkpoints(w)]
((150, 310), [150, 180, 210, 240, 270, 300])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

__all__ = [
    "DAY_MS",
    "CheckpointTable",
    "Window",
    "alert_precision",
    "auc",
    "base_rate",
    "caught_ahead",
    "checkpoint_table",
    "checkpoints",
    "codes",
    "defection_signals",
    "ece",
    "latest_at",
    "threshold_alerts",
    "truth_auc",
]

DAY_MS = 86_400_000
_SHIFT = 42  # customer code << 42 | time offset: times within 139 years of the earliest one fit


class Window(NamedTuple):
    """The event-time span ``[start_ms, end_ms]`` whose checkpoints, alerts and leavings are judged."""

    start_ms: int
    end_ms: int

    @classmethod
    def of_history(cls, history_end_ms: int, window_days: float = 250.0, outcome_days: float = 90.0) -> Window:
        """The last ``window_days`` of a history ending at ``history_end_ms``, without its last ``outcome_days``."""
        return cls(int(history_end_ms - window_days * DAY_MS), int(history_end_ms - outcome_days * DAY_MS))


def checkpoints(window: Window, every_days: float = 30.0) -> NDArray[np.int64]:
    """The checkpoint times of a window: its start, then every ``every_days`` while inside it."""
    step = int(every_days * DAY_MS)
    return np.arange(window.start_ms, window.end_ms + 1, step, dtype=np.int64)


def codes(ids: Sequence[str] | ArrayLike, universe: Sequence[str] | None = None) -> tuple[NDArray[np.int64], list[str]]:
    """Integer codes of customer ids, and the ids in code order (``universe`` fixes the order, e.g. the truth's).

    >>> codes(["b", "a", "b"])
    (array([1, 0, 1]), ['a', 'b'])
    >>> codes(["b", "z"], universe=["b", "a"])[0]
    array([ 0, -1])
    """
    arr = np.asarray(ids, dtype=object)
    if universe is None:
        names, inv = np.unique(arr.astype(str), return_inverse=True)
        return inv.astype(np.int64), names.tolist()
    lookup = {name: i for i, name in enumerate(universe)}
    return np.array([lookup.get(str(v), -1) for v in arr], dtype=np.int64), list(universe)


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact ROC AUC (Mann-Whitney, ties averaged), vectorised; NaN when a class is absent.

    >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), auc([0.5, 0.5], [0, 1]), math.isnan(auc([0.1], [1]))
    (0.75, 0.5, True)
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if not n_pos or not n_neg:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ece(p: ArrayLike, y: ArrayLike, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins (as :mod:`scoring.metrics`).

    >>> round(ece([0.05, 0.15, 0.95], [0, 0, 1]), 4)
    0.0833
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not p.size:
        return math.nan
    b = np.minimum(bins - 1, (p * bins).astype(np.int64))
    gap = np.abs(np.bincount(b, p, bins) - np.bincount(b, y, bins))
    return float(gap.sum() / p.size)


def latest_at(customer: ArrayLike, time: ArrayLike, at: ArrayLike, n_customers: int) -> NDArray[np.int64]:
    """Row index of each customer's latest scoring at or before each time of ``at``: shape (len(at), n_customers),
    -1 where the customer had no scoring yet.

    >>> latest_at([0, 0, 1], [10, 20, 15], [12, 20], 2).tolist()
    [[0, -1], [1, 2]]
    """
    c = np.asarray(customer, dtype=np.int64)
    t = np.asarray(time, dtype=np.int64)
    at = np.asarray(at, dtype=np.int64)
    out = np.full((at.size, n_customers), -1, dtype=np.int64)
    if not c.size:
        return out
    t0 = int(min(t.min(), at.min()))
    order = np.lexsort((t, c))
    key = (c[order] << _SHIFT) | (t[order] - t0)
    who = np.arange(n_customers, dtype=np.int64)
    for k, when in enumerate(at.tolist()):
        pos = np.searchsorted(key, (who << _SHIFT) | (when - t0), side="right") - 1
        ok = pos >= 0
        ok[ok] = c[order[pos[ok]]] == who[ok]
        out[k, ok] = order[pos[ok]]
    return out


@dataclass
class CheckpointTable:
    """One row per (checkpoint, customer who had been scored and had not left): what the window's figures read."""

    time: NDArray[np.int64]
    customer: NDArray[np.int64]
    row: NDArray[np.int64]  # index of the scoring in force (into the score history)
    tier: NDArray[Any]
    leaves_in_ms: NDArray[np.float64]  # churn time - checkpoint, inf for a customer who stays

    def leaves_within(self, days: float) -> NDArray[np.bool_]:
        return self.leaves_in_ms <= days * DAY_MS


def checkpoint_table(
    customer: ArrayLike,
    time: ArrayLike,
    tier: ArrayLike,
    churn_ms: ArrayLike,
    window: Window,
    every_days: float = 30.0,
) -> CheckpointTable:
    """The customers in force at each checkpoint of ``window``, with their tier and when they leave.

    ``customer``, ``time``, ``tier`` are the score history (one row per scoring); ``churn_ms[c]`` is customer c's
    true churn time (``inf``: stays).
    """
    churn = np.asarray(churn_ms, dtype=np.float64)
    tiers = np.asarray(tier)
    cps = checkpoints(window, every_days)
    idx = latest_at(customer, time, cps, churn.size)
    cp_t = np.repeat(cps, churn.size).reshape(idx.shape)
    who = np.broadcast_to(np.arange(churn.size), idx.shape)
    keep = (idx >= 0) & (churn[who] > cp_t)
    rows = idx[keep]
    return CheckpointTable(cp_t[keep], who[keep].astype(np.int64), rows, tiers[rows], churn[who[keep]] - cp_t[keep])


def base_rate(table: CheckpointTable, horizon_days: float = 90.0, tier: Any = "A") -> float:
    """Share of the ``tier`` customers at the checkpoints who leave within ``horizon_days``.

    >>> t = CheckpointTable(np.zeros(4, np.int64), np.arange(4), np.arange(4), np.array(list("AABA")),
    ...                     np.array([5.0 * DAY_MS, np.inf, 1.0, np.inf]))
    >>> round(base_rate(t), 4)
    0.3333
    """
    mask = table.tier == tier
    return float(table.leaves_within(horizon_days)[mask].mean()) if mask.any() else math.nan


def truth_auc(table: CheckpointTable, score: ArrayLike, horizon_days: float, tier: Any = None) -> float:
    """ROC AUC of a score (one value per score-history row) at the checkpoints against "leaves within horizon"."""
    s = np.asarray(score, dtype=np.float64)[table.row]
    y = table.leaves_within(horizon_days)
    if tier is not None:
        mask = table.tier == tier
        s, y = s[mask], y[mask]
    ok = np.isfinite(s)
    return auc(s[ok], y[ok])


def alert_precision(
    alert_customer: ArrayLike,
    alert_time: ArrayLike,
    churn_ms: ArrayLike,
    window: Window,
    horizon_days: float = 90.0,
    base: float | None = None,
) -> dict[str, float]:
    """Precision (and lift over ``base``) of the alerts raised in the window: did the customer leave within
    ``horizon_days`` after the alert?

    >>> day = DAY_MS
    >>> churn = [50.0 * day, np.inf]
    >>> alert_precision([0, 1, 1], [10 * day, 20 * day, 400 * day], churn, Window(0, 300 * day), base=0.25)
    {'alerts': 2, 'precision': 0.5, 'lift': 2.0}
    """
    c = np.asarray(alert_customer, dtype=np.int64)
    t = np.asarray(alert_time, dtype=np.int64)
    churn = np.asarray(churn_ms, dtype=np.float64)
    inside = (t >= window.start_ms) & (t <= window.end_ms)
    c, t = c[inside], t[inside]
    left = (churn[c] > t) & (churn[c] <= t + horizon_days * DAY_MS)
    precision = float(left.mean()) if c.size else math.nan
    lift = precision / base if base else math.nan
    return {"alerts": int(c.size), "precision": precision, "lift": lift}


def caught_ahead(
    alert_customer: ArrayLike,
    alert_time: ArrayLike,
    score_customer: ArrayLike,
    score_time: ArrayLike,
    score_tier: ArrayLike,
    churn_ms: ArrayLike,
    window: Window,
    ahead_days: float = 30.0,
    lookback_days: float = 90.0,
    high_value_days: float = 180.0,
    tier: Any = "A",
) -> dict[str, float]:
    """How early the alerts came for the high-value customers who left in the window.

    High value: ``tier`` at some scoring in the ``high_value_days`` before leaving. For each, the first alert in the
    ``lookback_days`` before leaving; caught when it came ``ahead_days`` or more before. Returns the number of such
    leavers, how many had an alert, the share caught ahead, and the median and mean lead (days) of the alerted.

    >>> day = DAY_MS
    >>> r = caught_ahead([0, 0, 1], [50 * day, 70 * day, 95 * day], [0, 1, 2], [10 * day] * 3, ["A", "A", "A"],
    ...                  [100.0 * day, 100.0 * day, 100.0 * day], Window(0, 300 * day))
    >>> r["leavers"], r["alerted"], r["caught"], r["median_lead_days"]
    (3, 2, 0.3333333333333333, 27.5)
    """
    churn = np.asarray(churn_ms, dtype=np.float64)
    sc = np.asarray(score_customer, dtype=np.int64)
    st = np.asarray(score_time, dtype=np.float64)
    tiers = np.asarray(score_tier)
    in_tier = tiers == tier
    sc, st = sc[in_tier], st[in_tier]
    before = (st < churn[sc]) & (st >= churn[sc] - high_value_days * DAY_MS)
    high = np.zeros(churn.size, dtype=bool)
    high[sc[before]] = True
    leavers = high & (churn >= window.start_ms) & (churn <= window.end_ms)
    ac = np.asarray(alert_customer, dtype=np.int64)
    at = np.asarray(alert_time, dtype=np.float64)
    ok = leavers[ac] & (at < churn[ac]) & (at >= churn[ac] - lookback_days * DAY_MS)
    first = np.full(churn.size, np.inf)
    np.minimum.at(first, ac[ok], at[ok])
    n = int(leavers.sum())
    alerted = leavers & np.isfinite(first)
    lead = (churn[alerted] - first[alerted]) / DAY_MS
    return {
        "leavers": n,
        "alerted": int(alerted.sum()),
        "caught": float((lead >= ahead_days).sum() / n) if n else math.nan,
        "median_lead_days": float(np.median(lead)) if lead.size else math.nan,
        "mean_lead_days": float(lead.mean()) if lead.size else math.nan,
    }


def threshold_alerts(
    customer: ArrayLike,
    time: ArrayLike,
    value: ArrayLike,
    eligible: ArrayLike,
    threshold: float,
    hysteresis: float = 0.0,
    cooldown_days: float = 7.0,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Alerts of a plain threshold rule over a score history, with the episodes of :mod:`scoring.alerts`.

    An episode opens (and alerts) at a scoring where ``value >= threshold`` and the customer is ``eligible`` (e.g.
    tier A), at least ``cooldown_days`` after the previous episode ended; it ends at the first scoring where
    ``value < threshold - hysteresis``. For the baselines of the backtest (a hiatus rule: silence in units of the
    customer's own gap at or above 2). Returns the alerts' customers and times.

    >>> c, t = threshold_alerts([0, 0, 0, 0, 1], [1, 2, 3, 4, 1], [3.0, 3.0, 0.5, 3.0, 9.0], [1, 1, 1, 1, 0], 2.0,
    ...                         cooldown_days=0)
    >>> c.tolist(), t.tolist()
    ([0, 0], [1, 4])
    """
    c = np.asarray(customer, dtype=np.int64)
    t = np.asarray(time, dtype=np.int64)
    v = np.asarray(value, dtype=np.float64)
    e = np.asarray(eligible).astype(bool)
    order = np.lexsort((t, c))
    cooldown = int(cooldown_days * DAY_MS)
    out_c: list[int] = []
    out_t: list[int] = []
    current, open_, ended = -1, False, -(1 << 62)
    for i in order.tolist():
        ci = int(c[i])
        if ci != current:
            current, open_, ended = ci, False, -(1 << 62)
        vi, ti = v[i], int(t[i])
        if open_:
            if vi < threshold - hysteresis:
                open_, ended = False, ti
        elif vi >= threshold and e[i] and ti >= ended + cooldown:
            open_ = True
            out_c.append(ci)
            out_t.append(ti)
    return np.array(out_c, dtype=np.int64), np.array(out_t, dtype=np.int64)


def defection_signals(
    customer: ArrayLike,
    time: ArrayLike,
    tier: ArrayLike,
    signals: ArrayLike,
    names: Sequence[str],
    churn_ms: ArrayLike,
    lookback_days: float = 90.0,
) -> list[dict[str, Any]]:
    """What preceded leaving, by value tier and month of leaving: for the customers who left, the share that showed each
    signal at some scoring in the ``lookback_days`` before; beside it, the share of the others' scorings of that month
    showing it (what the signal is worth against its usual frequency).

    ``signals`` is a boolean matrix (one row per scoring, one column per name of ``names``), e.g. from
    :func:`scoring.reasons.signals` on each scoring of the score history. A leaver's tier is its best tier at a
    scoring in the 180 days before leaving; a month is ``YYYY-MM`` (UTC).

    >>> day = DAY_MS
    >>> rows = defection_signals([0, 0, 1, 2], [10 * day, 40 * day, 40 * day, 41 * day], ["A", "B", "A", "A"],
    ...                          [[0, 1], [1, 0], [0, 0], [1, 0]], ["silence", "complaints"],
    ...                          [50.0 * day, np.inf, np.inf])
    >>> for key, value in rows[0].items():
    ...     print(key, value)
    tier A
    month 1970-02
    leavers 1
    silence 1.0
    complaints 1.0
    silence_others 0.5
    complaints_others 0.0
    """
    from datetime import UTC, datetime

    c = np.asarray(customer, dtype=np.int64)
    t = np.asarray(time, dtype=np.int64)
    tiers = np.asarray(tier).astype(str)
    sig = np.asarray(signals, dtype=bool).reshape(len(c), len(names))
    churn = np.asarray(churn_ms, dtype=np.float64)
    left = np.isfinite(churn[c])
    month = [datetime.fromtimestamp(int(x) // 1000, UTC).strftime("%Y-%m") for x in t.tolist()]
    out: dict[tuple[str, str], dict[str, Any]] = {}
    seen: dict[int, tuple[str, np.ndarray]] = {}  # leaver -> (best tier, signals in the lookback)
    for i in np.flatnonzero(left).tolist():
        who, at = int(c[i]), float(churn[c[i]])
        if not at - 180 * DAY_MS <= t[i] < at:
            continue
        best, shown = seen.get(who, ("C", np.zeros(len(names), dtype=bool)))
        best = min(best, str(tiers[i]))
        if t[i] >= at - lookback_days * DAY_MS:
            shown = shown | sig[i]
        seen[who] = (best, shown)
    for who, (best, shown) in seen.items():
        key = (best, datetime.fromtimestamp(int(churn[who]) // 1000, UTC).strftime("%Y-%m"))
        row = out.setdefault(key, {"tier": key[0], "month": key[1], "leavers": 0, "_sum": np.zeros(len(names))})
        row["leavers"] += 1
        row["_sum"] += shown
    others = ~left
    for row in out.values():
        mask = others & (tiers == row["tier"]) & np.array([m == row["month"] for m in month])
        total = row.pop("_sum")
        for j, name in enumerate(names):
            row[name] = float(total[j] / row["leavers"])
        for j, name in enumerate(names):
            row[f"{name}_others"] = float(sig[mask, j].mean()) if mask.any() else math.nan
    return [out[k] for k in sorted(out)]
