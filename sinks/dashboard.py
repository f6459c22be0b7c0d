"""The dashboard's JSON API: one function per ``/api/`` endpoint, each a read-only, parameterised ClickHouse query.

Endpoints (``GET``; every answer is JSON, a refused request is ``{"error": "<one line>"}`` with 400/404):

==========================================  ==========================================================================
``/api/kpis?period=30d|90d|all``            customers, revenue and gross margin over the period, events/s and lag,
                                            alerts today, the latest model ROC AUC
``/api/whale?points=200``                   the whale curve: cumulative profit over customers sorted by profitability
``/api/matrix?low=0.3&high=0.6``            value tier × churn band: customers, value at risk, expected loss
``/api/alerts?limit=50``                    the latest alerts, newest first, with the customer's value and churn risk
``/api/customer/<id>?points=&limit=``       one customer: feature snapshot, score history, recent events, alerts
``/api/migration?days=90``                  per day, customers whose value tier changed (and from → to)
``/api/model?points=500``                   model quality metrics over time (roc_auc, log_loss, ...)
``/api/outcomes?months=12``                 per alert rule, over time: precision, lift over the base rate, leavers
                                            caught ahead, median lead (:mod:`sinks.outcomes`)
``/api/defection?months=12``                why customers leave: the signals before leaving, by tier and month
==========================================  ==========================================================================

Time: a *period* is in event time, ending at the latest transaction in ClickHouse (simulated and replayed data is
historical, so "the last 30 days" of wall-clock time could be empty). An alert's time is the event time that raised
it, so "alerts today" counts the alerts of the stream's latest day (UTC): today for live traffic, the last day of the
data for a replayed history.
Values at risk use CLV when the customer has one, else its profitability to date.

The SQL is also in ``docs/queries.sql`` for analysts (``{db}`` is the database there written ``cvm``; a test keeps the
two identical). User input only ever reaches ClickHouse as a typed query parameter (``{name:Type}``).

>>> parse_params("limit=20&x=1", {"limit": _Int(50, 1, 500)})
{'limit': 20}
>>> parse_params("limit=0", {"limit": _Int(50, 1, 500)})
Traceback (most recent call last):
sinks.dashboard.ApiError: limit must be an integer from 1 to 500, not '0'
>>> parse_params("period=all", {"period": _Choice("30d", PERIODS)})
{'period': 'all'}
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from clickhouse_connect.driver.exceptions import ClickHouseError

from sinks import outcomes
from sinks.clickhouse import ClickHouse, condense_error
from sinks.outcomes import OutcomeSettings
from sinks.query import jsonable

__all__ = [
    "ApiError",
    "Context",
    "ENDPOINTS",
    "Endpoint",
    "PERIODS",
    "QUERIES",
    "STATIC_DIR",
    "alerts",
    "customer",
    "defection",
    "kpis",
    "matrix",
    "migration",
    "model",
    "outcome_figures",
    "parse_params",
    "routes",
    "static_file",
    "whale",
]

#: Where the page lives: ``index.html``, ``app.js``, ``app.css`` and ``vendor/`` (the charting library).
STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Periods the KPIs accept, in days of event time (0: everything).
PERIODS = {"7d": 7, "30d": 30, "90d": 90, "365d": 365, "all": 0}

TIERS = ("A", "B", "C")
BANDS = ("low", "medium", "high", "unscored")
_MAX_ID = 200


class ApiError(Exception):
    """A request the API refuses: the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- the SQL (docs/queries.sql has the same text, with {db} written cvm) -------------------------------------------

