"""Group-sequential designs: Lan-DeMets alpha spending and the sequential non-inferiority rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq

from qeval.errors import QevalError
from qeval.stats._inputs import SequentialVerdict, Spending, _paired, is_binary
from qeval.stats.noninferiority import _binary_wald
from qeval.stats.paired import _resolve_method, _se_from
from qeval.stats.planning import _n_for_distance, _required_n_binary, required_n
from qeval.stats.tango import _tango_z


def spending_function(t: np.ndarray | float, alpha: float, spending: Spending = "obrien-fleming") -> np.ndarray:
    """Cumulative one-sided alpha spent by information fraction t (Lan & DeMets 1983).

    O'Brien–Fleming type: 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)) (spends almost nothing
    early, so the final look keeps nearly the fixed-n critical value).
    Pocock type: alpha log(1 + (e - 1) t) (spends evenly, stops earlier on clear cases).

    Args:
        t: information fraction(s) in (0, 1].
        alpha: total one-sided alpha.
        spending: "obrien-fleming" or "pocock".

    Returns:
        Alpha spent up to t.
    """
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    if spending == "obrien-fleming":
        with np.errstate(divide="ignore"):
            return np.where(t > 0, 2 - 2 * sps.norm.cdf(sps.norm.ppf(1 - alpha / 2) / np.sqrt(np.maximum(t, 1e-300))),
                            0.0)
    if spending == "pocock":
        return alpha * np.log1p((math.e - 1) * t)
    raise QevalError(f"unknown spending function {spending!r}.", fix="use obrien-fleming or pocock")


class _BrownianLooks:
    """W(t) = Z(t) sqrt(t), Brownian motion with mean drift * t, followed look by look as its sub-density on
    the continuation region: the recursive numerical integration of Armitage, McPherson & Rowe (1969),
    Simpson's rule on a fine grid. Hand-written: scipy has no group-sequential design."""

    def __init__(self, drift: float = 0.0) -> None:
        self.drift = drift
        self.grid = self.weights = self.density = None
        self.t = 0.0

    def step_to(self, t: float) -> None:
        """The next look is at information fraction t."""
        self.sd, self.shift, self.next_t = math.sqrt(t - self.t), self.drift * (t - self.t), t

    def cross(self, b: float) -> float:
        """Probability of W crossing above b (W scale) at this look, not before."""
        if self.grid is None:
            return float(sps.norm.sf((b - self.shift) / self.sd))
        return float(np.sum(self.weights * self.density * sps.norm.sf((b - self.grid - self.shift) / self.sd)))

    def continue_below(self, b: float) -> None:
        """Keep the paths still below b at this look (W(t) 10 SD from its mean holds no mass worth keeping)."""
        mean, sd, shift = self.drift * self.next_t, self.sd, self.shift
        new_grid = np.linspace(mean - 10.0, min(b, mean + 10.0), 2001)
        h = new_grid[1] - new_grid[0]
        simpson = np.ones(new_grid.size)
        simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
        simpson *= h / 3
        if self.grid is None:
            new_density = sps.norm.pdf((new_grid - shift) / sd) / sd
        else:
            # np.exp directly: sps.norm.pdf's overhead dominates on a 2001 x 2001 kernel.
            kernel = np.exp(-0.5 * ((new_grid[:, None] - self.grid[None, :] - shift) / sd) ** 2) / (
                sd * math.sqrt(2 * math.pi))
            new_density = kernel @ (self.weights * self.density)
        self.grid, self.weights, self.density, self.t = new_grid, simpson, new_density, self.next_t


@lru_cache(maxsize=256)
def _upper_boundaries(info: tuple[float, ...], alpha: float, spending: str) -> tuple[float, ...]:
    """Upper z boundaries so the chance of ever crossing under H0 spends alpha as planned.

    The FAIL boundary is not in the recursion (non-binding), which can only lower the false-ship rate.
    """
    spent = spending_function(np.array(info), alpha, spending)  # type: ignore[arg-type]
    increments = np.diff(np.concatenate([[0.0], spent]))
    bounds: list[float] = []
    w = _BrownianLooks()
    for t, pi in zip(info, increments):
        w.step_to(t)
        if pi <= 1e-15:
            u = math.inf
        else:
            available = w.cross(-20.0)
            u = brentq(lambda x: w.cross(x) - pi, -20.0, 40.0, xtol=1e-12) if available > pi else -math.inf
        bounds.append(u / math.sqrt(t))
        w.continue_below(u)
    return tuple(bounds)


def crossing_probability(info: Sequence[float], upper: Sequence[float], drift: float) -> float:
    """Chance that Z crosses an upper boundary at some look when E[Z at full information] = `drift`.

    drift 0 gives the alpha the boundaries spend; the drift of an alternative gives the design's power
    (the non-binding FAIL boundary ignored: an upper bound on power).
    """
    prob = 0.0
    w = _BrownianLooks(drift)
    for t, z_bound in zip(info, upper):
        w.step_to(t)
        b = z_bound * math.sqrt(t)
        prob += w.cross(b) if math.isfinite(b) else 0.0
        w.continue_below(b)
    return prob


