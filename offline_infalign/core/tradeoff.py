"""The calibrated-space tradeoff: KL, standard and best-/worst-of-N win rates of a tilted policy (SPEC §4), the
optimal transform at a KL budget, and the choice of transform and β for a budget (SPEC §7).

A tilt with transform Φ and coefficient β puts on the calibrated reward u ∈ [0, 1] the density

    f(u) = exp(Φ(u)/β) / Z,   Z = ∫₀¹ exp(Φ(u)/β) du,   F(u) = ∫₀ᵘ f,   S(u) = 1 − F(u)

and every quantity below is an integral of f, F or S. f is increasing (Φ is), so its mass piles up near u = 1
when β is small, and the WoN quantities live near u = 0. All integrals therefore run on a uniform grid in the
logit z = log(u/(1−u)) ∈ [−37, 37]: the u-spacing is u(1−u)·dz, which resolves features of width 1e-15 at
both ends and still costs only ~7,400 points. Totals use the trapezoid rule in z (spectrally accurate for
these integrands, which decay like e^{−|z|}); running integrals (F, S, the gradients) use a 4th-order
cubic-interpolation rule. Densities are handled as log f = Φ/β − max − log Z', so β down to 1e-9 is safe.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from .errors import InfalignError
from .transforms import Transform

__all__ = [
    "PROCEDURES",
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

PROCEDURES = ("bon", "won")

# Grid in z = logit(u). σ(±37) leaves 8.5e-17 of [0, 1] uncovered at each end, below float64 resolution of u
# near 1; f is bounded for every registered transform, so the mass lost there is < 1e-16.
_Z_MAX = 37.0
_STEP = 0.01
# β range searched when matching a KL budget. Outside it the tilt is numerically the base policy (β large)
# or a point mass closer to u = 1 than the grid can resolve usefully (β small).
BETA_MIN = 1e-6
BETA_MAX = 1e9
# The optimum may need a smaller β than any transform a user would train (its win rate is then within ~1e-9 of
# 1); its inner solve still resolves features down to 1 − u ≈ 1e-14 at this floor.
_OPT_BETA_MIN = 1e-10
# Default tilt grid for `choose` (|t|, geometric); the best grid point is refined by a bounded 1-D search.
DEFAULT_TILTS = tuple(float(t) for t in np.geomspace(0.25, 1024.0, 37))


# ----------------------------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class _Grid:
    u: np.ndarray  # (G,) calibrated rewards
    v: np.ndarray  # (G,) 1 − u, computed separately so it stays accurate near u = 1
    w: np.ndarray  # (G,) du/dz = u (1 − u): the quadrature weight per unit z
    h: float  # z step


@functools.lru_cache(maxsize=1)
def _grid() -> _Grid:
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
    return _Grid(u=u, v=v, w=w, h=float(z[1] - z[0]))


def _total(g: np.ndarray, h: float) -> float:
    """∫ g dz by the trapezoid rule (g ~ 0 at both ends of the z range)."""
    return float(h * (g.sum() - 0.5 * (g[0] + g[-1])))


def _pieces(g: np.ndarray, h: float) -> np.ndarray:
    """(G−1,) integrals of g over each z interval: cubic through 4 neighbours inside, trapezoid at the ends."""
    p = 0.5 * h * (g[:-1] + g[1:])
    # ∫_{z_i}^{z_i+1} of the cubic through z_{i−1..i+2} = h/24 (−g_{i−1} + 13 g_i + 13 g_{i+1} − g_{i+2}).
    p[1:-1] = (h / 24.0) * (-g[:-3] + 13.0 * g[1:-2] + 13.0 * g[2:-1] - g[3:])
    return p


def _running(g: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """(∫ from the left end to z_i, ∫ from z_i to the right end), each (G,), accurate in its own small tail."""
    p = _pieces(g, h)
    left = np.concatenate(([0.0], np.cumsum(p)))
    right = np.concatenate((np.cumsum(p[::-1])[::-1], [0.0]))
    return left, right


# ------------------------------------------------------------------------------------------- the density
@dataclass(frozen=True)
class _Density:
    f: np.ndarray  # (G,) density on the grid
    log_f: np.ndarray  # (G,) log density (finite even where f underflows)
    F: np.ndarray  # (G,) CDF, accurate near 0
    S: np.ndarray  # (G,) 1 − CDF, accurate near 1
    log_z: float  # log ∫ exp(log_w) du of the unnormalized input


def _density(log_w: np.ndarray) -> _Density:
    """Normalize an unnormalized log density log_w (G,) on the grid."""
    grid = _grid()
    m = float(np.max(log_w))
    e = np.exp(log_w - m)
    mass = e * grid.w
    z_rel = _total(mass, grid.h)
    left, right = _running(mass, grid.h)
    # Normalize the running integrals by their own total so F + S = 1 exactly at every point's neighbours.
    run_total = left[-1]
    return _Density(
        f=e / z_rel,
        log_f=log_w - m - math.log(z_rel),
        F=np.clip(left / run_total, 0.0, 1.0),
        S=np.clip(right / run_total, 0.0, 1.0),
        log_z=m + math.log(z_rel),
    )


def _kl(d: _Density) -> float:
    grid = _grid()
    return max(0.0, _total(d.f * d.log_f * grid.w, grid.h))


def _standard(d: _Density) -> float:
    grid = _grid()
    return _total(grid.u * d.f * grid.w, grid.h)


def _one_minus_s_pow(d: _Density, n: int) -> np.ndarray:
    """1 − S^N without cancellation where F is tiny: −expm1(N log S), log S = log1p(−F) when F < ½."""
    with np.errstate(divide="ignore"):
        log_s = np.where(d.F < 0.5, np.log1p(-np.minimum(d.F, 0.5)), np.log(d.S))
    return -np.expm1(n * log_s)


def _win(d: _Density, procedure: str, n: int) -> float:
    """SPEC §4: BoN_N = 1 − ∫ F^N N u^{N−1} du;  WoN_N = 1 − ∫ [1 − S^N] N (1−u)^{N−1} du."""
    grid = _grid()
    if procedure == "bon":
        g = d.F**n * n * grid.u ** (n - 1) * grid.w
    else:
        g = _one_minus_s_pow(d, n) * n * grid.v ** (n - 1) * grid.w
    return 1.0 - _total(g, grid.h)


def _gradient(d: _Density, procedure: str, n: int) -> np.ndarray:
    """Functional derivative Φ_f of W at f (SPEC §4), up to an additive constant.

    BoN: Φ_f(x) = −∫ₓ¹ N² F^{N−1} u^{N−1} du.  WoN: Φ_f(x) = ∫₀ˣ N² S^{N−1} (1−u)^{N−1} du, which is SPEC's
    −∫ₓ¹ N² S^{N−1} (1−u)^{N−1} du plus a constant (bounded and increasing, and constants do not move f).
    """
    grid = _grid()
    if procedure == "bon":
        g = n * n * d.F ** (n - 1) * grid.u ** (n - 1) * grid.w
        return -_running(g, grid.h)[1]
    g = n * n * d.S ** (n - 1) * grid.v ** (n - 1) * grid.w
    return _running(g, grid.h)[0]


# ------------------------------------------------------------------------------------------- validation
def _check_procedure(procedure: str, n) -> tuple[str, int]:
    if procedure not in PROCEDURES:
        raise InfalignError(f"procedure must be one of {', '.join(PROCEDURES)} (best-of-N, worst-of-N), got {procedure!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InfalignError(f"N (best_of_n / worst_of_n) must be an integer >= 1, got {n!r}")
    return procedure, int(n)


def _check_beta(beta) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise InfalignError(f"beta must be a number > 0, got {beta!r}") from None
    if not (np.isfinite(b) and b > 0):
        raise InfalignError(f"beta must be finite and > 0, got {beta!r}")
    return b


def _check_kl(kl) -> float:
    try:
        k = float(kl)
    except (TypeError, ValueError):
        raise InfalignError(f"KL budget must be a number > 0, got {kl!r}") from None
    if not (np.isfinite(k) and k > 0):
        raise InfalignError(f"KL budget must be finite and > 0 (nats), got kl={kl!r}")
    return k


def _check_transform(transform) -> Transform:
    if not isinstance(transform, Transform):
        raise InfalignError(f"transform must be a Transform (see transforms.get_transform), got {transform!r}")
    return transform


def _tilted(transform: Transform, beta: float) -> _Density:
    grid = _grid()
    phi = np.asarray(transform(grid.u), dtype=np.float64)
    return _density(phi / beta)


# --------------------------------------------------------------------------------------- one tilt (SPEC §4)
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
    """KL, standard win rate and BoN/WoN win rate of the tilt exp(Φ/β) (SPEC §4)."""
    transform = _check_transform(transform)
    procedure, n = _check_procedure(procedure, n)
    beta = _check_beta(beta)
    d = _tilted(transform, beta)
    return Prediction(transform, beta, _kl(d), _win(d, procedure, n), _standard(d), procedure, n)


def kl_divergence(transform: Transform, beta: float) -> float:
    """KL(π ‖ π_ref) = ∫ f log f of the tilt (SPEC §4), in nats."""
    return _kl(_tilted(_check_transform(transform), _check_beta(beta)))


def standard_win_rate(transform: Transform, beta: float) -> float:
    """∫ u f(u) du: the N = 1 win rate against the base model (SPEC §4)."""
    return _standard(_tilted(_check_transform(transform), _check_beta(beta)))


def win_rate(transform: Transform, beta: float, procedure: str = "bon", n: int = 4) -> float:
    """Best-of-N or worst-of-N win rate of the tilt against the base model under the same procedure (SPEC §4)."""
    procedure, n = _check_procedure(procedure, n)
    return _win(_tilted(_check_transform(transform), _check_beta(beta)), procedure, n)


def log_partition(transform: Transform, beta: float) -> float:
    """log Z, Z = ∫₀¹ exp(Φ(u)/β) du (the constant of the pointwise loss, SPEC §6)."""
    return _tilted(_check_transform(transform), _check_beta(beta)).log_z


def beta_for_kl(transform: Transform, kl: float) -> float:
    """The β at which the tilt by `transform` has KL(π ‖ π_ref) = kl (KL decreases strictly in β).

    Raises InfalignError naming kl and the reachable range when no β in [BETA_MIN, BETA_MAX] gets there.
    """
    transform = _check_transform(transform)
    kl = _check_kl(kl)

    def excess(log_beta: float) -> float:
        return _kl(_tilted(transform, math.exp(log_beta))) - kl

    lo, hi = math.log(BETA_MIN), math.log(BETA_MAX)
    e_lo, e_hi = excess(lo), excess(hi)
    if not (e_lo > 0 > e_hi):
        raise InfalignError(
            f"KL budget kl={kl:g} is not reachable with transform {transform}: beta in [{BETA_MIN:g}, {BETA_MAX:g}] "
            f"gives KL in ({e_hi + kl:.3g}, {e_lo + kl:.4g})"
        )
    return math.exp(brentq(excess, lo, hi, xtol=1e-12, rtol=1e-13, maxiter=200))


# --------------------------------------------------------------------------------- the optimum (SPEC §4)
@dataclass(frozen=True)
class Optimum:
    """The best (BoN) or a stationary (WoN) policy at a KL budget, as a density on the calibrated grid."""

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


def _objective(d: _Density, procedure: str, n: int, beta: float) -> float:
    return _win(d, procedure, n) - beta * _kl(d)


def _ascend(log_f0: np.ndarray, procedure: str, n: int, beta: float, tol: float = 1e-9, max_iter: int = 5000):
    """Exponentiated-gradient (mirror) ascent of J(f) = W(f) − β ∫ f log f from log_f0, with backtracking.

    A step of size α mixes log densities: log f ← (1 − α) log f + α Φ_f/β (α = 1 is the plain fixed point
    f ∝ exp(Φ_f/β), which oscillates at small β). α is halved until J increases and doubled after a success.
    Stops when the fixed-point residual r = log g − log f, g ∝ exp(Φ_f/β), is constant to sd_f(r) < tol (or
    when no step raises J at float precision). For concave W (BoN), W(f*) ≤ W(f) + ⟨Φ_f, f* − f⟩ and
    max_p ⟨Φ_f, p⟩ − β ∫ p log p = β log Z_g give J* − J(f) ≤ β KL(f ‖ g) ≈ β sd_f(r)²/2, and the KL of f is
    off by about sd_f(log f)·sd_f(r): both negligible at tol = 1e-9. For WoN it is a stationarity measure only.
    Returns (density, gradient, iterations).
    """
    grid = _grid()
    d = _density(log_f0)
    j = _objective(d, procedure, n, beta)
    alpha = 1.0
    it = 0
    neutral = 0  # consecutive steps that changed J by no more than float rounding
    for it in range(1, max_iter + 1):  # noqa: B007  (it is reported)
        phi = _gradient(d, procedure, n)
        g = _density(phi / beta)
        r = g.log_f - d.log_f
        mean_r = _total(d.f * r * grid.w, grid.h)
        sd_r = math.sqrt(max(0.0, _total(d.f * (r - mean_r) ** 2 * grid.w, grid.h)))
        if sd_r < tol:
            return d, phi, it
        alpha = min(1.0, 2.0 * alpha)
        # Close to the optimum J moves by less than its rounding (J* − J ≈ β sd_r²/2 < 1e-16 once sd_r ~ 1e-8)
        # while log f is still ~1e-8 off; a step that keeps J within rounding is accepted then, so the
        # residual, not J, decides convergence. 10 such steps in a row without reaching tol mean float noise.
        slack = 8e-16 * max(1.0, abs(j))
        while alpha > 1e-14:
            cand = _density((1.0 - alpha) * d.log_f + alpha * g.log_f)
            j_c = _objective(cand, procedure, n, beta)
            if j_c > j + slack or (j_c >= j - slack and alpha == 1.0):
                neutral = neutral + 1 if j_c <= j + slack else 0
                d, j = cand, max(j, j_c)
                break
            alpha *= 0.5
        else:  # no ascent direction left at float precision: stationary for all practical purposes
            return d, phi, it
        if neutral >= 10:
            return d, _gradient(d, procedure, n), it
    return d, _gradient(d, procedure, n), it


def _optimum_from(d: _Density, phi: np.ndarray, procedure, n, beta, iterations) -> Optimum:
    return Optimum(
        kl=_kl(d),
        beta=beta,
        win_rate=_win(d, procedure, n),
        standard_win_rate=_standard(d),
        procedure=procedure,
        n=n,
        u=_grid().u,
        density=d.f,
        phi=phi,
        iterations=iterations,
    )


def optimal(procedure: str, n: int, kl: float) -> Optimum:
    """The optimal transform at KL budget `kl` (SPEC §4): the f maximizing W_T among densities with ∫ f log f = kl.

    For each β the inner problem max W − β KL is solved by mirror ascent (`_ascend`) from the best exp tilt at
    the budget (`choose`); an outer brentq on log β matches the budget. BoN: W is concave, so this is the
    optimum. WoN: W is not concave; the result is the stationary point reached from the best exp tilt, and
    it is never worse than that tilt (the ascent only raises W − β KL from it, and KL ends equal to kl).
    """
    procedure, n = _check_procedure(procedure, n)
    kl = _check_kl(kl)
    # For N = 1 choose returns the identity tilt: W is linear (∫ u f) with gradient Φ_f(u) = u, so that is
    # already the exact optimum and the ascent stops at once.
    c = choose(procedure, n, kl, with_optimum=False)
    return _optimal_from(procedure, n, kl, c.transform, c.beta)


def _optimal_from(procedure: str, n: int, kl: float, start_t: Transform, beta0: float) -> Optimum:
    """`optimal`, starting every inner solve from the tilt (start_t, beta0), which has KL = kl."""
    start = _tilted(start_t, beta0).log_f
    cache: dict[float, tuple] = {}

    def solve(log_beta: float):
        # Every solve starts from the same tilt: the result is then a function of β alone (warm starts from the
        # previous β were measured to make KL(β) noisy at 1e-8 and brentq slower), and for WoN the stationary
        # point found does not depend on the search path.
        if log_beta not in cache:
            cache[log_beta] = _ascend(start, procedure, n, math.exp(log_beta))
        return cache[log_beta]

    def excess(log_beta: float) -> float:
        return _kl(solve(log_beta)[0]) - kl

    lo = hi = math.log(beta0)
    e_lo = e_hi = excess(lo)
    # The optimum's β is near the start's; widen the bracket by growing steps until the KL crosses the budget.
    step = 0.5
    while e_lo <= 0 and lo > math.log(_OPT_BETA_MIN):
        step *= 2
        lo = max(lo - step, math.log(_OPT_BETA_MIN))
        e_lo = excess(lo)
    step = 0.5
    while e_hi >= 0 and hi < math.log(BETA_MAX):
        step *= 2
        hi = min(hi + step, math.log(BETA_MAX))
        e_hi = excess(hi)
    if not (e_lo > 0 > e_hi):
        if e_lo == 0 or e_hi == 0:
            root = lo if e_lo == 0 else hi
        else:
            d = solve(lo if e_lo <= 0 else hi)[0]
            raise InfalignError(
                f"KL budget kl={kl:g} is not reachable by the optimal {procedure}-{n} policy with beta in "
                f"[{_OPT_BETA_MIN:g}, {BETA_MAX:g}] (it reaches KL {_kl(d):.3g} with win rate "
                f"{_win(d, procedure, n):.10f}); use a smaller kl"
            )
    else:
        root = brentq(excess, lo, hi, xtol=1e-10, rtol=1e-12, maxiter=100)
    d, phi, iters = solve(root)
    return _optimum_from(d, phi, procedure, n, math.exp(root), iters)


# ------------------------------------------------------------------------------------------- choose (SPEC §7)
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
    """Best exp tilt t (t > 0 for bon, t < 0 for won) with β matched to KL = kl, reported beside the optimum.

    Args:
        tilts: candidate |t| values (signs are set by the procedure); default DEFAULT_TILTS (0.25 … 256).
            The best grid point is refined by a bounded search on log |t| between its neighbours.
        with_optimum: also compute `optimal(procedure, n, kl).win_rate` (the yardstick, SPEC §7); it is None
            when the optimum cannot be computed at this budget (it would need β < 1e-10, win rate ≈ 1).
    For N = 1 every procedure is the standard win rate, whose optimum is the identity transform; it is
    returned (tilt None) instead of an exp tilt that could only approach it as t → 0.
    WoN at large budgets (e.g. N = 8, kl ≥ 1, win rates > 0.9998): the WoN optimum tends to cutting off the
    lowest calibrated rewards, which an exp tilt approaches as β → 0, so the best tilt is then the largest |t|
    that still reaches the budget and its β sits at BETA_MIN (1e-6). The numbers are right; such a β is a
    sign that the budget is larger than the procedure needs.
    """
    procedure, n = _check_procedure(procedure, n)
    kl = _check_kl(kl)
    if n == 1:
        ident = Transform("identity")
        beta = beta_for_kl(ident, kl)
        p = predict(ident, beta, procedure, n)
        opt = _optimal_from(procedure, n, kl, ident, beta).win_rate if with_optimum else None
        return Choice(ident, None, beta, p.kl, p.win_rate, p.standard_win_rate, opt, procedure, n)
    sign = 1.0 if procedure == "bon" else -1.0
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
            opt = _optimal_from(procedure, n, kl, transform, p.beta).win_rate
        except InfalignError:  # the optimum would need β < _OPT_BETA_MIN: report the tilt, leave the yardstick out
            opt = None
    return Choice(transform, transform.tilt, p.beta, p.kl, p.win_rate, p.standard_win_rate, opt, procedure, n)


# ------------------------------------------------------------------------------------------ curves (plots)
@dataclass(frozen=True)
class Curve:
    """Win rate against KL for one transform (or the optimum), for plotting (SPEC §8: predicted curves)."""

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
    procedure, n = _check_procedure(procedure, n)
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
        log_f = np.zeros_like(_grid().u)
        if n > 1 and procedure == "won":
            # Start WoN from a WoN-shaped tilt so the path follows the branch `optimal` reports.
            log_f = _tilted(Transform("exp", -10.0), 1.0).log_f
        factor = (kl_max / float(kls[0])) ** (-1.0 / max(2, int(num_points) - 1))
        pts = []
        while beta >= BETA_MIN and len(pts) < 10 * int(num_points):
            d, _, _ = _ascend(log_f, procedure, n, beta)
            log_f = d.log_f
            pts.append((_kl(d), _win(d, procedure, n), _standard(d)))
            if pts[-1][0] >= kl_max:
                break
            beta *= factor
        pts.sort()
        arr = np.array(pts).reshape(-1, 3)
        curves.append(Curve("optimal", arr[:, 0], arr[:, 1], arr[:, 2]))
    return curves
