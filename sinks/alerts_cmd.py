"""``cvm alerts [--since T] [--format table|json] [--limit N]``: the latest alerts, newest first.

For a person at a terminal: an aligned table (time, customer, rule, severity, CLV, profitability, churn
probability, reasons); for a program: ``--format json``, a list with one object per alert (the ``alerts`` topic's
message, ``scores`` as an object). ``--since`` takes a time (ISO-8601, UTC when no zone is given) or an age
counted back from now (``90m``, ``24h``, ``7d``, ``2w``).

Like ``cvm sql``, it asks a running sink's HTTP API first and opens the embedded ClickHouse itself (read-only)
only when no sink answers.

>>> parse_since("7d", now_ms=1_772_409_600_000)  # 2026-03-02 minus 7 days
1771804800000
>>> parse_since("2026-03-01T08:00Z", now_ms=0)
1772352000000
>>> print(render_table([{"alert_time": "2026-03-02 09:15:00.000", "customer_id": "c42", "rule": "p_alive_drop",
...     "severity": "high", "reasons": ["P(alive) fell from 0.85 to 0.32", "no purchase for 74 days"],
...     "scores": {"clv": 5400.0, "profitability": 812.4, "churn_probability": 0.72}}], width=110), end="")
TIME (UTC)           CUSTOMER  RULE          SEVERITY    CLV  PROFIT  CHURN  REASONS
2026-03-02 09:15:00  c42       p_alive_drop  high      5,400     812    72%  P(alive) fell from 0.85 to 0.32;…
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cvm.config import Config
from cvm.events import parse_time
from cvm.exceptions import ConfigError, QueryError
from sinks.query import Reader, to_json_text

__all__ = ["alerts_sql", "fetch", "main", "parse_since", "render_table"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_HEADERS = ("TIME (UTC)", "CUSTOMER", "RULE", "SEVERITY", "CLV", "PROFIT", "CHURN", "REASONS")
_RIGHT = {"CLV", "PROFIT", "CHURN"}


def parse_since(text: str, now_ms: int) -> int:
    """Epoch ms of ``--since``: an age before ``now_ms`` (``24h``, ``7d``) or a time; else :class:`ConfigError`."""
    age = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if age:
        return now_ms - int(float(age.group(1)) * _UNITS[age.group(2)] * 1000)
    try:
        return parse_time(text)
    except (ValueError, OverflowError):
        raise ConfigError(
            f"--since {text!r}: give a time (2026-03-01, 2026-03-01T08:00Z) or an age (90m, 24h, 7d, 2w)"
        ) from None


def alerts_sql(database: str, since_ms: int | None, limit: int) -> str:
    """The query behind ``cvm alerts`` (FINAL: an alert written twice for one episode shows once)."""
    where = f"WHERE alert_time >= fromUnixTimestamp64Milli(toInt64({int(since_ms)}), 'UTC')\n" if since_ms else ""
    return (
        "SELECT alert_time, customer_id, rule, severity, reasons, scores, episode\n"
        f"FROM {database}.alerts FINAL\n{where}"
        f"ORDER BY alert_time DESC, customer_id ASC, rule ASC\nLIMIT {int(limit)}"
    )


def fetch(cfg: Config, sql: str) -> list[dict[str, Any]]:
    """The rows of a reading query as JSON-ready objects: through the sink's HTTP API, or from ClickHouse directly."""
    try:
        with Reader(cfg) as reader:
            return reader.records(sql)
    except QueryError as exc:
        if "UNKNOWN_TABLE" in str(exc) or "UNKNOWN_DATABASE" in str(exc):
            raise QueryError(
                f"no alerts table in database {cfg.clickhouse_database} yet: start 'cvm sink' (or 'cvm up') once, "
                "it creates the tables"
            ) from None
        raise


def _scores(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    try:
        found = json.loads(value) if value else {}
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _money(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,.0f}"
    return "-"


def _share(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.0%}"
    return "-"


def render_table(records: Sequence[Mapping[str, Any]], width: int | None = None) -> str:
    """An aligned table, one alert per line; reasons are cut to ``width`` characters per line when given."""
    lines = []
    for r in records:
        scores = _scores(r.get("scores"))
        lines.append(
            (
                str(r.get("alert_time") or "")[:19],
                str(r.get("customer_id") or ""),
                str(r.get("rule") or ""),
                str(r.get("severity") or ""),
                _money(scores.get("clv")),
                _money(scores.get("profitability")),
                _share(scores.get("churn_probability_60d", scores.get("churn_probability"))),
                "; ".join(str(x) for x in r.get("reasons") or []),
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(_HEADERS[:-1])]
    room = None if width is None else max(20, width - sum(widths) - 2 * len(widths))
    out = []
    for row in [_HEADERS, *lines]:
        cells = [c.rjust(w) if h in _RIGHT else c.ljust(w) for c, w, h in zip(row, widths, _HEADERS, strict=False)]
        reasons = row[-1]
        if room is not None and len(reasons) > room:
            reasons = reasons[: room - 1] + "…"
        out.append("  ".join([*cells, reasons]).rstrip())
    return "\n".join(out) + "\n"


def main(cfg: Config, args: Any) -> int:
    """Print the latest alerts; exit code 0 (also when there are none)."""
    since = getattr(args, "since", None)
    since_ms = parse_since(since, int(time.time() * 1000)) if since else None
    limit = int(getattr(args, "limit", None) or 50)
    fmt = getattr(args, "format", None) or "table"
    records = fetch(cfg, alerts_sql(cfg.clickhouse_database, since_ms, limit))
    for r in records:
        r["scores"] = _scores(r.get("scores"))
    if fmt == "json":
        text = to_json_text(records)
    elif not records:
        when = datetime.fromtimestamp(since_ms / 1000, UTC).strftime(" since %Y-%m-%d %H:%M UTC") if since_ms else ""
        text = f"no alerts{when}\n"
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        text = render_table(records, width)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
