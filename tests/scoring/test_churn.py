"""Churn learning: the label rules and heads, snapshots, pending labels, the noise-aware model, and a simulated
history end to end through the worker's scoring loop (the study's harness, on a small history).

The model comparison of docs/churn.md is ``python -m tests.scoring.churn_study``.
"""

from __future__ import annotations

import math
import pickle
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import compose

from scoring import outcomes
from scoring.churn import (
    DAY_MS,
    FEATURES,
    LEGACY_FEATURES,
    MODEL_FEATURES,
    ChurnModel,
    LabelRule,
    Matured,
    NoisyLog,
    PendingLabels,
    label_rules,
    pack_snapshot,
    unpack_snapshot,
)
from scoring.churn_inputs import prepare
from scoring.metrics import ProgressiveMetrics, roc_auc

RULE = LabelRule.from_days(90, 30)
T0 = 1_700_000_000_000

# --- the label rule -------------------------------------------------------------------------------------------------

times = st.integers(min_value=0, max_value=400 * DAY_MS)


def oracle(s: int, purchases: list[int], cancels: list[int], now: int, rule: LabelRule) -> int | None:
    """The rule as stated in docs/churn.md, computed from whole event lists: the reference for the properties.

    Purchases settle in time order, each against the deadline the cancellation requests before it set.
    """
    start = s + rule.offset_ms
    for p in sorted(purchases):
        if p > now:
            break
        after = [c for c in cancels if s < c < p]  # a request recorded before this purchase
        deadline = start + rule.silence_ms
        if after:
            deadline = min(deadline, max(min(after), start) + rule.grace_ms)
        if start < p <= deadline:
            return 0
    after = [c for c in cancels if c > s and c <= now]
    deadline = start + rule.silence_ms
    if after:
        deadline = min(deadline, max(min(after), start) + rule.grace_ms)
    return 1 if now > deadline else None


@given(s=times, gap=st.integers(min_value=1, max_value=90 * DAY_MS), now_gap=st.integers(min_value=0))
def test_a_purchase_within_the_silence_always_gives_0(s: int, gap: int, now_gap: int) -> None:
    p = s + gap
    assert RULE.on_purchase(s, p) == 0
    assert RULE.label(s, p + now_gap, next_purchase_ms=p) == 0


@given(s=times, gap=st.integers(min_value=0, max_value=400 * DAY_MS))
def test_silence_gives_1_only_after_the_deadline(s: int, gap: int) -> None:
    assert RULE.on_time(s, s + gap) == (1 if gap > 90 * DAY_MS else None)


@given(
    s=times,
    purchases=st.lists(times, max_size=6),
    cancels=st.lists(times, max_size=3),
    now=times,
    silence_days=st.integers(min_value=1, max_value=120),
    grace_days=st.integers(min_value=0, max_value=60),
    offsets=st.lists(st.integers(min_value=0, max_value=90), min_size=1, max_size=3),
    hold=st.booleans(),
)
@settings(max_examples=400)
def test_pending_labels_follow_every_rule_for_any_order_of_events(
    s: int,
    purchases: list[int],
    cancels: list[int],
    now: int,
    silence_days: int,
    grace_days: int,
    offsets: list[int],
    hold: bool,
) -> None:
    """Events in time order, timers firing in between, the state stored as bytes after each: every head gets the
    oracle's label, once; a held 0 comes at the deadline, an unheld one at its purchase."""
    rules = tuple(LabelRule.from_days(silence_days, grace_days, off, hold) for off in offsets)
    pending = PendingLabels()
    assert pending.offer(s, {"silence_gaps": 1.0}, every_ms=DAY_MS, max_pending=2)
    events = sorted([(p, "purchase") for p in purchases] + [(c, "cancel") for c in cancels])
    got: list[Matured] = []
    for t, what in events:
        if t > now:
            break
        got += pending.advance(t, rules)
        if what == "purchase":
            got += pending.purchase(t, rules)
        else:
            pending.cancellation(t)
        pending = PendingLabels.from_bytes(pending.to_bytes())  # as stored in the customer's state
    got += pending.advance(now, rules)
    for head, rule in enumerate(rules):
        mine = [m for m in got if m.head == head]
        expected = oracle(s, purchases, cancels, now, rule)
        if expected == 0 and hold and now <= rule.deadline(s, min((c for c in cancels if s < c <= now), default=None)):
            expected = None  # settled, held until its deadline
        assert [m.label for m in mine] == ([] if expected is None else [expected]), head
        if mine:
            assert mine[0].snapshot_ms == s and mine[0].label_ms <= now
            if expected == 1 or hold:
                first_cancel = min((c for c in cancels if c > s), default=None)
                assert mine[0].label_ms == rule.deadline(s, first_cancel)
    assert len(pending) == (0 if len(got) == len(rules) else 1)