QUERIES: dict[str, str] = {
    # Latest state per customer: customers is a ReplacingMergeTree(version), so FINAL.
    "kpi_customers": """
SELECT
    count() AS customers,
    sum(profitability) AS profit,
    sum(clv) AS total_clv,
    countIf(value_tier = 'A') AS tier_a,
    avg(churn_probability) AS mean_churn_probability,
    max(as_of) AS latest_score_time
FROM {db}.customers FINAL
""",
    # Revenue and margin in event time: the period ends at the latest transaction; {days:UInt32} = 0 means all.
    # Money in the base currency (amount_base); a transaction without a rate to it (a dead letter) counts nowhere.
    "kpi_period": """
WITH
    (SELECT max(event_time) FROM {db}.transactions) AS period_end,
    period_end - toIntervalDay({days:UInt32}) AS period_start,
    period_start - toIntervalDay({days:UInt32}) AS previous_start,
    {days:UInt32} = 0 OR event_time > period_start AS in_period,
    {days:UInt32} > 0 AND event_time > previous_start AND event_time <= period_start AS in_previous
SELECT
    period_end AS end,
    if({days:UInt32} = 0, min(event_time), period_start) AS start,
    countIf(in_period) AS transactions,
    uniqExactIf(customer_id, in_period) AS active_customers,
    ifNull(sumIf(amount, in_period), 0) AS revenue,
    ifNull(sumIf(margin, in_period), 0) AS gross_margin,
    ifNull(sumIf(amount, in_previous), 0) AS previous_revenue,
    ifNull(sumIf(margin, in_previous), 0) AS previous_gross_margin
FROM
(
    SELECT
        customer_id,
        event_time,
        amount_base AS amount,
        ifNull(gross_margin_base, amount_base * {margin_rate:Float64}) AS margin
    FROM {db}.transactions FINAL
    WHERE amount_base IS NOT NULL
)
""",
    # An alert's time is the event time that raised it, so "today" is the day (UTC) of the stream's latest event:
    # the wall-clock day for live traffic, the last day of the data for a replayed history. Alerts are collapsed
    # per episode (ReplacingMergeTree): FINAL.
    "kpi_alerts": """
WITH toStartOfDay(greatest(
    (SELECT max(event_time) FROM {db}.transactions),
    (SELECT max(alert_time) FROM {db}.alerts)
)) AS stream_day
SELECT
    countIf(alert_time >= stream_day) AS today,
    count() AS total,
    max(alert_time) AS latest,
    any(stream_day) AS day
FROM {db}.alerts FINAL
""",
    "kpi_model": """
SELECT
    argMax(value, time) AS roc_auc,
    argMax(model_version, time) AS model_version,
    max(time) AS measured_at,
    count() AS evaluations
FROM {db}.model_metrics
WHERE metric = 'roc_auc'
""",
    # About {points} points whatever the number of customers, always with the first, the last and the peak (the
    # last customer whose profitability is positive: the cumulative profit rises until there, then falls).
    "whale": """
SELECT rank, n, positive, cumulative_profit
FROM
(
    SELECT
        row_number() OVER by_profit AS rank,
        count() OVER () AS n,
        countIf(profitability > 0) OVER () AS positive,
        sum(profitability) OVER by_profit AS cumulative_profit
    FROM {db}.customers FINAL
    WINDOW by_profit AS (ORDER BY profitability DESC, customer_id ASC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
WHERE rank % greatest(1, intDiv(n, {points:UInt32})) = 0 OR rank IN (1, n, positive)
ORDER BY rank
""",
    # Value at risk: CLV when the customer has one, else profitability to date; a loss-maker puts nothing at risk.
    # A customer no churn model has scored yet (churn_probability NULL) is in band 'unscored', not in 'low'.
    "matrix": """
SELECT
    value_tier AS tier,
    multiIf(
        churn_probability IS NULL, 'unscored',
        churn_probability < {low:Float64}, 'low',
        churn_probability < {high:Float64}, 'medium',
        'high'
    ) AS band,
    count() AS customers,
    sum(greatest(ifNull(clv, profitability), 0)) AS value_at_risk,
    ifNull(sum(churn_probability * greatest(ifNull(clv, profitability), 0)), 0) AS expected_loss
FROM {db}.customers FINAL
GROUP BY tier, band
ORDER BY tier, band
""",
    # The latest alerts, with the customer's current figures beside the ones the alert carried.
    "alerts": """
SELECT
    a.alert_time AS alert_time,
    a.customer_id AS customer_id,
    a.rule AS rule,
    a.severity AS severity,
    a.reasons AS reasons,
    a.scores AS scores,
    a.episode AS episode,
    c.customer_id != '' AS known,
    c.value_tier AS value_tier,
    c.clv AS clv,
    c.profitability AS profitability,
    c.churn_probability AS churn_probability
FROM
(
    SELECT alert_time, customer_id, rule, severity, reasons, scores, episode
    FROM {db}.alerts FINAL
    ORDER BY alert_time DESC, customer_id ASC, rule ASC
    LIMIT {limit:UInt32}
) AS a
LEFT JOIN
(
    SELECT customer_id, value_tier, clv, profitability, churn_probability
    FROM {db}.customers FINAL
    WHERE customer_id IN (SELECT customer_id FROM {db}.alerts FINAL ORDER BY alert_time DESC LIMIT {limit:UInt32})
) AS c ON c.customer_id = a.customer_id
ORDER BY alert_time DESC, customer_id ASC, rule ASC
""",
    "customer_snapshot": """
SELECT *
FROM {db}.customers FINAL
WHERE customer_id = {id:String}
""",
    # Score history: one row per score message (LIMIT 1 BY version guards against a row written twice).
    "customer_history": """
SELECT as_of, version, revenue, profitability, clv, churn_probability, p_alive, loyalty_score, value_tier
FROM {db}.customer_scores
WHERE customer_id = {id:String}
ORDER BY version DESC
LIMIT 1 BY version
LIMIT {points:UInt32}
""",
    "customer_transactions": """
SELECT event_time, event_id, amount, currency, amount_base, gross_margin, gross_margin_base, channel, category
FROM {db}.transactions FINAL
WHERE customer_id = {id:String}
ORDER BY event_time DESC, event_id ASC
LIMIT {limit:UInt32}
""",
    "customer_contacts": """
SELECT event_time, event_id, channel, reason, resolved, handle_time_s, cost
FROM {db}.contacts FINAL
WHERE customer_id = {id:String}
ORDER BY event_time DESC, event_id ASC
LIMIT {limit:UInt32}
""",
    "customer_payments": """
SELECT event_time, event_id, invoice_id, amount_due, amount_paid, due_date, paid_date, status
FROM {db}.payments FINAL
WHERE customer_id = {id:String}
ORDER BY event_time DESC, event_id ASC
LIMIT {limit:UInt32}
""",
    "customer_alerts": """
SELECT alert_time, rule, severity, reasons, episode
FROM {db}.alerts FINAL
WHERE customer_id = {id:String}
ORDER BY alert_time DESC, rule ASC
LIMIT {limit:UInt32}
""",
    # A customer's tier on a day is its last score's that day; a move is a day whose tier differs from the
    # customer's previous scored day. The window runs over all history, so the first day in the range still sees
    # the day before it. {days:UInt32} = 0 means all days.
    "migration": """
WITH
    daily AS
    (
        SELECT customer_id, toDate(as_of) AS day, argMax(value_tier, version) AS tier
        FROM {db}.customer_scores
        WHERE value_tier != ''
        GROUP BY customer_id, day
    ),
    moves AS
    (
        SELECT
            day,
            tier,
            lagInFrame(tier) OVER (PARTITION BY customer_id ORDER BY day ASC ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
                AS previous
        FROM daily
    )
SELECT day, previous AS from_tier, tier AS to_tier, count() AS customers
FROM moves
WHERE previous != '' AND previous != tier
    AND ({days:UInt32} = 0
        OR dateDiff('day', day, (SELECT max(toDate(as_of)) FROM {db}.customer_scores)) < {days:UInt32})
GROUP BY day, from_tier, to_tier
ORDER BY day ASC, from_tier ASC, to_tier ASC
""",
    "model": """
SELECT metric, time, model_version, value
FROM {db}.model_metrics
ORDER BY time DESC
LIMIT {points:UInt32} BY metric
""",
}


