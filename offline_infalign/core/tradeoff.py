"""The calibrated-space tradeoff: KL, standard and best-/worst-of-N win rates of a tilted policy (docs/math.md §4), the
optimal transform at a KL budget, and the choice of transform and β for a budget (docs/math.md §7).

The integrals live in core/density.py (the grid and a density's KL and win rates), the mirror ascent to the
optimum in core/optimum.py, and each procedure's functionals in core/procedures.py; this module checks the
inputs, matches β to KL budgets and searches the exp tilts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from . import density as D
from .checks import check_beta, check_positive
from .density import BETA_MAX, BETA_MIN
from .errors import InfalignError
from .optimum import Optimum, ascend, optimal_from
from .procedures import Procedure, check_n, get_procedure
from .transforms import Transform

__all__ = [
    "Prediction",
    "Optimum",
    "Choice",
    "Curve",
    "predict",
    "kl_divergence",
    "standard_win_rate",
    "win_rate",
    "log_partition",
    "beta_for_kl",
    "optimal",
    "choose",
    "tradeoff_curves",
]

# Default tilt grid for `choose` (|t|, geometric); the best grid point is refined by a bounded 1-D search.
DEFAULT_TILTS = tuple(float(t) for t in np.geomspace(0.25, 1024.0, 37))


# ------------------------------------------------------------------------------------------- validation
def _check_procedure(procedure: str, n) -> tuple[Procedure, int]:
    return get_procedure(procedure), check_n(n)


def _check_kl(kl) -> float:
    return check_positive(kl, "KL budget (nats)", name="kl")


def _check_transform(transform) -> Transform:
    if not isinstance(transform, Transform):
        raise InfalignError(f"transform must be a Transform (see transforms.get_transform), got {transform!r}")
    return transform


# --------------------------------------------------------------------------------------- one tilt (docs/math.md §4)
@dataclass(frozen=True)
class Prediction:
    """What the calibrated space predicts for one tilt (transform, β) served with procedure/N."""

    transform: Transform
    beta: float
    kl: float
    win_rate: float  # inference-time (procedure, N) win rate against the base model served the same way
    standard_win_rate: float  # N = 1
    procedure: str
    n: int


def predict(transform: Transform, beta: float, procedure: str = "bon", n: int = 4) -> Prediction:
    """KL, standard win rate and BoN/WoN win rate of the tilt exp(Φ/β) (docs/math.md §4)."""
    transform = _check_transform(transform)
    proc, n = _check_procedure(procedure, n)
    beta = check_beta(beta)
    d = D.tilted(transform, beta)
    return Prediction(transform, beta, D.kl(d), D.win_rate(d, proc, n), D.standard_win_rate(d), proc.name, n)


def kl_divergence(transform: Transform, beta: float) -> float:
    """KL(π ‖ π_ref) = ∫ f log f of the tilt (docs/math.md §4), in nats."""
    return D.kl(D.tilted(_check_transform(transform), check_beta(beta)))


def standard_win_rate(transform: Transform, beta: float) -> float:
    """∫ u f(u) du: the N = 1 win rate against the base model (docs/math.md §4)."""
    return D.standard_win_rate(D.tilted(_check_transform(transform), check_beta(beta)))


def win_rate(transform: Transform, beta: float, procedure: str = "bon", n: int = 4) -> float:
    """Best-of-N or worst-of-N win rate of the tilt against the base model under the same procedure (docs/math.md §4)."""
    proc, n = _check_procedure(procedure, n)
    return D.win_rate(D.tilted(_check_transform(transform), check_beta(beta)), proc, n)


def log_partition(transform: Transform, beta: float) -> float:
    """log Z, Z = ∫₀¹ exp(Φ(u)/β) du (the constant of the pointwise loss, docs/math.md §6)."""
    return D.tilted(_check_transform(transform), check_beta(beta)).log_z


def beta_for_kl(transform: Transform, kl: float) -> float:
    """The β at which the tilt by `transform` has KL(π ‖ π_ref) = kl (KL decreases strictly in β).

    Raises InfalignError naming kl and the reachable range when no β in [BETA_MIN, BETA_MAX] gets there.
    """
    transform = _check_transform(transform)
    kl = _check_kl(kl)

    def excess(log_beta: float) -> float:
        return D.kl(D.tilted(transform, math.exp(log_beta))) - kl

    lo, hi = math.log(BETA_MIN), math.log(BETA_MAX)
    e_lo, e_hi = excess(lo), excess(hi)
    if not (e_lo > 0 > e_hi):
        raise InfalignError(
            f"KL budget kl={kl:g} is not reachable with transform {transform}: beta in [{BETA_MIN:g}, {BETA_MAX:g}] "
            f"gives KL in ({e_hi + kl:.3g}, {e_lo + kl:.4g})"
        )
    return math.exp(brentq(excess, lo, hi, xtol=1e-12, rtol=1e-13, maxiter=200))


# --------------------------------------------------------------------------------- the optimum (docs/math.md §4)
def optimal(procedure: str, n: int, kl: float) -> Optimum:
    """The optimal transform at KL budget `kl` (docs/math.md §4): the f maximizing W_T among densities with ∫ f log f = kl.

    For each β the inner problem max W − β KL is solved by mirror ascent (`optimum.ascend`) from the best exp
    tilt at the budget (`choose`); an outer brentq on log β matches the budget. A concave W (BoN): this is the
    optimum. Otherwise (WoN): the result is the stationary point reached from the best exp tilt, and it is
    never worse than that tilt (the ascent only raises W − β KL from it, and KL ends equal to kl).
    """
    proc, n = _check_procedure(procedure, n)
    kl = _check_kl(kl)
    # For N = 1 choose returns the identity tilt: W is linear (∫ u f) with gradient Φ_f(u) = u, so that is
    # already the exact optimum and the ascent stops at once.
    c = choose(procedure, n, kl, with_optimum=False)
    return optimal_from(proc, n, kl, c.transform, c.beta)


# ------------------------------------------------------------------------------------------- choose (docs/math.md §7)
@dataclass(frozen=True)
class Choice:
    """The best exp tilt and its β for a procedure, N and KL budget, beside the optimal win rate there."""

    transform: Transform
    tilt: float | None  # None only for N = 1, where the identity transform is exactly optimal
    beta: float
    kl: float
    win_rate: float
    standard_win_rate: float
    optimal_win_rate: float | None  # None with with_optimum=False, or if the optimum needs β < 1e-10
    procedure: str
    n: int


def _at_budget(transform: Transform, kl: float, procedure: str, n: int) -> Prediction | None:
    try:
        beta = beta_for_kl(transform, kl)
    except InfalignError:
        return None
    return predict(transform, beta, procedure, n)


def choose(procedure: str, n: int, kl: float, tilts=None, with_optimum: bool = True) -> Choice:
    """Best exp tilt t (sign: the procedure's tilt_sign, t > 0 for bon) with β matched to KL = kl, reported
    beside the optimum.

    Args:
        tilts: candidate |t| values (signs are set by the procedure); default DEFAULT_TILTS (0.25 … 1024).
            The best grid point is refined by a bounded search on log |t| between its neighbours.
        with_optimum: also compute `optimal(procedure, n, kl).win_rate` (the yardstick, docs/math.md §7); it is None
            when the optimum cannot be computed at this budget (it would need β < 1e-10, win rate ≈ 1).
    For N = 1 every procedure is the standard win rate, whose optimum is the identity transform; it is
    returned (tilt None) instead of an exp tilt that could only approach it as t → 0.
    WoN at large budgets (e.g. N = 8, kl ≥ 1, win rates > 0.9998): the WoN optimum tends to cutting off the
    lowest calibrated rewards, which an exp tilt approaches as β → 0, so the best tilt is then the largest |t|
    that still reaches the budget and its β sits at BETA_MIN (1e-6). The numbers are right; such a β is a
    sign that the budget is larger than the procedure needs.
    """
    proc, n = _check_procedure(procedure, n)
    kl = _check_kl(kl)
    if n == 1:
        ident = Transform("identity")
        beta = beta_for_kl(ident, kl)
        p = predict(ident, beta, procedure, n)
        opt = optimal_from(proc, n, kl, ident, beta).win_rate if with_optimum else None
        return Choice(ident, None, beta, p.kl, p.win_rate, p.standard_win_rate, opt, procedure, n)
    sign = proc.tilt_sign
    grid_t = np.unique(np.abs(np.asarray(DEFAULT_TILTS if tilts is None else tilts, dtype=np.float64)))
    if grid_t.size == 0 or not np.all(np.isfinite(grid_t)) or grid_t[0] == 0:
        raise InfalignError(f"tilts must be finite and non-zero, got {tilts!r}")

    def score(abs_t: float) -> float:
        p = _at_budget(Transform("exp", sign * abs_t), kl, procedure, n)
        # An unreachable budget scores −1 (below any win rate) rather than −inf, which breaks the parabolic
        # steps of the bounded search.
        return -1.0 if p is None else p.win_rate

    scores = np.array([score(t) for t in grid_t])
    if not (scores >= 0).any():
        raise InfalignError(
            f"KL budget kl={kl:g} is not reachable by any exp tilt |t| in [{grid_t[0]:g}, {grid_t[-1]:g}] "
            f"(beta in [{BETA_MIN:g}, {BETA_MAX:g}]); try a smaller kl"
        )
    i = int(np.argmax(scores))
    best_t = float(grid_t[i])
    if grid_t.size >= 2:
        lo = math.log(grid_t[max(i - 1, 0)])
        hi = math.log(grid_t[min(i + 1, grid_t.size - 1)])
        res = minimize_scalar(lambda s: -score(math.exp(s)), bounds=(lo, hi), method="bounded",
                              options={"xatol": 1e-4})
        if res.success and -res.fun > scores[i]:
            best_t = float(math.exp(res.x))
    transform = Transform("exp", sign * best_t)
    p = _at_budget(transform, kl, procedure, n)
    opt = None
    if with_optimum:
        try:
            opt = optimal_from(proc, n, kl, transform, p.beta).win_rate
        except InfalignError:  # the optimum would need β < _OPT_BETA_MIN: report the tilt, leave the yardstick out
            opt = None
    return Choice(transform, transform.tilt, p.beta, p.kl, p.win_rate, p.standard_win_rate, opt, procedure, n)


# ------------------------------------------------------------------------------------------ curves (plots)
@dataclass(frozen=True)
class Curve:
    """Win rate against KL for one transform (or the optimum), for plotting (docs/math.md §8: predicted curves)."""

    label: str
    kl: np.ndarray  # (C,)
    win_rate: np.ndarray  # (C,)
    standard_win_rate: np.ndarray  # (C,)


def tradeoff_curves(procedure: str, n: int, transforms, kl_max: float = 1.0, num_points: int = 20,
                    with_optimum: bool = True) -> list[Curve]:
    """Predicted (KL, win rate) curves for each transform on KL ∈ (0, kl_max], plus the optimum's curve.

    Args:
        transforms: iterable of Transform (or (label, Transform) pairs).
        num_points: points per curve, geometric in KL from kl_max/100 to kl_max.
    A transform that cannot reach part of the range contributes only the points it reaches. The optimum's
    curve follows β from large to small, warm-starting each inner solve from the last solution, so it costs
    one mirror-ascent solve per point; its KL values are those the solves land on.
    """
    proc, n = _check_procedure(procedure, n)
    kl_max = _check_kl(kl_max)
    kls = np.geomspace(kl_max / 100.0, kl_max, int(num_points))
    curves = []
    for item in transforms:
        label, t = item if isinstance(item, tuple) else (str(item), item)
        preds = [p for p in (_at_budget(_check_transform(t), k, procedure, n) for k in kls) if p is not None]
        curves.append(Curve(label, np.array([p.kl for p in preds]), np.array([p.win_rate for p in preds]),
                            np.array([p.standard_win_rate for p in preds])))
    if with_optimum:
        # Follow the optimum from large β (KL ≈ kl_max/100, using the log tilt's β as a first guess) to small,
        # β shrinking by a fixed factor, each solve warm-started from the last, until KL passes kl_max.
        ref = Transform("identity") if n == 1 else Transform("log")
        beta = beta_for_kl(ref, float(kls[0]))
        log_f = np.zeros_like(D.grid().u)
        if n > 1 and not proc.concave:
            # Start a non-concave W (WoN) from a tilt of its own shape so the path follows the branch
            # `optimal` reports (for a concave W every start leads to the one optimum).
            log_f = D.tilted(Transform("exp", proc.tilt_sign * 10.0), 1.0).log_f
        factor = (kl_max / float(kls[0])) ** (-1.0 / max(2, int(num_points) - 1))
        pts = []
        while beta >= BETA_MIN and len(pts) < 10 * int(num_points):
            d, _, _ = ascend(log_f, proc, n, beta)
            log_f = d.log_f
            pts.append((D.kl(d), D.win_rate(d, proc, n), D.standard_win_rate(d)))
            if pts[-1][0] >= kl_max:
                break
            beta *= factor
        pts.sort()
        arr = np.array(pts).reshape(-1, 3)
        curves.append(Curve("optimal", arr[:, 0], arr[:, 1], arr[:, 2]))
    return curves