def test_cancellation_request_without_purchase_churns_before_the_silence_ends() -> None:
    pending = PendingLabels()
    pending.offer(T0, {}, every_ms=30 * DAY_MS, max_pending=2)
    pending.cancellation(T0 - DAY_MS)  # before the snapshot: says nothing about it
    assert pending.next_deadline(RULE) == T0 + 90 * DAY_MS
    pending.cancellation(T0 + 10 * DAY_MS)
    assert pending.next_deadline(RULE) == T0 + 40 * DAY_MS
    assert pending.purchase(T0 + 41 * DAY_MS, RULE) == []  # too late to count as retained
    (m,) = pending.advance(T0 + 41 * DAY_MS, RULE)
    assert (m.label, m.label_ms) == (1, T0 + 40 * DAY_MS)


def test_a_retained_customer_who_buys_within_the_grace_is_0() -> None:
    pending = PendingLabels()
    pending.offer(T0, {}, every_ms=30 * DAY_MS, max_pending=2)
    pending.cancellation(T0 + 10 * DAY_MS)
    (m,) = pending.purchase(T0 + 30 * DAY_MS, RULE)
    assert m.label == 0


def test_snapshots_are_bounded_and_spaced() -> None:
    pending = PendingLabels()
    taken = [pending.offer(T0 + d * DAY_MS, {"frequency": d}, 30 * DAY_MS, 2) for d in (0, 10, 30, 45, 61, 95)]
    assert taken == [True, False, True, False, False, False]  # 61: full
    assert [e[0] for e in pending.entries] == [T0, T0 + 30 * DAY_MS]
    assert len(pending.advance(T0 + 91 * DAY_MS, RULE)) == 1
    assert pending.offer(T0 + 95 * DAY_MS, {}, 30 * DAY_MS, 2)


# --- snapshots ------------------------------------------------------------------------------------------------------

feature_values = st.floats(allow_nan=False, allow_infinity=False, width=16)


@given(t=st.integers(min_value=0, max_value=2**62), values=st.dictionaries(st.sampled_from(FEATURES), feature_values))
def test_snapshot_round_trip(t: int, values: dict[str, float]) -> None:
    data = pack_snapshot(t, values)
    assert len(data) == 9 + 2 * len(FEATURES)
    assert unpack_snapshot(data) == (t, values)


def test_snapshot_keeps_float16_precision_and_drops_unknown_names() -> None:
    time_ms, features = unpack_snapshot(pack_snapshot(T0, {"tenure_days": 123.456789, "colour": 1.0}))
    assert time_ms == T0 and list(features) == ["tenure_days"]
    assert abs(features["tenure_days"] - 123.456789) < 0.05
    big = unpack_snapshot(pack_snapshot(T0, {"frequency": 1e12, "silence_gaps": -1e12, "tenure_days": math.inf}))
    assert big.features == {"frequency": 65504.0, "silence_gaps": -65504.0, "tenure_days": 65504.0}


