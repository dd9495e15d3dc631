"""The optimal policy at a KL budget (docs/math.md §4): mirror ascent of W_N − β KL on the calibrated grid, and
the β search that lands it on the budget. `tradeoff.optimal` picks the start (the best exp tilt) and calls here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from . import density as D
from .errors import InfalignError
from .procedures import Procedure
from .transforms import Transform

__all__ = ["Optimum", "ascend", "optimal_from"]

# The optimum may need a smaller β than any transform a user would train (its win rate is then within ~1e-9 of
# 1); its inner solve still resolves features down to 1 − u ≈ 1e-14 at this floor.
_OPT_BETA_MIN = 1e-10


@dataclass(frozen=True)
class Optimum:
    """The best (concave W, e.g. BoN) or a stationary (e.g. WoN) policy at a KL budget, as a density on the
    calibrated grid."""

    kl: float
    beta: float
    win_rate: float
    standard_win_rate: float
    procedure: str
    n: int
    u: np.ndarray = field(repr=False)  # (G,) grid of calibrated rewards
    density: np.ndarray = field(repr=False)  # (G,) f(u)
    phi: np.ndarray = field(repr=False)  # (G,) the optimal transform Φ_f(u) (up to a constant): f ∝ exp(Φ_f/β)
    iterations: int = 0  # mirror-ascent steps of the final inner solve


def _objective(d: D.Density, procedure: Procedure, n: int, beta: float) -> float:
    return D.win_rate(d, procedure, n) - beta * D.kl(d)


def ascend(log_f0: np.ndarray, procedure: Procedure, n: int, beta: float, tol: float = 1e-9,
           max_iter: int = 5000) -> tuple[D.Density, np.ndarray, int]:
    """Exponentiated-gradient (mirror) ascent of J(f) = W(f) − β ∫ f log f from log_f0, with backtracking.

    A step of size α mixes log densities: log f ← (1 − α) log f + α Φ_f/β (α = 1 is the plain fixed point
    f ∝ exp(Φ_f/β), which oscillates at small β). α is halved until J increases and doubled after a success.
    Stops when the fixed-point residual r = log g − log f, g ∝ exp(Φ_f/β), is constant to sd_f(r) < tol (or
    when no step raises J at float precision). For concave W (BoN), W(f*) ≤ W(f) + ⟨Φ_f, f* − f⟩ and
    max_p ⟨Φ_f, p⟩ − β ∫ p log p = β log Z_g give J* − J(f) ≤ β KL(f ‖ g) ≈ β sd_f(r)²/2, and the KL of f is
    off by about sd_f(log f)·sd_f(r): both negligible at tol = 1e-9. For WoN it is a stationarity measure only.
    Returns (density, gradient, iterations).
    """
    grid = D.grid()
    d = D.density(log_f0)
    j = _objective(d, procedure, n, beta)
    alpha = 1.0
    it = 0
    neutral = 0  # consecutive steps that changed J by no more than float rounding
    for it in range(1, max_iter + 1):  # noqa: B007  (it is reported)
        phi = D.gradient(d, procedure, n)
        g = D.density(phi / beta)
        r = g.log_f - d.log_f
        mean_r = D.total(d.f * r * grid.w, grid.h)
        sd_r = math.sqrt(max(0.0, D.total(d.f * (r - mean_r) ** 2 * grid.w, grid.h)))
        if sd_r < tol:
            return d, phi, it
        alpha = min(1.0, 2.0 * alpha)
        # Close to the optimum J moves by less than its rounding (J* − J ≈ β sd_r²/2 < 1e-16 once sd_r ~ 1e-8)
        # while log f is still ~1e-8 off; a step that keeps J within rounding is accepted then, so the
        # residual, not J, decides convergence. 10 such steps in a row without reaching tol mean float noise.
        slack = 8e-16 * max(1.0, abs(j))
        while alpha > 1e-14:
            cand = D.density((1.0 - alpha) * d.log_f + alpha * g.log_f)
            j_c = _objective(cand, procedure, n, beta)
            if j_c > j + slack or (j_c >= j - slack and alpha == 1.0):
                neutral = neutral + 1 if j_c <= j + slack else 0
                d, j = cand, max(j, j_c)
                break
            alpha *= 0.5
        else:  # no ascent direction left at float precision: stationary for all practical purposes
            return d, phi, it
        if neutral >= 10:
            return d, D.gradient(d, procedure, n), it
    return d, D.gradient(d, procedure, n), it


def optimal_from(procedure: Procedure, n: int, kl: float, start_t: Transform, beta0: float) -> Optimum:
    """The optimum at KL budget `kl`, starting every inner solve from the tilt (start_t, beta0), which has KL = kl.

    For each β the inner problem max W − β KL is solved by `ascend`; an outer brentq on log β matches the budget.
    """
    start = D.tilted(start_t, beta0).log_f
    cache: dict[float, tuple] = {}

    def solve(log_beta: float):
        # Every solve starts from the same tilt: the result is then a function of β alone (warm starts from the
        # previous β were measured to make KL(β) noisy at 1e-8 and brentq slower), and for WoN the stationary
        # point found does not depend on the search path.
        if log_beta not in cache:
            cache[log_beta] = ascend(start, procedure, n, math.exp(log_beta))
        return cache[log_beta]

    def excess(log_beta: float) -> float:
        return D.kl(solve(log_beta)[0]) - kl

    lo = hi = math.log(beta0)
    e_lo = e_hi = excess(lo)
    # The optimum's β is near the start's; widen the bracket by growing steps until the KL crosses the budget.
    step = 0.5
    while e_lo <= 0 and lo > math.log(_OPT_BETA_MIN):
        step *= 2
        lo = max(lo - step, math.log(_OPT_BETA_MIN))
        e_lo = excess(lo)
    step = 0.5
    while e_hi >= 0 and hi < math.log(D.BETA_MAX):
        step *= 2
        hi = min(hi + step, math.log(D.BETA_MAX))
        e_hi = excess(hi)
    if not (e_lo > 0 > e_hi):
        if e_lo == 0 or e_hi == 0:
            root = lo if e_lo == 0 else hi
        else:
            d = solve(lo if e_lo <= 0 else hi)[0]
            raise InfalignError(
                f"KL budget kl={kl:g} is not reachable by the optimal {procedure.name}-{n} policy with beta in "
                f"[{_OPT_BETA_MIN:g}, {D.BETA_MAX:g}] (it reaches KL {D.kl(d):.3g} with win rate "
                f"{D.win_rate(d, procedure, n):.10f}); use a smaller kl"
            )
    else:
        root = brentq(excess, lo, hi, xtol=1e-10, rtol=1e-12, maxiter=100)
    d, phi, iters = solve(root)
    return Optimum(
        kl=D.kl(d),
        beta=math.exp(root),
        win_rate=D.win_rate(d, procedure, n),
        standard_win_rate=D.standard_win_rate(d),
        procedure=procedure.name,
        n=n,
        u=D.grid().u,
        density=d.f,
        phi=phi,
        iterations=iters,
    )
