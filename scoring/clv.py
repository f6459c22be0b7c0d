r"""Probabilistic customer-lifetime value: BG/NBD purchases and dropout, Gamma-Gamma spend, discounted CLV.

The models are those of Fader, Hardie & Lee: the BG/NBD ("Counting your customers the easy way", Marketing Science
2005) for how many purchases a customer makes and whether they are still a customer, and the Gamma-Gamma ("RFM and
CLV", Journal of Marketing Research 2005) for how much they spend per purchase. This module is the single source of
their conventions; the worker and ``cvm clv fit`` compute exactly what is defined here.

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

BG/NBD (parameters r, alpha, a, b; alpha in weeks)
    While alive a customer buys at rate lambda ~ Gamma(r, alpha); after each repeat purchase they drop out with
    probability p ~ Beta(a, b). :func:`fit_bgnbd` maximises the likelihood of (x, t_x, T); :func:`p_alive` and
    :func:`expected_purchases` are the conditional predictions of the paper (equations 11 and 10).

Gamma-Gamma (parameters p, q, gamma, in the currency of the amounts)
    Spend per purchase is Gamma(p, nu) with nu ~ Gamma(q, gamma), independent of the purchase process. Fitted on
    the customers with x > 0; the expected spend per purchase of a customer is
    ``(gamma + x m) p / (p x + q - 1)``, which is the population mean ``gamma p / (q - 1)`` when x = 0. The fit keeps
    q > 1 so that this mean exists.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import digamma, expit, gammaln, hyp2f1

__all__ = [
    "BGNBD",
    "BGNBDFit",
    "ClvModel",
    "ClvScore",
    "DAYS_PER_MONTH",
    "GammaGamma",
    "GammaGammaFit",
    "NOT_A_CUSTOMER",
    "OccasionFacts",
    "Summary",
    "TIME_UNIT",
    "bench_fit",
    "bgnbd_log_likelihood",
    "expected_purchases",
    "expected_spend",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "gamma_gamma_log_likelihood",
    "occasion_facts",
    "occasion_period",
    "p_alive",
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

#: Bounds of the log-parameters during a fit: wide enough for any sensible population, finite so that a
#: likelihood without a maximum (nobody ever repeated; everyone spends exactly the same) still ends somewhere.
_LOG_BOUND = 20.0
#: The Gamma-Gamma fit keeps q above this, so that the mean spend gamma p / (q - 1) exists.
_Q_MIN = 1.0 + 1e-6


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


# --- parameters and fit results ------------------------------------------------------------------------------------


def _from_dict(cls: Any, data: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    try:
        return cls(**{k: float(data[k]) for k in names})
    except KeyError as exc:
        raise ValueError(f"{cls.__name__} needs {', '.join(names)}: {exc.args[0]!r} is missing") from None


@dataclass(frozen=True)
class BGNBD:
    """BG/NBD parameters: purchase rate ~ Gamma(r, alpha) with alpha in weeks, dropout ~ Beta(a, b).

    >>> BGNBD.from_dict(BGNBD(0.243, 4.414, 0.793, 2.426).to_dict())
    BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)
    """

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) and v > 0 for v in (self.r, self.alpha, self.a, self.b)):
            raise ValueError(f"BG/NBD parameters must be positive and finite: {self}")

    def to_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BGNBD:
        return _from_dict(cls, data, ("r", "alpha", "a", "b"))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class GammaGamma:
    """Gamma-Gamma parameters: spend per purchase ~ Gamma(p, nu), nu ~ Gamma(q, gamma).

    >>> g = GammaGamma(p=6.25, q=3.74, gamma=15.44)
    >>> round(g.mean_spend, 4), GammaGamma.from_dict(g.to_dict()) == g
    (35.219, True)
    """

    p: float
    q: float
    gamma: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) and v > 0 for v in (self.p, self.q, self.gamma)):
            raise ValueError(f"Gamma-Gamma parameters must be positive and finite: {self}")

    @property
    def mean_spend(self) -> float:
        """The population's mean spend per purchase, gamma p / (q - 1) (infinite when q <= 1)."""
        return self.gamma * self.p / (self.q - 1) if self.q > 1 else math.inf

    def to_dict(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "gamma": self.gamma}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GammaGamma:
        return _from_dict(cls, data, ("p", "q", "gamma"))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class BGNBDFit:
    """A BG/NBD fit: the parameters, the total log-likelihood, how many customers, whether the optimiser converged."""

    params: BGNBD
    log_likelihood: float
    customers: int
    converged: bool
    iterations: int