#: The alert-outcome and defection queries live in ``sinks/sql/outcomes.sql`` (sinks/outcomes.py).
QUERIES.update(outcomes.QUERIES)


def _sql(ch: ClickHouse, name: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of the named query as dicts; :class:`ApiError` 503 when ClickHouse refuses (one line)."""
    text = QUERIES[name].replace("{db}", ch.database)
    try:
        result = ch.query(text, params)
    except ClickHouseError as exc:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"{name}: {condense_error(exc)}") from None
    columns = list(result.column_names)
    return [dict(zip(columns, row, strict=True)) for row in result.result_rows]


def _json(value: Any) -> Any:
    """A JSON value; times as ISO 8601 in UTC with a ``Z`` (what ``Date.parse`` reads unambiguously).

    >>> _json({"t": datetime(2025, 3, 1, 12, 0, 0, 250000), "x": [float("nan")]})
    {'t': '2025-03-01T12:00:00.250Z', 'x': [None]}
    """
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return jsonable(value)


def _epoch(value: Any) -> bool:
    """True for the zero time ClickHouse gives as max() of nothing."""
    return isinstance(value, datetime) and value.replace(tzinfo=UTC).timestamp() <= 0


# --- parameters ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Int:
    default: int
    low: int
    high: int
    doc: str = ""

    def schema(self) -> dict[str, Any]:
        """The parameter's JSON Schema (OpenAPI)."""
        return {"type": "integer", "minimum": self.low, "maximum": self.high, "default": self.default}

    def parse(self, name: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = self.low - 1
        if not self.low <= value <= self.high:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"{name} must be an integer from {self.low} to {self.high}, not {text!r}"
            )
        return value


@dataclass(frozen=True)
class _Float:
    default: float
    low: float
    high: float
    doc: str = ""

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.low, "maximum": self.high, "default": self.default}

    def parse(self, name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not self.low <= value <= self.high:  # NaN fails too
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"{name} must be a number from {self.low} to {self.high}, not {text!r}"
            )
        return value


