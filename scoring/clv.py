r"""Customer-lifetime value as the worker and the learner use it: purchase occasions, summaries, the CLV model.

The models are those of Fader, Hardie & Lee: the BG/NBD ("Counting your customers the easy way", Marketing Science
2005) for how many purchases a customer makes and whether they are still a customer, and the Gamma-Gamma ("RFM and
CLV", Journal of Marketing Research 2005) for how much they spend per purchase. Their mathematics (likelihoods,
fits, predictions) is in :mod:`scoring.bgnbd` and :mod:`scoring.gamma_gamma`; this module holds what the worker and
the learner use them for: the models' inputs made of a customer's transactions, and :class:`ClvModel`, which scores
customers with fitted parameters and discounts their CLV. The three modules are the single source of the models'
conventions; the worker and ``cvm clv fit`` compute exactly what is defined there.

Purchase occasions
    Time is cut into periods of ``period_days`` days (UTC, one day by default):
    ``period = event_time_ms // (period_days * 86_400_000)``. A period in which a customer has at least one
    transaction of amount > 0 is a *purchase occasion*; several purchases on one day are one occasion, as in the
    literature. Zero amounts and refunds (amount < 0) create no occasion. Refunds do not reduce the Gamma-Gamma
    spend either (the model needs positive values): they reduce revenue and margin only.

Per-customer summary (the models' inputs), with the time unit **week** everywhere
    From the first and last occasion periods, the number of occasions and the positive spend of the repeat
    occasions (every occasion but the first), as of the period ``as_of``:
    ``x = n_occasions - 1`` repeat occasions; ``t_x = (last - first)`` and ``T = (as_of - first)`` periods, both
    times ``period_days / 7`` to make weeks; ``m`` = repeat spend / x (the first occasion's spend is left out, as in
    the literature and lifetimes), 0 when x = 0. A customer without any occasion (only contacts or refunds so far)
    is not in the population: :func:`summary` refuses them and the scorer's answer for them is
    :data:`NOT_A_CUSTOMER` (all zeros: nothing bought, nothing predicted).

BG/NBD and Gamma-Gamma
    The purchase and dropout model (parameters r, alpha, a, b; alpha in weeks) is :mod:`scoring.bgnbd`, the spend
    model (parameters p, q, gamma, in the currency of the amounts) :mod:`scoring.gamma_gamma`. :class:`ClvModel`
    holds one set of parameters of each; :func:`simulate` draws customers from both.

CLV over a horizon of H days, annual discount rate d, margin rate g
    ``clv = g * expected_spend * sum_k (E[purchases in (t_{k-1}, t_k]]) / (1 + d) ** (k / 12)`` with monthly steps
    ``t_k = min(k * 365.25 / 12, H)`` days, k = 1..ceil(H / (365.25 / 12)) (lifetimes' ``customer_lifetime_value``,
    with months of 365.25 / 12 days and the last step ending at H). With d = 0 it is exactly
    ``g * expected_spend * expected_purchases(H)``.

>>> x, t_x, T, m = summary(first_period=100, last_period=128, n_occasions=3, repeat_value_sum=50.0,
...                        as_of_period=135)
>>> x, t_x, T, m
(2, 4.0, 5.0, 25.0)
>>> model = ClvModel(BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426), GammaGamma(p=6.25, q=3.74, gamma=15.44))
>>> s = model.score(x, t_x, T, m, margin_rate=0.3)
>>> round(s.p_alive, 4), round(s.expected_purchases, 3), round(s.expected_spend, 2), round(s.clv, 2)
(0.7706, 4.978, 26.84, 38.4)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from scoring.bgnbd import BGNBD, _alive_purchases, _alive_purchases_series, _arrays, fit_bgnbd, p_alive
from scoring.gamma_gamma import GammaGamma, expected_spend, fit_gamma_gamma

__all__ = [
    "ClvModel",
    "ClvScore",
    "DAYS_PER_MONTH",
    "NOT_A_CUSTOMER",
    "OccasionFacts",
    "Summary",
    "TIME_UNIT",
    "bench_fit",
    "occasion_facts",
    "occasion_period",
    "simulate",
    "summaries",
    "summary",
]

Array = NDArray[np.float64]

#: The time unit of t_x, T, alpha and every horizon the models see.
TIME_UNIT = "week"

#: Length of the CLV's monthly discounting step, in days.
DAYS_PER_MONTH = 365.25 / 12

MS_PER_DAY = 86_400_000
_DAYS_PER_WEEK = 7.0


# --- occasions and summaries -----------------------------------------------------------------------------------------


def occasion_period(event_time_ms: int, period_days: int = 1) -> int:
    """The purchase-occasion period an event time falls in (UTC days by default).

    >>> occasion_period(86_400_000 * 3 + 5), occasion_period(86_400_000 * 3 - 1), occasion_period(86_400_000 * 3, 7)
    (3, 2, 0)
    """
    return int(event_time_ms) // (int(period_days) * MS_PER_DAY)


class OccasionFacts(NamedTuple):
    """What the models need to know of a customer's purchases: first and last occasion period, how many
    occasions, and the positive spend of every occasion but the first."""

    first_period: int
    last_period: int
    n_occasions: int
    repeat_value_sum: float


def occasion_facts(
    transactions: Iterable[tuple[int, float]], period_days: int = 1, as_of_ms: int | None = None
) -> OccasionFacts | None:
    """A customer's occasion facts from their (event_time_ms, amount) transactions; None without any occasion.

    Transactions after ``as_of_ms`` are left out; refunds and zero amounts create no occasion and no spend.

    >>> day = 86_400_000
    >>> occasion_facts([(0, 10.0), (5, 5.0), (3 * day, 20.0), (3 * day + 9, -20.0), (4 * day, 0.0), (9 * day, 7.0)])
    OccasionFacts(first_period=0, last_period=9, n_occasions=3, repeat_value_sum=27.0)
    >>> occasion_facts([(0, -5.0), (day, 0.0)]) is None
    True
    """
    spend: dict[int, float] = {}
    for t, amount in transactions:
        if amount > 0 and (as_of_ms is None or t <= as_of_ms):
            period = occasion_period(t, period_days)
            spend[period] = spend.get(period, 0.0) + amount
    if not spend:
        return None
    first = min(spend)
    repeat = sum(v for period, v in spend.items() if period != first)
    return OccasionFacts(first, max(spend), len(spend), repeat)


class Summary(NamedTuple):
    """One customer's model inputs: repeat occasions, recency and age in weeks, mean repeat spend."""

    x: int
    t_x: float
    T: float  # noqa: N815 - the literature's name
    m: float


