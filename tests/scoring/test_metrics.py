"""Progressive-validation metrics and the ground-truth AUC."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.metrics import GroundTruth, ProgressiveMetrics, read_truth, roc_auc, truth_auc

probabilities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
pairs_strategy = st.lists(st.tuples(probabilities, st.integers(0, 1)), min_size=1, max_size=200)


def brute_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@given(pairs=pairs_strategy)
def test_exact_auc_counts_pairs(pairs: list[tuple[float, int]]) -> None:
    scores, labels = [p for p, _ in pairs], [y for _, y in pairs]
    if 0 < sum(labels) < len(labels):
        assert roc_auc(scores, labels) == pytest.approx(brute_auc(scores, labels))
    else:
        assert math.isnan(roc_auc(scores, labels))


def _bin(p: float) -> int:
    p = min(1 - 1e-7, max(1e-7, p))
    return min(2399, max(0, int((math.log(p / (1 - p)) + 12) * 100)))


@given(pairs=pairs_strategy)
@settings(max_examples=200)
def test_binned_auc_is_within_its_stated_error(pairs: list[tuple[float, int]]) -> None:
    """The error is at most half the share of positive/negative pairs whose scores fall into one bin."""
    pm = ProgressiveMetrics()
    for p, y in pairs:
        pm.update(p, y)
    scores, labels = [p for p, _ in pairs], [y for _, y in pairs]
    exact = roc_auc(scores, labels)
    if math.isnan(exact):
        assert math.isnan(pm.roc_auc())
        return
    pos = [_bin(p) for p, y in pairs if y]
    neg = [_bin(p) for p, y in pairs if not y]
    shared = sum(1 for a in pos for b in neg if a == b) / (len(pos) * len(neg))
    assert abs(pm.roc_auc() - exact) <= shared / 2 + 1e-12


def test_metrics_on_known_pairs() -> None:
    pm = ProgressiveMetrics(window=2)
    for p, y in [(0.9, 1), (0.2, 0), (0.6, 0)]:
        pm.update(p, y)
    m = pm.snapshot()
    assert m["n_pairs"] == 3 and m["positive_rate"] == pytest.approx(1 / 3)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.36) / 3)
    assert m["ece"] == pytest.approx((0.1 + 0.2 + 0.6) / 3)
    assert m["roc_auc"] == 1.0
    assert m["log_loss_window"] == pytest.approx(-(math.log(0.8) + math.log(0.4)) / 2)
    assert math.isnan(m["roc_auc_window"])  # the last two pairs are both negatives


def test_calibration_error_tells_calibrated_from_overconfident() -> None:
    rnd = random.Random(3)
    honest, overconfident = ProgressiveMetrics(), ProgressiveMetrics()
    for _ in range(20000):
        p = rnd.random()
        y = int(rnd.random() < p)
        honest.update(p, y)
        overconfident.update(1.0 if p > 0.5 else 0.0, y)
    assert honest.snapshot()["ece"] < 0.02
    assert overconfident.snapshot()["ece"] > 0.2
    assert honest.snapshot()["roc_auc"] == pytest.approx(honest.snapshot()["roc_auc_window"], abs=0.02)


def test_drift_is_detected_when_the_loss_jumps_and_reported_once() -> None:
    rnd = random.Random(5)
    pm = ProgressiveMetrics()
    for i in range(3000):
        y = int(rnd.random() < 0.2)
        p = 0.2 if i < 2000 else 0.8  # the world changes, the model does not
        pm.update(p, y, time_ms=1000 * i)
    assert pm.n_drifts >= 1
    first = pm.drifts[0]
    assert 2000 < first.n_pairs < 2300 and first.time_ms == 1000 * (first.n_pairs - 1)
    rows = pm.rows(time_ms=9, model_version=4)
    drift_rows = [r for r in rows if r[2] == "drift"]
    assert len(drift_rows) == pm.n_drifts and drift_rows[0][:2] == (first.time_ms, 4)
    assert all(r[1] == 4 and not math.isnan(r[3]) for r in rows)
    assert [r for r in pm.rows(10, 4) if r[2] == "drift"] == []  # taken


def test_no_drift_on_a_steady_stream() -> None:
    rnd = random.Random(6)
    pm = ProgressiveMetrics()
    for _ in range(5000):
        p = rnd.random()
        pm.update(p, int(rnd.random() < p))
    assert pm.n_drifts == 0


def test_state_survives_a_restart() -> None:
    pm = ProgressiveMetrics(window=50)
    rnd = random.Random(7)
    for _ in range(300):
        pm.update(rnd.random(), rnd.randint(0, 1))
    back = ProgressiveMetrics.from_bytes(pm.to_bytes())
    assert back.snapshot() == pm.snapshot()
    pm.update(0.3, 1)
    back.update(0.3, 1)
    assert back.snapshot() == pm.snapshot()
    with pytest.raises(ValueError):
        ProgressiveMetrics.from_bytes(__import__("pickle").dumps([1]))


def test_empty_metrics_are_nan_and_give_only_counts() -> None:
    pm = ProgressiveMetrics()
    assert math.isnan(pm.snapshot()["roc_auc"])
    assert {metric for _, _, metric, _ in pm.rows(0, 0)} == {"n_pairs", "n_drifts"}


def test_truth_auc_counts_only_settled_horizons(tmp_path) -> None:
    path = tmp_path / "truth.jsonl"
    path.write_text(
        '{"customer_id":"a","segment":"regular","acquired_at":"1970-01-01T00:00:00.000Z","churned":true,'
        '"churn_time":"1970-01-01T00:00:10.000Z","cause":"silent"}\n'
        '{"customer_id":"b","segment":"premium","acquired_at":"1970-01-01T00:00:00.000Z","churned":false,'
        '"churn_time":null,"cause":null}\n'
    )
    truth = read_truth(str(path))
    assert truth == {"a": GroundTruth(10_000, "silent", "regular"), "b": GroundTruth(None, None, "premium")}
    scored = [
        ("a", 1_000, 0.9),  # churns within 10 s: positive
        ("a", 1_000, 0.1),
        ("b", 1_000, 0.5),
        ("b", 95_000, 0.99),  # horizon ends after the truth's end: unknown, skipped
        ("zz", 1_000, 0.0),  # not in the truth file
    ]
    r = truth_auc(truth, scored, horizon_ms=10_000, as_of_ms=100_000)
    assert (r["n"], r["n_churned"]) == (3, 2)
    assert r["roc_auc"] == 0.5 and r["by_cause"] == {"silent": 0.5}
    late = truth_auc(truth, [("a", 1_000, 0.9), ("b", 1_000, 0.5)], horizon_ms=5_000, as_of_ms=100_000)
    assert late["n_churned"] == 0 and math.isnan(late["roc_auc"])  # the churn came after the horizon