@dataclass(frozen=True)
class _Choice:
    default: str
    choices: Mapping[str, Any]
    doc: str = ""

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices), "default": self.default}

    def parse(self, name: str, text: str) -> str:
        if text not in self.choices:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} must be one of {', '.join(self.choices)}, not {text!r}")
        return text


Spec = _Int | _Float | _Choice


def parse_params(query_string: str, spec: Mapping[str, Spec]) -> dict[str, Any]:
    """The parameters ``spec`` names, parsed and range-checked (defaults for absent ones); others are ignored."""
    given = {k: v[-1] for k, v in parse_qs(query_string, keep_blank_values=True).items()}
    return {name: kind.parse(name, given[name]) if name in given else kind.default for name, kind in spec.items()}


# --- endpoints -------------------------------------------------------------------------------------------------------


def kpis(
    ch: ClickHouse,
    period: str = "30d",
    margin_rate: float = 0.3,
    status: Mapping[str, Any] | None = None,
    currency: str = "EUR",
) -> dict:
    """The headline figures; ``status`` is the sink writer's counters (events/s, lag) when a writer runs here;
    ``currency`` is the base currency every money figure is in (``CVM_BASE_CURRENCY``)."""
    days = PERIODS[period]
    base = _sql(ch, "kpi_customers")[0]
    money = _sql(ch, "kpi_period", days=days, margin_rate=margin_rate)[0]
    raised = _sql(ch, "kpi_alerts")[0]
    auc = _sql(ch, "kpi_model")[0]
    has_data = money["transactions"] > 0 or not _epoch(money["end"])
    writer = dict(status) if status else None
    lag = writer.get("lag") if writer else None
    return _json(
        {
            "period": {
                "name": period,
                "days": days or None,
                "start": money["start"] if has_data else None,
                "end": money["end"] if has_data else None,
                "basis": "event time, ending at the latest transaction",
            },
            "customers": base["customers"],
            "active_customers": money["active_customers"],
            "tier_a": base["tier_a"],
            "profit": base["profit"],
            "clv": base["total_clv"],
            "mean_churn_probability": base["mean_churn_probability"] if base["customers"] else None,
            "latest_score_time": None if _epoch(base["latest_score_time"]) else base["latest_score_time"],
            "revenue": money["revenue"],
            "gross_margin": money["gross_margin"],
            "previous_revenue": money["previous_revenue"] if days else None,
            "previous_gross_margin": money["previous_gross_margin"] if days else None,
            "transactions": money["transactions"],
            "currency": currency,
            "alerts_today": raised["today"],
            "alerts_day": raised["day"].date().isoformat() if raised["total"] else None,
            "alerts_total": raised["total"],
            "latest_alert_time": None if _epoch(raised["latest"]) else raised["latest"],
            "roc_auc": auc["roc_auc"] if auc["evaluations"] else None,
            "model_version": auc["model_version"] if auc["evaluations"] else None,
            "model_time": auc["measured_at"] if auc["evaluations"] else None,
            "events_per_s": writer.get("events_per_s") if writer else None,
            "lag": sum(lag.values()) if isinstance(lag, dict) else None,
            "writer": writer,
        }
    )


