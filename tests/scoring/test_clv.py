"""The CLV models against independent references: the paper's worked example, a slow textbook implementation
(tests/scoring/clv_reference.py), lifetimes 0.11.3, and parameter recovery on data simulated from known parameters."""

from __future__ import annotations

import math
import random

import lifetimes
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import hyp2f1

from scoring import bgnbd, gamma_gamma
from scoring.bgnbd import BGNBD, expected_purchases, fit_bgnbd, p_alive
from scoring.clv import NOT_A_CUSTOMER, ClvModel, OccasionFacts, occasion_facts, simulate, summaries, summary
from scoring.gamma_gamma import GammaGamma, expected_spend, fit_gamma_gamma
from tests.scoring import clv_reference as ref

CDNOW = BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)  # the paper's estimates on the CDNOW sample
CDNOW_GG = GammaGamma(p=6.25, q=3.74, gamma=15.44)  # Fader, Hardie & Lee's note on the same data
DAY = 86_400_000

# parameter sets that stress the algebra: a near 1 (0/0 in the paper's form), a + b near 1 (its pole at x = 0),
# a > 1, large b, a tiny alpha (the hypergeometric argument near 1), a large r
STRESS = [
    CDNOW,
    BGNBD(0.5, 10.0, 1.0 + 1e-9, 3.0),
    BGNBD(0.8, 2.0, 0.999, 1.5),
    BGNBD(0.3, 1.0, 0.4, 0.6000001),
    BGNBD(0.2, 3.0, 0.25, 0.5),
    BGNBD(2.5, 0.7, 3.5, 0.8),
    BGNBD(1.2, 25.0, 0.6, 40.0),
    BGNBD(0.4, 0.25, 1.7, 6.0),
    BGNBD(9.0, 60.0, 2.0, 1.0),
]


def _close(a: float, b: float, rel: float, abs_: float = 1e-13) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


# --- conventions ---------------------------------------------------------------------------------------------------


def test_occasions_count_days_with_a_positive_amount_only() -> None:
    txs = [
        (0, 10.0),
        (DAY - 1, 5.0),  # same UTC day: one occasion, spend adds up
        (2 * DAY, -30.0),  # a refund: no occasion, and it does not reduce the repeat spend
        (3 * DAY, 0.0),  # zero amount: no occasion
        (4 * DAY + 7, 12.0),
        (4 * DAY + 8, -12.0),
        (9 * DAY, 8.0),
    ]
    assert occasion_facts(txs) == OccasionFacts(0, 9, 3, 20.0)
    assert occasion_facts(txs, as_of_ms=5 * DAY) == OccasionFacts(0, 4, 2, 12.0)
    assert occasion_facts(txs, period_days=7) == OccasionFacts(0, 1, 2, 8.0)  # weeks: days 0-6 and 7-13
    assert occasion_facts([(0, -5.0), (DAY, 0.0)]) is None  # only a refund and a zero: not a customer
    assert occasion_facts([]) is None


def test_summary_in_weeks_and_the_first_occasion_left_out_of_the_mean() -> None:
    assert summary(3, 3, 1, 0.0, 3) == (0, 0.0, 0.0, 0.0)
    assert summary(0, 14, 3, 30.0, 28) == (2, 2.0, 4.0, 15.0)
    assert summary(0, 2, 3, 30.0, 4, period_days=7) == (2, 2.0, 4.0, 15.0)
    with pytest.raises(ValueError, match="without a purchase"):
        summary(0, 0, 0, 0.0, 5)
    with pytest.raises(ValueError, match="first <= last <= as_of"):
        summary(0, 9, 2, 1.0, 5)
    x, t_x, age, m = summaries([3, 0], [3, 14], [1, 3], [0.0, 30.0], 28)
    assert x.tolist() == [0, 2] and t_x.tolist() == [0, 2] and age.tolist() == [25 / 7, 4] and m.tolist() == [0, 15]
    # the worker (summary) and cvm clv fit (summaries) must produce the very same floats
    rng = np.random.default_rng(0)
    first = rng.integers(0, 10_000, 1000)
    last = first + rng.integers(0, 500, 1000)
    n = rng.integers(1, 60, 1000)
    value = rng.uniform(1, 1000, 1000)
    for period_days in (1, 3, 7):
        arrays = summaries(first, last, n, value, 11_000, period_days)
        for i in range(1000):
            one = summary(int(first[i]), int(last[i]), int(n[i]), float(value[i]), 11_000, period_days)
            assert one == tuple(float(a[i]) for a in arrays)
    with pytest.raises(ValueError):
        summaries([0], [0], [0], [0.0], 3)


