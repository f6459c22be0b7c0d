"""Slow textbook versions of the CLV models, written straight from the papers, to check scoring.clv, scoring.bgnbd
and scoring.gamma_gamma against.

Nothing here shares code or algebra with them: the likelihoods are per-customer loops with ``math.lgamma`` and
Beta functions exactly as printed (Fader, Hardie & Lee 2005, equation 6; the Gamma-Gamma density of the mean
spend), the expected purchases of an alive customer come from numerical integration over the dropout probability's
posterior instead of a hypergeometric function, and the fit is Nelder-Mead without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import integrate, optimize


def _lbeta(u: float, v: float) -> float:
    return math.lgamma(u) + math.lgamma(v) - math.lgamma(u + v)


def bgnbd_ll(r: float, alpha: float, a: float, b: float, x: float, t_x: float, T: float) -> float:  # noqa: N803
    """L = B(a, b+x)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+T)^(r+x))
    + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+t_x)^(r+x))."""
    common = math.lgamma(r + x) - math.lgamma(r) + r * math.log(alpha) - _lbeta(a, b)
    log1 = _lbeta(a, b + x) + common - (r + x) * math.log(alpha + T)
    if x == 0:
        return log1
    log2 = _lbeta(a + 1, b + x - 1) + common - (r + x) * math.log(alpha + t_x)
    top = max(log1, log2)
    return top + math.log(math.exp(log1 - top) + math.exp(log2 - top))


def gg_ll(p: float, q: float, gamma: float, x: float, m: float) -> float:
    """f(m | p, q, gamma, x) = G(px+q)/(G(px) G(q)) * gamma^q m^(px-1) x^(px) / (gamma + m x)^(px+q)."""
    px = p * x
    return (
        math.lgamma(px + q)
        - math.lgamma(px)
        - math.lgamma(q)
        + q * math.log(gamma)
        + (px - 1) * math.log(m)
        + px * math.log(x)
        - (px + q) * math.log(gamma + m * x)
    )


def p_alive(r: float, alpha: float, a: float, b: float, x: float, t_x: float, T: float) -> float:  # noqa: N803
    """Paper equation 11: 1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x))."""
    if x == 0:
        return 1.0
    return 1.0 / (1.0 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))


def alive_purchases(r: float, alpha: float, a: float, b: float, x: float, T: float, t: float) -> float:  # noqa: N803
    """E[purchases in (T, T+t] | alive at T] = E_p[(1 - (1 + p t / (alpha + T))^-(r+x)) / p], p ~ Beta(a, b+x).

    Alive at T, the posterior is lambda ~ Gamma(r+x, alpha+T) and p ~ Beta(a, b+x), independent; given both, the
    expected purchases in t are (1 - exp(-lambda p t)) / p, and the expectation over lambda is the power above.
    """
    u = t / (alpha + T)
    s = r + x
    beta_b = b + x
    log_norm = _lbeta(a, beta_b)

    def integrand(p: float) -> float:
        g = -math.expm1(-s * math.log1p(p * u)) / p if p > 0 else s * u
        return g * math.exp((a - 1) * math.log(p) + (beta_b - 1) * math.log1p(-p) - log_norm) if 0 < p < 1 else 0.0

    # The Beta weight may be singular at either end: split the interval so quad sees each end separately, and
    # put a break where the integrand's scale 1 / u lies.
    points = sorted({0.0, min(0.5, 1.0 / (1.0 + u)), 0.5, 1.0})
    total = 0.0
    for lo, hi in zip(points, points[1:], strict=False):
        value, _ = integrate.quad(integrand, lo, hi, epsabs=0.0, epsrel=1e-12, limit=500)
        total += value
    return total


def expected_purchases(r: float, alpha: float, a: float, b: float, t: float, x: float, t_x: float, T: float) -> float:  # noqa: N803
    return p_alive(r, alpha, a, b, x, t_x, T) * alive_purchases(r, alpha, a, b, x, T, t)


def clv(
    params: Sequence[float],
    gg: Sequence[float],
    x: float,
    t_x: float,
    T: float,  # noqa: N803
    m: float,
    margin: float,
    horizon_days: float,
    discount: float,
) -> float:
    """The documented CLV sum, month by month, with the integral's expected purchases."""
    r, alpha, a, b = params
    p, q, gamma = gg
    spend = (gamma + x * m) * p / (p * x + q - 1)
    month = 365.25 / 12
    total = 0.0
    previous = 0.0
    k = 1
    while (k - 1) * month < horizon_days - 1e-9:
        t = min(k * month, horizon_days) / 7
        y = expected_purchases(r, alpha, a, b, t, x, t_x, T)
        total += (y - previous) / (1 + discount) ** (k / 12)
        previous = y
        k += 1
    return margin * spend * total


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> tuple[list[float], float]:  # noqa: N803
    """Nelder-Mead on the textbook likelihood in log-parameters: (r, alpha, a, b), log-likelihood."""
    rows = list(zip(x.tolist(), t_x.tolist(), T.tolist(), strict=True))

    def nll(theta: np.ndarray) -> float:
        r, alpha, a, b = np.exp(theta)
        return -sum(bgnbd_ll(r, alpha, a, b, *row) for row in rows)

    res = optimize.minimize(
        nll, np.zeros(4), method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 20_000}
    )
    return [float(v) for v in np.exp(res.x)], -float(res.fun)


def fit_gamma_gamma(x: np.ndarray, m: np.ndarray) -> tuple[list[float], float]:
    rows = [(xi, mi) for xi, mi in zip(x.tolist(), m.tolist(), strict=True) if xi > 0]

    def nll(theta: np.ndarray) -> float:
        p, q, gamma = np.exp(theta)
        return -sum(gg_ll(p, q, gamma, *row) for row in rows)

    start = np.log([1.0, 2.0, float(np.mean([mi for _, mi in rows]))])
    res = optimize.minimize(
        nll, start, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-11, "maxiter": 20_000}
    )
    return [float(v) for v in np.exp(res.x)], -float(res.fun)
