"""Why a customer looks like leaving, in business words, from the signals that moved against its own baseline.

Each reason states a signal of leaving and the customer's own reference point: "no purchase for 64 days, usually
every 12", "spend down 70% on its own 90-day average", "3 complaints in 30 days, 2 unresolved", "asked to cancel 5
days ago". A customer's size or age (frequency, spend, value, tenure) is never a reason: it says how often a
customer buys, not that it is leaving (docs/churn.md).

The reasons are computed from the features of one scoring (:func:`scoring.features.compute`, plus the CLV and churn
outputs when present), pure and deterministic, so a replay gives the same words. Counts in 30- and 90-day windows
are the decayed counters of docs/features.md, rounded.

>>> day = 86_400_000
>>> scores = {"recency_days": 64.2, "typical_gap_days": 12.0, "silence_gaps": 5.35, "frequency": 20,
...           "spend_30d": 30.0, "spend_90d": 300.0, "tenure_days": 400.0, "complaints_30d": 2.8,
...           "complaints_vs_usual": 1.6, "unresolved_30d": 2.1, "last_cancellation_time": 100 * day}
>>> reasons(scores, 105 * day)
['asked to cancel 5 days ago', 'no purchase for 64 days, usually every 12', '3 complaints in 30 days, 2 unresolved']
>>> reasons(scores, 105 * day, k=5)[3:]
['spend down 70% on its own 90-day average']
>>> reasons({"tenure_days": 3.0, "frequency": 1, "recency_days": 3.0}, 0)  # nothing moved: no reason
[]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from scoring.features import exposure_days

__all__ = ["CANCELLATION_DAYS", "SIGNALS", "reasons", "signals"]

DAY_MS = 86_400_000

#: A cancellation request is a reason for this many days.
CANCELLATION_DAYS = 60.0

#: The signals, in the order they are listed when equally strong.
SIGNALS = (
    "cancellation",
    "silence",
    "purchases",
    "spend",
    "complaints",
    "contacts",
    "unresolved",
    "payments",
    "refunds",
)
_ORDER = {name: i for i, name in enumerate(SIGNALS)}  # ties between equally strong signals
_LOG_2, _LOG_2_5 = math.log(2.0), math.log(2.5)  # excess thresholds: twice and 2.5 times the usual


def _num(scores: Mapping[str, Any], key: str) -> float | None:
    """The score ``key`` as a finite float; None when missing, not finite, a flag or text (bool, str) or not a
    number."""
    value = scores.get(key)
    if type(value) is float:  # the usual case, first
        return value if value - value == 0.0 else None  # finite
    if value is None or isinstance(value, bool | str):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _n(value: float) -> int:
    return max(1, round(value))


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def signals(scores: Mapping[str, Any], now_ms: int) -> dict[str, tuple[float, str]]:
    """Every signal that moved: name → (strength, text). Strength is "times the usual", comparable across signals.

    >>> signals({"late_payments_90d": 2.2, "failed_payments_90d": 0.9}, 0)
    {'payments': (3.2, '2 late or failed payments in 90 days, 1 failed')}
    """
    # Called on every scoring and usually finds nothing: each value is read only once a signal may need it.
    out: dict[str, tuple[float, str]] = {}
    tenure = _num(scores, "tenure_days") or 0.0

    asked = _num(scores, "last_cancellation_time")
    if asked and asked > 0 and 0 <= now_ms - asked <= CANCELLATION_DAYS * DAY_MS:
        days = int((now_ms - asked) // DAY_MS)
        when = "today" if days == 0 else "yesterday" if days == 1 else f"{days} days ago"
        out["cancellation"] = (100.0 - days, f"asked to cancel {when}")

    gaps = _num(scores, "silence_gaps")
    if gaps is not None and gaps >= 2.0:
        recency, gap = _num(scores, "recency_days"), _num(scores, "typical_gap_days")
        if recency is not None and recency >= 14.0:
            rhythm = f", usually every {round(gap)}" if gap and (_num(scores, "frequency") or 0) >= 3 else ""
            out["silence"] = (gaps, f"no purchase for {int(recency)} days{rhythm}")

    if tenure >= 60.0:
        p30, p365 = _num(scores, "purchases_30d"), _num(scores, "purchases_365d")
        if p30 is not None and p365:
            usual = p365 / exposure_days(tenure, 365.0) * exposure_days(tenure, 30.0)
            if usual >= 1.5 and (p30 + 0.5) / (usual + 0.5) <= 0.5:
                out["purchases"] = (
                    (usual + 0.5) / (p30 + 0.5),
                    f"{_plural(round(p30), 'purchase', 'purchases')} in 30 days, usually {round(usual)}",
                )

    if tenure >= 45.0:
        s30, s90 = _num(scores, "spend_30d"), _num(scores, "spend_90d")
        usual_spend = s90 / exposure_days(tenure, 90.0) if s90 and s90 > 0 else 0.0  # 0 when s90 is too small
        if s30 is not None and usual_spend > 0:
            ratio = max(0.0, s30) / exposure_days(tenure, 30.0) / usual_spend
            if ratio <= 0.5:
                out["spend"] = (
                    1.0 / max(ratio, 0.05),
                    f"spend down {round(100 * (1 - ratio))}% on its own 90-day average",
                )

    complaints, unresolved = _num(scores, "complaints_30d"), _num(scores, "unresolved_30d")
    if complaints is not None and complaints >= 0.5:
        excess = _num(scores, "complaints_vs_usual")
        if excess is None or excess >= _LOG_2:
            text = f"{_plural(_n(complaints), 'complaint', 'complaints')} in 30 days"
            if unresolved is not None and unresolved >= 0.5:
                text += f", {_n(unresolved)} unresolved"
            out["complaints"] = (math.exp(excess) if excess is not None else 1.0 + complaints, text)

    contacts = _num(scores, "contacts_30d")
    if contacts is not None and contacts >= 2.0:
        c_excess, c365 = _num(scores, "contacts_vs_usual"), _num(scores, "contacts_365d")
        if c_excess is not None and c_excess >= _LOG_2_5:
            often = (
                f", usually {round(c365 / exposure_days(tenure, 365.0) * 30.0)}" if c365 is not None and tenure else ""
            )
            if "complaints" not in out:
                out["contacts"] = (
                    math.exp(c_excess),
                    f"{_plural(_n(contacts), 'contact', 'contacts')} in 30 days{often}",
                )

    if unresolved is not None and unresolved >= 0.5 and "complaints" not in out:
        u_excess = _num(scores, "unresolved_vs_usual")
        if u_excess is None or u_excess >= _LOG_2:
            out["unresolved"] = (
                math.exp(u_excess) if u_excess is not None else 1.0 + unresolved,
                f"{_plural(_n(unresolved), 'unresolved contact', 'unresolved contacts')} in 30 days",
            )

    late, failed = _num(scores, "late_payments_90d"), _num(scores, "failed_payments_90d")
    if late is not None and late >= 0.5:
        text = f"{_plural(_n(late), 'late or failed payment', 'late or failed payments')} in 90 days"
        if failed is not None and failed >= 0.5:
            text += f", {_n(failed)} failed"
        out["payments"] = (round(1.0 + late, 6), text)
    elif failed is not None and failed >= 0.5:
        out["payments"] = (
            round(1.0 + failed, 6),
            f"{_plural(_n(failed), 'failed payment', 'failed payments')} in 90 days",
        )

    refunds = _num(scores, "refunds_90d")
    if refunds is not None and refunds >= 1.5:
        out["refunds"] = (refunds, f"{_plural(_n(refunds), 'refund', 'refunds')} in 90 days")
    return out


def reasons(scores: Mapping[str, Any], now_ms: int, k: int = 3) -> list[str]:
    """The ``k`` strongest signals of leaving of a scoring at event time ``now_ms``, in business words.

    Strongest first (a recent cancellation request leads); none when nothing moved against the customer's baseline.
    """
    found = signals(scores, now_ms)
    if not found:  # the usual case
        return []
    if len(found) == 1:
        return [text for _, text in found.values()][:k]
    ranked = sorted(found.items(), key=lambda item: (-item[1][0], _ORDER[item[0]]))
    return [text for _, (_, text) in ranked[:k]]
