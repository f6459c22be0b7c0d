"""The backtest's metrics (scoring.outcomes) against slow, obvious computations from the definitions of issue 13."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import outcomes
from scoring.metrics import roc_auc

DAY = outcomes.DAY_MS
WINDOW = outcomes.Window(100 * DAY, 250 * DAY)

# a small world: customers with score histories, alerts and churn times (inf: stays)
times = st.integers(0, 400 * DAY)
world = st.fixed_dictionaries(
    {
        "n": st.integers(1, 8),
        "scores": st.lists(st.tuples(st.integers(0, 7), times, st.sampled_from("ABC"), st.floats(0, 1)), max_size=60),
        "alerts": st.lists(st.tuples(st.integers(0, 7), times), max_size=20),
        "churn": st.lists(st.one_of(st.just(math.inf), st.integers(0, 400 * DAY).map(float)), min_size=8, max_size=8),
    }
)


def _scores(w):
    rows = [r for r in w["scores"] if r[0] < w["n"]]
    c = np.array([r[0] for r in rows], np.int64)
    t = np.array([r[1] for r in rows], np.int64)
    tier = np.array([r[2] for r in rows])
    p = np.array([r[3] for r in rows])
    return rows, c, t, tier, p


def latest(rows, c, at):
    """The customer's latest scoring at or before ``at`` (ties: the last one listed), or None."""
    best = None
    for i, r in enumerate(rows):
        if r[0] == c and r[1] <= at and (best is None or r[1] >= rows[best][1]):
            best = i
    return best


@settings(max_examples=200, deadline=None)
@given(world)
def test_checkpoint_table_base_rate_and_auc_follow_the_definitions(w) -> None:
    rows, c, t, tier, p = _scores(w)
    churn = np.array(w["churn"][: w["n"]])
    table = outcomes.checkpoint_table(c, t, tier, churn, WINDOW)
    expected = []
    for cp in range(100 * DAY, 250 * DAY + 1, 30 * DAY):
        for who in range(w["n"]):
            i = latest(rows, who, cp)
            if i is not None and churn[who] > cp:
                expected.append((cp, who, rows[i][2], rows[i][3], churn[who] - cp))
    got = sorted(zip(table.time.tolist(), table.customer.tolist(), table.tier.tolist(), p[table.row].tolist(),
                     table.leaves_in_ms.tolist(), strict=True))  # fmt: skip
    assert [g[:3] for g in got] == [e[:3] for e in sorted(expected)]
    in_a = [e for e in expected if e[2] == "A"]
    base = outcomes.base_rate(table)
    if in_a:
        assert base == pytest.approx(sum(e[4] <= 90 * DAY for e in in_a) / len(in_a))
    else:
        assert math.isnan(base)
    labels = [int(e[4] <= 30 * DAY) for e in sorted(expected)]
    want = roc_auc([e[3] for e in sorted(expected)], labels) if expected else math.nan
    got_auc = outcomes.truth_auc(table, p, 30)
    assert (math.isnan(want) and math.isnan(got_auc)) or got_auc == pytest.approx(want)


def test_latest_at_does_not_see_the_future_nor_other_customers() -> None:
    idx = outcomes.latest_at([1, 0, 1, 1], [5, 9, 7, 20], [4, 8, 100], 3)
    assert idx.tolist() == [[-1, -1, -1], [-1, 2, -1], [1, 3, -1]]


@settings(max_examples=200, deadline=None)
@given(world)
def test_precision_lift_and_caught_ahead_follow_the_definitions(w) -> None:
    rows, c, t, tier, _ = _scores(w)
    churn = np.array(w["churn"][: w["n"]])
    alerts = [a for a in w["alerts"] if a[0] < w["n"]]
    ac = np.array([a[0] for a in alerts], np.int64)
    at = np.array([a[1] for a in alerts], np.int64)
    got = outcomes.alert_precision(ac, at, churn, WINDOW, base=0.25)
    inside = [a for a in alerts if WINDOW.start_ms <= a[1] <= WINDOW.end_ms]
    hits = [a[1] < churn[a[0]] <= a[1] + 90 * DAY for a in inside]
    assert got["alerts"] == len(inside)
    if inside:
        assert got["precision"] == pytest.approx(sum(hits) / len(hits))
        assert got["lift"] == pytest.approx(sum(hits) / len(hits) / 0.25)
    caught = outcomes.caught_ahead(ac, at, c, t, tier, churn, WINDOW)
    leavers = [
        who for who in range(w["n"])
        if WINDOW.start_ms <= churn[who] <= WINDOW.end_ms
        and any(r[0] == who and r[2] == "A" and churn[who] - 180 * DAY <= r[1] < churn[who] for r in rows)
    ]  # fmt: skip
    leads = []
    for who in leavers:
        before = [a[1] for a in alerts if a[0] == who and churn[who] - 90 * DAY <= a[1] < churn[who]]
        if before:
            leads.append((churn[who] - min(before)) / DAY)
    assert (caught["leavers"], caught["alerted"]) == (len(leavers), len(leads))
    if leavers:
        assert caught["caught"] == pytest.approx(sum(x >= 30 for x in leads) / len(leavers))
    if leads:
        assert caught["median_lead_days"] == pytest.approx(statistics.median(leads))