def test_no_purchase_no_score() -> None:
    assert NOT_A_CUSTOMER == (0.0, 0.0, 0.0, 0.0)


def test_params_round_trip_and_validation() -> None:
    assert BGNBD.from_dict(CDNOW.to_dict()) == CDNOW
    assert GammaGamma.from_dict({"p": "6.25", "q": 3.74, "gamma": 15.44, "extra": 1}) == CDNOW_GG
    with pytest.raises(ValueError, match="'alpha' is missing"):
        BGNBD.from_dict({"r": 1, "a": 1, "b": 1})
    with pytest.raises(ValueError):
        BGNBD(0.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        GammaGamma(1.0, float("nan"), 1.0)


# --- the published example and the textbook --------------------------------------------------------------------------


def test_paper_worked_example() -> None:
    # Fader, Hardie & Lee (2005), section 6: a CDNOW customer with x = 2, t_x = 30.43, age = 38.86 weeks is expected
    # to make 1.226 purchases in the next 39 weeks.
    assert round(float(expected_purchases(CDNOW, 39, 2, 30.43, 38.86)[0]), 3) == 1.226
    assert CDNOW_GG.mean_spend == pytest.approx(35.219, abs=5e-4)


def test_log_likelihoods_equal_the_textbook_on_random_summaries() -> None:
    rng = random.Random(4)
    for params in STRESS:
        x, t_x, age, _ = simulate(300, params, seed=rng.randrange(1000))
        ours = bgnbd.bgnbd_log_likelihood(params, x, t_x, age)
        theirs = [
            ref.bgnbd_ll(params.r, params.alpha, params.a, params.b, *row) for row in zip(x, t_x, age, strict=True)
        ]
        assert np.allclose(ours, theirs, rtol=1e-11, atol=1e-11)
    x, _, _, m = simulate(300, CDNOW, CDNOW_GG, seed=5)
    rep = x > 0
    for gg in (CDNOW_GG, GammaGamma(0.5, 1.3, 2.0), GammaGamma(40.0, 12.0, 500.0)):
        ours = gamma_gamma.gamma_gamma_log_likelihood(gg, x[rep], m[rep])
        theirs = [ref.gg_ll(gg.p, gg.q, gg.gamma, xi, mi) for xi, mi in zip(x[rep], m[rep], strict=True)]
        assert np.allclose(ours, theirs, rtol=1e-11, atol=1e-11)


def test_fits_equal_the_textbook_fit() -> None:
    x, t_x, age, m = simulate(600, BGNBD(0.4, 3.0, 0.9, 2.0), CDNOW_GG, seed=11)
    fit = fit_bgnbd(x, t_x, age)
    params, ll = ref.fit_bgnbd(x, t_x, age)
    assert fit.converged
    assert fit.log_likelihood >= ll - 1e-6  # at least as good as Nelder-Mead's optimum
    for ours, theirs in zip(fit.params.to_dict().values(), params, strict=True):
        assert _close(ours, theirs, 5e-3)
    gg = fit_gamma_gamma(x, m)
    params, ll = ref.fit_gamma_gamma(x, m)
    assert gg.customers == int((x > 0).sum())
    assert gg.log_likelihood >= ll - 1e-6 and gg.log_likelihood == pytest.approx(ll, abs=1e-4)
    for ours, theirs in zip(gg.params.to_dict().values(), params, strict=True):
        assert _close(ours, theirs, 5e-3)


def test_p_alive_and_expected_purchases_equal_the_integral() -> None:
    cases = [(0, 0.0, 0.0), (0, 0.0, 12.0), (1, 0.5, 1.0), (3, 10.0, 52.0), (12, 20.0, 21.0), (80, 70.0, 71.0)]
    for params in STRESS:
        r, alpha, a, b = params.r, params.alpha, params.a, params.b
        for x, t_x, age in cases:
            for t in (0.5, 4.3, 52.0, 150.0):
                want = ref.expected_purchases(r, alpha, a, b, t, x, t_x, age)
                assert _close(float(expected_purchases(params, t, x, t_x, age)[0]), want, 1e-8), (params, x, age, t)
                assert _close(
                    bgnbd._alive_purchases(r, alpha, a, b, x, age, t),
                    want / ref.p_alive(r, alpha, a, b, x, t_x, age),
                    1e-8,
                )
            assert float(p_alive(params, x, t_x, age)[0]) == pytest.approx(
                ref.p_alive(r, alpha, a, b, x, t_x, age), rel=1e-12
            )


@pytest.mark.parametrize("size", [1, 37, 600, 3000])
def test_the_vectorised_series_gives_each_element_what_it_gives_it_alone(size: int) -> None:
    """ClvModel's cache keeps a pair's value from whichever call computed it: an element's result must not depend on
    the others computed beside it (taken one term at a time beyond 512 elements, in blocks of terms below), to the
    bit, and must agree with the scalar series."""
    rng = np.random.default_rng(size)
    for params in (CDNOW, *STRESS):
        if params.a > bgnbd._CLOSED_FORM_MIN_A:
            continue
        r, alpha, a, b = params.r, params.alpha, params.a, params.b
        x = rng.integers(0, 120, size).astype(float)
        age = rng.choice([0.0, 0.5, 20.0, 150.0], size) * rng.uniform(0.5, 1.5, size)
        t = rng.choice([0.0, 4.3, 52.0, 400.0], size)
        together = bgnbd._alive_purchases_series(r, alpha, a, b, x, age, t)
        for i in rng.choice(size, min(size, 12), replace=False):
            alone = bgnbd._alive_purchases_series(r, alpha, a, b, x[i : i + 1], age[i : i + 1], t[i : i + 1])
            assert alone.tobytes() == together[i : i + 1].tobytes(), (params, x[i], age[i], t[i])
            assert _close(float(together[i]), bgnbd._alive_purchases(r, alpha, a, b, x[i], age[i], t[i]), 1e-10)


def test_expected_purchases_equal_the_papers_hypergeometric_form_where_scipy_is_accurate() -> None:
    # equation 10 as printed, with scipy's hyp2f1, for moderate x and horizons
    r, alpha, a, b = CDNOW.r, CDNOW.alpha, CDNOW.a, CDNOW.b
    for x, t_x, age, t in [(0, 0, 10, 39), (2, 30.43, 38.86, 39), (5, 20, 30, 10), (10, 50, 52, 52)]:
        z = t / (alpha + age + t)
        head = (a + b + x - 1) / (a - 1)
        body = 1 - ((alpha + age) / (alpha + age + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z)
        want = head * body * ref.p_alive(r, alpha, a, b, x, t_x, age)
        assert float(expected_purchases(CDNOW, t, x, t_x, age)[0]) == pytest.approx(want, rel=1e-9)


def test_clv_equals_the_documented_sum() -> None:
    for params in (CDNOW, STRESS[3], STRESS[5]):
        for horizon, discount in ((365.0, 0.1), (90.0, 0.0), (1000.0, 0.25), (10.0, 0.1)):
            model = ClvModel(params, CDNOW_GG, horizon_days=horizon, discount_rate=discount)
            for x, t_x, age, m in ((0, 0.0, 3.0, 0.0), (4, 20.0, 26.0, 31.5), (30, 50.0, 60.0, 12.0)):
                want = ref.clv(
                    list(params.to_dict().values()), (6.25, 3.74, 15.44), x, t_x, age, m, 0.3, horizon, discount
                )
                got = model.score(x, t_x, age, m, 0.3)
                assert _close(got.clv, want, 1e-8)
                assert _close(
                    got.expected_purchases,
                    ref.expected_purchases(params.r, params.alpha, params.a, params.b, horizon / 7, x, t_x, age),
                    1e-8,
                )


# --- lifetimes -----------------------------------------------------------------------------------------------------


def test_lifetimes_gives_the_same_fits_and_predictions() -> None:
    assert lifetimes.__version__ == "0.11.3"
    x, t_x, age, m = simulate(4000, CDNOW, CDNOW_GG, seed=21)
    theirs = lifetimes.BetaGeoFitter().fit(x, t_x, age)
    ours = fit_bgnbd(x, t_x, age)
    for name, value in ours.params.to_dict().items():
        assert _close(value, float(theirs.params_[name]), 5e-3), name
    fixed = lifetimes.BetaGeoFitter()
    fixed.params_ = pd.Series(ours.params.to_dict())
    ll = (
        -lifetimes.BetaGeoFitter._negative_log_likelihood(
            np.log(list(ours.params.to_dict().values())), x, t_x, age, np.ones_like(x), 0.0
        )
        * x.size
    )
    assert ours.log_likelihood == pytest.approx(ll, rel=1e-10)
    assert np.allclose(p_alive(ours.params, x, t_x, age), fixed.conditional_probability_alive(x, t_x, age), rtol=1e-10)
    for t in (1.0, 26.0, 104.0):
        want = fixed.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, age)
        assert np.allclose(expected_purchases(ours.params, t, x, t_x, age), want, rtol=1e-8)

    rep = x > 0
    gg_theirs = lifetimes.GammaGammaFitter().fit(pd.Series(x[rep]), pd.Series(m[rep]))
    gg = fit_gamma_gamma(x, m)
    for name, value in (("p", gg.params.p), ("q", gg.params.q), ("v", gg.params.gamma)):
        assert _close(value, float(gg_theirs.params_[name]), 5e-3), name
    spend = gg_theirs.conditional_expected_average_profit(pd.Series(x), pd.Series(m))
    assert np.allclose(expected_spend(gg.params, x, m), spend.to_numpy(), rtol=5e-3)


# --- parameter recovery --------------------------------------------------------------------------------------------


def _standard_errors(objective, theta: np.ndarray, n: float, h: float = 1e-5) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Standard errors of the log-parameters from the observed information (numerical Jacobian of the gradient)."""
    k = theta.size
    hess = np.zeros((k, k))
    for i in range(k):
        step = np.zeros(k)
        step[i] = h
        hess[:, i] = (objective(theta + step)[1] - objective(theta - step)[1]) / (2 * h)
    hess = (hess + hess.T) / 2 * n  # the objective is the mean; the information is of the total
    return np.sqrt(np.diag(np.linalg.inv(hess)))


@pytest.mark.parametrize(
    ("params", "gg", "seed"),
    [(CDNOW, CDNOW_GG, 1), (BGNBD(0.8, 12.0, 1.5, 4.0), GammaGamma(3.0, 8.0, 120.0), 2)],
)
def test_parameter_recovery_within_statistical_error(params: BGNBD, gg: GammaGamma, seed: int) -> None:
    n = 40_000
    x, t_x, age, m = simulate(n, params, gg, seed=seed)
    fit = fit_bgnbd(x, t_x, age)
    data = bgnbd._BGData(x, t_x, age, np.ones(n))
    theta = np.log(list(fit.params.to_dict().values()))
    se = _standard_errors(data.objective, theta, n)
    truth = np.log(list(params.to_dict().values()))
    # 4 standard errors per parameter: a false alarm has probability ~6e-5 each; the errors are 2-8% here
    assert np.all(np.abs(theta - truth) < 4 * se), (fit.params, se)
    assert np.all(se < 0.15)

    gfit = fit_gamma_gamma(x, m)
    gdata = gamma_gamma._GGData(x[x > 0], m[x > 0])
    gtheta = np.log([gfit.params.p, gfit.params.q, gfit.params.gamma / gdata.scale])
    gse = _standard_errors(gdata.objective, gtheta, gdata.n)
    gtruth = np.log([gg.p, gg.q, gg.gamma / gdata.scale])
    assert np.all(np.abs(gtheta - gtruth) < 4 * gse), (gfit.params, gse)


def test_the_simulator_matches_the_models_own_expectation() -> None:
    # E[X(t)] of the BG/NBD (paper equation 9): a check of the simulator independent of any fit
    r, alpha, a, b = CDNOW.r, CDNOW.alpha, CDNOW.a, CDNOW.b
    t = 40.0
    x, _, _, m = simulate(200_000, CDNOW, CDNOW_GG, T=np.full(200_000, t), seed=3)
    want = (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, t / (alpha + t)))
    assert x.mean() == pytest.approx(want, abs=4 * x.std() / math.sqrt(x.size))
    # mean repeat spend: E[m] = p gamma / (q - 1) for every x
    assert m[x > 0].mean() == pytest.approx(CDNOW_GG.mean_spend, rel=0.03)


# --- edge cases ----------------------------------------------------------------------------------------------------


def test_nobody_repeated_fits_without_crashing_and_predicts_no_purchases() -> None:
    age = np.linspace(1, 50, 500)
    fit = fit_bgnbd(np.zeros(500), np.zeros(500), age)
    assert all(math.isfinite(v) for v in fit.params.to_dict().values())
    assert fit.log_likelihood <= 0 and fit.log_likelihood > -1e-3  # the supremum is log 1 = 0
    assert np.all(p_alive(fit.params, 0, 0, age) == 1.0)
    assert np.all(expected_purchases(fit.params, 52, 0, 0, age) < 1e-3)
    with pytest.raises(ValueError, match="repeat purchases"):
        fit_gamma_gamma(np.zeros(500), np.zeros(500))


def test_tiny_populations() -> None:
    one = fit_bgnbd([3], [10.0], [20.0])
    assert all(math.isfinite(v) for v in one.params.to_dict().values())
    assert one.customers == 1
    ggone = fit_gamma_gamma([2, 0], [15.0, 0.0])
    assert ggone.customers == 1 and all(math.isfinite(v) for v in ggone.params.to_dict().values())
    # one-purchase customers only plus one repeater
    fit = fit_bgnbd([0, 0, 0, 1], [0, 0, 0, 2.0], [5.0, 6.0, 7.0, 8.0])
    assert all(math.isfinite(v) for v in fit.params.to_dict().values())
    # age = 0: bought for the first time in the as-of period
    fit = fit_bgnbd([0, 2, 0], [0, 1.0, 0], [0.0, 3.0, 0.0])
    assert all(math.isfinite(v) for v in fit.params.to_dict().values())


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="t_x <= T"):
        fit_bgnbd([1], [5.0], [4.0])
    with pytest.raises(ValueError, match="whole numbers"):
        fit_bgnbd([1.5], [1.0], [4.0])
    with pytest.raises(ValueError, match="no customers"):
        fit_bgnbd([], [], [])
    with pytest.raises(ValueError, match="positive mean"):
        fit_gamma_gamma([1], [0.0])


def test_weights_count_rows_as_customers() -> None:
    x, t_x, age, _ = simulate(3000, CDNOW, seed=8)
    t_x, age = np.round(t_x), np.round(age) + 1  # whole weeks, so that many rows repeat
    t_x = np.where(x > 0, np.minimum(t_x, age), 0)
    keys, counts = np.unique(np.stack([x, t_x, age]), axis=1, return_counts=True)
    full = fit_bgnbd(x, t_x, age)
    grouped = fit_bgnbd(keys[0], keys[1], keys[2], weights=counts)
    assert keys.shape[1] < 3000 and grouped.customers == 3000
    assert grouped.log_likelihood == pytest.approx(full.log_likelihood, rel=1e-9)
    for u, v in zip(full.params.to_dict().values(), grouped.params.to_dict().values(), strict=True):
        assert u == pytest.approx(v, rel=1e-5)


def test_the_scorer_without_gamma_gamma_uses_the_customers_own_mean() -> None:
    model = ClvModel(CDNOW, None)
    assert model.score(2, 5.0, 9.0, 40.0, 0.3).expected_spend == 40.0
    s = model.score(0, 0.0, 9.0, 0.0, 0.3)
    assert s.expected_spend == 0.0 and s.clv == 0.0 and s.p_alive == 1.0 and s.expected_purchases > 0


def test_each_model_has_its_own_cache() -> None:
    first = ClvModel(CDNOW, CDNOW_GG)
    second = ClvModel(BGNBD(1.0, 2.0, 0.5, 3.0), CDNOW_GG)
    a, b = first.score(1, 2.0, 3.0, 10.0, 0.3), second.score(1, 2.0, 3.0, 10.0, 0.3)
    assert a != b
    assert first.score(1, 2.0, 3.0, 10.0, 0.3) == a
    with pytest.raises(ValueError):
        ClvModel(CDNOW, CDNOW_GG, horizon_days=0)


# --- properties ----------------------------------------------------------------------------------------------------

params_st = st.builds(
    BGNBD,
    r=st.floats(0.05, 5),
    alpha=st.floats(0.5, 50),
    a=st.floats(0.1, 5),
    b=st.floats(0.1, 20),
)
customer_st = st.tuples(st.integers(0, 60), st.floats(0, 1), st.floats(0, 150), st.floats(0.5, 500)).map(
    lambda v: (v[0], v[1] * v[2] if v[0] else 0.0, v[2], v[3] if v[0] else 0.0)
)


@settings(max_examples=150, deadline=None)
@given(params_st, customer_st, st.floats(1, 3 * 365))
def test_properties_of_the_predictions(
    params: BGNBD, customer: tuple[int, float, float, float], horizon: float
) -> None:
    x, t_x, age, m = customer
    model = ClvModel(params, CDNOW_GG, horizon_days=horizon)
    s = model.score(x, t_x, age, m, 0.3)
    assert 0.0 <= s.p_alive <= 1.0
    if x == 0:
        assert s.p_alive == 1.0
    assert s.expected_purchases >= 0 and s.clv >= 0 and s.expected_spend > 0
    assert s.clv <= 0.3 * s.expected_spend * s.expected_purchases * (1 + 1e-12)  # discounting only lowers it
    longer = ClvModel(params, CDNOW_GG, horizon_days=horizon * 1.5).score(x, t_x, age, m, 0.3)
    assert longer.expected_purchases >= s.expected_purchases * (1 - 1e-12)
    assert longer.clv >= s.clv * (1 - 1e-12)
    # the vectorised scorer says the same
    many = model.score_many([x, x], [t_x, t_x], [age, age], [m, m], 0.3)
    for one, arr in zip(s, many, strict=True):
        assert arr[0] == pytest.approx(one, rel=1e-9, abs=1e-300)
    # a customer who has been quiet longer is less likely alive
    if x > 0:
        assert model.score(x, t_x, age + 10, m, 0.3).p_alive <= s.p_alive


def test_expected_purchases_stay_finite_and_fast_when_a_fit_ends_at_the_bounds() -> None:
    """Short histories can fit a and b at ~1e8 (dropout without heterogeneity): the series would need ~a terms.

    The answer then tends to the large-parameter limit of 2F1: (c/(a-1)) [1 - ((1-z)/(1-qz))^(r+x)], q = (b+x)/c.
    """
    from scoring.clv import ClvModel

    r, alpha, a, b = 0.5, 0.85, 1.9e8, 4.8e8
    x, age = np.array([0.0, 1.0, 3.0, 10.0]), np.array([0.5, 5.0, 20.0, 52.0])
    got = ClvModel(BGNBD(r, alpha, a, b), discount_rate=0.0).score_many(x, x / 2, age, x, np.ones(4))
    t = 365.0 / 7
    z = t / (alpha + age + t)
    c = a + b + x - 1
    limit = c / (a - 1) * (1 - ((1 - z) / (1 - (b + x) / c * z)) ** (r + x))
    pa = np.asarray(got.p_alive)
    assert np.all(np.isfinite(got.expected_purchases))
    assert np.asarray(got.expected_purchases) == pytest.approx(pa * limit, rel=1e-5)


def test_score_many_gives_the_same_floats_whatever_it_computed_before() -> None:
    # score_many remembers the expectation per (x, T): a pair's result must not depend on the batch it came in
    rng = np.random.default_rng(7)
    x = rng.integers(0, 30, 400).astype(float)
    t_x = np.minimum(rng.uniform(0, 50, 400), 50.0)
    age = t_x + rng.integers(0, 40, 400) / 7.0
    m, margin = rng.uniform(0, 80, 400), np.full(400, 0.3)
    for params in (CDNOW, BGNBD(0.5, 6.0, 0.7, 3.0), BGNBD(0.3, 4.0, 2.5, 3.0)):  # the series and the closed form
        warm = ClvModel(params, CDNOW_GG)
        warm.score_many(x[:250], t_x[:250], age[:250], m[:250], margin[:250])
        warm.score_many(x[::-3], t_x[::-3], age[::-3], m[::-3], margin[::-3])
        got = warm.score_many(x, t_x, age, m, margin)
        want = ClvModel(params, CDNOW_GG).score_many(x, t_x, age, m, margin)
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b)
        one = [
            ClvModel(params, CDNOW_GG).score_many(x[i : i + 1], t_x[i : i + 1], age[i : i + 1], m[i : i + 1], 0.3)
            for i in range(0, 400, 37)
        ]
        assert [float(s.clv[0]) for s in one] == [float(v) for v in want.clv[::37]]
        single = warm.score_many(2.0, 30.0, 38.0, 20.0, 0.3)
        assert single.clv.tolist() == ClvModel(params, CDNOW_GG).score_many(2.0, 30.0, 38.0, 20.0, 0.3).clv.tolist()
