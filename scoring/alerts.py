"""Alerts on at-risk high-value customers: pure rules, raised once per episode, in event time only.

Three rules (``docs/alerts.md`` has the full definitions, the settings that tune them and what they achieve against
the simulator's truth):

* ``high_value_at_risk`` — a high-value customer (value tier A now or at some scoring in the last
  ``high_value_days``, 180; or ``profit_percentile`` at or above a setting) whose early-warning churn probability —
  the calibrated chance that it is gone within 60 days (``churn_probability_60d``, docs/churn.md) — reached θ
  (default 0.2). Severity by the value at stake: ``critical`` when its CLV percentile was in the top 5% while of
  high value, ``high`` for the rest of tier A;
* ``p_alive_drop`` — P(alive) of a tier A or B customer fell sharply: from at least 0.8 to at most 0.4, either
  between two consecutive scorings or within a window (default 30 days) of the last time it was that high;
* ``cancellation_request`` — a high-value customer asked to cancel (a contact with that reason in the last 30 days).

**Once, not a flood.** Each rule has, per customer, an *episode*: it opens when the rule's condition starts and
the alert is raised then, never again while the episode stays open. It closes when the customer recovers, with
hysteresis so that a score hovering at a threshold does not flap: churn probability below θ − 0.02, P(alive) back
above 0.4 + 0.1, or the cancellation window passed without a new request. After an episode closes, a new one can
open only once a cooldown (default 7 days) has passed. A customer still at risk ``episode_days`` (60) after its
``high_value_at_risk`` episode opened is raised again, as a new episode ("still at risk"). The episode id
``"{customer_id}:{rule}:{start_ms}"`` is made of event times only, so replaying the same history gives the same ids
and the sink collapses the repeats.

Reasons are business words from the signals that moved (:mod:`scoring.reasons`), never a customer's size or age.

The episodes live in an :class:`~scoring.alert_state.AlertState` of 26 bytes the worker keeps inside the customer's
state; :mod:`scoring.alert_state` holds it, its byte format and the rule names (their order is its bit order).

>>> rules = AlertRules()
>>> state = AlertState()
>>> t0 = 1_772_409_600_000  # 2026-03-02 00:00 UTC, the scoring's event time
>>> scores = {"value_tier": "A", "clv_percentile": 0.97, "clv": 5400.0, "profitability": 812.5,
...           "churn_probability": 0.18, "churn_probability_60d": 0.31, "complaints_30d": 2.7,
...           "complaints_vs_usual": 1.2, "unresolved_30d": 1.8, "recency_days": 74.2, "silence_gaps": 3.1,
...           "typical_gap_days": 24.0, "frequency": 9}
>>> [alert] = rules.evaluate("c42", scores, state, None, t0)
>>> alert["rule"], alert["severity"], alert["episode"]
('high_value_at_risk', 'critical', 'c42:high_value_at_risk:1772409600000')
>>> for reason in alert["reasons"]:
...     print(reason)
31% chance of leaving within 60 days
3 complaints in 30 days, 2 unresolved
no purchase for 74 days, usually every 24
>>> rules.evaluate("c42", dict(scores, churn_probability_60d=0.5), state, None, t0 + 3_600_000)  # same episode
[]
>>> state.open_rules
('high_value_at_risk',)
>>> AlertState.from_bytes(state.to_bytes()) == state, len(state.to_bytes())
(True, 26)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from scoring.alert_state import CANCELLATION_REQUEST, HIGH_VALUE_AT_RISK, P_ALIVE_DROP, RULES, AlertState, _seconds
from scoring.reasons import reasons as business_reasons

__all__ = ["AlertRules", "parse_rule_names", "severity"]

#: The score keys an alert records (those present), so that it explains itself without a join.
RECORDED = (
    "value_tier",
    "profit_percentile",
    "clv_percentile",
    "clv",
    "profitability",
    "revenue",
    "churn_probability",
    "churn_probability_60d",
    "p_alive",
    "recency_days",
    "complaints_30d",
    "failed_payments_90d",
    "n_failed_payments",
    "n_cancellation_requests",
    "last_cancellation_time",
    "churn_model_version",
    "silence_gaps",
    "typical_gap_days",
    "purchases_vs_usual",
    "spend_vs_usual",
    "contacts_vs_usual",
    "complaints_vs_usual",
    "unresolved_30d",
    "late_payments_90d",
)

_DAY_S = 86_400


def _num(scores: Mapping[str, Any], key: str) -> float | None:
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


def severity(top: bool, strong: bool) -> str:
    """``critical`` when the customer is of top value *and* the risk signal is strong, ``high`` for one of the
    two, ``medium`` for neither. What "top" and "strong" mean per rule is in :meth:`AlertRules.evaluate`.

    >>> severity(True, True), severity(True, False), severity(False, True), severity(False, False)
    ('critical', 'high', 'high', 'medium')
    """
    if top and strong:
        return "critical"
    return "high" if top or strong else "medium"


def value_severity(value_pct: float | None, critical_pct: float, tier_a: bool) -> str:
    """Severity by the value at stake: ``critical`` for a customer in the top ``1 - critical_pct`` of value,
    ``high`` for the rest of tier A, ``medium`` for a customer of high value by another measure.

    >>> value_severity(0.97, 0.95, True), value_severity(0.85, 0.95, True), value_severity(None, 0.95, False)
    ('critical', 'high', 'medium')
    """
    if value_pct is not None and value_pct >= critical_pct:
        return "critical"
    return "high" if tier_a else "medium"


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class AlertRules:
    """The alert rules and their settings; :meth:`evaluate` applies them to one customer's new scores.

    Parameters mirror the ``alert_*`` settings of :class:`cvm.config.Config` (:meth:`from_config`).

    >>> AlertRules(p_alive_low=0.9)
    Traceback (most recent call last):
    ValueError: alert_p_alive_low=0.9 must be below alert_p_alive_high=0.8
    """

    rules: tuple[str, ...] = RULES
    churn_score: str = "churn_probability_60d"
    churn_days: float = 60.0
    churn_threshold: float = 0.2
    churn_hysteresis: float = 0.02
    high_value_days: float = 180.0
    episode_days: float = 60.0
    critical_value_percentile: float = 0.95
    hysteresis: float = 0.1
    critical_probability: float = 0.8
    profit_percentile: float = 0.0
    p_alive_high: float = 0.8
    p_alive_low: float = 0.4
    p_alive_window_days: float = 30.0
    cancellation_window_days: float = 30.0
    cooldown_days: float = 7.0
    max_reasons: int = 3

    def __post_init__(self) -> None:
        unknown = [r for r in self.rules if r not in RULES]
        if unknown:
            raise ValueError(f"alert_rules: unknown rule {unknown[0]!r} (known: {', '.join(RULES)})")
        for name in (
            "churn_threshold",
            "churn_hysteresis",
            "critical_value_percentile",
            "hysteresis",
            "critical_probability",
            "p_alive_high",
            "p_alive_low",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"alert_{name}={value}: must be between 0 and 1")
        if self.churn_hysteresis > self.churn_threshold:
            raise ValueError(
                f"alert_churn_hysteresis={self.churn_hysteresis} must not exceed "
                f"alert_churn_threshold={self.churn_threshold}"
            )
        if self.p_alive_low >= self.p_alive_high:
            raise ValueError(
                f"alert_p_alive_low={self.p_alive_low} must be below alert_p_alive_high={self.p_alive_high}"
            )
        if not 0.0 <= self.profit_percentile <= 1.0:
            raise ValueError(f"alert_profit_percentile={self.profit_percentile}: must be between 0 (off) and 1")
        for name in (
            "high_value_days",
            "episode_days",
            "p_alive_window_days",
            "cancellation_window_days",
            "cooldown_days",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 3650.0:
                raise ValueError(f"alert_{name}={value}: must be between 0 and 3650 days")

    @classmethod
    def from_config(cls, cfg: Any) -> AlertRules:
        """The rules as configured: ``cfg.alert_rules`` (comma-separated names) and ``cfg.alert_<parameter>``."""
        params: dict[str, Any] = {}
        for f in fields(cls):
            name = f"alert_{f.name}"
            if hasattr(cfg, name):
                params[f.name] = getattr(cfg, name)
        if isinstance(params.get("rules"), str):
            params["rules"] = parse_rule_names(params["rules"])
        return cls(**params)

    # --- the settings in the units the rules compare in (computed once) ---------------------------------------------

    @cached_property
    def _s(self) -> dict[str, int]:
        """The settings in days, in whole seconds: ``cooldown``, ``high_value``, ``episode``, ``p_alive_window``,
        ``cancellation_window``."""
        names = ("cooldown", "high_value", "episode", "p_alive_window", "cancellation_window")
        return {name: round(getattr(self, f"{name}_days") * _DAY_S) for name in names}

    @cached_property
    def _churn_recovered(self) -> float:
        """A churn probability below this closes a ``high_value_at_risk`` episode."""
        return _decimal(self.churn_threshold - self.churn_hysteresis)

    @cached_property
    def _p_alive_recovered(self) -> float:
        """A P(alive) at or above this closes a ``p_alive_drop`` episode."""
        return _decimal(self.p_alive_low + self.hysteresis)

    # --- the rules -------------------------------------------------------------------------------------------------

    def high_value(self, scores: Mapping[str, Any]) -> bool:
        """Of high value now: tier A, or at or above the configured ``profit_percentile`` (0 = tier A only)."""
        if scores.get("value_tier") == "A":
            return True
        if not self.profit_percentile > 0:  # tier A only: the percentile is not read
            return False
        pct = _num(scores, "profit_percentile")
        return pct is not None and pct >= self.profit_percentile

    def _remember_value(self, scores: Mapping[str, Any], state: AlertState, now_s: int) -> bool:
        """Note a high-value scoring in ``state``; whether the customer counts as of high value (now or within
        ``high_value_days``)."""
        recent = state.value_time > 0 and now_s - state.value_time <= self._s["high_value"]
        if self.high_value(scores):
            pct = _num(scores, "clv_percentile")
            state.value_pct = max(state.value_pct if recent else 0.0, pct if pct is not None else 0.0)
            state.value_a = (state.value_a and recent) or scores.get("value_tier") == "A"
            state.value_time = max(state.value_time, now_s)
            return True
        return recent

    def evaluate(
        self,
        customer_id: str,
        scores: Mapping[str, Any],
        state: AlertState,
        prev_p_alive: float | None,
        now_ms: int,
    ) -> list[dict[str, Any]]:
        """Update ``state`` with the customer's new scores; return the alerts raised (usually none).

        ``scores`` are the customer's current scores and features (a missing key leaves its rule's episode as it
        is: unknown is not recovered). ``prev_p_alive`` is P(alive) at the previous scoring; ``None`` uses the
        value ``state`` remembers. ``now_ms`` is the event time of this scoring (the worker's tick), never the
        wall clock. Each alert is the JSON message of the ``alerts`` topic: ``alert_time`` (= ``now_ms``),
        ``customer_id``, ``rule``, ``severity``, ``reasons``, ``scores`` and ``episode``.

        Severity: by the value at stake for ``high_value_at_risk`` and ``cancellation_request``
        (:func:`value_severity` of the highest ``clv_percentile`` of the high-value spell); for ``p_alive_drop``,
        :func:`severity` with "top" = tier A and "strong" = P(alive) ≤ 1 − ``critical_probability``.
        """
        now_ms = int(now_ms)
        now_s = _seconds(now_ms)
        cooldown_s = self._s["cooldown"]
        tier = scores.get("value_tier")
        churn = _num(scores, self.churn_score)
        p_alive = _num(scores, "p_alive")
        prev = prev_p_alive if prev_p_alive is not None else state.last_p_alive
        valuable = self._remember_value(scores, state, now_s)
        alerts: list[dict[str, Any]] = []

        # high_value_at_risk: opens on value and risk; the risk recovering closes it; one still at risk after
        # episode_days is raised again.
        i = 0
        if HIGH_VALUE_AT_RISK in self.rules and churn is not None:
            if state.open >> i & 1:
                if churn < self._churn_recovered:
                    state.close_episode(i, _seconds(now_ms, up=True))
                elif self.episode_days and now_s - state.times[i] >= self._s["episode"] and valuable:
                    days = round((now_s - state.times[i]) / _DAY_S)
                    state.open_episode(i, now_s)
                    lead = [self._risk(churn), f"still at risk after {days} days"]
                    alerts.append(
                        self._alert(
                            customer_id, HIGH_VALUE_AT_RISK, self._stake(state), now_ms, now_ms, scores, lead, prev
                        )
                    )
            elif churn >= self.churn_threshold and valuable and state.cooled(i, now_s, cooldown_s):
                state.open_episode(i, now_s)
                lead = [self._risk(churn)]
                alerts.append(
                    self._alert(customer_id, HIGH_VALUE_AT_RISK, self._stake(state), now_ms, now_ms, scores, lead, prev)
                )

        # p_alive_drop: armed while P(alive) was high at the previous scoring or recently; a drop alert disarms.
        i = 1
        if p_alive is not None:
            recent = state.high_time > 0 and now_s - state.high_time <= self._s["p_alive_window"]
            armed = (prev is not None and prev >= self.p_alive_high) or recent
            if P_ALIVE_DROP in self.rules:
                if state.open >> i & 1:
                    if p_alive >= self._p_alive_recovered:
                        state.close_episode(i, _seconds(now_ms, up=True))
                elif (
                    armed and p_alive <= self.p_alive_low and tier in ("A", "B") and state.cooled(i, now_s, cooldown_s)
                ):
                    state.open_episode(i, now_s)
                    if prev is not None and prev >= self.p_alive_high:
                        fact = f"P(alive) fell from {prev:.2f} to {p_alive:.2f}"
                    else:
                        days = max(1, round((now_s - state.high_time) / _DAY_S))
                        fact = f"P(alive) fell from over {self.p_alive_high:.2f} to {p_alive:.2f} in {days} days"
                    state.high_time = 0
                    sev = severity(tier == "A", p_alive <= 1.0 - self.critical_probability)
                    alerts.append(self._alert(customer_id, P_ALIVE_DROP, sev, now_ms, now_ms, scores, [fact], prev))
            if p_alive >= self.p_alive_high:
                state.high_time = now_s
            clamped = 0.0 if p_alive < 0.0 else 1.0 if p_alive > 1.0 else p_alive  # min/max calls cost more
            state.last_p_alive = round(clamped * 10_000) / 10_000  # as stored: a restart agrees

        # cancellation_request: an episode covers requests less than the window apart; it ends a window after the
        # last one. Anchored at the request's own time, so its id does not depend on when it was evaluated.
        i = 2
        requested = _num(scores, "last_cancellation_time")
        if CANCELLATION_REQUEST in self.rules:
            window_s = self._s["cancellation_window"]
            req_ms = int(requested) if requested else 0
            req_s = _seconds(req_ms) if req_ms else 0
            if state.open >> i & 1:
                if req_ms and req_s > state.times[i] and req_s - state.times[i] <= window_s:
                    state.times[i] = req_s  # a repeat request extends the episode, it does not alert again
                if now_s > state.times[i] + window_s:
                    state.close_episode(i, state.times[i] + window_s)
            if (
                not state.open >> i & 1
                and req_ms
                and valuable
                and now_ms - req_ms <= window_s * 1000
                and state.cooled(i, now_s, cooldown_s)
            ):
                state.open_episode(i, req_s)
                stake = self._stake(state)
                alerts.append(self._alert(customer_id, CANCELLATION_REQUEST, stake, now_ms, req_ms, scores, [], prev))
        return alerts

    def _risk(self, churn: float) -> str:
        return f"{round(100 * churn)}% chance of leaving within {self.churn_days:g} days"

    def _stake(self, state: AlertState) -> str:
        """The severity of a high-value rule's alert: :func:`value_severity` of the high-value spell in ``state``."""
        return value_severity(state.value_pct, self.critical_value_percentile, state.value_a)

    # --- the message -----------------------------------------------------------------------------------------------

    def _alert(
        self,
        customer_id: str,
        rule: str,
        sev: str,
        now_ms: int,
        start_ms: int,
        scores: Mapping[str, Any],
        lead: list[str],
        prev: float | None,
    ) -> dict[str, Any]:
        recorded: dict[str, Any] = {}
        for key in RECORDED:
            value = scores.get(key)
            if isinstance(value, float):
                if not math.isfinite(value):
                    continue
                value = round(value, 4)
            if value is not None:
                recorded[key] = value
        if rule == P_ALIVE_DROP and prev is not None:
            recorded["p_alive_before"] = round(prev, 4)
        return {
            "alert_time": now_ms,
            "customer_id": customer_id,
            "rule": rule,
            "severity": sev,
            "reasons": _dedupe([*lead, *self.facts(scores, now_ms)]),
            "scores": recorded,
            "episode": f"{customer_id}:{rule}:{start_ms}",
        }

    def facts(self, scores: Mapping[str, Any], now_ms: int) -> list[str]:
        """What the customer's signals of leaving say in business words (:func:`scoring.reasons.reasons`).

        >>> AlertRules().facts({"complaints_30d": 1.0, "failed_payments_90d": 2.0, "recency_days": 12,
        ...                     "last_cancellation_time": 1_772_409_600_000}, 1_772_500_000_000)
        ['asked to cancel yesterday', '2 failed payments in 90 days', '1 complaint in 30 days']
        """
        return business_reasons(scores, now_ms, self.max_reasons)


def parse_rule_names(text: str) -> tuple[str, ...]:
    """Rule names from a comma-separated setting; ``none`` (or empty) turns every rule off.

    >>> parse_rule_names(" high_value_at_risk, p_alive_drop ,"), parse_rule_names("none")
    (('high_value_at_risk', 'p_alive_drop'), ())
    """
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    return () if names == ("none",) else names


def _dedupe(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _decimal(threshold: float) -> float:
    """A threshold made of settings, as the decimal it stands for: 0.2 - 0.02 is 0.18000000000000002 in floats, and a
    risk of exactly 0.18 is not "below θ − 0.02".

    >>> _decimal(0.2 - 0.02), 0.18 < _decimal(0.2 - 0.02)
    (0.18, False)
    """
    return round(threshold, 12)
