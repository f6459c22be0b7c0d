"""The dashboard's endpoint table: each ``/api/`` path, its query parameters and the figure it answers.

:data:`ENDPOINTS` holds one :class:`Endpoint` per ``GET`` endpoint: its path, summary, parameters (:class:`_Int`,
:class:`_Float`, :class:`_Choice`: parsed and range-checked by :func:`parse_params`, a bad one an
:class:`sinks.dashboard.ApiError` 400) and the function of :mod:`sinks.dashboard` that computes its answer, with the
:class:`Context` it may need. ``sinks.http`` routes this table and ``sinks.openapi`` describes it; the queries
behind the figures and the shaping of their rows into JSON are :mod:`sinks.dashboard`.

>>> parse_params("limit=20&x=1", {"limit": _Int(50, 1, 500)})
{'limit': 20}
>>> parse_params("limit=0", {"limit": _Int(50, 1, 500)})
Traceback (most recent call last):
sinks.dashboard.ApiError: limit must be an integer from 1 to 500, not '0'
>>> parse_params("period=all", {"period": _Choice("30d", PERIODS)})
{'period': 'all'}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from sinks.clickhouse import ClickHouse
from sinks.dashboard import (
    PERIODS,
    ApiError,
    alerts,
    customer,
    defection,
    kpis,
    matrix,
    migration,
    model,
    outcome_figures,
    whale,
)
from sinks.outcomes import OutcomeSettings

__all__ = ["ENDPOINTS", "Context", "Endpoint", "parse_params", "routes"]


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
