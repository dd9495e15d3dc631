"""Inference-time procedures (docs/math.md §3): best-of-N, worst-of-N, ... — one registry entry each.

Everything that depends on which procedure serves the model asks this registry; no other module branches on
a procedure's name. A procedure that serves the pick of N draws whose CDF is G(x) when one draw's CDF is x
(best-of-N: G(x) = x^N; worst-of-N: G(x) = 1 − (1 − x)^N) has, against the base model served the same way,
the win rate W = 1 − ∫₀¹ G(F(u)) G'(u) du of a policy whose calibrated reward has CDF F (docs/math.md §4).
Each entry writes that one formula in the forms the package evaluates, with the rounding care its tails need:

    win_integrand(F, S, u, v, n)      g on the calibrated grid with W = 1 − ∫₀¹ g du (core/density.py)
    gradient_integrand(F, S, u, v, n) g with Φ_f(x) = ∫₀ˣ g du + const, the functional derivative of W
    gradient_from_top                 evaluate Φ_f as −∫ₓ¹ g du instead (accurate where the mass sits near 1)
    pick_weights(m, n)                (m,) probabilities that the pick of a uniformly random N-subset of m
                                      samples is the j-th smallest: the unbiased estimate (docs/math.md §8)
    finite_k_win_rate(cdf, u, n)      W of a step CDF on K sorted uniforms (core/finite_k.py)

F, S = 1 − F are (G,) arrays on the grid, u its calibrated rewards and v = 1 − u (each accurate in its own
tail); the rest is described at each function. Adding a procedure: write its functions and one
`register_procedure(...)` line below; tradeoff, estimators and finite_k read the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from .errors import InfalignError

__all__ = ["Procedure", "PROCEDURES", "PROCEDURE_NAMES", "get_procedure", "register_procedure", "check_n"]


@dataclass(frozen=True)
class Procedure:
    name: str  # the name in configs, columns and reports: "bon"
    label: str  # for people: "best-of-N" ("best-of-4" with label.replace("N", str(n)))
    tilt_sign: float  # the sign of a good exp tilt t: +1 favours high rewards, -1 low ones
    concave: bool  # W is concave in f, so mirror ascent finds the optimum (else a stationary point)
    win_integrand: Callable[..., np.ndarray]  # (F, S, u, v, n) -> (G,)
    gradient_integrand: Callable[..., np.ndarray]  # (F, S, u, v, n) -> (G,)
    gradient_from_top: bool
    pick_weights: Callable[[int, int], np.ndarray]  # (m, n) -> (m,) over sorted positions, sums to 1
    finite_k_win_rate: Callable[..., np.ndarray]  # (cdf (K−1,), u (D, K), n) -> (D,)


# ---- best-of-N: G(x) = x^N ---------------------------------------------------------------------------------
def _bon_win(F, S, u, v, n):
    """docs/math.md §4: BoN_N = 1 − ∫ F^N N u^{N−1} du."""
    return F**n * n * u ** (n - 1)


def _bon_gradient(F, S, u, v, n):
    """Φ_f(x) = −∫ₓ¹ N² F^{N−1} u^{N−1} du (docs/math.md §4); F^{N−1} is accurate near u = 1."""
    return n * n * F ** (n - 1) * u ** (n - 1)


def _log_comb(a, b):
    return gammaln(a + 1.0) - gammaln(b + 1.0) - gammaln(a - b + 1.0)


def _bon_pick(m, n):
    """The max of a random N-subset of m sorted samples is the j-th (1-based) w.p. C(j−1, N−1) / C(m, N)
    (docs/math.md §8): the other N − 1 members come from the j − 1 below it. Log-gamma keeps large m finite."""
    j = np.arange(1, m + 1, dtype=np.float64)
    w = np.zeros(m)
    ok = j >= n
    w[ok] = np.exp(_log_comb(j[ok] - 1.0, n - 1.0) - _log_comb(float(m), float(n)))
    return w / w.sum()  # exact up to rounding; the sum is 1 by Vandermonde's identity


def _bon_finite_k(cdf, u, n):
    """BoN_N = 1 − Σ_{i<K} F_i^N (U_(i+1)^N − U_(i)^N) − (1 − U_(K)^N), per row of sorted uniforms u (D, K)."""
    lo, hi = u[:, :-1], u[:, 1:]
    return 1.0 - (np.sum(cdf**n * (hi**n - lo**n), axis=1) + (1.0 - u[:, -1] ** n))


# ---- worst-of-N: G(x) = 1 − (1 − x)^N ----------------------------------------------------------------------
def _one_minus_s_pow(F, S, n):
    """1 − S^N without cancellation where F is tiny: −expm1(N log S), log S = log1p(−F) when F < ½."""
    with np.errstate(divide="ignore"):
        log_s = np.where(F < 0.5, np.log1p(-np.minimum(F, 0.5)), np.log(S))
    return -np.expm1(n * log_s)


def _won_win(F, S, u, v, n):
    """docs/math.md §4: WoN_N = 1 − ∫ [1 − S^N] N (1−u)^{N−1} du."""
    return _one_minus_s_pow(F, S, n) * n * v ** (n - 1)


def _won_gradient(F, S, u, v, n):
    """Φ_f(x) = ∫₀ˣ N² S^{N−1} (1−u)^{N−1} du: docs/math.md §4's −∫ₓ¹ of the same integrand plus a constant
    (bounded and increasing, and constants do not move f), integrated from 0 where WoN's features sit."""
    return n * n * S ** (n - 1) * v ** (n - 1)


def _won_pick(m, n):
    """The min of a random N-subset is the j-th smallest w.p. C(m − j, N − 1) / C(m, N): best-of-N reversed."""
    return _bon_pick(m, n)[::-1].copy()


def _won_finite_k(cdf, u, n):
    """WoN_N = 1 − Σ_{i<K} [1 − (1 − F_i)^N] ((1 − U_(i))^N − (1 − U_(i+1))^N) − (1 − U_(K))^N."""
    lo, hi = u[:, :-1], u[:, 1:]
    g = 1.0 - (1.0 - cdf) ** n
    return 1.0 - (np.sum(g * ((1.0 - lo) ** n - (1.0 - hi) ** n), axis=1) + (1.0 - u[:, -1]) ** n)


# ---- the registry ------------------------------------------------------------------------------------------
PROCEDURES: dict[str, Procedure] = {}


def register_procedure(procedure: Procedure) -> Procedure:
    PROCEDURES[procedure.name] = procedure
    return procedure


register_procedure(Procedure("bon", "best-of-N", +1.0, True, _bon_win, _bon_gradient, True, _bon_pick,
                             _bon_finite_k))
register_procedure(Procedure("won", "worst-of-N", -1.0, False, _won_win, _won_gradient, False, _won_pick,
                             _won_finite_k))
PROCEDURE_NAMES: tuple[str, ...] = tuple(PROCEDURES)


def get_procedure(name: str) -> Procedure:
    """The registered procedure `name`; InfalignError naming the allowed names otherwise."""
    if not isinstance(name, str) or name not in PROCEDURES:
        names = [repr(p) for p in PROCEDURES]
        allowed = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        labels = ", ".join(f"{p.name}: {p.label}" for p in PROCEDURES.values())
        raise InfalignError(f"procedure must be {allowed}, got {name!r} ({labels})")
    return PROCEDURES[name]


def check_n(n) -> int:
    """N of the procedure as an int >= 1; InfalignError otherwise (bools are refused, they are not counts)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InfalignError(f"N (best_of_n / worst_of_n) must be an integer >= 1, got {n!r}")
    return int(n)
