"""``cvm clv fit [--as-of TIME] [--json]``: fit the CLV models on the transactions in ClickHouse, as of a time.

The per-customer purchase-occasion facts are computed in SQL from the raw events (``{db}.transactions FINAL``,
amount > 0, event_time <= as_of), the model inputs from them with :func:`scoring.clv.summaries` (T measured to
as_of), and the models fitted with :func:`scoring.bgnbd.fit_bgnbd` and :func:`scoring.gamma_gamma.fit_gamma_gamma`.
The SQL runs as ``cvm sql`` runs it: through a running sink's HTTP API, or on chDB directly when no sink answers.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvm.config import Config
from cvm.events import iso, parse_time
from cvm.exceptions import ConfigError, NothingToFit
from scoring.bgnbd import BGNBDFit, fit_bgnbd
from scoring.clv import TIME_UNIT, summaries
from scoring.gamma_gamma import GammaGammaFit, fit_gamma_gamma
from sinks.query import Reader

__all__ = ["FitReport", "NothingToFit", "fit_as_of", "main", "occasions_sql"]

#: Rows one query may return (the read-only client refuses more than 1,000,000): larger populations are read in
#: slices by a hash of the customer id.
_ROWS_PER_QUERY = 900_000


def occasions_sql(database: str, as_of_ms: int, period_days: int, slices: int = 1, part: int = 0) -> str:
    """Per customer with a purchase occasion by ``as_of_ms``: first and last occasion period, number of occasions,
    and the positive spend of every occasion but the first (see :mod:`scoring.clv` for the conventions). Spend is
    in the base currency (``amount_base``); a transaction without a rate to it counts nowhere, as in the workers.

    >>> "intDiv(toUnixTimestamp64Milli(event_time), 86400000)" in occasions_sql("cvm", 0, 1)
    True
    """
    where = f"amount_base > 0 AND event_time <= fromUnixTimestamp64Milli(toInt64({int(as_of_ms)}), 'UTC')"
    if slices > 1:
        where += f" AND cityHash64(customer_id) % {int(slices)} = {int(part)}"
    return (
        "SELECT min(period) AS first, max(period) AS last, count() AS n, sum(spend) - argMin(spend, period) AS repeat "
        "FROM (SELECT customer_id, intDiv(toUnixTimestamp64Milli(event_time), "
        f"{int(period_days) * 86_400_000}) AS period, sum(amount_base) AS spend "
        f"FROM {database}.transactions FINAL WHERE {where} GROUP BY customer_id, period) "
        "GROUP BY customer_id"
    )


def _rows(reader: Reader, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in reader.records(sql)]


def _latest_transaction_ms(reader: Reader, database: str) -> int | None:
    rows = _rows(
        reader, f"SELECT count() AS n, toUnixTimestamp64Milli(max(event_time)) AS t FROM {database}.transactions FINAL"
    )
    n, t = rows[0]
    return int(t) if int(n) else None


def fit_as_of(cfg: Config, as_of: str | None = None) -> FitReport:
    """Both models fitted as of ``as_of`` (event time text; default: the latest transaction)."""
    as_of_ms: int | None = None
    if as_of is not None:
        try:
            as_of_ms = parse_time(as_of)
        except (ValueError, OverflowError, OSError):
            raise ConfigError(
                f"--as-of {as_of!r} is not a time: give ISO-8601 (2025-06-30T00:00:00Z) or epoch"
            ) from None
    reader = Reader(cfg)
    try:
        db = cfg.clickhouse_database
        if as_of_ms is None:
            as_of_ms = _latest_transaction_ms(reader, db)
            if as_of_ms is None:
                raise NothingToFit(f"no transactions in {db}.transactions: nothing to fit the CLV models on")
        period_days = cfg.clv_period_days
        count = _rows(
            reader,
            f"SELECT uniqExact(customer_id) AS n FROM {db}.transactions FINAL WHERE amount_base > 0 AND "
            f"event_time <= fromUnixTimestamp64Milli(toInt64({as_of_ms}), 'UTC')",
        )
        slices = max(1, math.ceil(int(count[0][0]) / _ROWS_PER_QUERY))
        rows: list[tuple[Any, ...]] = []
        for part in range(slices):
            rows.extend(_rows(reader, occasions_sql(db, as_of_ms, period_days, slices, part)))
    finally:
        reader.close()
    if not rows:
        raise NothingToFit(f"no purchase (transaction with amount_base > 0) by {iso(as_of_ms)}: nothing to fit")
    facts = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    as_of_period = as_of_ms // (period_days * 86_400_000)
    x, t_x, age, m = summaries(
        facts[:, 0].astype(np.int64), facts[:, 1].astype(np.int64), facts[:, 2], facts[:, 3], as_of_period, period_days
    )
    if not np.any(x > 0):
        raise NothingToFit(
            f"none of the {x.size} customers has a repeat purchase occasion by {iso(as_of_ms)}: the models need some"
        )
    return FitReport(as_of_ms, int(x.size), fit_bgnbd(x, t_x, age), fit_gamma_gamma(x, m))


@dataclass(frozen=True)
class FitReport:
    """What ``cvm clv fit`` found: the as-of time, how many customers, and both fits."""

    as_of_ms: int
    customers: int
    bgnbd: BGNBDFit
    gamma_gamma: GammaGammaFit

    def to_json(self) -> dict[str, Any]:
        """The object ``--json`` prints."""
        return {
            "as_of": iso(self.as_of_ms),
            "customers": self.customers,
            "bgnbd": {
                **self.bgnbd.params.to_dict(),
                "time_unit": TIME_UNIT,
                "log_likelihood": self.bgnbd.log_likelihood,
            },
            "gamma_gamma": {**self.gamma_gamma.params.to_dict(), "customers": self.gamma_gamma.customers},
        }

    def to_text(self) -> str:
        """The readable summary."""
        bg, gg = self.bgnbd, self.gamma_gamma
        lines = [
            f"CLV models as of {iso(self.as_of_ms)}, {self.customers:,} customers (time unit: {TIME_UNIT})",
            f"  BG/NBD       r={bg.params.r:.4f}  alpha={bg.params.alpha:.4f}  a={bg.params.a:.4f}  "
            f"b={bg.params.b:.4f}  log-likelihood={bg.log_likelihood:.2f}",
            f"  Gamma-Gamma  p={gg.params.p:.4f}  q={gg.params.q:.4f}  gamma={gg.params.gamma:.4f}  "
            f"on {gg.customers:,} customers with repeat purchases, log-likelihood={gg.log_likelihood:.2f}",
        ]
        if not (bg.converged and gg.converged):
            lines.append("  warning: the optimiser did not converge; these are the best parameters it found")
        return "\n".join(lines) + "\n"


def main(cfg: Config, args: Any) -> int:
    """``cvm clv fit [--as-of TIME] [--json]``."""
    report = fit_as_of(cfg, getattr(args, "as_of", None))
    text = json.dumps(report.to_json()) + "\n" if getattr(args, "json", False) else report.to_text()
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