@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 1)), min_size=1, max_size=50))
def test_auc_and_ece_agree_with_the_progressive_metrics(pairs) -> None:
    from scoring.metrics import _ece

    p = [x for x, _ in pairs]
    y = [v for _, v in pairs]
    a, b = outcomes.auc(p, y), roc_auc(p, y)
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)
    assert outcomes.ece(p, y) == pytest.approx(_ece(pairs))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 100), st.floats(0, 5), st.booleans()), max_size=40),
    st.floats(0.5, 4),
    st.floats(0, 0.5),
    st.sampled_from([0, 3]),
)
def test_threshold_alerts_open_once_per_episode(rows, threshold, hysteresis, cooldown) -> None:
    rows = sorted(set(rows), key=lambda r: (r[0], r[1]))
    rows = [r for k, r in enumerate(rows) if k == 0 or rows[k - 1][:2] != r[:2]]  # one scoring per (customer, time)
    c, t = outcomes.threshold_alerts(
        [r[0] for r in rows], [r[1] * DAY for r in rows], [r[2] for r in rows], [r[3] for r in rows],
        threshold, hysteresis, cooldown,
    )  # fmt: skip
    expected = []
    for who in {r[0] for r in rows}:
        is_open, ended = False, -(10**18)
        for _, day, v, ok in [r for r in rows if r[0] == who]:
            if is_open and v < threshold - hysteresis:
                is_open, ended = False, day * DAY
            elif not is_open and v >= threshold and ok and day * DAY >= ended + cooldown * DAY:
                is_open = True
                expected.append((who, day * DAY))
    assert sorted(zip(c.tolist(), t.tolist(), strict=True)) == sorted(expected)


def test_codes_map_ids_to_a_universe() -> None:
    c, names = outcomes.codes(["c2", "c1", "c2"])
    assert names == ["c1", "c2"] and c.tolist() == [1, 0, 1]
    c, _ = outcomes.codes(["c1", "zz"], universe=["c0", "c1"])
    assert c.tolist() == [1, -1]


def test_the_window_is_the_history_s_last_250_days_without_its_last_90() -> None:
    w = outcomes.Window.of_history(1000 * DAY)
    assert (w.start_ms, w.end_ms) == (750 * DAY, 910 * DAY)
    assert outcomes.checkpoints(w).tolist() == [d * DAY for d in (750, 780, 810, 840, 870, 900)]


def test_defection_signals_count_each_leaver_once_by_its_best_tier_and_month() -> None:
    names = ["silence", "complaints", "cancellation"]
    jan, feb = 1_767_225_600_000, 1_767_225_600_000 + 31 * DAY  # 2026-01-01, 2026-02-01
    rows = [
        # leaver 0, gone in February: tier A once, complaints 60 days before, silence 10 days before
        (0, feb - 100 * DAY, "A", [0, 0, 0]),
        (0, feb - 60 * DAY, "B", [0, 1, 0]),
        (0, feb - 10 * DAY, "C", [1, 0, 0]),
        (0, feb + 12 * DAY, "C", [1, 1, 1]),  # after leaving: not a precursor
        # leaver 1, gone in February, tier A: a cancellation 200 days before is outside the 90-day lookback
        (1, feb - 200 * DAY, "A", [0, 0, 1]),
        (1, feb - 20 * DAY, "A", [0, 0, 0]),
        # stayers in February, tier A: one in two silent
        (2, feb + DAY, "A", [1, 0, 0]),
        (3, feb + 2 * DAY, "A", [0, 0, 0]),
    ]
    churn = [feb + 9.0 * DAY, feb + 15.0 * DAY, math.inf, math.inf]
    out = outcomes.defection_signals(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], names, churn
    )
    assert out == [{
        "tier": "A", "month": "2026-02", "leavers": 2, "silence": 0.5, "complaints": 0.5, "cancellation": 0.0,
        "silence_others": 0.5, "complaints_others": 0.0, "cancellation_others": 0.0,
    }]  # fmt: skip
    assert jan < feb