def whale(ch: ClickHouse, points: int = 200) -> dict:
    """The whale curve: ``(share of customers, cumulative profit)`` from the most to the least profitable.

    The curve starts at (0, 0) and ends at (1, total profit). The peak is where the profitable customers end: the
    top ``peak.share`` of customers carry ``peak.pct_of_total`` % of the total profit, and the rest destroy
    ``loss``.
    """
    rows = _sql(ch, "whale", points=points)
    if not rows:
        return {"customers": 0, "total_profit": 0.0, "points": [], "peak": None, "loss": 0.0}
    n, positive = rows[0]["n"], rows[0]["positive"]
    total = float(rows[-1]["cumulative_profit"])
    curve = [{"share": 0.0, "rank": 0, "cumulative_profit": 0.0}]
    peak_profit = 0.0
    for row in rows:
        curve.append({"share": row["rank"] / n, "rank": row["rank"], "cumulative_profit": row["cumulative_profit"]})
        if row["rank"] == positive:
            peak_profit = float(row["cumulative_profit"])
    peak = None
    if positive:
        peak = {
            "rank": positive,
            "share": positive / n,
            "cumulative_profit": peak_profit,
            "pct_of_total": 100.0 * peak_profit / total if total > 0 else None,
        }
    return _json({"customers": n, "total_profit": total, "points": curve, "peak": peak, "loss": total - peak_profit})


def matrix(ch: ClickHouse, low: float = 0.3, high: float = 0.6) -> dict:
    """Value tier × churn band: every cell present (zeros included); tier ``""`` is "not rated yet"."""
    if not low < high:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"low ({low}) must be below high ({high})")
    found = {(r["tier"], r["band"]): r for r in _sql(ch, "matrix", low=low, high=high)}
    tiers = list(TIERS) + sorted({t for t, _ in found if t not in TIERS})
    cells = []
    for tier in tiers:
        for band in BANDS:
            row = found.get((tier, band), {})
            cells.append(
                {
                    "tier": tier,
                    "band": band,
                    "customers": row.get("customers", 0),
                    "value_at_risk": row.get("value_at_risk", 0.0),
                    "expected_loss": row.get("expected_loss", 0.0),
                }
            )
    bands = [
        {"name": "low", "from": 0.0, "to": low},
        {"name": "medium", "from": low, "to": high},
        {"name": "high", "from": high, "to": 1.0},
        {"name": "unscored", "from": None, "to": None},  # no churn model has scored them yet
    ]
    return _json({"tiers": tiers, "bands": bands, "cells": cells, "customers": sum(c["customers"] for c in cells)})