@dataclass(frozen=True)
class GammaGammaFit:
    """A Gamma-Gamma fit on the customers with repeat purchases (``customers`` counts them)."""

    params: GammaGamma
    log_likelihood: float
    customers: int
    converged: bool
    iterations: int


# --- likelihoods ---------------------------------------------------------------------------------------------------


def _arrays(*values: ArrayLike) -> list[Array]:
    out = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values]
    shape = np.broadcast_shapes(*(a.shape for a in out))
    return [np.broadcast_to(a, shape) for a in out]


def bgnbd_log_likelihood(params: BGNBD, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:  # noqa: N803
    """Each customer's BG/NBD log-likelihood (paper equation 6, in log space).

    >>> ll = bgnbd_log_likelihood(BGNBD(0.243, 4.414, 0.793, 2.426), [0, 2], [0.0, 30.43], [38.86, 38.86])
    >>> ll.round(4).tolist()
    [-0.5547, -9.4586]
    """
    x, t_x, age = _arrays(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    a1 = gammaln(r + x) - gammaln(r) + r * math.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + age)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = math.log(a) - np.log(b + x - 1) - (r + x) * np.log(alpha + t_x)
    tail = np.where(x > 0, np.logaddexp(a3, np.where(x > 0, a4, -np.inf)), a3)
    return np.asarray(a1 + a2 + tail, dtype=np.float64)


def gamma_gamma_log_likelihood(params: GammaGamma, x: ArrayLike, m: ArrayLike) -> Array:
    """Each customer's Gamma-Gamma log-likelihood: the density of their mean repeat spend m given x > 0.

    >>> gamma_gamma_log_likelihood(GammaGamma(6.25, 3.74, 15.44), [1, 4], [20.0, 35.0]).round(4).tolist()
    [-3.5942, -4.0473]
    """
    x, m = _arrays(x, m)
    if np.any(x <= 0) or np.any(m <= 0):
        raise ValueError("the Gamma-Gamma likelihood needs x > 0 and m > 0")
    p, q, g = params.p, params.q, params.gamma
    px = p * x
    out = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * math.log(g)
        + (px - 1) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(g + m * x)
    )
    return np.asarray(out, dtype=np.float64)


# --- fitting -------------------------------------------------------------------------------------------------------


class _BGData:
    """The BG/NBD data arranged for a fast objective: x = 0 and x > 0 apart, per-x terms computed once per x."""

    def __init__(self, x: Array, t_x: Array, T: Array, w: Array) -> None:  # noqa: N803
        zero = x == 0
        self.T0, self.w0 = T[zero], w[zero]
        rep = ~zero
        self.x1, self.t1, self.T1, self.w1 = x[rep], t_x[rep], T[rep], w[rep]
        self.ux, self.inv = np.unique(self.x1, return_inverse=True)
        self.cnt = np.bincount(self.inv, weights=self.w1, minlength=self.ux.size)
        self.total = float(w.sum())

    def objective(self, theta: Array) -> tuple[float, Array]:
        """Minus the mean log-likelihood and its gradient in log-parameters."""
        r, al, a, b = np.exp(theta)
        ll = 0.0
        g = np.zeros(4)
        if self.T0.size:
            l0 = math.log(al) - np.log(al + self.T0)
            s0 = float(self.w0 @ l0)
            ll += r * s0
            g[0] += s0
            g[1] += r * float(self.w0 @ (self.T0 / (al + self.T0))) / al
        if self.x1.size:
            ux, cnt = self.ux, self.cnt
            per_x = (
                gammaln(r + ux) - gammaln(r) + r * math.log(al) + gammaln(a + b) + gammaln(b + ux) - gammaln(b)
            ) - gammaln(a + b + ux)
            ll += float(cnt @ per_x)
            bx = (b + ux - 1)[self.inv]
            la = np.log(al + self.T1)
            lt = np.log(al + self.t1)
            rx = r + self.x1
            d = (math.log(a) - np.log(bx)) + rx * (la - lt)
            w1 = self.w1
            ll += float(w1 @ (np.logaddexp(0.0, d) - rx * la))
            w4 = expit(d)
            w3 = expit(-d)
            g[0] += float(cnt @ (digamma(r + ux) - digamma(r) + math.log(al))) + float(w1 @ (w4 * (la - lt) - la))
            g[1] += float(cnt.sum()) * r / al - float(w1 @ (rx * (w3 / (al + self.T1) + w4 / (al + self.t1))))
            psi_ab = digamma(a + b) - digamma(a + b + ux)
            ww4 = w1 * w4
            g[2] += float(cnt @ psi_ab) + float(ww4.sum()) / a
            g[3] += float(cnt @ (psi_ab + digamma(b + ux) - digamma(b))) - float(ww4 @ (1.0 / bx))
        # chain rule to log-parameters, minus the mean
        g *= np.array([r, al, a, b])
        return -ll / self.total, -g / self.total


