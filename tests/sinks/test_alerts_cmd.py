"""From the ``alerts`` topic to ``cvm alerts``, on the real chDB engine: the writer's route into ``{db}.alerts``
(repeats of an episode collapse), the 0003 migration, and the command through the sink's API or directly."""

from __future__ import annotations

import json
import re
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cvm import cli
from cvm.config import Config
from cvm.exceptions import ClickHouseUnavailable, ConfigError, QueryError
from scoring.alert_state import AlertState
from scoring.alerts import AlertRules
from sinks import alerts_cmd
from sinks.clickhouse import ClickHouse, load_migrations, migrate
from sinks.http import ApiServer
from sinks.writer import Writer

DAY = 86_400_000
T0 = 1_772_409_600_000  # 2026-03-02 00:00 UTC


def raise_alerts() -> list[dict[str, Any]]:
    """Real alerts from the rules: three customers, three rules, over three days."""
    rules = AlertRules()
    out = []
    a = {"value_tier": "A", "clv_percentile": 0.97, "clv": 5400.0, "profitability": 812.4, "complaints_30d": 3.0}
    out += rules.evaluate("c1", dict(a, churn_probability=0.5, churn_probability_60d=0.72), AlertState(), None, T0)
    state = AlertState()
    rules.evaluate("c2", {"value_tier": "B", "p_alive": 0.9, "clv": 900.0, "profitability": -12.0}, state, None, T0)
    out += rules.evaluate("c2", {"value_tier": "B", "p_alive": 0.3, "clv": 700.0}, state, None, T0 + DAY)
    asked = T0 + DAY
    out += rules.evaluate(
        "c3", dict(a, churn_probability_60d=0.1, last_cancellation_time=asked), AlertState(), None, T0 + 2 * DAY
    )
    assert [x["rule"] for x in out] == ["high_value_at_risk", "p_alive_drop", "cancellation_request"]
    return out


def write(cfg: Config, ch: ClickHouse, alerts: list[dict[str, Any]], first_offset: int = 0) -> Writer:
    writer = Writer(cfg, ch)
    topic = cfg.topic("alerts")
    for i, alert in enumerate(alerts):
        assert writer.add(topic, 0, first_offset + i, json.dumps(alert).encode(), alert["customer_id"].encode())
    assert writer.flush()
    return writer


# --- the writer's route --------------------------------------------------------------------------------------------