def _scores(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _number(*candidates: Any) -> float | None:
    """The first candidate that is a finite, non-zero number (NULL means "not computed" in cvm's tables; rows and
    alerts written before migration 0004 still use zero)."""
    for value in candidates:
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value and value != 0:
            return float(value)
    return None


def alerts(ch: ClickHouse, limit: int = 50) -> dict:
    """The latest alerts, newest first; ``value`` and ``churn_probability`` as the alert carried them when it did.

    ``value`` is the CLV, else the profitability (from the alert's ``scores``, else the customer's current row).
    """
    out = []
    for row in _sql(ch, "alerts", limit=limit):
        scores = _scores(row["scores"])
        known = bool(row["known"])
        current = {
            "value_tier": row["value_tier"] if known else None,
            "clv": row["clv"] if known else None,
            "profitability": row["profitability"] if known else None,
            "churn_probability": row["churn_probability"] if known else None,
        }
        churn = scores.get("churn_probability")
        if not isinstance(churn, int | float) or isinstance(churn, bool):
            churn = current["churn_probability"]
        out.append(
            {
                "alert_time": row["alert_time"],
                "customer_id": row["customer_id"],
                "rule": row["rule"],
                "severity": row["severity"],
                "reasons": list(row["reasons"]),
                "episode": row["episode"],
                "value_tier": scores.get("value_tier") or current["value_tier"] or None,
                "value": _number(
                    scores.get("clv"), scores.get("profitability"), current["clv"], current["profitability"]
                ),
                "churn_probability": churn,
                "scores": scores,
                "current": current,
            }
        )
    return _json({"alerts": out, "count": len(out)})


def customer(ch: ClickHouse, customer_id: str, points: int = 500, limit: int = 20) -> dict:
    """One customer: the latest row of ``customers`` (every feature), score history (oldest first), the latest
    ``limit`` events of each kind and alerts; :class:`ApiError` 404 when cvm has seen nothing of it."""
    if not customer_id or len(customer_id) > _MAX_ID:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"a customer id has 1 to {_MAX_ID} characters")
    snapshot = _sql(ch, "customer_snapshot", id=customer_id)
    history = _sql(ch, "customer_history", id=customer_id, points=points)
    history.reverse()
    events = {
        kind: _sql(ch, f"customer_{kind}", id=customer_id, limit=limit)
        for kind in ("transactions", "contacts", "payments")
    }
    raised = _sql(ch, "customer_alerts", id=customer_id, limit=limit)
    if not snapshot and not history and not raised and not any(events.values()):
        raise ApiError(HTTPStatus.NOT_FOUND, f"no customer {customer_id!r} in {ch.database}")
    return _json(
        {
            "customer_id": customer_id,
            "snapshot": snapshot[0] if snapshot else None,
            "history": history,
            "events": events,
            "alerts": raised,
        }
    )


def migration(ch: ClickHouse, days: int = 90) -> dict:
    """Per day (of event time), how many customers moved up or down a value tier, and the totals per move."""
    per_day: dict[Any, dict[str, Any]] = {}
    flows: dict[tuple[str, str], int] = {}
    for row in _sql(ch, "migration", days=days):
        day = per_day.setdefault(row["day"], {"day": row["day"], "up": 0, "down": 0, "moved": 0})
        n = int(row["customers"])
        # Tiers are letters: A is the most valuable, so a move to an earlier letter is an upgrade.
        day["up" if row["to_tier"] < row["from_tier"] else "down"] += n
        day["moved"] += n
        key = (row["from_tier"], row["to_tier"])
        flows[key] = flows.get(key, 0) + n
    return _json(
        {
            "days": list(per_day.values()),
            "flows": [{"from": f, "to": t, "customers": n} for (f, t), n in sorted(flows.items())],
            "moved": sum(flows.values()),
        }
    )


def model(ch: ClickHouse, points: int = 500) -> dict:
    """Each metric's last ``points`` evaluations, oldest first, and its latest value."""
    series: dict[str, list[dict[str, Any]]] = {}
    for row in _sql(ch, "model", points=points):
        series.setdefault(row["metric"], []).append(
            {"time": row["time"], "value": row["value"], "model_version": row["model_version"]}
        )
    for values in series.values():
        values.reverse()
    latest = {metric: values[-1]["value"] for metric, values in series.items()}
    return _json({"series": series, "latest": latest})


def outcome_figures(ch: ClickHouse, settings: OutcomeSettings, months: int = 12) -> dict:
    """What became of each rule's alerts, per month and over the evaluation window
    (:func:`sinks.outcomes.alert_outcomes`)."""
    return _json(outcomes.alert_outcomes(lambda name, **p: _sql(ch, name, **p), settings, months))


def defection(ch: ClickHouse, settings: OutcomeSettings, months: int = 12) -> dict:
    """Why customers leave: the signals before leaving, by tier and month (:func:`sinks.outcomes.defection`)."""
    return _json(outcomes.defection(lambda name, **p: _sql(ch, name, **p), settings, months))


# --- routing ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What an endpoint may need besides ClickHouse and its parameters."""

    margin_rate: float = 0.3
    status: Callable[[], dict[str, Any]] | None = None
    currency: str = "EUR"
    outcomes: OutcomeSettings = OutcomeSettings()