@lru_cache(maxsize=64)
def inflation_factor(looks: int, alpha: float, power: float, spending: str = "obrien-fleming") -> float:
    """Maximum n of an equally spaced `looks`-look design over the fixed-n plan for the same power.

    Solves crossing_probability(design, (z_{1-alpha} + z_power) sqrt(R)) = power for R (Jennison &
    Turnbull 2000, ch. 2: R is about 1.02 for O'Brien-Fleming and 1.2 for Pocock at 4 looks).
    """
    if looks <= 1:
        return 1.0
    info = tuple((k + 1) / looks for k in range(looks))
    upper = _upper_boundaries(info, float(alpha), spending)
    drift = float(sps.norm.ppf(1 - alpha) + sps.norm.ppf(power))
    return float(brentq(lambda r: crossing_probability(info, upper, drift * math.sqrt(r)) - power, 1.0, 4.0,
                        xtol=1e-6))


def planned_n(margin: float, *, flip_rate: float, alpha: float, power: float, looks: int = 1,
              spending: str = "obrien-fleming") -> int:
    """The paired samples to plan for a 0/1 task: the fixed n of the test the gate runs on 0/1 scores
    (Tango's score test) times the inflation factor of an equally spaced `looks`-look design."""
    fixed = required_n(margin, flip_rate=flip_rate, alpha=alpha, power=power, method="score").n
    return math.ceil(fixed * inflation_factor(looks, alpha, power, spending))


@dataclass(frozen=True)
class GroupSequentialDesign:
    """Look schedule and boundaries of a group-sequential non-inferiority test.

    Attributes:
        looks: cumulative paired samples at each look; the last is the planned maximum n.
        info: information fractions n_k / max_n.
        upper: PASS boundary on the z scale at each look (z > upper: non-inferior).
            The FAIL boundary is its mirror (z < -upper: inferior), not counted against
            alpha (a non-binding futility boundary can only lower the false-ship rate).
        alpha: one-sided level spent over the looks.
        spending: spending function.
        spent: cumulative alpha spent at each look.
    """

    looks: tuple[int, ...]
    info: tuple[float, ...]
    upper: tuple[float, ...]
    alpha: float
    spending: str
    spent: tuple[float, ...]

    @property
    def max_n(self) -> int:
        return self.looks[-1]


def group_sequential_design(max_n: int, looks: int | Sequence[int] = 10, *, alpha: float = 0.05,
                            spending: Spending = "obrien-fleming") -> GroupSequentialDesign:
    """Boundaries for looks at planned sample sizes (Lan-DeMets alpha spending).

    Args:
        max_n: planned maximum paired samples (the fixed-n plan, e.g. from required_n).
        looks: number of equally spaced looks, or the cumulative n at each look
            (increasing, ending at max_n).
        alpha: one-sided level.
        spending: "obrien-fleming" (default) or "pocock".

    Returns:
        GroupSequentialDesign.
    """
    if isinstance(looks, (int, np.integer)):
        if looks < 1:
            raise QevalError(f"looks must be >= 1, got {looks}.")
        schedule = tuple(int(math.ceil(max_n * k / looks)) for k in range(1, int(looks) + 1))
    else:
        schedule = tuple(int(x) for x in looks)
        if not schedule or schedule[-1] != max_n or any(b <= a for a, b in zip(schedule, schedule[1:])):
            raise QevalError(f"look schedule {schedule} must be strictly increasing and end at max_n={max_n}.")
    schedule = tuple(sorted(set(schedule)))
    info = tuple(n / max_n for n in schedule)
    upper = _upper_boundaries(info, float(alpha), spending)
    spent = tuple(float(x) for x in spending_function(np.array(info), alpha, spending))
    return GroupSequentialDesign(looks=schedule, info=info, upper=upper, alpha=alpha, spending=spending,
                                 spent=spent)


@dataclass(frozen=True)
class SequentialDecision:
    """Decision of a group-sequential non-inferiority test on the data so far.

    Attributes:
        verdict: PASS / FAIL (stop), CONTINUE (run the next batch), or INCONCLUSIVE
            (final look reached without a decision).
        look: 1-based index of the look that decided (or the last look evaluated).
        n: samples used by that look.
        next_n: cumulative n of the next look when CONTINUE, else None.
        z: test statistic at that look.
        boundary: PASS boundary at that look.
        estimate: mean delta at that look.
        margin: m.
        method: "normal" or "score".
        design: the design.
    """

    verdict: SequentialVerdict
    look: int
    n: int
    next_n: int | None
    z: float
    boundary: float
    estimate: float
    margin: float
    method: str
    design: GroupSequentialDesign
    fail_boundary: float = math.nan  # FAIL when z < fail_boundary (-boundary unless a fail design was given)