def test_alerts_land_in_their_table_and_a_replayed_episode_collapses(cfg: Config, ch: ClickHouse) -> None:
    alerts = raise_alerts()
    writer = write(cfg, ch, alerts)
    assert writer.stats()["rows_written"] == {"alerts": 3}
    db = ch.database
    rows = ch.rows(
        f"SELECT toUnixTimestamp64Milli(alert_time), customer_id, rule, severity, reasons, scores, episode "
        f"FROM {db}.alerts FINAL ORDER BY alert_time"
    )
    assert [(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows] == [
        (a["alert_time"], a["customer_id"], a["rule"], a["severity"], a["reasons"], a["scores"], a["episode"])
        for a in alerts
    ]
    # The worker re-emits them (redelivery after a crash, or a replay of the same history): new offsets, same
    # episodes. Written again, they collapse on (customer_id, rule, episode) when read with FINAL.
    write(cfg, ch, alerts, first_offset=100)
    write(cfg, ch, alerts[:1], first_offset=200)
    assert ch.rows(f"SELECT count() FROM {db}.alerts FINAL")[0][0] == 3
    assert ch.rows(f"SELECT count(), uniqExact(episode) FROM {db}.alerts FINAL")[0] == (3, 3)


def test_malformed_alert_messages_are_skipped(cfg: Config, ch: ClickHouse) -> None:
    writer = Writer(cfg, ch)
    topic = cfg.topic("alerts")
    good = raise_alerts()[0]
    assert not writer.add(topic, 0, 0, b"[1, 2]")
    assert not writer.add(topic, 0, 1, json.dumps({k: v for k, v in good.items() if k != "episode"}).encode())
    assert not writer.add(topic, 0, 2, json.dumps(dict(good, alert_time="not a time")).encode())
    no_id = {k: v for k, v in good.items() if k != "customer_id"}
    assert writer.add(topic, 0, 3, json.dumps(no_id).encode(), key=b"c1")  # the Kafka key names the customer
    assert writer.flush()
    assert ch.rows(f"SELECT customer_id FROM {ch.database}.alerts")[0][0] == "c1"
    assert writer.stats()["records_skipped"] == 3


def test_the_listener_hears_each_episode_once(cfg: Config, ch: ClickHouse) -> None:
    heard: list[str] = []
    alerts = raise_alerts()
    writer = Writer(cfg, ch)
    writer.alert_listener = lambda rows: heard.extend(r["episode"] for r in rows)
    topic = cfg.topic("alerts")
    for i, alert in enumerate([*alerts[:2], alerts[0]]):  # a repeat inside one batch
        writer.add(topic, 0, i, json.dumps(alert).encode())
    assert writer.flush()
    for i, alert in enumerate(alerts):  # a replay: two known episodes, one new
        writer.add(topic, 1, i, json.dumps(alert).encode())
    assert writer.flush()
    assert heard == [a["episode"] for a in alerts]


def test_migration_0003_keeps_the_alerts_of_the_old_table(cfg: Config, ch: ClickHouse) -> None:
    old = ClickHouse(ch.client, f"{cfg.clickhouse_database}_old", ch.dsn)
    try:
        migrate(old, [m for m in load_migrations() if m.version < 3])
        old.command(
            f"INSERT INTO {old.database}.alerts VALUES "
            "('2026-03-01 10:00:00', 'c9', 'high_value_at_risk', 'high', ['a reason'], '{}', 'c9:high_value_at_risk:1')"
        )
        assert migrate(old) == [m.version for m in load_migrations() if m.version >= 3]
        engine = old.rows(
            "SELECT engine, sorting_key FROM system.tables WHERE database = {d:String} AND name = 'alerts'",
            {"d": old.database},
        )
        assert engine == [("ReplacingMergeTree", "customer_id, rule, episode")]
        assert old.rows(f"SELECT customer_id, reasons FROM {old.database}.alerts") == [("c9", ["a reason"])]
    finally:
        old.command(f"DROP DATABASE IF EXISTS {old.database} SYNC")


# --- cvm alerts ----------------------------------------------------------------------------------------------------


def _run(cfg: Config, capsys: pytest.CaptureFixture[str], **options: Any) -> str:
    args = Namespace(since=options.get("since"), format=options.get("format", "table"), limit=options.get("limit", 50))
    assert alerts_cmd.main(cfg, args) == 0
    return capsys.readouterr().out


def test_lists_newest_first_as_a_table_or_json(
    cfg: Config, ch: ClickHouse, capsys: pytest.CaptureFixture[str], port: Callable[[], int]
) -> None:
    alerts = raise_alerts()
    write(cfg, ch, alerts)
    write(cfg, ch, alerts, first_offset=10)  # repeats: listed once
    direct = cfg.replace(http_port=port())  # no sink there: chDB is read directly
    table = _run(direct, capsys).splitlines()
    assert table[0].split() == ["TIME", "(UTC)", "CUSTOMER", "RULE", "SEVERITY", "CLV", "PROFIT", "CHURN", "REASONS"]
    assert [line.split()[2] for line in table[1:]] == ["c3", "c2", "c1"]
    assert table[1].startswith("2026-03-04 00:00:00  c3        cancellation_request  critical  5,400     812    10%")
    assert table[1].endswith("asked to cancel yesterday; 3 complaints in 30 days")
    assert "  -  " in table[2]  # c2's alert carries no profitability or churn probability
    assert table[3].endswith("72%  72% chance of leaving within 60 days; 3 complaints in 30 days")
    assert len({len(line.split("  c")[0]) for line in table[1:]}) == 1  # aligned

    listed = json.loads(_run(direct, capsys, format="json"))
    assert [a["episode"] for a in listed] == [a["episode"] for a in reversed(alerts)]
    assert listed[0] == {
        "alert_time": "2026-03-04 00:00:00",
        "customer_id": "c3",
        "rule": "cancellation_request",
        "severity": "critical",
        "reasons": alerts[2]["reasons"],
        "scores": alerts[2]["scores"],
        "episode": alerts[2]["episode"],
    }
    assert [a["customer_id"] for a in json.loads(_run(direct, capsys, format="json", limit=2))] == ["c3", "c2"]
    since = json.loads(_run(direct, capsys, format="json", since="2026-03-03T00:00:00Z"))
    assert [a["customer_id"] for a in since] == ["c3", "c2"]
    assert _run(direct, capsys, since="2030-01-01") == "no alerts since 2030-01-01 00:00 UTC\n"
    assert re.fullmatch(r"no alerts since \d{4}-\d\d-\d\d \d\d:\d\d UTC\n", _run(direct, capsys, since="1h"))


def test_through_the_sink_gives_the_same_answer(
    cfg: Config, ch: ClickHouse, reader: ClickHouse, capsys: pytest.CaptureFixture[str], port: Callable[[], int]
) -> None:
    write(cfg, ch, raise_alerts())
    api = ApiServer(cfg, reader).start()
    try:
        via_sink = {fmt: _run(cfg.replace(http_port=api.port), capsys, format=fmt) for fmt in ("table", "json")}
    finally:
        api.stop()
    direct = {fmt: _run(cfg.replace(http_port=port()), capsys, format=fmt) for fmt in ("table", "json")}
    assert via_sink == direct and len(json.loads(direct["json"])) == 3


def test_since_accepts_ages_and_times() -> None:
    now = T0
    assert alerts_cmd.parse_since("24h", now) == now - DAY
    assert alerts_cmd.parse_since("90m", now) == now - 90 * 60_000
    assert alerts_cmd.parse_since("2w", now) == now - 14 * DAY
    assert alerts_cmd.parse_since("2026-03-02", now) == T0
    with pytest.raises(ConfigError, match="--since 'yesterday'"):
        alerts_cmd.parse_since("yesterday", now)


def test_errors_are_one_line(
    cfg: Config,
    ch: ClickHouse,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    port: Callable[[], int],
) -> None:
    for key, value in cfg.replace(http_port=port()).to_env().items():
        monkeypatch.setenv(key, value)
    assert cli.main(["alerts", "--since", "yesterday"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cvm alerts: --since 'yesterday': ") and err.count("\n") == 1
    assert cli.main(["alerts"]) == 0 and capsys.readouterr().out == "no alerts\n"

    args = Namespace(since=None, format="table", limit=5)
    with pytest.raises(QueryError, match="no alerts table in database nowhere yet: start 'cvm sink'"):
        alerts_cmd.main(cfg.replace(http_port=port(), clickhouse_database="nowhere"), args)
    with pytest.raises(ClickHouseUnavailable, match="start 'cvm sink'"):
        alerts_cmd.main(cfg.replace(clickhouse_url=f"chdb://{tmp_path / 'none'}", http_port=port()), args)