def test_snapshot_packed_with_fewer_features_still_unpacks() -> None:
    """FEATURES is append-only: a snapshot packed before a feature existed has it missing."""
    data = bytearray(pack_snapshot(T0, {"silence_gaps": 4.0, "frequency": 9.0}))
    data[0] = len(FEATURES) - 1
    old = bytes(data[: 9 + 2 * (len(FEATURES) - 1)])
    assert unpack_snapshot(old).features == {"silence_gaps": 4.0}


def test_pending_labels_bytes() -> None:
    pending = PendingLabels()
    full = dict.fromkeys(FEATURES, 1.5)
    pending.offer(T0, full, 30 * DAY_MS, 4)
    pending.offer(T0 + 31 * DAY_MS, full, 30 * DAY_MS, 4)
    pending.cancellation(T0 + 40 * DAY_MS)
    heads = label_rules(45, 30, (30, 60))
    assert pending.purchase(T0 + 35 * DAY_MS, heads) == []  # held: head 0 of the first snapshot settled
    data = pending.to_bytes()
    assert len(data) == 10 + 2 * (8 + 9 + 2 * len(FEATURES)) == 112
    back = PendingLabels.from_bytes(data)
    assert back == pending and back.next_deadline(RULE) == T0 + 70 * DAY_MS
    assert back.entries[0][3][:2] == [1, 0] and back.entries[1][3][:2] == [0, 0]
    with pytest.raises(ValueError, match="format"):
        PendingLabels.from_bytes(b"\x09" + data[1:])


def test_pending_labels_of_cvm_0_1_are_repacked_with_the_features_still_known() -> None:
    """Format 1: snapshots of LEGACY_FEATURES, no head status. They keep the features both layouts share."""
    legacy = dict(zip(LEGACY_FEATURES, [float(i) for i in range(len(LEGACY_FEATURES))], strict=True))
    snap = struct.pack("<Bq", len(LEGACY_FEATURES), T0) + struct.pack(f"<{len(LEGACY_FEATURES)}f", *legacy.values())
    data = struct.pack("<BqB", 1, T0, 1) + struct.pack("<Q", 10 * DAY_MS) + snap
    back = PendingLabels.from_bytes(data)
    assert back.next_deadline(RULE) == T0 + 40 * DAY_MS  # the cancellation 10 days after the snapshot is kept
    (m,) = back.advance(T0 + 41 * DAY_MS, RULE)
    shared = {k: v for k, v in legacy.items() if k in FEATURES}
    assert m.features == shared and set(shared) >= {"tenure_days", "frequency", "spend_trend", "complaints_30d"}


# --- the model ------------------------------------------------------------------------------------------------------