def _sequential_outcome(z: np.ndarray, distance: np.ndarray, n_adequate: np.ndarray, upper: np.ndarray,
                        max_n: int, n_looks_done: int, n_looks_total: int,
                        lower: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised over runs (axis 0) x looks (axis 1). Returns (code, look index).

    code: 1 PASS, -1 FAIL, 0 INCONCLUSIVE (final look), 2 CONTINUE. FAIL crosses `lower`
    (default -upper): a non-binding boundary, so it never raises the false-PASS rate.
    """
    lower = -upper if lower is None else lower
    up = z > upper[None, :n_looks_done]
    down = z < lower[None, :n_looks_done]
    stop = up | down
    any_stop = stop.any(axis=1)
    first = np.where(any_stop, stop.argmax(axis=1), n_looks_done - 1)
    rows = np.arange(z.shape[0])
    code = np.where(up[rows, first], 1, np.where(down[rows, first], -1, 0))
    final = n_looks_done == n_looks_total
    if final:
        # Final look without crossing: the fixed-n point-estimate rule applies.
        late_fail = (~any_stop) & (distance[:, -1] < 0) & (max_n >= n_adequate)
        code = np.where(late_fail, -1, code)
    else:
        code = np.where(any_stop, code, 2)
    return code, first


def sequential_noninferiority(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray,
                              margin: float, design: GroupSequentialDesign, *, method: str = "auto",
                              power: float = 0.8, fail_design: GroupSequentialDesign | None = None
                              ) -> SequentialDecision:
    """PASS / FAIL / CONTINUE for an absolute-margin non-inferiority test run in batches.

    The arrays hold every sample evaluated so far in run order. Every look the design
    has reached is re-evaluated in order, so the answer is the look at which the run
    should have stopped: peeking more often than the schedule cannot inflate alpha.

    Args:
        baseline: per-sample baseline scores so far.
        candidate: per-sample candidate scores so far, same order.
        margin: absolute margin, metric units.
        design: from group_sequential_design (planned max n and look schedule).
        method: "auto" (score for 0/1 scores, else normal), "normal" or "score".
        power: power for the final-look "n adequate" rule.
        fail_design: the same looks at the FAIL level (the gate fails at its unadjusted alpha, so
            blocking stays the easier error); FAIL crosses -fail_design.upper. Default: -design.upper.

    Returns:
        SequentialDecision.
    """
    b, c = _paired(baseline, candidate)
    binary = is_binary(b, c)
    method = _resolve_method(method, binary, False)
    if method.startswith("bootstrap"):
        raise QevalError("sequential mode uses the normal or score statistic, not a bootstrap.",
                         fix="set method to auto, normal or score")
    done = [k for k, n_k in enumerate(design.looks) if n_k <= b.size]
    upper = np.array(design.upper)
    if fail_design is not None and fail_design.looks != design.looks:
        raise QevalError(f"the FAIL design's looks {fail_design.looks} differ from the PASS design's {design.looks}.")
    lower = -np.array(fail_design.upper) if fail_design is not None else -upper
    if not done:
        return SequentialDecision("CONTINUE", 0, b.size, design.looks[0], math.nan, float(upper[0]),
                                  float(np.mean(c - b)) if b.size else math.nan, margin, method, design,
                                  float(lower[0]))
    z_list, dist_list = [], []
    n_adequate = 2
    for k in done:
        bk, ck = b[: design.looks[k]], c[: design.looks[k]]
        if binary:
            n10, n01 = np.sum((bk == 1) & (ck == 0)), np.sum((bk == 0) & (ck == 1))
            n_k = design.looks[k]
            if method == "score":
                z = float(_tango_z(np.array(n10), np.array(n01), np.array(n_k), -margin))
            else:
                est, se = _binary_wald(np.array(n10), np.array(n01), np.array(n_k))
                z = float((est + margin) / se) if se > 0 else math.copysign(math.inf, float(est) + margin)
            flip = (n10 + n01) / n_k
            if flip > 0:
                n_adequate = int(_required_n_binary(np.array(margin), np.array(flip), np.array(0.0),
                                                    design.alpha, power, method))
        else:
            d = ck - bk
            se, _ = _se_from(d, None)
            z = float((d.mean() + margin) / se) if se > 0 else math.copysign(math.inf, float(d.mean()) + margin)
            n_adequate = int(math.ceil(_n_for_distance(margin, se * math.sqrt(d.size), design.alpha, power)))
        z_list.append(z)
        dist_list.append(float(np.mean(ck - bk)) + margin)
    code, first = _sequential_outcome(np.array([z_list]), np.array([dist_list]), np.array([n_adequate]), upper,
                                      design.max_n, len(done), len(design.looks), lower)
    k = int(first[0])
    verdict = {1: "PASS", -1: "FAIL", 0: "INCONCLUSIVE", 2: "CONTINUE"}[int(code[0])]
    next_n = design.looks[len(done)] if verdict == "CONTINUE" else None
    return SequentialDecision(verdict, k + 1, design.looks[k], next_n, z_list[k], float(upper[k]),  # type: ignore[arg-type]
                              dist_list[k] - margin, margin, method, design, float(lower[k]))
