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

The SQL lives in ``sinks/sql/dashboard.sql`` (and ``sinks/sql/outcomes.sql``), read once at import: this module holds
the queries' parameters and the shaping of their rows into JSON. ``docs/queries.sql`` has the same text for analysts
(``{db}`` is the database there written ``cvm``; a test keeps the two identical). User input only ever reaches
ClickHouse as a typed query parameter (``{name:Type}``). The page these answers feed, and its files, are
:mod:`sinks.page`.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

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
    "SQL_FILE",
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
