"""Alert rules: once per episode, recovery with hysteresis, cooldown in event time, deterministic replays."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvm.config import Config
from cvm.exceptions import ConfigError
from scoring.alert_state import RULES, AlertState
from scoring.alerts import AlertRules

DAY = 86_400_000
T0 = 1_772_409_600_000  # 2026-03-02 00:00 UTC


def run(
    rules: AlertRules, updates: list[tuple[int, dict[str, Any]]], restart: bool = False, cid: str = "c1"
) -> tuple[list[dict[str, Any]], AlertState]:
    """Evaluate ``(time, scores)`` updates in order; ``restart`` passes the state through bytes between them."""
    state = AlertState()
    alerts = []
    for now, scores in updates:
        if restart:
            state = AlertState.from_bytes(state.to_bytes())
        alerts.extend(rules.evaluate(cid, scores, state, None, now))
    return alerts, state


def tier_a(churn: float, **extra: Any) -> dict[str, Any]:
    return {"value_tier": "A", "churn_probability_60d": churn, "clv": 4000.0, "profitability": 600.0, **extra}


# --- high_value_at_risk --------------------------------------------------------------------------------------------


def test_a_risk_exactly_at_theta_minus_the_hysteresis_has_not_recovered() -> None:
    """0.2 - 0.02 is 0.18000000000000002 in floats: a risk of exactly 0.18 closed the episode, and the property test
    below found a second alert for an episode that had not recovered ("below θ − 0.02")."""
    alerts, _ = run(
        AlertRules(cooldown_days=0.0), [(T0, tier_a(1.0)), (T0 + 1000, tier_a(0.18)), (T0 + 2000, tier_a(1.0))]
    )
    assert len(alerts) == 1
    alerts, _ = run(
        AlertRules(cooldown_days=0.0), [(T0, tier_a(1.0)), (T0 + 1000, tier_a(0.17)), (T0 + 2000, tier_a(1.0))]
    )
    assert len(alerts) == 2


def test_an_episode_alerts_once_and_recovery_closes_it() -> None:
    rules = AlertRules()  # θ 0.2, closes below 0.18
    alerts, state = run(
        rules,
        [
            (T0, tier_a(0.1)),
            (T0 + 1 * DAY, tier_a(0.25)),  # opens: alert
            (T0 + 2 * DAY, tier_a(0.6)),  # worse, same episode: quiet
            (T0 + 3 * DAY, tier_a(0.19)),  # inside the hysteresis band (0.18 ≤ p < 0.2): still open
            (T0 + 4 * DAY, tier_a(0.22)),  # so this is not a new episode
            (T0 + 5 * DAY, tier_a(0.1)),  # recovered below 0.2 − 0.02: closed
            (T0 + 13 * DAY, tier_a(0.3)),  # 8 days later, past the 7-day cooldown: a new episode
        ],
    )
    assert [(a["rule"], a["alert_time"]) for a in alerts] == [
        ("high_value_at_risk", T0 + DAY),
        ("high_value_at_risk", T0 + 13 * DAY),
    ]
    assert alerts[0]["episode"] == f"c1:high_value_at_risk:{T0 + DAY}"
    assert alerts[0]["scores"] == {
        "value_tier": "A", "clv": 4000.0, "profitability": 600.0, "churn_probability_60d": 0.25
    }  # fmt: skip
    assert alerts[0]["reasons"] == ["25% chance of leaving within 60 days"]
    assert state.open_rules == ("high_value_at_risk",)


def test_cooldown_counts_from_the_recovery_in_event_time() -> None:
    rules = AlertRules(cooldown_days=7)
    updates = [
        (T0, tier_a(0.3)),  # alert
        (T0 + 10 * DAY, tier_a(0.05)),  # recovered: cooldown runs until T0 + 17 days
        (T0 + 12 * DAY, tier_a(0.4)),  # relapse inside the cooldown: no episode yet
        (T0 + 16 * DAY, tier_a(0.4)),
        (T0 + 17 * DAY, tier_a(0.4)),  # cooldown over, still at risk: the episode opens now
        (T0 + 18 * DAY, tier_a(0.5)),
    ]
    alerts, _ = run(rules, updates)
    assert [a["alert_time"] for a in alerts] == [T0, T0 + 17 * DAY]


def test_a_customer_still_at_risk_is_raised_again_after_the_episode_length() -> None:
    rules = AlertRules(episode_days=60)
    updates = [(T0 + d * DAY, tier_a(0.4)) for d in (0, 30, 59, 61, 100, 121)]
    alerts, _ = run(rules, updates)
    assert [a["alert_time"] for a in alerts] == [T0, T0 + 61 * DAY, T0 + 121 * DAY]
    assert alerts[1]["reasons"][:2] == ["40% chance of leaving within 60 days", "still at risk after 61 days"]
    assert len({a["episode"] for a in alerts}) == 3
    assert len(run(AlertRules(episode_days=0), updates)[0]) == 1  # 0: an episode lasts until the customer recovers


def test_high_value_is_tier_a_now_or_within_the_window_or_the_configured_percentile() -> None:
    b_top = {"value_tier": "B", "profit_percentile": 0.97, "churn_probability_60d": 0.7}
    assert run(AlertRules(), [(T0, b_top)])[0] == []
    [alert], _ = run(AlertRules(profit_percentile=0.95), [(T0, b_top)])
    assert alert["severity"] == "medium"  # of high value, but never tier A
    assert run(AlertRules(), [(T0, {"value_tier": "C", "churn_probability_60d": 0.99})])[0] == []
    # A tier-A customer whose value fell with its purchases is still watched for high_value_days.
    fading = [(T0, tier_a(0.05)), (T0 + 100 * DAY, {"value_tier": "B", "churn_probability_60d": 0.5})]
    [alert], _ = run(AlertRules(high_value_days=180), fading)
    assert alert["severity"] == "high"
    assert run(AlertRules(high_value_days=90), fading)[0] == []


def test_severity_is_the_value_at_stake() -> None:
    """The highest CLV percentile of the high-value spell: a customer whose value already fell keeps its stake."""
    top = [(T0, tier_a(0.05, clv_percentile=0.98)), (T0 + 30 * DAY, {"value_tier": "B", "churn_probability_60d": 0.5,
                                                                    "clv_percentile": 0.7})]  # fmt: skip
    [alert], state = run(AlertRules(), top)
    assert alert["severity"] == "critical" and state.value_pct == 0.98
    [alert], _ = run(AlertRules(), [(T0, tier_a(0.5, clv_percentile=0.9))])
    assert alert["severity"] == "high"
    # A new high-value spell, after the window, starts its stake afresh.
    later = [*top, (T0 + 400 * DAY, tier_a(0.05, clv_percentile=0.85)), (T0 + 401 * DAY, tier_a(0.05))]
    assert run(AlertRules(), later)[1].value_pct == 0.85


def test_missing_scores_neither_open_nor_close() -> None:
    rules = AlertRules()
    alerts, state = run(rules, [(T0, tier_a(0.7)), (T0 + DAY, {"value_tier": "A"}), (T0 + 9 * DAY, tier_a(0.7))])
    assert len(alerts) == 1 and state.open_rules == ("high_value_at_risk",)
    assert run(rules, [(T0, {"value_tier": "A", "churn_probability_60d": float("nan")})])[0] == []


def test_the_rule_reads_the_score_it_is_told_to() -> None:
    """A worker with one churn head points the rule at ``churn_probability`` (and its horizon)."""
    scores = {"value_tier": "A", "churn_probability": 0.3}
    assert run(AlertRules(), [(T0, scores)])[0] == []
    [alert], _ = run(AlertRules(churn_score="churn_probability", churn_days=30, churn_threshold=0.13), [(T0, scores)])
    assert alert["reasons"][0] == "30% chance of leaving within 30 days"


def test_reasons_are_business_words_never_size_or_age() -> None:
    scores = tier_a(
        0.34,
        churn_reasons=["tenure_days +1.8", "frequency -0.9"],
        complaints_30d=2.7,
        complaints_vs_usual=1.5,
        unresolved_30d=1.2,
        failed_payments_90d=2.0,
        late_payments_90d=3.1,
        recency_days=74.6,
        silence_gaps=3.4,
        typical_gap_days=22.0,
        frequency=14,
        tenure_days=900.0,
        last_cancellation_time=T0 - 2 * DAY,
    )
    [alert] = run(AlertRules(rules=("high_value_at_risk",)), [(T0, scores)])[0]
    assert alert["reasons"] == [
        "34% chance of leaving within 60 days",
        "asked to cancel 2 days ago",
        "3 complaints in 30 days, 1 unresolved",
        "3 late or failed payments in 90 days, 2 failed",
    ]
    words = " ".join(alert["reasons"])
    assert "tenure" not in words and "frequency" not in words


# --- p_alive_drop --------------------------------------------------------------------------------------------------


def test_p_alive_drop_between_two_scorings() -> None:
    rules = AlertRules()
    b = {"value_tier": "B"}
    alerts, _ = run(rules, [(T0, dict(b, p_alive=0.9)), (T0 + 40 * DAY, dict(b, p_alive=0.3))])
    [alert] = alerts
    assert alert["rule"] == "p_alive_drop" and alert["severity"] == "medium"
    assert alert["reasons"][0] == "P(alive) fell from 0.90 to 0.30"
    assert alert["scores"]["p_alive_before"] == 0.9
    # Tier C customers are not watched; a customer never that alive did not "fall".
    c = {"value_tier": "C"}
    assert run(rules, [(T0, dict(c, p_alive=0.9)), (T0 + DAY, dict(c, p_alive=0.1))])[0] == []
    assert run(rules, [(T0, dict(b, p_alive=0.6)), (T0 + DAY, dict(b, p_alive=0.1))])[0] == []


def test_p_alive_drop_over_several_scorings_within_the_window() -> None:
    a = {"value_tier": "A"}
    steps = [(T0, 0.85), (T0 + 5 * DAY, 0.7), (T0 + 10 * DAY, 0.55), (T0 + 20 * DAY, 0.15)]
    [alert], state = run(AlertRules(), [(t, dict(a, p_alive=p)) for t, p in steps])
    assert alert["alert_time"] == T0 + 20 * DAY and alert["severity"] == "critical"  # tier A, P(alive) ≤ 0.2
    assert alert["reasons"][0] == "P(alive) fell from over 0.80 to 0.15 in 20 days"
    assert state.high_time == 0  # disarmed: the next drop needs P(alive) high again
    # The same fall, spread over more than the 30-day window, is not sharp.
    slow = [(T0 + i * 12 * DAY, p) for i, p in enumerate([0.85, 0.7, 0.55, 0.35])]
    assert run(AlertRules(), [(t, dict(a, p_alive=p)) for t, p in slow])[0] == []


def test_p_alive_episode_recovers_and_the_worker_may_pass_the_previous_value() -> None:
    rules = AlertRules(cooldown_days=0)
    state = AlertState()
    a = {"value_tier": "A"}
    assert rules.evaluate("c", dict(a, p_alive=0.3), state, 0.95, T0)  # previous value from the worker
    assert rules.evaluate("c", dict(a, p_alive=0.45), state, None, T0 + DAY) == []  # < 0.4 + 0.1: still open
    assert state.open_rules == ("p_alive_drop",)
    assert rules.evaluate("c", dict(a, p_alive=0.95), state, None, T0 + 2 * DAY) == []  # recovered, re-armed
    assert state.open_rules == ()
    [again] = rules.evaluate("c", dict(a, p_alive=0.2), state, None, T0 + 3 * DAY)
    assert again["episode"] == f"c:p_alive_drop:{T0 + 3 * DAY}"


# --- cancellation_request ------------------------------------------------------------------------------------------


def test_cancellation_request_from_a_high_value_customer() -> None:
    rules = AlertRules()
    asked = T0 - 3_600_000
    [alert], state = run(rules, [(T0, tier_a(0.1, last_cancellation_time=asked, n_cancellation_requests=1))])
    assert alert["rule"] == "cancellation_request" and alert["severity"] == "high"
    assert alert["reasons"][0] == "asked to cancel today"
    assert alert["episode"] == f"c1:cancellation_request:{asked}"  # anchored at the request, not the scoring
    assert run(rules, [(T0, {"value_tier": "B", "last_cancellation_time": asked})])[0] == []


def test_repeated_requests_extend_the_episode_and_a_later_one_alerts_again() -> None:
    rules = AlertRules(cancellation_window_days=30, cooldown_days=7)
    first, second, third = T0, T0 + 20 * DAY, T0 + 100 * DAY
    top = {"clv_percentile": 0.99}
    updates = [
        (first, tier_a(0.7, last_cancellation_time=first, **top)),  # cancellation (critical) and high_value_at_risk
        (second, tier_a(0.7, last_cancellation_time=second)),  # within 30 days: same episode, extended
        (second + 29 * DAY, tier_a(0.7, last_cancellation_time=second)),  # still within the extended window
        (third, tier_a(0.7, last_cancellation_time=third)),  # the episode ended at second + 30 days
    ]
    alerts, _ = run(rules, updates)
    cancels = [a for a in alerts if a["rule"] == "cancellation_request"]
    assert [a["episode"] for a in cancels] == [f"c1:cancellation_request:{first}", f"c1:cancellation_request:{third}"]
    assert cancels[0]["severity"] == "critical"


def test_an_old_request_does_not_alert() -> None:
    old = tier_a(0.1, last_cancellation_time=T0 - 31 * DAY)
    assert run(AlertRules(), [(T0, old)])[0] == []


# --- state, settings -----------------------------------------------------------------------------------------------


def test_state_is_26_bytes_and_round_trips() -> None:
    updates = [(T0, tier_a(0.7, p_alive=0.9, clv_percentile=0.93)), (T0 + DAY, tier_a(0.7, p_alive=0.3))]
    _, state = run(AlertRules(), updates)
    data = state.to_bytes()
    assert len(data) == AlertState.SIZE == 26
    back = AlertState.from_bytes(data)
    assert back == state and back.open_rules == ("high_value_at_risk", "p_alive_drop")
    assert (back.last_p_alive, back.value_pct, back.value_time) == (0.3, 0.93, (T0 + DAY) // 1000)
    with pytest.raises(ValueError, match="format"):
        AlertState.from_bytes(b"\x09" + data[1:])


def test_the_state_of_cvm_0_1_still_reads() -> None:
    old = struct.pack("<BB3IIH", 1, 0b101, T0 // 1000, 0, T0 // 1000 - 5, T0 // 1000 - 9, 4200)
    state = AlertState.from_bytes(old)
    assert state.open_rules == ("high_value_at_risk", "cancellation_request") and state.last_p_alive == 0.42
    assert (state.value_time, state.value_pct) == (0, 0.0)


def test_rules_come_from_the_configuration(tmp_path) -> None:
    path = tmp_path / "cvm.toml"
    path.write_text(
        '[cvm]\nalert_rules = ["high_value_at_risk"]\nalert_churn_threshold = 0.7\nalert_cooldown_days = 14\n'
    )
    rules = AlertRules.from_config(Config.load(path, env={}))
    assert rules.rules == ("high_value_at_risk",) and rules.churn_threshold == 0.7 and rules.cooldown_days == 14
    assert AlertRules.from_config(Config.load(env={})) == AlertRules()
    with pytest.raises(ValueError, match="alert_churn_hysteresis=0.3 must not exceed"):
        AlertRules(churn_threshold=0.2, churn_hysteresis=0.3)
    off = AlertRules.from_config(Config.load(env={"CVM_ALERT_RULES": "none"}))
    assert run(off, [(T0, tier_a(0.99, last_cancellation_time=T0))])[0] == []
    with pytest.raises(ConfigError, match="unknown rule 'churn'"):
        Config.load(env={"CVM_ALERT_RULES": "churn"})
    with pytest.raises(ConfigError, match="alert_churn_threshold=1.5"):
        Config.load(env={"CVM_ALERT_CHURN_THRESHOLD": "1.5"})


# --- properties ----------------------------------------------------------------------------------------------------

update = st.tuples(
    st.integers(0, 6 * DAY),  # time since the previous scoring
    st.fixed_dictionaries(
        {},
        optional={
            "value_tier": st.sampled_from(["A", "B", "C"]),
            "churn_probability_60d": st.floats(0, 1),
            "clv_percentile": st.floats(0, 1),
            "p_alive": st.floats(0, 1),
            "profit_percentile": st.floats(0, 1),
        },
    ),
    st.booleans(),  # a new cancellation request at this scoring
)


def _timeline(steps: list[tuple[int, dict[str, Any], bool]]) -> list[tuple[int, dict[str, Any]]]:
    now, asked, out = T0, 0, []
    for dt, scores, cancel in steps:
        now += dt
        if cancel:
            asked = now - dt // 2
        out.append((now, dict(scores, last_cancellation_time=asked) if asked else dict(scores)))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(update, max_size=60), st.sampled_from([0.0, 1.0, 7.0]), st.sampled_from([0.0, 10.0]))
def test_replay_gives_the_same_alerts_once_per_episode(steps, cooldown_days, episode_days) -> None:
    rules = AlertRules(cooldown_days=cooldown_days, profit_percentile=0.9, episode_days=episode_days)
    timeline = _timeline(steps)
    alerts, state = run(rules, timeline)
    # A replay of the same history, and one restarted from stored bytes at every step, raise the same alerts.
    assert run(rules, timeline, restart=True) == (alerts, state)
    assert run(rules, timeline)[0] == alerts
    # Never two alerts for one episode.
    episodes = [a["episode"] for a in alerts]
    assert len(episodes) == len(set(episodes))
    # The cooldown holds (to the second) between alerts of one rule, and between them the customer recovered.
    cooldown_ms = int(cooldown_days * DAY)
    state = AlertState()
    raised: list[tuple[int, dict[str, Any]]] = []  # (scoring index, alert)
    for k, (now, scores) in enumerate(timeline):
        raised.extend((k, a) for a in rules.evaluate("c1", scores, state, None, now))
    for rule in RULES:
        mine = [(k, a["alert_time"]) for k, a in raised if a["rule"] == rule]
        for (k0, earlier), (k1, later) in zip(mine, mine[1:], strict=False):
            assert later - earlier >= cooldown_ms - 999
            between = [s for _, s in timeline[k0 + 1 : k1]]
            if rule == "high_value_at_risk":  # recovered in between, or raised again as still at risk
                still = episode_days and later - earlier >= episode_days * DAY - 999
                assert still or any(s.get("churn_probability_60d", 1.0) < 0.18 for s in between)
            if rule == "p_alive_drop":
                assert any(s.get("p_alive", 0.0) >= 0.5 for s in between)
    for a in alerts:
        assert a["severity"] in ("critical", "high", "medium")
        assert a["episode"].startswith(f"c1:{a['rule']}:")