def _check_bg(x: Array, t_x: Array, T: Array, w: Array) -> None:  # noqa: N803
    for name, v in (("x", x), ("t_x", t_x), ("T", T), ("weights", w)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} has values that are not finite")
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise ValueError("x must be whole numbers >= 0")
    if np.any(t_x < 0) or np.any(t_x > T * (1 + 1e-12)):
        raise ValueError("need 0 <= t_x <= T for every customer")
    if np.any(w < 0):
        raise ValueError("weights must be >= 0")


def _minimize(
    objective: Callable[[Array], tuple[float, Array]], x0: Array, bounds: list[tuple[float, float]], max_iter: int
) -> tuple[Array, float, bool, int]:
    res = minimize(
        objective,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter, "ftol": 1e-14, "gtol": 1e-9, "maxcor": 20},
    )
    theta = np.asarray(res.x, dtype=np.float64)
    _, grad = objective(theta)
    lo, hi = np.array(bounds).T
    # On a bound the gradient need not vanish; elsewhere it must (L-BFGS-B may stop on a line-search failure at
    # the optimum, which is fine: the gradient says whether it is one).
    free = (theta > lo + 1e-9) & (theta < hi - 1e-9)
    converged = bool(res.success) or bool(np.all(np.abs(grad[free]) < 1e-6))
    return theta, float(res.fun), converged, int(res.nit)


def fit_bgnbd(
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,  # noqa: N803
    weights: ArrayLike | None = None,
    *,
    max_iter: int = 2000,
) -> BGNBDFit:
    """Maximum-likelihood BG/NBD parameters of customers' summaries (x repeat occasions, t_x and T in weeks).

    L-BFGS-B on the log-parameters with an analytic gradient. ``weights`` counts each row as that many customers
    (for summaries grouped by (x, t_x, T)). When nobody has a repeat purchase the likelihood has no maximum
    (it approaches 1 as the purchase rate goes to 0); the fit then stops at the bounds with a tiny r, which
    predicts no purchases — the right answer for such data.

    >>> fit = fit_bgnbd(*simulate(20_000, BGNBD(0.25, 4.0, 0.8, 2.5), seed=1)[:3])
    >>> fit.converged, fit.customers, [round(v, 2) for v in fit.params.to_dict().values()]
    (True, 20000, [0.25, 4.04, 0.67, 1.99])
    """
    xa, ta, ages = (np.ravel(np.asarray(v, dtype=np.float64)) for v in (x, t_x, T))
    if not xa.size == ta.size == ages.size:
        raise ValueError("x, t_x and T must have the same length")
    wa = np.ones_like(xa) if weights is None else np.ravel(np.asarray(weights, dtype=np.float64))
    if wa.size != xa.size:
        raise ValueError("weights must have one value per customer")
    if xa.size == 0 or wa.sum() <= 0:
        raise ValueError("no customers to fit")
    _check_bg(xa, ta, ages, wa)
    ta = np.where(xa > 0, ta, 0.0)
    data = _BGData(xa, ta, ages, wa)
    # Start from r = 1 and the population's raw repeat rate: alpha = r / rate.
    rate = float(wa @ xa) / max(float(wa @ ages), 1e-12)
    alpha0 = 1.0 / rate if rate > 0 else math.exp(_LOG_BOUND / 2)
    x0 = np.array([0.0, float(np.clip(math.log(alpha0), -_LOG_BOUND + 1, _LOG_BOUND - 1)), 0.0, 0.0])
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * 4
    theta, f, converged, nit = _minimize(data.objective, x0, bounds, max_iter)
    r, alpha, a, b = (float(v) for v in np.exp(theta))
    return BGNBDFit(BGNBD(r, alpha, a, b), -f * data.total, int(round(data.total)), converged, nit)