def synthetic(n: int, seed: int = 1) -> list[tuple[dict[str, float], int]]:
    """Pairs whose churn odds rise with silence and complaints and fall with purchases against the customer's usual;
    some features missing."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        x = {
            "silence_gaps": rnd.expovariate(1 / 3),
            "purchases_vs_usual": rnd.uniform(-2.0, 1.0),
            "complaints_30d": float(rnd.random() < 0.2) * rnd.randint(1, 4),
            "spend_vs_usual": rnd.lognormvariate(0.0, 0.6),
            "tenure_days": rnd.uniform(0, 400),
        }
        if rnd.random() < 0.3:
            del x["spend_vs_usual"]
        z = 0.6 * x["silence_gaps"] - 1.5 * x["purchases_vs_usual"] + 1.0 * x["complaints_30d"] - 2.0
        out.append((x, int(rnd.random() < 1 / (1 + math.exp(-z)))))
    return out


MODEL_KINDS = ["logreg", "hat", "arf"]


def trained(kind: str, n: int = 600) -> ChurnModel:
    model = ChurnModel(kind, n_models=3)
    for x, y in synthetic(n):
        model.learn_one(x, y)
    return model


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_predictions_and_reasons_never_change_the_model(kind: str) -> None:
    model = trained(kind)
    before = pickle.dumps(model)
    xs = [x for x, _ in synthetic(200, seed=2)] + [{"silence_gaps": 1e9, "unknown": 3.0}, {}]
    with compose.learn_during_predict():  # river's process-wide switch must not reach the model
        for x in xs:
            model.churn_probability(x)
            model.predict_proba_one(x)
            model.reasons(x)
            model.predict_with_reasons(x)
            model.contributions(x)
    for x in xs:
        model.churn_probability(x)
    assert pickle.dumps(model) == before
    assert model.to_bytes() == ChurnModel.from_bytes(model.to_bytes()).to_bytes()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_bytes_round_trip_gives_identical_predictions_and_counters(kind: str) -> None:
    model = trained(kind)
    model.version = 7
    copy = ChurnModel.from_bytes(model.to_bytes())
    assert (copy.version, copy.n_learned, copy.params()) == (7, 600, model.params())
    xs = [x for x, _ in synthetic(100, seed=3)]
    assert [copy.churn_probability(x) for x in xs] == [model.churn_probability(x) for x in xs]
    # and they keep learning alike
    for x, y in synthetic(50, seed=4):
        model.learn_one(x, y)
        copy.learn_one(x, y)
    assert [copy.churn_probability(x) for x in xs] == [model.churn_probability(x) for x in xs]


@given(data=st.lists(st.tuples(st.dictionaries(st.sampled_from(FEATURES), feature_values), st.booleans()), max_size=30))
@settings(max_examples=40, deadline=None)
def test_logreg_round_trip_and_purity_on_any_pairs(data: list[tuple[dict[str, float], bool]]) -> None:
    model = ChurnModel()
    for x, y in data:
        model.learn_one(x, y)
    probe = [x for x, _ in data] + [{}]
    before = pickle.dumps(model)
    ps = [model.churn_probability(x) for x in probe]
    assert pickle.dumps(model) == before
    assert all(0.0 <= p <= 1.0 for p in ps)
    assert [ChurnModel.from_bytes(model.to_bytes()).churn_probability(x) for x in probe] == ps


def test_bad_bytes_and_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="not a cvm churn model"):
        ChurnModel.from_bytes(b"pickle?")
    data = bytearray(ChurnModel().to_bytes())
    data[8] = 99
    with pytest.raises(ValueError, match="format 99"):
        ChurnModel.from_bytes(bytes(data))
    with pytest.raises(ValueError, match="unknown churn model 'svm'"):
        ChurnModel("svm")


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_clone_is_fresh_with_the_same_parameters(kind: str) -> None:
    model = trained(kind)
    model.version = 3
    fresh = model.clone()
    assert fresh.params() == model.params() and (fresh.n_learned, fresh.version) == (0, 0)
    assert fresh.churn_probability({"silence_gaps": 5.0}) != model.churn_probability({"silence_gaps": 5.0})


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_one_pass_scoring_agrees_with_the_separate_calls(kind: str) -> None:
    model = trained(kind, 1000)
    for x, _ in synthetic(50, seed=11):
        assert model.predict_with_reasons(x, k=2) == (model.churn_probability(x), model.reasons(x, k=2))


def test_feature_order_is_irrelevant_and_missing_features_are_tolerated() -> None:
    model = trained("logreg")
    x = {"silence_gaps": 4.0, "purchases_vs_usual": -1.0, "complaints_30d": 2.0}
    assert model.churn_probability(dict(reversed(list(x.items())))) == model.churn_probability(x)
    assert 0.0 < model.churn_probability({}) < 1.0


@pytest.mark.parametrize("kind, floor", [("logreg", 0.8), ("hat", 0.6), ("arf", 0.8)])
def test_learns_the_synthetic_signal(kind: str, floor: float) -> None:
    """The Hoeffding adaptive tree learns little from 3,000 noisy pairs (it is no better on the simulator)."""
    model = ChurnModel(kind, n_models=3)
    metrics = ProgressiveMetrics()
    for x, y in synthetic(3000):
        metrics.update(model.churn_probability(x), y)
        model.learn_one(x, y)
    test = synthetic(1000, seed=9)
    auc = roc_auc([model.churn_probability(x) for x, _ in test], [y for _, y in test])
    assert auc > floor, auc
    assert metrics.snapshot()["roc_auc_window"] > floor - 0.05


def test_reasons_name_the_features_that_push_the_score() -> None:
    model = trained("logreg", 3000)
    reasons = model.reasons({"silence_gaps": 15.0, "purchases_vs_usual": 0.0, "complaints_30d": 4.0})
    names = [r.split()[0] for r in reasons]
    signs = [r.split()[1][0] for r in reasons]
    assert set(names[:2]) == {"silence_gaps", "complaints_30d"} and signs[:2] == ["+", "+"]
    loyal = model.reasons({"silence_gaps": 0.1, "purchases_vs_usual": 1.0, "complaints_30d": 0.0}, k=1)
    assert loyal[0].split()[1].startswith("-")
    assert ChurnModel().reasons({"silence_gaps": 15.0}) == []  # untrained: nothing to say


@pytest.mark.parametrize("kind", ["hat", "arf"])
def test_tree_reasons_cover_the_present_features(kind: str) -> None:
    model = trained(kind, 3000)
    x = {"silence_gaps": 20.0, "purchases_vs_usual": 0.5, "complaints_30d": 0.0}
    contributions = model.contributions(x)
    assert set(contributions) == set(x)
    assert all(len(r.split()) == 2 for r in model.reasons(x))


def test_forest_reasons_point_the_right_way() -> None:
    model = trained("arf", 3000)
    contributions = model.contributions({"silence_gaps": 20.0, "purchases_vs_usual": 0.5, "complaints_30d": 0.0})
    assert contributions["silence_gaps"] > 0.0


def test_prepare_compresses_heavy_tails_only() -> None:
    z = prepare({"silence_gaps": 1e6 - 1, "spend_vs_usual": 0.25, "late_payments_90d": -99.0, "spend_trend": None})
    assert z == {
        "silence_gaps": pytest.approx(math.log(1e6)),
        "spend_vs_usual": 0.25,
        "late_payments_90d": pytest.approx(-math.log(100)),
    }
    assert prepare({"monetary": 9.0, "frequency": 3.0}) == {}  # size is no input of the default model


# --- many customers at once ----------------------------------------------------------------------------------------

_value = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=-1e4, max_value=1e4),
    st.sampled_from([0.0, -0.0, 1.0, 1e300]),
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(_value, min_size=len(FEATURES), max_size=len(FEATURES)), min_size=1, max_size=20))
def test_many_at_once_equals_one_at_a_time_exactly(rows: list[list[float | None]]) -> None:
    model = trained("logreg", 300)
    want = [model.predict_with_reasons(dict(zip(FEATURES, row, strict=True)), 3) for row in rows]
    assert model.predict_many_with_reasons(rows, 3) == want  # the same floats, not merely close


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_many_at_once_equals_one_at_a_time_on_synthetic_customers(kind: str) -> None:
    model = trained(kind)
    rows = [[x.get(name) for name in FEATURES] for x, _ in synthetic(300, seed=5)]
    rows += [[0.0] * len(FEATURES), [None] * len(FEATURES)]
    want = [model.predict_with_reasons(dict(zip(FEATURES, row, strict=True)), k=2) for row in rows]
    assert model.predict_many_with_reasons(rows, k=2) == want
    assert ChurnModel().predict_many_with_reasons(rows[:3]) == [(0.5, [])] * 3  # a fresh model
    assert model.predict_many_with_reasons([]) == []


def test_many_at_once_scores_a_feature_the_model_never_saw() -> None:
    model = ChurnModel()
    for i in range(300):
        model.learn_one({"silence_gaps": float(i % 90) / 10, "tenure_days": float(i % 4)}, int(i % 90 > 50))
    rows = [[float(i)] * len(FEATURES) for i in range(5)]  # every feature present, most never learned
    want = [model.predict_with_reasons(dict(zip(FEATURES, row, strict=True))) for row in rows]
    assert model.predict_many_with_reasons(rows) == want


# --- label noise ----------------------------------------------------------------------------------------------------


@given(z=st.floats(-8, 8), rho=st.floats(0, 0.99))
def test_noisy_log_gradient_is_the_derivative_of_its_loss(z: float, rho: float) -> None:
    loss, h = NoisyLog(), 1e-6
    for y in (0, 1.0 + rho):
        numeric = (loss(y, z + h) - loss(y, z - h)) / (2 * h)
        assert loss.gradient(y, z) == pytest.approx(numeric, rel=1e-4, abs=1e-6)
    assert loss.gradient(1.0, z) == pytest.approx(optim_log_gradient(z))  # ρ = 0: the usual log loss


def optim_log_gradient(z: float) -> float:
    from river import optim

    return float(optim.losses.Log().gradient(True, z))


def noisy_world(n: int, seed: int) -> list[tuple[dict[str, float], int, int]]:
    """(features, label, gone): a customer is gone with odds rising with its complaints; one who stays is labelled 1
    anyway when its Poisson purchases (rate ~ frequency / tenure) leave a 45-day silence."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        tenure = rnd.uniform(60, 400)
        rate = rnd.choice([0.005, 0.02, 0.1])  # purchases a day
        x = {"complaints_30d": float(rnd.randint(0, 4)), "tenure_days": tenure, "frequency": float(rate * tenure)}
        gone = int(rnd.random() < 1 / (1 + math.exp(-(1.2 * x["complaints_30d"] - 3.5))))
        silent = rnd.random() < math.exp(-rate * 45)
        out.append((x, int(gone or silent), gone))
    return out


