"""The dashboard's JSON API on the real chDB engine, through a real ApiServer: figures checked against rows we wrote."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cvm.config import Config
from sinks import dashboard
from sinks.clickhouse import ClickHouse
from sinks.http import ApiServer
from sinks.page import STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]

#: (customer_id, tier, profitability, clv, churn_probability): sorted by profitability, 5 profitable, total 600.
#: None is NULL: no CLV model or no churn model has scored the customer yet.
CUSTOMERS = [
    ("c00", "A", 500.0, 2000.0, 0.70),
    ("c01", "A", 300.0, None, 0.10),
    ("c02", "B", 200.0, 800.0, 0.45),
    ("c03", "B", 100.0, None, 0.65),
    ("c04", "B", 50.0, 150.0, 0.05),
    ("c05", "C", 0.0, None, None),
    ("c06", "C", -20.0, None, 0.20),
    ("c07", "C", -80.0, None, 0.90),
    ("c08", "C", -150.0, None, 0.59),
    ("c09", "C", -300.0, None, 0.60),
]
TOTAL_PROFIT = 600.0
LATEST_EVENT = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)

#: Alerts, newest first (the first one is raised "now": it counts for alerts today).
ALERTS = [
    ("c00", "high_value_at_risk", "critical", ["churn probability 0.70", "3 complaints in 30 days"],
     '{"clv": 2000, "profitability": 500, "churn_probability": 0.7, "value_tier": "A"}'),
    ("c03", "cancellation_request", "high", ["cancellation request", "2 failed payments"], "{}"),
    ("c07", "p_alive_drop", "medium", ["P(alive) fell from 0.9 to 0.3"], "not json"),
]  # fmt: skip


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _sql(value: float | None) -> str:
    return "NULL" if value is None else repr(value)


def seed(ch: ClickHouse, now: datetime | None = None) -> dict[str, Any]:
    """Rows in every table the dashboard reads; returns the figures the API must give back."""
    db = ch.database
    now = now or datetime.now(UTC)
    rows = ", ".join(
        f"('{cid}', 2, '{_ts(LATEST_EVENT)}', {p + 100}, {p}, '{tier}', {_sql(clv)}, {_sql(churn)}, "
        f"['reason of {cid}'])"
        for cid, tier, p, clv, churn in CUSTOMERS
    )
    columns = "customer_id, version, as_of, revenue, profitability, value_tier, clv, churn_probability, churn_reasons"
    ch.command(f"INSERT INTO {db}.customers ({columns}) VALUES {rows}")
    # An older version of c00 that FINAL must hide.
    ch.command(
        f"INSERT INTO {db}.customers ({columns}) VALUES ('c00', 1, '2025-01-01 00:00:00', 1, 9999, 'C', 0, 0, [])"
    )

    # Transactions: four in the last 30 days of event time (one without margin, one delivered twice, one in dollars),
    # two before, and one in yen for which there is no rate (a dead letter for the workers: it counts nowhere).
    # As the sink writes them: the original amount and currency, and the amounts in the base currency (EUR).
    day = timedelta(days=1)
    tx = [
        ("t1", "c00", LATEST_EVENT, 100.0, "EUR", 20.0, 100.0, 20.0),
        ("t2", "c01", LATEST_EVENT - 10 * day, 50.0, "EUR", None, 50.0, None),  # margin = 50 * 0.3
        ("t3", "c02", LATEST_EVENT - 29 * day, -10.0, "EUR", -3.0, -10.0, -3.0),
        ("t4", "c00", LATEST_EVENT - 31 * day, 1000.0, "EUR", 400.0, 1000.0, 400.0),  # previous period
        ("t5", "c03", LATEST_EVENT - 200 * day, 7.0, "EUR", 1.0, 7.0, 1.0),
        ("t6", "c04", LATEST_EVENT - 5 * day, 10.0, "USD", 3.0, 8.0, 2.4),  # 1 USD = 0.8 EUR
        ("t7", "c05", LATEST_EVENT - 5 * day, 1000.0, "JPY", None, None, None),  # no rate
    ]
    values = ", ".join(
        f"('{eid}', '{cid}', '{_ts(t)}', {amount}, '{cur}', {_sql(margin)}, {_sql(base)}, {_sql(mbase)}, "
        "'web', 'books')"
        for eid, cid, t, amount, cur, margin, base, mbase in tx
    )
    insert_tx = (
        f"INSERT INTO {db}.transactions (event_id, customer_id, event_time, amount, currency, gross_margin, "
        f"amount_base, gross_margin_base, channel, category) VALUES "
    )
    ch.command(insert_tx + values)
    ch.command(insert_tx + f"('t1', 'c00', '{_ts(LATEST_EVENT)}', 100, 'EUR', 20, 100, 20, 'web', 'books')")  # again
    ch.command(
        f"INSERT INTO {db}.contacts (event_id, customer_id, event_time, channel, reason, handle_time_s, resolved, "
        f"cost) VALUES ('k1', 'c00', '{_ts(LATEST_EVENT - day)}', 'phone', 'complaint', 300, false, 6), "
        f"('k2', 'c00', '{_ts(LATEST_EVENT - 2 * day)}', 'email', 'cancellation_request', 60, true, NULL)"
    )
    ch.command(
        f"INSERT INTO {db}.payments (event_id, customer_id, event_time, invoice_id, amount_due, amount_paid, due_date, "
        f"paid_date, status) VALUES ('p1', 'c00', '{_ts(LATEST_EVENT - 3 * day)}', 'inv-1', 80, 0, "
        f"'{_ts(LATEST_EVENT - 3 * day)}', NULL, 'failed')"
    )

    for i, (cid, rule, severity, reasons, scores) in enumerate(ALERTS):
        at = now if i == 0 else now - timedelta(days=2 + i)
        quoted = "[" + ", ".join("'" + r.replace("'", "\\'") + "'" for r in reasons) + "]"
        scores_sql = scores.replace("'", "\\'")
        ch.command(
            f"INSERT INTO {db}.alerts (alert_time, customer_id, rule, severity, reasons, scores, episode) VALUES "
            f"('{_ts(at)}', '{cid}', '{rule}', '{severity}', {quoted}, '{scores_sql}', '{cid}-1')"
        )

    ch.command(
        f"INSERT INTO {db}.model_metrics (time, model_version, metric, value) VALUES "
        f"('2025-06-01 00:00:00', 1, 'roc_auc', 0.70), ('2025-06-02 00:00:00', 2, 'roc_auc', 0.81), "
        f"('2025-06-01 00:00:00', 1, 'log_loss', 0.55), ('2025-06-02 00:00:00', 2, 'log_loss', 0.48)"
    )

    # Score history: c00 B → A (up, 06-02) → A → B (down, 06-04), twice on 06-04 (the later version counts);
    # c01 C → C → B (up, 06-03); c02 unrated then C (no move).
    history = [
        ("c00", 1, "2025-06-01 10:00:00", "B", 10.0, 0.1),
        ("c00", 2, "2025-06-02 10:00:00", "A", 20.0, 0.2),
        ("c00", 3, "2025-06-03 10:00:00", "A", 30.0, 0.3),
        ("c00", 4, "2025-06-04 09:00:00", "A", 35.0, 0.4),
        ("c00", 5, "2025-06-04 10:00:00", "B", 40.0, 0.5),
        ("c01", 1, "2025-06-01 10:00:00", "C", 1.0, 0.1),
        ("c01", 2, "2025-06-02 10:00:00", "C", 2.0, 0.1),
        ("c01", 3, "2025-06-03 10:00:00", "B", 3.0, 0.1),
        ("c02", 1, "2025-06-01 10:00:00", "", 0.0, 0.0),
        ("c02", 2, "2025-06-02 10:00:00", "C", 1.0, 0.0),
    ]
    values = ", ".join(f"('{c}', {v}, '{t}', '{tier}', {p}, {churn})" for c, v, t, tier, p, churn in history)
    ch.command(
        f"INSERT INTO {db}.customer_scores (customer_id, version, as_of, value_tier, profitability, churn_probability) "
        f"VALUES {values}"
    )
    return {"now": now}


@pytest.fixture
def api(cfg: Config, reader: ClickHouse) -> Iterator[ApiServer]:
    status = {"events_per_s": 123.4, "lag": {"transactions": 5, "customer-scores": 2}}
    server = ApiServer(cfg, reader, status=lambda: dict(status)).start()
    yield server
    server.stop()


@pytest.fixture
def seeded(ch: ClickHouse) -> dict[str, Any]:
    return seed(ch)


def get(api: ApiServer, path: str, **params: Any) -> Any:
    answer = httpx.get(f"{api.url}{path}", params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    return answer.json()


def test_kpis(api: ApiServer, seeded: dict[str, Any]) -> None:
    k = get(api, "/api/kpis")
    assert k["customers"] == 10 and k["tier_a"] == 2
    assert k["profit"] == pytest.approx(TOTAL_PROFIT)
    # 30 days of event time before the latest transaction: t1 (once, though delivered twice), t2, t3.
    assert k["period"]["name"] == "30d" and k["period"]["end"] == "2025-06-30T12:00:00.000Z"
    assert k["period"]["start"] == "2025-05-31T12:00:00.000Z"
    # t6 in dollars counts converted (8 EUR, margin 2.4 EUR); t7 in yen, without a rate, counts nowhere.
    assert k["revenue"] == pytest.approx(148.0) and k["transactions"] == 4 and k["active_customers"] == 4
    assert k["gross_margin"] == pytest.approx(20 + 50 * 0.3 - 3 + 2.4)
    assert k["previous_revenue"] == pytest.approx(1000.0) and k["previous_gross_margin"] == pytest.approx(400.0)
    assert k["currency"] == "EUR"
    every = get(api, "/api/kpis", period="all")
    assert every["revenue"] == pytest.approx(1155.0) and every["transactions"] == 6
    assert every["period"]["start"] == "2024-12-12T12:00:00.000Z" and every["previous_revenue"] is None
    assert k["alerts_today"] == 1 and k["alerts_total"] == 3
    assert k["roc_auc"] == pytest.approx(0.81) and k["model_version"] == 2
    assert k["events_per_s"] == 123.4 and k["lag"] == 7


def test_alerts_today_is_the_streams_latest_day(api: ApiServer, ch: ClickHouse) -> None:
    """A replayed history: alert times are event times in the past, so "today" is the last day of the data."""
    ch.command(
        f"INSERT INTO {ch.database}.transactions (event_id, customer_id, event_time, amount, currency) "
        "VALUES ('t1', 'c1', '2025-06-30 12:00:00', 10, 'EUR')"
    )
    ch.command(
        f"INSERT INTO {ch.database}.alerts (alert_time, customer_id, rule, severity, reasons, scores, episode) VALUES "
        "('2025-06-30 09:00:00', 'c1', 'p_alive_drop', 'high', ['x'], '{}', 'c1:p:1'), "
        "('2025-06-30 00:00:00', 'c2', 'p_alive_drop', 'high', ['x'], '{}', 'c2:p:1'), "
        "('2025-06-29 23:59:59', 'c3', 'p_alive_drop', 'high', ['x'], '{}', 'c3:p:1')"
    )
    k = get(api, "/api/kpis")
    assert (k["alerts_today"], k["alerts_total"], k["alerts_day"]) == (2, 3, "2025-06-30")
    assert k["latest_alert_time"] == "2025-06-30T09:00:00.000Z"


def test_an_alert_written_twice_shows_once(api: ApiServer, ch: ClickHouse) -> None:
    """A worker that re-emits an alert (redelivery, replay) writes the same episode again: listed once."""
    insert = (
        f"INSERT INTO {ch.database}.alerts (alert_time, customer_id, rule, severity, reasons, scores, episode) VALUES "
        "('2025-06-30 09:00:00', 'c1', 'high_value_at_risk', 'high', ['churn 0.7'], '{}', 'c1:h:1')"
    )
    ch.command(insert)
    ch.command(insert.replace("09:00:00", "09:00:05"))  # a later delivery of the same episode
    answer = get(api, "/api/alerts")
    assert answer["count"] == 1 and answer["alerts"][0]["episode"] == "c1:h:1"
    assert get(api, "/api/kpis")["alerts_total"] == 1
    assert len(get(api, "/api/customer/c1")["alerts"]) == 1


def test_whale_curve(api: ApiServer, seeded: dict[str, Any]) -> None:
    w = get(api, "/api/whale")
    points = w["points"]
    assert points[0] == {"share": 0.0, "rank": 0, "cumulative_profit": 0.0}
    assert [p["rank"] for p in points] == list(range(11))
    assert points[-1]["share"] == 1.0 and points[-1]["cumulative_profit"] == pytest.approx(TOTAL_PROFIT)
    assert w["total_profit"] == pytest.approx(TOTAL_PROFIT) and w["customers"] == 10
    # Sorted by profitability, descending: the curve climbs through the profitable five, then falls.
    assert [p["cumulative_profit"] for p in points[:6]] == [0, 500, 800, 1000, 1100, 1150]
    assert w["peak"]["rank"] == 5 and w["peak"]["share"] == 0.5
    assert w["peak"]["cumulative_profit"] == pytest.approx(1150.0)
    assert w["peak"]["pct_of_total"] == pytest.approx(100 * 1150 / 600)
    assert w["loss"] == pytest.approx(600 - 1150)


def test_whale_curve_is_sampled_in_sql(api: ApiServer, ch: ClickHouse) -> None:
    ch.command(
        f"INSERT INTO {ch.database}.customers (customer_id, version, profitability) "
        "SELECT concat('x', toString(number)), 1, 1000 - number FROM numbers(5000)"
    )
    w = get(api, "/api/whale", points=50)
    total = sum(1000 - i for i in range(5000))
    assert 50 <= len(w["points"]) <= 55, len(w["points"])
    assert w["points"][-1]["cumulative_profit"] == pytest.approx(total) == w["total_profit"]
    shares = [p["share"] for p in w["points"]]
    assert shares == sorted(shares) and shares[-1] == 1.0
    assert w["peak"]["rank"] == 1000 and any(p["rank"] == 1000 for p in w["points"])  # the peak is always a point


def test_matrix(api: ApiServer, seeded: dict[str, Any]) -> None:
    m = get(api, "/api/matrix")
    bands = ["low", "medium", "high", "unscored"]
    assert m["tiers"] == ["A", "B", "C"] and [b["name"] for b in m["bands"]] == bands
    assert len(m["cells"]) == 12 and m["customers"] == sum(c["customers"] for c in m["cells"]) == len(CUSTOMERS)
    cell = {(c["tier"], c["band"]): c for c in m["cells"]}
    # A: c01 low (no CLV: profit 300), c00 high (CLV 2000).
    assert cell["A", "low"]["customers"] == 1 and cell["A", "low"]["value_at_risk"] == pytest.approx(300)
    assert cell["A", "high"]["value_at_risk"] == pytest.approx(2000)
    assert cell["A", "high"]["expected_loss"] == pytest.approx(0.7 * 2000)
    assert cell["A", "medium"]["customers"] == 0
    # C high: c07 (0.90), c09 (0.60 is high: bands are [0, 0.3), [0.3, 0.6), [0.6, 1]); loss-makers risk nothing.
    assert cell["C", "high"]["customers"] == 2 and cell["C", "high"]["value_at_risk"] == 0
    assert cell["C", "medium"]["customers"] == 1  # c08 (0.59)
    # c05 has no churn probability yet (NULL): not scored, rather than "low" (a 0) or "high" (NULL < x is not true)
    assert cell["C", "unscored"]["customers"] == 1 and cell["C", "unscored"]["expected_loss"] == 0
    assert sum(c["customers"] for c in m["cells"] if c["band"] == "unscored") == 1
    narrow = get(api, "/api/matrix", low=0.5, high=0.95)
    assert sum(c["customers"] for c in narrow["cells"] if c["band"] == "high") == 0


def test_alerts_newest_first_with_value_and_reasons(api: ApiServer, seeded: dict[str, Any]) -> None:
    a = get(api, "/api/alerts")["alerts"]
    assert [x["customer_id"] for x in a] == ["c00", "c03", "c07"]
    times = [x["alert_time"] for x in a]
    assert times == sorted(times, reverse=True)
    first, second, third = a
    assert first["reasons"] == ["churn probability 0.70", "3 complaints in 30 days"]
    assert first["value"] == 2000 and first["churn_probability"] == 0.7 and first["value_tier"] == "A"
    assert first["severity"] == "critical" and first["rule"] == "high_value_at_risk" and first["episode"] == "c00-1"
    # No figures in the alert: the customer's current row (c03 has no CLV: its profitability).
    assert second["value"] == 100 and second["churn_probability"] == 0.65 and second["value_tier"] == "B"
    assert third["scores"] == {} and third["current"]["churn_probability"] == 0.9
    assert [x["customer_id"] for x in get(api, "/api/alerts", limit=2)["alerts"]] == ["c00", "c03"]


def test_customer_view(api: ApiServer, seeded: dict[str, Any]) -> None:
    c = get(api, "/api/customer/c00")
    assert c["snapshot"]["customer_id"] == "c00" and c["snapshot"]["profitability"] == 500  # FINAL: version 2
    assert c["snapshot"]["churn_reasons"] == ["reason of c00"]
    assert [h["version"] for h in c["history"]] == [1, 2, 3, 4, 5]
    assert [h["profitability"] for h in c["history"]] == [10, 20, 30, 35, 40]
    assert [t["event_id"] for t in c["events"]["transactions"]] == ["t1", "t4"]  # newest first, t1 once
    (dollars,) = get(api, "/api/customer/c04")["events"]["transactions"]
    assert (dollars["amount"], dollars["currency"], dollars["amount_base"]) == (10.0, "USD", 8.0)
    assert [k["reason"] for k in c["events"]["contacts"]] == ["complaint", "cancellation_request"]
    assert c["events"]["payments"][0]["status"] == "failed" and c["events"]["payments"][0]["paid_date"] is None
    assert c["alerts"][0]["rule"] == "high_value_at_risk"
    assert len(get(api, "/api/customer/c00", points=2)["history"]) == 2
    assert get(api, "/api/customer/c00", points=2)["history"][-1]["version"] == 5  # the latest ones


def test_customer_unknown_and_hostile_ids(api: ApiServer, seeded: dict[str, Any]) -> None:
    for cid in ("nobody", "c00' OR 1=1 --", "c00%27%20OR%20%271%27=%271"):
        answer = httpx.get(f"{api.url}/api/customer/{cid}", timeout=30)
        assert answer.status_code == 404 and "\n" not in answer.json()["error"], cid
    long = httpx.get(f"{api.url}/api/customer/{'x' * 201}", timeout=30)
    assert long.status_code == 400
    assert httpx.get(f"{api.url}/api/customer/", timeout=30).status_code == 400


def test_migration(api: ApiServer, seeded: dict[str, Any]) -> None:
    m = get(api, "/api/migration", days=0)
    assert m["days"] == [
        {"day": "2025-06-02", "up": 1, "down": 0, "moved": 1},
        {"day": "2025-06-03", "up": 1, "down": 0, "moved": 1},
        {"day": "2025-06-04", "up": 0, "down": 1, "moved": 1},
    ]
    assert m["flows"] == [
        {"from": "A", "to": "B", "customers": 1},
        {"from": "B", "to": "A", "customers": 1},
        {"from": "C", "to": "B", "customers": 1},
    ]
    assert m["moved"] == 3
    # The last two days (06-03 and 06-04) still compare 06-03 with the day before it.
    recent = get(api, "/api/migration", days=2)
    assert [d["day"] for d in recent["days"]] == ["2025-06-03", "2025-06-04"] and recent["moved"] == 2


def test_model(api: ApiServer, seeded: dict[str, Any]) -> None:
    m = get(api, "/api/model")
    assert [p["value"] for p in m["series"]["roc_auc"]] == [0.70, 0.81]
    assert m["latest"] == {"roc_auc": 0.81, "log_loss": 0.48}
    assert [p["value"] for p in get(api, "/api/model", points=1)["series"]["log_loss"]] == [0.48]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/kpis", {"period": "3 weeks"}),
        ("/api/whale", {"points": "lots"}),
        ("/api/whale", {"points": "1"}),
        ("/api/matrix", {"low": "nan"}),
        ("/api/matrix", {"low": "0.7", "high": "0.2"}),
        ("/api/matrix", {"high": "2"}),
        ("/api/alerts", {"limit": "0"}),
        ("/api/alerts", {"limit": "1; DROP TABLE x"}),
        ("/api/migration", {"days": "-1"}),
        ("/api/model", {"points": ""}),
        ("/api/customer/c00", {"limit": "x"}),
    ],
)
def test_bad_parameters_are_400_one_line(api: ApiServer, path: str, params: dict[str, str]) -> None:
    answer = httpx.get(f"{api.url}{path}", params=params, timeout=30)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and re.search(r"must|below", body["error"])


def test_unknown_endpoint_and_post(api: ApiServer) -> None:
    answer = httpx.get(f"{api.url}/api/nothing", timeout=30)
    assert answer.status_code == 404 and "/api/kpis" in answer.json()["error"]
    assert httpx.post(f"{api.url}/api/kpis", timeout=30).status_code == 405


def test_empty_tables_degrade_gracefully(api: ApiServer, ch: ClickHouse) -> None:
    k = get(api, "/api/kpis")
    assert k["customers"] == 0 and k["revenue"] == 0 and k["period"]["end"] is None and k["roc_auc"] is None
    assert k["alerts_today"] == 0 and k["latest_alert_time"] is None and k["mean_churn_probability"] is None
    assert get(api, "/api/whale") == {"customers": 0, "total_profit": 0.0, "points": [], "peak": None, "loss": 0.0}
    m = get(api, "/api/matrix")
    assert m["customers"] == 0 and len(m["cells"]) == 12
    assert get(api, "/api/alerts") == {"alerts": [], "count": 0}
    assert get(api, "/api/migration") == {"days": [], "flows": [], "moved": 0}
    assert get(api, "/api/model") == {"series": {}, "latest": {}}


def test_static_files(api: ApiServer) -> None:
    page = httpx.get(f"{api.url}/", timeout=30)
    assert page.status_code == 200 and "/static/app.js" in page.text and "/static/vendor/" in page.text
    for path, kind in (
        ("/static/app.js", "text/javascript"),
        ("/static/app.css", "text/css"),
        ("/static/vendor/chart.umd.min.js", "text/javascript"),
    ):
        answer = httpx.get(f"{api.url}{path}", timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind), path
        assert answer.content == (STATIC_DIR / path.removeprefix("/static/")).read_bytes()
    for path in ("/static/../dashboard.py", "/static/%2e%2e/dashboard.py", "/static/nope.js", "/static/vendor"):
        assert httpx.get(f"{api.url}{path}", timeout=30).status_code == 404, path


def test_beyond_loopback_the_data_needs_the_token(cfg: Config, reader: ClickHouse, seeded: dict[str, Any]) -> None:
    server = ApiServer(cfg.replace(http_host="0.0.0.0", http_token="s3cret"), reader).start()
    try:
        assert httpx.get(f"{server.url}/api/alerts", timeout=30).status_code == 401
        good = httpx.get(f"{server.url}/api/alerts", headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert good.status_code == 200 and good.json()["count"] == 3
        assert httpx.get(f"{server.url}/", timeout=30).status_code == 200  # the page itself asks for the token
    finally:
        server.stop()


def _blocks(text: str) -> dict[str, str]:
    """The ``-- name: X`` blocks of docs/queries.sql, comments dropped, whitespace collapsed, no final semicolon."""
    found: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, body = chunk.split("\n", 1)
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        found[name.strip()] = " ".join(" ".join(lines).split()).rstrip(";").strip()
    return found


def test_docs_queries_are_the_api_queries() -> None:
    documented = _blocks((ROOT / "docs" / "queries.sql").read_text())
    assert set(documented) == set(dashboard.QUERIES)
    for name, sql in dashboard.QUERIES.items():
        lines = [line for line in sql.replace("{db}", "cvm").splitlines() if not line.lstrip().startswith("--")]
        assert documented[name] == " ".join(" ".join(lines).split()), f"docs/queries.sql differs from the API: {name}"
