"""Alert outcomes and the defection analysis in ClickHouse (migration 0007, sinks/sql/outcomes.sql) on the real chDB
engine, checked against an oracle written from docs/alerts.md and against scoring.outcomes and scoring.reasons."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from scoring import outcomes as truth_metrics
from scoring.reasons import signals
from sinks import dashboard
from sinks.clickhouse import ClickHouse
from sinks.outcomes import SIGNALS, OutcomeSettings
from tests.sinks.outcomes_world import (
    DAY,
    END,
    SIGNAL_COLUMNS,
    alert_outcome,
    make_world,
    observed_leaving,
    window_figures,
    write,
)

SETTINGS = OutcomeSettings()


def _month(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


@pytest.mark.parametrize("seed", [1, 2])
def test_leavers_and_alert_outcomes_follow_the_documented_rule(ch: ClickHouse, seed: int) -> None:
    world = make_world(seed)
    write(ch, world)
    expected = observed_leaving(world)
    db = ch.database
    found = {
        cid: (bool(left), None if left_at is None else int(left_at), int(seen))
        for cid, left, left_at, seen in ch.rows(
            f"SELECT customer_id, left, left_at_ms, last_seen_ms FROM {db}.leavers(silence_days = 75, grace_days = 30)"
        )
    }
    assert found == {c: (e.left, e.left_at, e.last_seen) for c, e in expected.items()}
    kinds = {e.left for e in expected.values()}
    assert kinds == {True, False}
    outcomes = ch.rows(
        f"SELECT customer_id, alert_ms, outcome, lead_days FROM "
        f"{db}.alert_outcomes(silence_days = 75, grace_days = 30, horizon_days = 90)"
    )
    assert len(outcomes) == len(world.alerts)
    seen = set()
    for cid, alert_ms, outcome, lead in outcomes:
        want = alert_outcome(expected[cid], alert_ms)
        assert outcome == want, (cid, alert_ms)
        left_at = expected[cid].left_at
        assert lead == (pytest.approx((left_at - alert_ms) / DAY) if want == "left" and left_at else None)
        seen.add(outcome)
    assert seen == {"left", "late", "stayed", "pending"}  # the world exercises every outcome


def _run(ch: ClickHouse) -> Any:
    return lambda name, **p: dashboard._sql(ch, name, **p)  # noqa: SLF001 - the API's own runner


def test_window_figures_are_scoring_outcomes_with_the_observed_leaving_time(reader: ClickHouse, ch: ClickHouse) -> None:
    """Nothing pending in the window: the API's window row is exactly what ``cvm backtest`` computes with
    scoring.outcomes from the same rows and the observed leaving times."""
    world = make_world(3, n=120, pending=False)
    write(ch, world)
    got = dashboard.outcome_figures(reader, SETTINGS)
    base, expected = window_figures(world)
    window = truth_metrics.Window.of_history(END)
    assert got["base_rate"]["window"]["pending"] == 0
    assert got["base_rate"]["window"]["base_rate"] == pytest.approx(base)
    assert (got["window"]["start_ms"], got["window"]["end_ms"]) == (window.start_ms, window.end_ms)
    rules = {r["rule"]: r for r in got["rules"]}
    assert set(rules) == set(expected)
    for rule, r in rules.items():
        want, w = expected[rule], r["window"]
        assert got["base_rate"]["window"]["customers"] == want["tier_a_rows"]
        assert w["pending"] == 0 and w["alerts"] == want["alerts"] == w["resolved"]
        assert w["precision"] == pytest.approx(want["precision"])
        assert w["lift"] == pytest.approx(want["lift"])
        assert w["leavers"] == want["leavers"] > 0 and w["alerted"] == want["alerted"]
        assert w["caught_share"] == pytest.approx(want["caught"])
        if want["alerted"]:
            assert w["median_lead_days"] == pytest.approx(want["median_lead_days"])
        else:
            assert w["median_lead_days"] is None
    assert rules["high_value_at_risk"]["window"]["caught"] > 0


def test_monthly_figures_group_each_alert_checkpoint_and_leaver_by_month(reader: ClickHouse, ch: ClickHouse) -> None:
    world = make_world(4)
    write(ch, world)
    leaving = observed_leaving(world)
    got = dashboard.outcome_figures(reader, SETTINGS, months=240)
    for r in got["rules"]:
        for m in r["months"]:
            chosen = [(c, t) for c, name, t in world.alerts if name == r["rule"] and _month(t) == m["month"]]
            mine = [alert_outcome(leaving[c], t) for c, t in chosen]
            counts = {k: mine.count(k) for k in ("left", "late", "stayed", "pending")}
            assert {k: m[k] for k in counts} == counts, (r["rule"], m["month"])
            assert m["alerts"] == len(mine) and m["resolved"] == len(mine) - counts["pending"]
    # The base rate of a month: the tier-A customers at its first day (latest scoring at or before it).
    month_starts = sorted({_month(s["as_of"]) for s in world.scores})[1:]
    rows = {m["month"]: m for m in got["base_rate"]["months"]}
    for month in month_starts:
        cp = int(datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC).timestamp() * 1000)
        latest: dict[str, dict[str, Any]] = {}
        for s in world.scores:
            if s["as_of"] <= cp and (s["customer_id"] not in latest or s["as_of"] >= latest[s["customer_id"]]["as_of"]):
                latest[s["customer_id"]] = s
        tier_a = [c for c, s in latest.items() if s["value_tier"] == "A"]
        alive = [c for c in tier_a if leaving[c].churn_ms > cp]
        outcome = [alert_outcome(leaving[c], cp) for c in alive]  # an alert at the checkpoint, as it were
        assert rows[month]["customers"] == len(alive), month
        assert rows[month]["left"] == outcome.count("left") and rows[month]["pending"] == outcome.count("pending")


def test_score_signals_are_the_reasons_signals(ch: ClickHouse) -> None:
    world = make_world(5, n=30)
    write(ch, world)
    db = ch.database
    flags = {
        (r["customer_id"], r["ms"]): r
        for r in ch.query(f"SELECT customer_id, ms, {', '.join(SIGNALS)} FROM {db}.score_signals").named_results()
    }
    columns = ", ".join(SIGNAL_COLUMNS)
    rows = ch.query(
        f"SELECT customer_id, toUnixTimestamp64Milli(as_of) AS ms, {columns} FROM {db}.customer_scores"
    ).named_results()
    checked = dict.fromkeys(SIGNALS, 0)
    n = 0
    for row in rows:
        n += 1
        found = signals(_scores(row), row["ms"])
        flag = flags[(row["customer_id"], row["ms"])]
        for name in SIGNALS:
            assert bool(flag[name]) == (name in found), (name, row)
            checked[name] += name in found
    assert n == len(world.scores) == len(flags)
    assert all(0 < k < n for k in checked.values()), checked  # every signal seen, on and off


def _scores(row: dict[str, Any]) -> dict[str, Any]:
    """A score row read back from ClickHouse as the worker hands it to scoring.reasons (times in ms)."""
    scores = {k: row[k] for k in SIGNAL_COLUMNS}
    asked = scores["last_cancellation_time"]
    if asked is not None:
        aware = asked if asked.tzinfo else asked.replace(tzinfo=UTC)
        scores["last_cancellation_time"] = int(aware.timestamp() * 1000)
    return scores


def test_defection_is_scoring_outcomes_defection_signals(reader: ClickHouse, ch: ClickHouse) -> None:
    world = make_world(6, n=100)
    write(ch, world)
    leaving = observed_leaving(world)
    got = dashboard.defection(reader, SETTINGS, months=240)
    db = ch.database
    rows = list(
        ch.query(
            f"SELECT customer_id, toUnixTimestamp64Milli(as_of) AS ms, value_tier, {', '.join(SIGNAL_COLUMNS)} "
            f"FROM {db}.customer_scores"
        ).named_results()
    )
    universe = world.customers
    cust, _ = truth_metrics.codes([r["customer_id"] for r in rows], universe)
    flags = []
    for r in rows:
        found = signals(_scores(r), r["ms"])
        flags.append([name in found for name in SIGNALS])
    # Leaving observed at the last sign of life, whose own scoring counts: the reference's "before" is strict.
    churn = [leaving[c].churn_ms + 1 for c in universe]
    expected = truth_metrics.defection_signals(
        cust, [r["ms"] for r in rows], [r["value_tier"] for r in rows], flags, SIGNALS, churn
    )
    monthly = [r for r in got["rows"] if r["period"] != "all"]
    assert len(monthly) == len(expected) > 3
    for mine, ref in zip(sorted(monthly, key=lambda r: (r["tier"], r["period"])), expected, strict=True):
        assert (mine["tier"], mine["period"], mine["leavers"]) == (ref["tier"], ref["month"], ref["leavers"])
        for name in SIGNALS:
            assert mine["signals"][name] == pytest.approx(ref[name]), name
            other = ref[f"{name}_others"]
            assert (mine["others"][name] is None) if other != other else mine["others"][name] == pytest.approx(other)
    everyone = [r for r in got["rows"] if r["period"] == "all"]
    assert sum(r["leavers"] for r in everyone) == got["leavers"] == sum(r["leavers"] for r in expected)


def test_empty_database_gives_empty_figures(reader: ClickHouse) -> None:
    assert dashboard.outcome_figures(reader, SETTINGS)["rules"] == []
    assert dashboard.defection(reader, SETTINGS)["rows"] == []
