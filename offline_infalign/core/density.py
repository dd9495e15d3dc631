"""Densities on the calibrated scale and their integrals (docs/math.md §4): the numerical ground of core/tradeoff.

A tilt with transform Φ and coefficient β puts on the calibrated reward u ∈ [0, 1] the density

    f(u) = exp(Φ(u)/β) / Z,   Z = ∫₀¹ exp(Φ(u)/β) du,   F(u) = ∫₀ᵘ f,   S(u) = 1 − F(u)

and every quantity of the tradeoff is an integral of f, F or S. f is increasing (Φ is), so its mass piles up
near u = 1 when β is small, and the WoN quantities live near u = 0. All integrals therefore run on a uniform
grid in the logit z = log(u/(1−u)) ∈ [−37, 37]: the u-spacing is u(1−u)·dz, which resolves features of width
1e-15 at both ends and still costs only ~7,400 points. Totals use the trapezoid rule in z (spectrally accurate
for these integrands, which decay like e^{−|z|}); running integrals (F, S, the gradients) use a 4th-order
cubic-interpolation rule. Densities are handled as log f = Φ/β − max − log Z', so β down to 1e-9 is safe.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .procedures import Procedure
from .transforms import Transform

__all__ = ["BETA_MIN", "BETA_MAX", "Grid", "grid", "total", "running", "Density", "density", "tilted", "kl",
           "standard_win_rate", "win_rate", "gradient"]

# Grid in z = logit(u). σ(±37) leaves 8.5e-17 of [0, 1] uncovered at each end, below float64 resolution of u
# near 1; f is bounded for every registered transform, so the mass lost there is < 1e-16.
_Z_MAX = 37.0
_STEP = 0.01
# β range searched when matching a KL budget. Outside it the tilt is numerically the base policy (β large)
# or a point mass closer to u = 1 than the grid can resolve usefully (β small).
BETA_MIN = 1e-6
BETA_MAX = 1e9


# ----------------------------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Grid:
    u: np.ndarray  # (G,) calibrated rewards
    v: np.ndarray  # (G,) 1 − u, computed separately so it stays accurate near u = 1
    w: np.ndarray  # (G,) du/dz = u (1 − u): the quadrature weight per unit z
    h: float  # z step


@functools.lru_cache(maxsize=1)
def grid() -> Grid:
    n = int(round(2 * _Z_MAX / _STEP)) + 1
    z = np.linspace(-_Z_MAX, _Z_MAX, n)
    u = 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z) without overflow
    v = 0.5 * (1.0 - np.tanh(0.5 * z))  # σ(−z)
    # 1 − tanh loses all digits once tanh rounds to 1; use the exact tail form e^{−|z|}/(1 + e^{−|z|}) there.
    tail = np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z)))
    u = np.where(z < 0, tail, u)
    v = np.where(z > 0, tail, v)
    for a in (u, v):
        a.setflags(write=False)
    w = u * v
    w.setflags(write=False)
    return Grid(u=u, v=v, w=w, h=float(z[1] - z[0]))


def total(g: np.ndarray, h: float) -> float:
    """∫ g dz by the trapezoid rule (g ~ 0 at both ends of the z range)."""
    return float(h * (g.sum() - 0.5 * (g[0] + g[-1])))


def _pieces(g: np.ndarray, h: float) -> np.ndarray:
    """(G−1,) integrals of g over each z interval: cubic through 4 neighbours inside, trapezoid at the ends."""
    p = 0.5 * h * (g[:-1] + g[1:])
    # ∫_{z_i}^{z_i+1} of the cubic through z_{i−1..i+2} = h/24 (−g_{i−1} + 13 g_i + 13 g_{i+1} − g_{i+2}).
    p[1:-1] = (h / 24.0) * (-g[:-3] + 13.0 * g[1:-2] + 13.0 * g[2:-1] - g[3:])
    return p


def running(g: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """(∫ from the left end to z_i, ∫ from z_i to the right end), each (G,), accurate in its own small tail."""
    p = _pieces(g, h)
    left = np.concatenate(([0.0], np.cumsum(p)))
    right = np.concatenate((np.cumsum(p[::-1])[::-1], [0.0]))
    return left, right


# ------------------------------------------------------------------------------------------- the density
@dataclass(frozen=True)
class Density:
    f: np.ndarray  # (G,) density on the grid
    log_f: np.ndarray  # (G,) log density (finite even where f underflows)
    F: np.ndarray  # (G,) CDF, accurate near 0
    S: np.ndarray  # (G,) 1 − CDF, accurate near 1
    log_z: float  # log ∫ exp(log_w) du of the unnormalized input


def density(log_w: np.ndarray) -> Density:
    """Normalize an unnormalized log density log_w (G,) on the grid."""
    g = grid()
    m = float(np.max(log_w))
    e = np.exp(log_w - m)
    mass = e * g.w
    z_rel = total(mass, g.h)
    left, right = running(mass, g.h)
    # Normalize the running integrals by their own total so F + S = 1 exactly at every point's neighbours.
    run_total = left[-1]
    return Density(
        f=e / z_rel,
        log_f=log_w - m - math.log(z_rel),
        F=np.clip(left / run_total, 0.0, 1.0),
        S=np.clip(right / run_total, 0.0, 1.0),
        log_z=m + math.log(z_rel),
    )


def tilted(transform: Transform, beta: float) -> Density:
    """The tilt f ∝ exp(Φ(u)/β) (inputs already checked)."""
    return density(np.asarray(transform(grid().u), dtype=np.float64) / beta)


def kl(d: Density) -> float:
    """KL(π ‖ π_ref) = ∫ f log f (docs/math.md §4), in nats."""
    g = grid()
    return max(0.0, total(d.f * d.log_f * g.w, g.h))


def standard_win_rate(d: Density) -> float:
    """∫ u f(u) du: the N = 1 win rate against the base model (docs/math.md §4)."""
    g = grid()
    return total(g.u * d.f * g.w, g.h)


def win_rate(d: Density, procedure: Procedure, n: int) -> float:
    """W_N(f) = 1 − ∫ g du with g the procedure's win integrand (docs/math.md §4, core/procedures.py)."""
    g = grid()
    return 1.0 - total(procedure.win_integrand(d.F, d.S, g.u, g.v, n) * g.w, g.h)


def gradient(d: Density, procedure: Procedure, n: int) -> np.ndarray:
    """Functional derivative Φ_f of W_N at f (docs/math.md §4), up to an additive constant."""
    g = grid()
    left, right = running(procedure.gradient_integrand(d.F, d.S, g.u, g.v, n) * g.w, g.h)
    return -right if procedure.gradient_from_top else left