def summary(
    first_period: int,
    last_period: int,
    n_occasions: int,
    repeat_value_sum: float,
    as_of_period: int,
    period_days: int = 1,
) -> Summary:
    """The model inputs (x, t_x, T in weeks, m) of a customer from their purchase-occasion facts.

    ``repeat_value_sum`` is the positive spend of every occasion but the first. A customer with no occasion is not
    in the population: :class:`ValueError`.

    >>> summary(10, 10, 1, 0.0, 24)
    Summary(x=0, t_x=0.0, T=2.0, m=0.0)
    >>> summary(0, 14, 3, 30.0, 21, period_days=1)
    Summary(x=2, t_x=2.0, T=3.0, m=15.0)
    """
    if n_occasions < 1:
        raise ValueError("a customer without a purchase occasion has no CLV summary")
    if not first_period <= last_period <= as_of_period:
        raise ValueError(f"need first <= last <= as_of periods, got {first_period}, {last_period}, {as_of_period}")
    x = int(n_occasions) - 1
    m = float(repeat_value_sum) / x if x > 0 else 0.0
    t_x = (last_period - first_period) * period_days / _DAYS_PER_WEEK
    return Summary(x, t_x, (as_of_period - first_period) * period_days / _DAYS_PER_WEEK, m)


def summaries(
    first_period: ArrayLike,
    last_period: ArrayLike,
    n_occasions: ArrayLike,
    repeat_value_sum: ArrayLike,
    as_of_period: int,
    period_days: int = 1,
) -> tuple[Array, Array, Array, Array]:
    """:func:`summary` for many customers at once: arrays x, t_x, T, m (every customer needs an occasion).

    >>> [a.tolist() for a in summaries([0, 10], [14, 10], [3, 1], [30.0, 0.0], 21)]
    [[2.0, 0.0], [2.0, 0.0], [3.0, 1.5714285714285714], [15.0, 0.0]]
    """
    first = np.asarray(first_period, dtype=np.int64)
    last = np.asarray(last_period, dtype=np.int64)
    n = np.asarray(n_occasions, dtype=np.int64)
    value = np.asarray(repeat_value_sum, dtype=np.float64)
    if np.any(n < 1):
        raise ValueError("a customer without a purchase occasion has no CLV summary")
    if np.any(first > last) or np.any(last > as_of_period):
        raise ValueError("need first <= last <= as_of periods for every customer")
    x = (n - 1).astype(np.float64)
    m = np.divide(value, x, out=np.zeros_like(value), where=x > 0)
    # the same arithmetic as summary(), so that both give the very same floats
    t_x = ((last - first) * period_days).astype(np.float64) / _DAYS_PER_WEEK
    age = ((as_of_period - first) * period_days).astype(np.float64) / _DAYS_PER_WEEK
    return x, t_x, age, m