@dataclass(frozen=True)
class Endpoint:
    """One ``GET`` endpoint: its path (``{id}`` is a path parameter), query parameters, answer and summary.

    ``sinks.http`` routes it and ``sinks.openapi`` describes it, both from this table.
    """

    path: str
    summary: str
    params: Mapping[str, Spec]
    run: Callable[[ClickHouse, dict[str, Any], Context], Any]

    def answer(self, ch: ClickHouse, query_string: str, ctx: Context, **path: str) -> Any:
        """The JSON answer; :class:`ApiError` for a bad parameter."""
        return self.run(ch, {**parse_params(query_string, self.params), **path}, ctx)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "/api/kpis",
        "Headline figures: customers, revenue and margin over the period, value at risk, alerts today, events/s, lag",
        {"period": _Choice("30d", PERIODS, "Event-time period ending at the latest transaction")},
        lambda ch, p, ctx: kpis(ch, p["period"], ctx.margin_rate, ctx.status() if ctx.status else None, ctx.currency),
    ),
    Endpoint(
        "/api/whale",
        "The whale curve: cumulative profit over customers sorted by profitability, sampled in SQL, with its peak",
        {"points": _Int(200, 10, 5000, "About this many points")},
        lambda ch, p, ctx: whale(ch, **p),
    ),
    Endpoint(
        "/api/matrix",
        "Value tier x churn band: customers, value at risk and expected loss in every cell",
        {
            "low": _Float(0.3, 0.0, 1.0, "Churn probability where the medium band starts"),
            "high": _Float(0.6, 0.0, 1.0, "Churn probability where the high band starts (above low)"),
        },
        lambda ch, p, ctx: matrix(ch, **p),
    ),
    Endpoint(
        "/api/alerts",
        "The latest alerts, newest first, with tier, value, churn probability and reasons",
        {"limit": _Int(50, 1, 1000, "Alerts at most")},
        lambda ch, p, ctx: alerts(ch, **p),
    ),
    Endpoint(
        "/api/customer/{id}",
        "One customer: every feature, score history, its latest events of each kind, its alerts",
        {
            "points": _Int(500, 1, 10000, "Score history points at most (the latest)"),
            "limit": _Int(20, 1, 500, "Events of each kind and alerts at most (the latest)"),
        },
        lambda ch, p, ctx: customer(ch, p.pop("id"), **p),
    ),
    Endpoint(
        "/api/migration",
        "Per day, customers moving up or down a value tier, and the totals per move",
        {"days": _Int(90, 0, 36500, "Days back from the latest score (0: all)")},
        lambda ch, p, ctx: migration(ch, **p),
    ),
    Endpoint(
        "/api/model",
        "Each model-quality metric over time and its latest value",
        {"points": _Int(500, 1, 10000, "Evaluations per metric at most (the latest)")},
        lambda ch, p, ctx: model(ch, **p),
    ),
    Endpoint(
        "/api/outcomes",
        "Alert outcomes per rule, per month and over the evaluation window: precision, lift over the tier-A base "
        "rate, high-value leavers caught 30 days ahead, median lead (leaving observed in event time)",
        {"months": _Int(12, 0, 240, "Months shown, the latest (0: only the evaluation window)")},
        lambda ch, p, ctx: outcome_figures(ch, ctx.outcomes, **p),
    ),
    Endpoint(
        "/api/defection",
        "Why customers leave: for those who left, the share showing each signal of leaving before it, by value tier "
        "and month of leaving, beside its share among the others",
        {"months": _Int(12, 0, 240, "Months shown, the latest (0: only all months together)")},
        lambda ch, p, ctx: defection(ch, ctx.outcomes, **p),
    ),
)


def routes() -> list[str]:
    """The dashboard's endpoint paths."""
    return [e.path for e in ENDPOINTS]


# --- the page's files ------------------------------------------------------------------------------------------------

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain", ".md": "text/plain"}


def static_file(path: str) -> tuple[bytes, str] | None:
    """The bytes and content type of ``/static/<path>`` (a file under :data:`STATIC_DIR`), or None.

    Only plain files inside the folder are served: ``..``, absolute paths and hidden files are refused.

    >>> static_file("/static/../dashboard.py") is None, static_file("/static/.hidden") is None
    (True, True)
    """
    rel = unquote(path.removeprefix("/static/"))
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or "\\" in rel:
        return None
    target = (STATIC_DIR / rel).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        return None
    kind = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if kind.startswith("text/"):
        kind += "; charset=utf-8"
    return target.read_bytes(), kind