def test_the_noise_aware_model_learns_who_is_gone_not_who_is_silent() -> None:
    """Trained on labels that slow buyers pollute, the noise-aware model's probability matches the share really
    gone (the plain one's matches the label), and its chance of the label 1 stays calibrated (ECE < 0.05)."""
    noisy, plain = ChurnModel(noise_days=45, features=("complaints_30d",)), ChurnModel(features=("complaints_30d",))
    for x, y, _ in noisy_world(20000, seed=1):
        noisy.learn_one(x, y)
        plain.learn_one(x, y)
    test = noisy_world(5000, seed=2)
    gone_rate = sum(g for _, _, g in test) / len(test)
    label_rate = sum(y for _, y, _ in test) / len(test)
    mean_noisy = sum(noisy.churn_probability(x) for x, _, _ in test) / len(test)
    mean_plain = sum(plain.churn_probability(x) for x, _, _ in test) / len(test)
    assert abs(mean_noisy - gone_rate) < 0.04 and abs(mean_plain - gone_rate) > 0.15, (mean_noisy, mean_plain)
    assert abs(mean_plain - label_rate) < 0.02
    assert outcomes.ece([noisy.label_probability(x) for x, _, _ in test], [y for _, y, _ in test]) < 0.05


def test_noise_is_that_of_a_poisson_buyer_whose_rate_is_uncertain() -> None:
    m = ChurnModel(noise_days=60)
    assert m.noise({}) == pytest.approx(30 / 90)  # nothing known: the prior's chance of 60 silent days
    often = m.noise({"frequency": 100.0, "tenure_days": 365.0})
    rarely = m.noise({"frequency": 3.0, "tenure_days": 365.0})
    assert often < 1e-6 < 0.5 < rarely < 1.0
    assert ChurnModel().noise({"frequency": 3.0, "tenure_days": 365.0}) == 0.0  # off
    with pytest.raises(ValueError, match="noise_days"):
        ChurnModel(noise_days=-1)