# --- per-customer scoring ------------------------------------------------------------------------------------------


class ClvScore(NamedTuple):
    """One customer's (or, from :meth:`ClvModel.score_many`, many customers') CLV outputs.

    ``expected_purchases`` counts occasions in the next ``horizon_days``; ``expected_spend`` is per purchase;
    ``clv`` is the discounted margin over the horizon.
    """

    p_alive: Any
    expected_purchases: Any
    expected_spend: Any
    clv: Any


#: The score of someone with no purchase occasion yet (only contacts, refunds or zero amounts): not a customer of
#: the models' population, so nothing is predicted.
NOT_A_CUSTOMER = ClvScore(0.0, 0.0, 0.0, 0.0)


class ClvModel:
    """Fitted population parameters plus the valuation settings: scores customers, one at a time or many.

    Parameters
    ----------
    bgnbd
        BG/NBD parameters (alpha in weeks).
    gamma_gamma
        Gamma-Gamma parameters, or None when no customer has repeated yet: the expected spend is then the
        customer's own mean repeat spend m (0 when x = 0).
    horizon_days
        H, the horizon of ``expected_purchases`` and of the CLV.
    discount_rate
        Annual discount rate d of the CLV.

    :meth:`score` is pure Python (no numpy per call). The expected purchases of a customer alive at T depend on
    (x, T) only, not on t_x; they are cached per (x, T) — with T a whole number of periods many customers share
    them — so a call costs a few microseconds once the cache is warm. The cache is bounded and belongs to this
    model, so a new fit (a new model) never sees stale values.

    >>> model = ClvModel(BGNBD(0.243, 4.414, 0.793, 2.426), GammaGamma(6.25, 3.74, 15.44), discount_rate=0.0)
    >>> s = model.score(2, 30.43, 38.86, 20.0, margin_rate=0.5)
    >>> round(s.clv, 6) == round(0.5 * s.expected_spend * s.expected_purchases, 6)
    True
    """

    __slots__ = ("bgnbd", "gamma_gamma", "horizon_days", "discount_rate", "_steps", "_cache", "_cache_many")

    #: Most (x, T) entries the per-model cache keeps; it starts afresh when full.
    CACHE_SIZE = 200_000

    def __init__(
        self,
        bgnbd: BGNBD,
        gamma_gamma: GammaGamma | None = None,
        horizon_days: float = 365.0,
        discount_rate: float = 0.10,
    ) -> None:
        if not horizon_days > 0:
            raise ValueError(f"horizon_days must be positive, got {horizon_days}")
        if not discount_rate > -1:
            raise ValueError(f"discount_rate must be above -1, got {discount_rate}")
        self.bgnbd = bgnbd
        self.gamma_gamma = gamma_gamma
        self.horizon_days = float(horizon_days)
        self.discount_rate = float(discount_rate)
        months = max(1, math.ceil(self.horizon_days / DAYS_PER_MONTH - 1e-9))
        self._steps = tuple(
            (min(k * DAYS_PER_MONTH, self.horizon_days) / _DAYS_PER_WEEK, (1.0 + self.discount_rate) ** (-k / 12))
            for k in range(1, months + 1)
        )
        self._cache: dict[tuple[float, float], tuple[float, float]] = {}
        # score_many's own: its vectorised series need not round like score's scalar one in the last bit
        self._cache_many: dict[tuple[float, float], tuple[float, float]] = {}

    def __repr__(self) -> str:
        return (
            f"ClvModel({self.bgnbd!r}, {self.gamma_gamma!r}, horizon_days={self.horizon_days}, "
            f"discount_rate={self.discount_rate})"
        )

    def _alive(self, x: float, T: float) -> tuple[float, float]:  # noqa: N803
        """(expected purchases over the horizon, discounted expected purchases) of a customer alive at T."""
        p = self.bgnbd
        previous = 0.0
        discounted = 0.0
        for t, discount in self._steps:
            y = _alive_purchases(p.r, p.alpha, p.a, p.b, x, T, t)
            discounted += discount * (y - previous)
            previous = y
        return previous, discounted

    def score(self, x: float, t_x: float, T: float, m: float, margin_rate: float) -> ClvScore:  # noqa: N803
        """P(alive), expected purchases in the horizon, expected spend per purchase and CLV of one customer.

        ``x, t_x, T, m`` as from :func:`summary` (weeks); ``margin_rate`` is the customer's gross-margin rate.
        """
        key = (x, T)
        alive = self._cache.get(key)
        if alive is None:
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            alive = self._cache[key] = self._alive(x, T)
        bg = self.bgnbd
        if x > 0:
            d = math.log(bg.a / (bg.b + x - 1)) + (bg.r + x) * math.log((bg.alpha + T) / (bg.alpha + t_x))
            pa = 0.0 if d > 700 else 1.0 / (1.0 + math.exp(d))
        else:
            pa = 1.0
        gg = self.gamma_gamma
        if gg is None:
            spend = m if x > 0 else 0.0
        elif x > 0:
            spend = (gg.gamma + x * m) * gg.p / (gg.p * x + gg.q - 1)
        else:
            spend = gg.gamma * gg.p / (gg.q - 1)
        return ClvScore(pa, pa * alive[0], spend, margin_rate * spend * pa * alive[1])

    def score_many(
        self,
        x: ArrayLike,
        t_x: ArrayLike,
        T: ArrayLike,  # noqa: N803
        m: ArrayLike,
        margin_rate: ArrayLike,
    ) -> ClvScore:
        """:meth:`score` for arrays of customers (numpy); a :class:`ClvScore` of arrays."""
        x, t_x, age, m, margin = _arrays(x, t_x, T, m, margin_rate)
        bg = self.bgnbd
        previous, discounted = self._alive_many(x, age)
        pa = p_alive(bg, x, t_x, age)
        if self.gamma_gamma is None:
            spend = np.where(x > 0, m, 0.0)
        else:
            spend = expected_spend(self.gamma_gamma, x, m)
        return ClvScore(pa, pa * previous, spend, margin * spend * pa * discounted)

    def _alive_many(self, x: Array, age: Array) -> tuple[Array, Array]:
        """:meth:`_alive` of arrays of customers, vectorised, each distinct (x, T) computed once per model.

        Each element of the series is computed on its own (the loop drops the converged ones), so a pair's result
        does not depend on which other pairs are computed with it: the cache changes no result.
        """
        if not (np.isfinite(x).all() and np.isfinite(age).all()):
            return self._alive_series(x, age)
        # the distinct pairs, found by numpy as complex numbers x + T i: hashing every customer's pair in Python
        # (twice) and building the result from a list of tuples cost more than the few distinct pairs' look-ups
        keys, inv = np.unique((x + 1j * age).ravel(), return_inverse=True)
        distinct = list(zip(keys.real.tolist(), keys.imag.tolist(), strict=True))
        cache = self._cache_many
        missing = [pair for pair in distinct if pair not in cache]
        if missing:
            if len(cache) + len(missing) > self.CACHE_SIZE:
                cache.clear()
                missing = distinct
            mx, m_age = np.array(missing, dtype=np.float64).T
            previous, discounted = self._alive_series(mx, m_age, distinct=True)
            cache.update(zip(missing, zip(previous.tolist(), discounted.tolist(), strict=True), strict=True))
        found = np.array([cache[pair] for pair in distinct], dtype=np.float64).reshape(-1, 2)[inv.reshape(x.shape)]
        return found[..., 0], found[..., 1]

    def _alive_series(self, x: Array, age: Array, distinct: bool = False) -> tuple[Array, Array]:
        """:meth:`_alive` of arrays; ``distinct``: the caller's pairs are distinct already (no search for them)."""
        bg = self.bgnbd
        if distinct:
            ux, u_age, inv = x.ravel(), age.ravel(), None
        else:
            # the expectation for an alive customer depends on (x, T) only: compute it once per distinct pair
            keys, inv = np.unique(np.stack([x.ravel(), age.ravel()]), axis=1, return_inverse=True)
            ux, u_age = keys
        previous = np.zeros(ux.size)
        discounted = np.zeros(ux.size)
        # every step of the horizon in one series run (its elements are computed independently): one loop, not 12
        steps = len(self._steps)
        ts = np.repeat(np.array([t for t, _ in self._steps], dtype=np.float64), ux.size)
        ys = _alive_purchases_series(bg.r, bg.alpha, bg.a, bg.b, np.tile(ux, steps), np.tile(u_age, steps), ts)
        for y, (_, discount) in zip(ys.reshape(steps, ux.size), self._steps, strict=True):
            discounted += discount * (y - previous)
            previous = y
        if inv is None:
            return previous.reshape(x.shape), discounted.reshape(x.shape)
        inv = inv.reshape(x.shape)
        return previous[inv], discounted[inv]


