"""The dashboard's figures: one function per ``/api/`` endpoint, each a read-only, parameterised ClickHouse query.

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


The SQL lives in ``sinks/sql/dashboard.sql`` (and ``sinks/sql/outcomes.sql``), read once at import: this module holds
the queries' parameters and the shaping of their rows into JSON. ``docs/queries.sql`` has the same text for analysts
(``{db}`` is the database there written ``cvm``; a test keeps the two identical). User input only ever reaches
ClickHouse as a typed query parameter (``{name:Type}``). The endpoint table that calls these functions (each path's
query parameters, parsed and range-checked) is :mod:`sinks.endpoints`; the page these answers feed, and its files,
are :mod:`sinks.page`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from sinks import outcomes
from sinks.clickhouse import ClickHouse, condense_error
from sinks.outcomes import OutcomeSettings
from sinks.query import jsonable

__all__ = [
    "ApiError",
    "PERIODS",
    "QUERIES",
    "SQL_FILE",
    "alerts",
    "customer",
    "defection",
    "kpis",
    "matrix",
    "migration",
    "model",
    "outcome_figures",
    "whale",
]

#: The file of the dashboard's queries (``-- name: X`` blocks, read by :func:`sinks.outcomes.load_queries`).
SQL_FILE = Path(__file__).resolve().parent / "sql" / "dashboard.sql"

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


#: The endpoints' statements: those of ``sinks/sql/dashboard.sql``, then the alert-outcome and defection ones of
#: ``sinks/sql/outcomes.sql`` (:mod:`sinks.outcomes`); ``{db}`` stands for the database.
QUERIES: dict[str, str] = {**outcomes.load_queries(SQL_FILE), **outcomes.QUERIES}


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
