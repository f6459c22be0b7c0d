"""The Gamma-Gamma model of spend per purchase: parameters, likelihood, fit and conditional expected spend.

Fader, Hardie & Lee's Gamma-Gamma ("RFM and CLV", Journal of Marketing Research 2005). Its inputs are x (repeat
occasions) and m (mean repeat spend) of the summaries :mod:`scoring.clv` makes of customers' purchase occasions.
This module is the model's mathematics only, kept apart from what the worker and the learner hold
(:mod:`scoring.clv`: occasions, summaries, :class:`scoring.clv.ClvModel`), and apart from the BG/NBD
(:mod:`scoring.bgnbd`) because spend is modelled independently of the purchase process. It fits with the helpers
kept in :mod:`scoring.bgnbd` (bounded L-BFGS-B on log-parameters, the parameters' bounds, broadcasting of the
inputs).

Parameters p, q, gamma, in the currency of the amounts
    Spend per purchase is Gamma(p, nu) with nu ~ Gamma(q, gamma), independent of the purchase process. Fitted on
    the customers with x > 0 (:func:`fit_gamma_gamma`); the expected spend per purchase of a customer
    (:func:`expected_spend`) is ``(gamma + x m) p / (p x + q - 1)``, which is the population mean
    ``gamma p / (q - 1)`` when x = 0. The fit keeps q > 1 so that this mean exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import digamma, gammaln

from scoring.bgnbd import _LOG_BOUND, _arrays, _from_dict, _minimize

__all__ = [
    "GammaGamma",
    "GammaGammaFit",
    "expected_spend",
    "fit_gamma_gamma",
    "gamma_gamma_log_likelihood",
]

Array = NDArray[np.float64]

#: The Gamma-Gamma fit keeps q above this, so that the mean spend gamma p / (q - 1) exists.
_Q_MIN = 1.0 + 1e-6


# --- parameters and fit results ------------------------------------------------------------------------------------


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
class GammaGammaFit:
    """A Gamma-Gamma fit on the customers with repeat purchases (``customers`` counts them)."""

    params: GammaGamma
    log_likelihood: float
    customers: int
    converged: bool
    iterations: int


# --- likelihood ----------------------------------------------------------------------------------------------------


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

    >>> from scoring.bgnbd import BGNBD
    >>> from scoring.clv import simulate
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


# --- prediction ----------------------------------------------------------------------------------------------------


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