# --- simulation and the speed figure -------------------------------------------------------------------------------


def simulate(
    n: int,
    bgnbd: BGNBD,
    gamma_gamma: GammaGamma | None = None,
    *,
    T: ArrayLike | tuple[float, float] = (1.0, 78.0),  # noqa: N803
    seed: int = 0,
) -> tuple[Array, Array, Array, Array]:
    """Summaries (x, t_x, T, m) of ``n`` customers drawn from the models with known parameters.

    ``T`` is each customer's age in weeks (an array), or a (low, high) range to draw it uniformly from. Each
    customer gets lambda ~ Gamma(r, alpha) and p ~ Beta(a, b); repeat purchases are a Poisson process of rate lambda
    until dropout, which happens after each repeat purchase with probability p. Given N purchases in (0, T], the
    x-th arrival time is T times a Beta(x, N - x + 1) draw. Spend: nu ~ Gamma(q, gamma) per customer and the mean of
    x purchases is Gamma(p x, nu x); m = 0 when x = 0 (or when ``gamma_gamma`` is None).

    >>> x, t_x, T, m = simulate(5, BGNBD(0.243, 4.414, 0.793, 2.426), GammaGamma(6.25, 3.74, 15.44), seed=3)
    >>> bool(np.all(t_x <= T)) and bool(np.all((x > 0) == (m > 0)))
    True
    """
    rng = np.random.default_rng(seed)
    if isinstance(T, tuple):
        ages = rng.uniform(T[0], T[1], n)
    else:
        ages = np.broadcast_to(np.asarray(T, dtype=np.float64), (n,)).copy()
    lam = rng.gamma(bgnbd.r, 1.0 / bgnbd.alpha, n)
    drop = rng.beta(bgnbd.a, bgnbd.b, n)
    total = rng.poisson(lam * ages)
    dropout_at = rng.geometric(np.maximum(drop, 1e-300))
    x = np.minimum(total, dropout_at)
    has = x > 0
    xs = np.maximum(x, 1)
    t_x = np.where(has, ages * rng.beta(xs, np.maximum(total - x, 0) + 1), 0.0)
    m = np.zeros(n)
    if gamma_gamma is not None:
        nu = rng.gamma(gamma_gamma.q, 1.0 / gamma_gamma.gamma, n)
        m = np.where(has, rng.gamma(gamma_gamma.p * xs, 1.0 / (nu * xs)), 0.0)
    return x.astype(np.float64), t_x, ages, m


def bench_fit(n: int = 1_000_000, seed: int = 0) -> float:
    """Seconds to fit both models on ``n`` simulated customers (CDNOW-like parameters), summaries given.

    The benchmark's figure for "refit on 1M customers' summaries"; the simulation is not timed.
    """
    x, t_x, age, m = simulate(n, BGNBD(0.243, 4.414, 0.793, 2.426), GammaGamma(6.25, 3.74, 15.44), seed=seed)
    start = time.perf_counter()
    fit_bgnbd(x, t_x, age)
    fit_gamma_gamma(x, m)
    return time.perf_counter() - start


if __name__ == "__main__":  # python -m scoring.clv [N]: the refit figure
    import sys

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(f"fit BG/NBD + Gamma-Gamma on {size:,} customers: {bench_fit(size):.2f} s")