class _GGData:
    def __init__(self, x: Array, m: Array) -> None:
        self.scale = float(np.mean(m))  # fit in units of the mean spend: the start and bounds stay scale-free
        ms = m / self.scale
        self.ux, inv = np.unique(x, return_inverse=True)
        self.cnt = np.bincount(inv, minlength=self.ux.size).astype(np.float64)
        self.mx = ms * x
        self.x = x
        self.sx_logm = float(x @ np.log(ms))
        self.s_logm = float(np.log(ms).sum())
        self.ux_logux = float(self.cnt @ (self.ux * np.log(self.ux)))
        self.n = float(x.size)

    def log_likelihood_scaled(self, p: float, q: float, g: float) -> tuple[float, Array]:
        ux, cnt = self.ux, self.cnt
        pu = p * ux
        lg = np.log(g + self.mx)
        sx_lg = float(self.x @ lg)
        s_lg = float(lg.sum())
        ll = (
            float(cnt @ (gammaln(pu + q) - gammaln(pu)))
            - self.n * (gammaln(q) - q * math.log(g))
            + p * (self.sx_logm + self.ux_logux)
            - self.s_logm
            - p * sx_lg
            - q * s_lg
        )
        psi = digamma(pu + q)
        inv = 1.0 / (g + self.mx)
        grad = np.array(
            [
                float(cnt @ (ux * (psi - digamma(pu)))) + self.sx_logm + self.ux_logux - sx_lg,
                float(cnt @ psi) - self.n * (digamma(q) - math.log(g)) - s_lg,
                self.n * q / g - p * float(self.x @ inv) - q * float(inv.sum()),
            ]
        )
        return ll, grad

    def objective(self, theta: Array) -> tuple[float, Array]:
        p, q, g = np.exp(theta)
        ll, grad = self.log_likelihood_scaled(p, q, g)
        return -ll / self.n, -grad * np.array([p, q, g]) / self.n


def fit_gamma_gamma(x: ArrayLike, m: ArrayLike, *, max_iter: int = 2000) -> GammaGammaFit:
    """Maximum-likelihood Gamma-Gamma parameters from the customers with repeat purchases.

    Rows with x = 0 are ignored (they carry no repeat spend); :class:`ValueError` when no row is left. The fit
    keeps q > 1 (the mean spend per purchase exists); the log-likelihood is that of m in the caller's currency.

    >>> x, _, _, m = simulate(20_000, BGNBD(0.25, 4.0, 0.8, 2.5), GammaGamma(6.0, 4.0, 15.0), seed=2)
    >>> fit = fit_gamma_gamma(x, m)
    >>> fit.converged, fit.customers, [round(v, 1) for v in fit.params.to_dict().values()]
    (True, 8262, [6.3, 3.9, 14.1])
    """
    xa = np.ravel(np.asarray(x, dtype=np.float64))
    ma = np.ravel(np.asarray(m, dtype=np.float64))
    if xa.size != ma.size:
        raise ValueError("x and m must have the same length")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ma))):
        raise ValueError("x and m must be finite")
    rep = xa > 0
    xa, ma = xa[rep], ma[rep]
    if xa.size == 0:
        raise ValueError("the Gamma-Gamma model needs customers with repeat purchases; there are none")
    if np.any(ma <= 0):
        raise ValueError("a customer with repeat purchases must have a positive mean repeat spend m")
    data = _GGData(xa, ma)
    # Start at p = 2, q = 3 and the gamma that matches the observed mean spend (gamma p / (q - 1) = 1 when scaled).
    x0 = np.log(np.array([2.0, 3.0, 1.0]))
    bounds = [(-_LOG_BOUND, _LOG_BOUND), (math.log(_Q_MIN), _LOG_BOUND), (-_LOG_BOUND, _LOG_BOUND)]
    theta, f, converged, nit = _minimize(data.objective, x0, bounds, max_iter)
    p, q, g = (float(v) for v in np.exp(theta))
    ll = -f * data.n - data.n * math.log(data.scale)  # the density of m, not of m / scale
    return GammaGammaFit(GammaGamma(p, q, g * data.scale), ll, xa.size, converged, nit)