# --- a simulated history, end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """700 customers over 300 days through the worker's scoring loop, labels, learner and versions, two heads."""
    from tests.scoring.churn_study import GONE30, GONE60, load_seed
    from tests.scoring.study_learn import Variant, learn

    seed = load_seed(3, Path(tmp_path_factory.mktemp("churn")), customers=700, days=300)
    v = Variant("t", GONE30, MODEL_FEATURES, noise=True, lr=0.05, early=GONE60, max_pending=4)
    return seed, learn(seed.rep, v)


def test_simulated_history_learns_its_labels_once_each(simulated: Any) -> None:
    seed, learned = simulated
    keys = [(c, s, head) for _, c, s, head, _, _ in learned.learned]
    assert len(keys) == len(set(keys)), "a pair was learned twice"
    heads = {head for _, _, _, head, _, _ in learned.learned}
    assert heads == {0, 1} and learned.pairs > 2000 and 0.05 < learned.positives / learned.pairs < 0.5
    assert learned.pending_end <= 4
    tail = len(learned.label_p) // 5
    assert outcomes.ece(learned.label_p[tail:], learned.labels[tail:]) < 0.05


def test_simulated_history_scores_rank_real_leavers_first(simulated: Any) -> None:
    """Against the simulator's truth, at monthly checkpoints: far above the hiatus rule's ranking."""
    seed, learned = simulated
    window = outcomes.Window.of_history(seed.rep.end_ms, window_days=180)
    tiers = np.array(["A", "B", "C"])[seed.rep.tier]
    table = outcomes.checkpoint_table(seed.rep.cust, seed.rep.time, tiers, seed.churn, window)
    assert table.leaves_within(30).sum() > 20
    model = outcomes.truth_auc(table, learned.p, 30)
    hiatus = outcomes.truth_auc(table, seed.rep.col("silence_gaps"), 30)
    assert model > 0.78 and model > hiatus + 0.08, (model, hiatus)
    # churn_probability (the product's churn score) against "leaves within 90 days", too
    model90, hiatus90 = (
        outcomes.truth_auc(table, learned.p, 90),
        outcomes.truth_auc(table, seed.rep.col("silence_gaps"), 90),
    )
    assert model90 > hiatus90 + 0.03, (model90, hiatus90)


