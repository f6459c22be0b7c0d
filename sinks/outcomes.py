"""Alert outcomes and the defection analysis: what became of each rule's alerts, and why customers leave.

Everything is derived in ClickHouse from the tables the stack already writes, by the views of migration
``0007_outcomes.sql`` (``stream_time``, ``leavers``, ``alert_outcomes``, ``score_signals``) and the queries of
``sinks/sql/outcomes.sql`` (the same text is in ``docs/queries.sql``). Without the simulator's truth, leaving is
*observed*, in event time: a customer has left when it has shown no sign of life (a purchase or a contact) for the
churn label's offset plus its silence (30 + 45 days), or asked to cancel and bought nothing within the grace (30
days); its leaving time is its last sign of life. The figures follow issue 13's definitions (``scoring.outcomes``),
with the observed leaving time in place of the true one:

* **precision** of a rule: the share of its resolved alerts whose customer left within 90 days after the alert
  (an alert after the customer's last sign of life is a miss); **lift** = precision / base rate;
* **base rate**: among the tier-A customers at the checkpoints (not gone by then), the share who left within 90 days;
* **caught ahead**: among the high-value customers (tier A at a scoring in the 180 days before leaving) who left, the
  share whose first alert of the rule in the 90 days before leaving came 30 days or more before it; **lead** =
  leaving time − that first alert (median over the alerted).

Per month (of the alert, of the checkpoint, of leaving) and over the evaluation window (the last 250 days of the
stream without its last 90, as ``scoring.outcomes.Window``). An outcome is *pending* until it is known: a month's
precision is final once none of its alerts is pending.

>>> s = OutcomeSettings.from_days(offset_days=30, silence_days=45, grace_days=30, high_value_days=180)
>>> s.params()["silence_days"], s.params()["horizon_days"]
(75.0, 90.0)
>>> sorted(QUERIES)
['defection', 'outcome_alerts', 'outcome_base_rate', 'outcome_caught', 'outcome_stream']
>>> _ratio(3, 12), _ratio(1, 0), _ratio(None, 4)
(0.25, None, None)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cvm.config import Config
from scoring.reasons import SIGNALS  # the defection analysis counts them: the columns of cvm.score_signals

__all__ = ["QUERIES", "SIGNALS", "OutcomeSettings", "alert_outcomes", "defection", "load_queries"]

#: The file of the outcome queries (``-- name: X`` blocks).
SQL_FILE = Path(__file__).resolve().parent / "sql" / "outcomes.sql"


Run = Callable[..., list[dict[str, Any]]]


def load_queries(path: Path = SQL_FILE) -> dict[str, str]:
    """The ``-- name: X`` blocks of a ``.sql`` file: name → the statement (its comments kept, no final ``;``)."""
    found: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", path.read_text("utf-8"), flags=re.M)[1:]:
        name, body = chunk.split("\n", 1)
        found[name.strip()] = body.strip().rstrip(";").rstrip()
    return found


#: The statements of ``sinks/sql/outcomes.sql`` plus the stream's time, ``{db}`` standing for the database.
QUERIES: dict[str, str] = {
    "outcome_stream": "SELECT now_ms, now FROM {db}.stream_time",
    **load_queries(),
}


@dataclass(frozen=True)
class OutcomeSettings:
    """The parameters of the outcome queries, in days: the observed leaving rule (from the churn label's settings)
    and issue 13's definitions."""

    silence_days: float = 75.0  # churn offset + churn silence: no sign of life this long means gone
    grace_days: float = 30.0  # after a cancellation request without a purchase
    high_value_days: float = 180.0  # tier A at a scoring this long before leaving: a high-value leaver
    horizon_days: float = 90.0  # an alert is right when its customer leaves within this
    ahead_days: float = 30.0  # caught ahead: the first alert this long before leaving, or more
    lookback_days: float = 90.0  # the alerts and the signals of this many days before leaving
    window_days: float = 250.0  # the evaluation window: the last 250 days ...
    outcome_days: float = 90.0  # ... without the last 90

    @classmethod
    def from_days(
        cls, offset_days: float, silence_days: float, grace_days: float, high_value_days: float
    ) -> OutcomeSettings:
        return cls(float(offset_days + silence_days), float(grace_days), float(high_value_days))

    @classmethod
    def from_config(cls, cfg: Config) -> OutcomeSettings:
        """The churn label's offset, silence and grace, and the alerts' high-value days (``CVM_CHURN_*``,
        ``CVM_ALERT_HIGH_VALUE_DAYS``)."""
        return cls.from_days(
            cfg.churn_offset_days, cfg.churn_silence_days, cfg.churn_cancel_grace_days, cfg.alert_high_value_days
        )

    def params(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a is not None and b else None


def _figures(alerts: Mapping[str, Any] | None, caught: Mapping[str, Any] | None, base: float | None) -> dict[str, Any]:
    a = alerts or {}
    c = caught or {}
    precision = _ratio(a.get("left"), a.get("resolved"))
    lead = c.get("median_lead_days")
    return {
        "alerts": int(a.get("alerts", 0)),
        "resolved": int(a.get("resolved", 0)),
        "left": int(a.get("left", 0)),
        "late": int(a.get("late", 0)),
        "stayed": int(a.get("stayed", 0)),
        "pending": int(a.get("pending", 0)),
        "precision": precision,
        "base_rate": base,
        "lift": _ratio(precision, base),
        "leavers": int(c.get("leavers", 0)),
        "alerted": int(c.get("alerted", 0)),
        "caught": int(c.get("caught", 0)),
        "caught_share": _ratio(c.get("caught"), c.get("leavers")),
        "median_lead_days": lead if lead == lead and c.get("alerted") else None,  # NaN when none alerted
    }


def alert_outcomes(run: Run, settings: OutcomeSettings, months: int = 12) -> dict[str, Any]:
    """Per rule, its figures over the evaluation window and per month (the latest ``months`` months, oldest first).

    ``run(name, **params)`` runs the named query of :data:`QUERIES` and returns its rows as dicts.
    """
    params = settings.params()
    stream = run("outcome_stream")[0]
    by_alert = {(r["rule"], r["period"]): r for r in run("outcome_alerts", **params)}
    by_leaving = {(r["rule"], r["period"]): r for r in run("outcome_caught", **params)}
    base_rows = {r["period"]: r for r in run("outcome_base_rate", **params)}
    base = {p: _ratio(r["left"], r["resolved"]) for p, r in base_rows.items()}
    stream_ms = int(stream["now_ms"])
    day = 86_400_000
    rules = sorted({rule for rule, _ in by_alert} | {rule for rule, _ in by_leaving})
    all_months = sorted({p for _, p in by_alert} | {p for _, p in by_leaving} | set(base_rows)) if stream_ms else []
    shown = [m for m in all_months if m != "window"][-months:] if months else []
    out_rules = []
    for rule in rules:

        def figures(period: str, rule: str = rule) -> dict[str, Any]:
            return _figures(by_alert.get((rule, period)), by_leaving.get((rule, period)), base.get(period))

        out_rules.append(
            {"rule": rule, "window": figures("window"), "months": [{"month": m, **figures(m)} for m in shown]}
        )

    def base_figures(period: str) -> dict[str, Any]:
        r = base_rows.get(period) or {}
        return {
            "customers": int(r.get("customers", 0)),
            "resolved": int(r.get("resolved", 0)),
            "left": int(r.get("left", 0)),
            "pending": int(r.get("pending", 0)),
            "base_rate": base.get(period),
        }

    return {
        "as_of": stream["now"] if stream_ms else None,
        "window": {
            "start_ms": stream_ms - int(settings.window_days * day) if stream_ms else None,
            "end_ms": stream_ms - int(settings.outcome_days * day) if stream_ms else None,
        },
        "settings": params,
        "base_rate": {"window": base_figures("window"), "months": [{"month": m, **base_figures(m)} for m in shown]},
        "rules": out_rules,
    }


def defection(run: Run, settings: OutcomeSettings, months: int = 12) -> dict[str, Any]:
    """For the customers who left, by value tier and month of leaving (the latest ``months``; and ``all``): the
    share who showed each signal of leaving in their last scorings, beside its share among the others' scorings."""
    rows = run("defection", **settings.params())
    periods = sorted({r["period"] for r in rows if r["period"] != "all"})
    keep = set(periods[-months:]) if months else set()
    out = []
    for r in rows:
        if r["period"] != "all" and r["period"] not in keep:
            continue
        others = {name: r.get(f"{name}_others") for name in SIGNALS}
        out.append(
            {
                "tier": r["tier"],
                "period": r["period"],
                "leavers": int(r["leavers"]),
                "signals": {name: float(r[name]) for name in SIGNALS},
                "others": {k: (float(v) if v is not None and v == v else None) for k, v in others.items()},
            }
        )
    out.sort(key=lambda r: (r["period"] != "all", r["period"], r["tier"]))
    return {
        "signals": list(SIGNALS),
        "rows": out,
        "leavers": sum(r["leavers"] for r in out if r["period"] == "all"),
        "settings": {k: settings.params()[k] for k in ("silence_days", "grace_days", "lookback_days")},
    }