# --- predictions, vectorised ---------------------------------------------------------------------------------------


def p_alive(params: BGNBD, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:  # noqa: N803
    """Probability that each customer is still alive at T (paper equation 11); exactly 1 when x = 0.

    >>> p_alive(BGNBD(0.243, 4.414, 0.793, 2.426), [0, 2, 2], [0.0, 30.0, 5.0], 32.0).round(4).tolist()
    [1.0, 0.7919, 0.1721]
    """
    x, t_x, age = _arrays(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    with np.errstate(divide="ignore", invalid="ignore"):
        d = math.log(a) - np.log(b + x - 1) + (r + x) * (np.log(alpha + age) - np.log(alpha + t_x))
    return np.where(x > 0, expit(-np.where(x > 0, d, 0.0)), 1.0)


def _alive_purchases_closed(r: float, alpha: float, a: float, b: float, x: Any, T: Any, t: Any) -> Any:  # noqa: N803
    """The paper's closed form (a+b+x-1)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)].

    Used when a is well above 1: there it is exact (scipy's 2F1) and takes no loop, while the series needs about
    a z / (1 - z) terms — millions when a fit ends with a and b at their bounds (no heterogeneity in dropout,
    which short histories produce).
    """
    s0 = alpha + T
    z = t / (s0 + t)
    c = a + b + x - 1.0
    return c / (a - 1.0) * (1.0 - (s0 / (s0 + t)) ** (r + x) * hyp2f1(r + x, b + x, c, z))


#: Above this a, the closed form replaces the series (both agree to 1e-12 where both work, see the tests).
_CLOSED_FORM_MIN_A = 1.5


def _alive_purchases_series(r: float, alpha: float, a: float, b: float, x: Array, T: Array, t: Array) -> Array:  # noqa: N803
    """Vectorised :func:`_alive_purchases`: the same series, run until every element has converged."""
    x, age, t = _arrays(x, T, t)
    if a > _CLOSED_FORM_MIN_A:
        return np.where(t > 0, _alive_purchases_closed(r, alpha, a, b, x, age, np.maximum(t, 0.0)), 0.0)
    out = np.zeros(x.shape)
    pos = t > 0
    if not np.any(pos):
        return out
    x, age, t = x[pos], age[pos], t[pos]
    s0 = alpha + age
    log1mz = -np.log1p(t / s0)
    z = t / (s0 + t)
    am1 = a - 1.0
    e1 = -np.expm1(am1 * log1mz) / am1 if am1 != 0 else -log1mz
    c = a + b + x - 1.0
    ap = a + b - 1.0 - r
    term = ap * z
    total = term.copy()
    active = np.arange(x.size)
    n = 1
    while active.size and n < _MAX_TERMS:
        ta, za, ca = term[active], z[active], c[active]
        ratio = za * ((ap + n) * (a + n - 1)) / ((ca + n) * (n + 1))
        ta = ta * ratio
        total[active] += ta
        term[active] = ta
        n += 1
        rho = np.maximum(np.abs(ratio), za)
        done = (np.abs(ratio) < 1) & (np.abs(ta) * rho <= _SERIES_TOL * (1 - rho) * np.abs(total[active]))
        active = active[~done]
    out[pos] = c * e1 - np.exp(am1 * log1mz) * total
    return out


def expected_purchases(params: BGNBD, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:  # noqa: N803
    """Expected number of purchase occasions in the next ``t`` weeks given (x, t_x, T) (paper equation 10).

    Computed as P(alive) times the expectation for an alive customer, whose Gaussian hypergeometric function is
    taken in its Euler-transformed form 2F1(a+b-1-r, a-1; a+b+x-1; z) and summed as a series with the 1/(a+b+x-1)
    factor cancelled analytically. That form converges fast for large x (where scipy's ``hyp2f1`` of the paper's
    form loses accuracy), has no pole at a+b+x = 1 and no 0/0 at a = 1.

    >>> ep = expected_purchases(BGNBD(0.243, 4.414, 0.793, 2.426), 39, [0, 2], [0.0, 30.43], 38.86)
    >>> ep.round(4).tolist()  # the paper's example customer: 1.226
    [0.1951, 1.226]
    """
    x, t_x, age, t = _arrays(x, t_x, T, t)
    alive = _alive_purchases_series(params.r, params.alpha, params.a, params.b, x, age, t)
    return np.asarray(p_alive(params, x, t_x, age) * alive, dtype=np.float64)


def expected_spend(params: GammaGamma, x: ArrayLike, m: ArrayLike) -> Array:
    """Expected spend per purchase of each customer: (gamma + x m) p / (p x + q - 1); the population mean at x = 0.

    >>> expected_spend(GammaGamma(6.25, 3.74, 15.44), [0, 1, 10], [0.0, 20.0, 20.0]).round(3).tolist()
    [35.219, 24.638, 20.639]
    """
    x, m = _arrays(x, m)
    p, q, g = params.p, params.q, params.gamma
    m = np.where(x > 0, m, 0.0)
    with np.errstate(divide="ignore"):
        return np.asarray((g + x * m) * p / (p * x + q - 1), dtype=np.float64)


# --- per-customer scoring ------------------------------------------------------------------------------------------

#: Relative accuracy of the hypergeometric series, and the most terms it may take (reached only when alpha + T is
#: a tiny fraction of the horizon; the answer is then still close, the tail being small and of one sign).
_SERIES_TOL = 1e-12
_MAX_TERMS = 200_000


def _alive_purchases(r: float, alpha: float, a: float, b: float, x: float, T: float, t: float) -> float:  # noqa: N803
    """Expected purchases in (T, T + t] weeks of a customer alive at T: (a+b+x-1)/(a-1) [1 - (1-z)^(a-1) G].

    G = 2F1(a+b-1-r, a-1; a+b+x-1; z), z = t / (alpha + T + t), written as
    (a+b+x-1) E1 - (1-z)^(a-1) sum_{n>=1} tau_n with E1 = (1 - (1-z)^(a-1)) / (a-1), tau_1 = (a+b-1-r) z and
    tau_{n+1} = tau_n z (a+b-1-r+n)(a+n-1) / ((a+b+x-1+n)(n+1)).
    """
    if t <= 0:
        return 0.0
    if a > _CLOSED_FORM_MIN_A:
        return float(_alive_purchases_closed(r, alpha, a, b, x, T, t))
    s0 = alpha + T
    log1mz = -math.log1p(t / s0)
    z = t / (s0 + t)
    am1 = a - 1.0
    e1 = -math.expm1(am1 * log1mz) / am1 if am1 != 0 else -log1mz
    c = a + b + x - 1.0
    ap = a + b - 1.0 - r
    term = ap * z
    total = term
    n = 1
    while n < _MAX_TERMS:
        ratio = z * (ap + n) * (a + n - 1) / ((c + n) * (n + 1))
        term *= ratio
        total += term
        n += 1
        rho = ratio if ratio > z else z
        if -1.0 < ratio < 1.0 and abs(term) * rho <= _SERIES_TOL * (1.0 - rho) * abs(total):
            break
    return c * e1 - math.exp(am1 * log1mz) * total


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
        pairs = list(zip(x.ravel().tolist(), age.ravel().tolist(), strict=True))
        cache = self._cache_many
        missing = list(dict.fromkeys(pair for pair in pairs if pair not in cache))
        if missing:
            if len(cache) + len(missing) > self.CACHE_SIZE:
                cache.clear()
                missing = list(dict.fromkeys(pairs))
            mx, m_age = np.array(missing, dtype=np.float64).T
            previous, discounted = self._alive_series(mx, m_age)
            cache.update(zip(missing, zip(previous.tolist(), discounted.tolist(), strict=True), strict=True))
        found = np.array([cache[pair] for pair in pairs], dtype=np.float64).reshape(*x.shape, 2)
        return found[..., 0], found[..., 1]

    def _alive_series(self, x: Array, age: Array) -> tuple[Array, Array]:
        bg = self.bgnbd
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