def test_binned_auc_matches_the_exact_auc_on_real_pairs(simulated: Any) -> None:
    _, learned = simulated
    metrics = ProgressiveMetrics(window=10**6)
    for p, y in zip(learned.label_p, learned.labels, strict=True):
        metrics.update(p, y)
    m = metrics.snapshot()
    assert abs(m["roc_auc"] - roc_auc(learned.label_p, learned.labels)) < 0.002, m


def test_the_study_prints_its_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m tests.scoring.churn_study`` end to end on a small history: baselines, base rate, a variant's row,
    and the audience sweep."""
    from tests.scoring.churn_study import main

    small = ["--seeds", "2", "--customers", "800", "--days", "320", "--data", str(tmp_path)]
    assert main([*small, "--variants", "v10"]) == 0
    out = capsys.readouterr().out
    assert "| hiatus (silence / own gap) |" in out and "base rate (tier A, 90 d)" in out
    [row] = [line for line in out.splitlines() if line.startswith("| v10:")]
    auc30, auc90, lift, caught, lead, *_ = (float(v) for v in row.split("|")[2:-1])
    assert 0.7 < auc30 <= 1.0 and 0.55 < auc90 <= 1.0 and lift > 1.0 and 0.0 < caught <= 1.0 and lead > 0
    assert main([*small, "--variants", "v10", "--sweep", "0.2"]) == 0
    assert "| θ 0.2 high_value_at_risk |" in capsys.readouterr().out
