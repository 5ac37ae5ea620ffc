"""Tango's score test and interval for the difference of paired proportions."""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq


def _tango_restricted_p10(n10: np.ndarray, n01: np.ndarray, n: np.ndarray, delta0: np.ndarray) -> np.ndarray:
    """Restricted MLE of P(baseline right, candidate wrong) under p01 - p10 = delta0 (Tango 1998, eq. 3).

    Root of 2n q^2 + B q + C = 0 with B = -(n01 + n10) + (2n - n01 + n10) delta0,
    C = -n10 delta0 (1 - delta0). Written in the cancellation-free form on each side.
    """
    a, b = n01, n10
    big_b = -a - b + (2 * n - a + b) * delta0
    big_c = -b * delta0 * (1 - delta0)
    disc = np.sqrt(np.maximum(big_b * big_b - 8 * n * big_c, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        neg = (disc - big_b) / (4 * n)
        pos = np.where(big_b + disc > 0, -2 * big_c / np.where(big_b + disc > 0, big_b + disc, 1.0), 0.0)
    return np.where(big_b <= 0, neg, pos)


def _tango_z(n10: np.ndarray, n01: np.ndarray, n: np.ndarray, delta0: np.ndarray | float) -> np.ndarray:
    """Tango's (1998) score statistic for H0: delta = delta0, delta = (n01 - n10)/n; vectorised.

    Unlike the Wald statistic it uses the variance under H0 (restricted MLE), so it
    stays honest with few or no discordant pairs: zero flips on 5 samples do not
    prove anything, and the score test says so where Wald's SE of 0 would not.
    """
    n10 = np.asarray(n10, dtype=float)
    n01 = np.asarray(n01, dtype=float)
    n = np.asarray(n, dtype=float)
    delta0 = np.asarray(delta0, dtype=float)
    q = _tango_restricted_p10(n10, n01, n, delta0)
    var = n * (2 * q + delta0 * (1 - delta0))
    num = n01 - n10 - n * delta0
    with np.errstate(invalid="ignore", divide="ignore"):
        z = num / np.sqrt(np.maximum(var, 0.0))
        return np.where(var > 1e-300, z, np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0)))


def _tango_interval(n10: np.ndarray, n01: np.ndarray, n: np.ndarray, z_crit: float) -> tuple[np.ndarray, np.ndarray]:
    """Score interval {delta0 : |Z(delta0)| <= z_crit} by vectorised bisection (Z decreases in delta0)."""
    n10, n01, n = (np.asarray(x, dtype=float) for x in (n10, n01, n))
    est = (n01 - n10) / n

    def solve(target: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        if est.size == 1:  # one interval (the gate's case): Brent's method needs ~12 evaluations, not 60
            scalar = _solve_scalar(lambda d: float(_tango_z(n10, n01, n, d)) - target, float(lo), float(hi))
            if scalar is not None:
                return np.full(est.shape, scalar)
        lo, hi = lo.copy(), hi.copy()
        for _ in range(60):   # 2^-60 of a width-2 bracket: far below float noise in a delta
            mid = 0.5 * (lo + hi)
            above = _tango_z(n10, n01, n, mid) > target
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        return 0.5 * (lo + hi)

    edge = 1 - 1e-12
    lower = solve(z_crit, np.full(est.shape, -edge), est)
    upper = solve(-z_crit, est, np.full(est.shape, edge))
    return lower, upper


def _solve_scalar(f, lo: float, hi: float) -> float | None:
    """The root of a decreasing f in [lo, hi] to float precision, or None where f does not change sign
    there (the bisection then returns the bracket end, as before)."""
    f_lo, f_hi = f(lo), f(hi)
    if not (np.isfinite(f_lo) and np.isfinite(f_hi)) or f_lo <= 0 or f_hi >= 0:
        return None
    return float(brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=200))
