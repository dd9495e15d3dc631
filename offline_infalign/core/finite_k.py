"""The finite-K ceiling: how much of a tilt an offline learner can get from K base samples per prompt.

The offline losses (docs/math.md §6) see each prompt through its K base samples y_1..y_K, whose calibrated rewards are
estimated by rank (docs/math.md §2): the sample of rank i gets c_i = (i − ½)/K. A learner that fits its data perfectly
but does not generalize past it ends up with the exact tilt *restricted to those samples*:

    π_K(y_(i)) = w_i ∝ exp(Φ(c_i)/β),   i = 1..K,

placed on the true quantiles U_(1) < … < U_(K), the order statistics of K uniforms (docs/math.md §2: C ~ U(0, 1) under
π_ref). Its CDF on the calibrated scale is the step function F(u) = Σ_{i: U_(i) ≤ u} w_i, so the docs/math.md §4
integrals are exact sums over the steps:

    BoN_N = 1 − Σ_{i<K} F_i^N (U_(i+1)^N − U_(i)^N) − (1 − U_(K)^N)
    WoN_N = 1 − Σ_{i<K} [1 − (1 − F_i)^N] ((1 − U_(i))^N − (1 − U_(i+1))^N) − (1 − U_(K))^N

with F_i = w_1 + … + w_i (each procedure's `finite_k_win_rate` in core/procedures.py), averaged over draws
of the U's (seeded Monte Carlo). Its KL against the K-sample
empirical base is Σ w_i log(K w_i). As K → ∞ both tend to the docs/math.md §4 values of the tilt; for small K the
exp tilts that win best-of-N lose most, because they weight the top few percent that K samples barely resolve.
This is what `benchmarks/README.md` uses to explain measured shortfalls, and what "Choosing K" in the
README is computed from.

The same model says which β brings such a learner to a KL budget (`finite_k_beta`, docs/math.md §10): the β at
which Σ w log(K w) equals the budget. It is below the exact tilt's β (`tradeoff.beta_for_kl`) because the
restricted tilt cannot resolve the top of the distribution and so pays less KL at the same β; the gap grows
with the tilt's concentration and shrinks as K grows. Its elasticity, s = −d log KL / d log β = Var_w(Φ)/(β² KL),
is what the first correction on a measured KL uses (core/kl_match.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from .checks import check_beta, check_num_samples, check_positive
from .errors import InfalignError
from .procedures import Procedure, check_n, get_procedure
from .transforms import Transform

__all__ = ["FiniteK", "sample_weights", "restricted_kl", "finite_k_beta", "kl_elasticity", "finite_k_tilt",
           "finite_k_at_kl"]


@dataclass(frozen=True)
class FiniteK:
    win_rate: float  # BoN_N / WoN_N win rate against the base served the same way, mean over draws
    stderr: float  # Monte Carlo standard error of win_rate
    kl: float  # Σ w log(K w): KL of the restricted tilt against the K-sample empirical base
    beta: float


def _check(k, procedure, n) -> tuple[Procedure, int]:
    check_num_samples(k)
    return get_procedure(procedure), check_n(n)


def sample_weights(transform: Transform, beta: float, k: int) -> np.ndarray:
    """w_i ∝ exp(Φ(c_i)/β) over the K ranks, c_i = (i − ½)/K, shape (K,), ascending in reward."""
    return _weights(transform, check_beta(beta), check_num_samples(k))


def _weights(transform: Transform, beta: float, k: int) -> np.ndarray:
    # Unchecked: the public functions check β and K once at their entry; finite_k_beta's search calls this with
    # β = e^x from its bracket many times.
    logits = transform((np.arange(1, k + 1) - 0.5) / k) / beta
    w = np.exp(logits - logits.max())
    return w / w.sum()


def _kl(w: np.ndarray) -> float:
    k = len(w)
    pos = w > 0
    return float(np.sum(w[pos] * np.log(k * w[pos])))


def finite_k_tilt(transform: Transform, beta: float, k: int, procedure: str = "bon", n: int = 4,
                  draws: int = 4000, seed: int = 0) -> FiniteK:
    """Win rate and KL of the tilt restricted to K samples (module docstring), `draws` Monte Carlo draws."""
    proc, n = _check(k, procedure, n)
    beta, k = check_beta(beta), int(k)
    w = _weights(transform, beta, k)
    cdf = np.cumsum(w)[:-1]  # (K−1,) F on [U_(i), U_(i+1))
    u = np.sort(np.random.default_rng(seed).random((draws, k)), axis=1)  # (D, K)
    wins = proc.finite_k_win_rate(cdf, u, n)  # (D,)
    return FiniteK(float(wins.mean()), float(wins.std(ddof=1) / np.sqrt(draws)), _kl(w), float(beta))


def restricted_kl(transform: Transform, beta: float, k: int) -> float:
    """Σ w log(K w): the KL of the tilt restricted to K samples against the K-sample empirical base."""
    return _kl(sample_weights(transform, beta, k))


def kl_elasticity(transform: Transform, beta: float, k: int) -> float:
    """s = −d log KL / d log β of the restricted tilt at β: Var_w(Φ(c)) / (β² · KL).

    With a = 1/β and w ∝ exp(aΦ): KL = a E_w[Φ] − log Σ exp(aΦ) + log K, so dKL/da = a Var_w(Φ) and
    d KL / d log β = −a² Var_w(Φ). s ≈ 2 for a gentle tilt (KL ≈ Var(Φ)/(2β²)), less once the weights
    concentrate on the top samples and KL nears its ceiling log K.
    """
    beta, k = check_beta(beta), check_num_samples(k)
    w = _weights(transform, beta, k)
    phi = transform((np.arange(1, k + 1) - 0.5) / k)
    var = float(np.sum(w * (phi - np.sum(w * phi)) ** 2))
    kl = _kl(w)
    if not kl > 0:
        raise InfalignError(f"the restricted tilt {transform} at beta={beta:g} has KL 0; no elasticity")
    return var / (beta * beta * kl)


# The restricted KL is searched over β in [e^-15, e^15]: wider than any β the tradeoff tool gives (1e-6 ... 1e6).
_LOG_BETA_RANGE = (-15.0, 15.0)


def finite_k_beta(transform: Transform, kl: float, k: int) -> float:
    """The β at which the tilt restricted to K samples has KL Σ w log(K w) = kl (docs/math.md §10).

    That is the β an offline learner on K samples per prompt needs to pay `kl`, under the finite-K model; the
    exact tilt's β (tradeoff.beta_for_kl) is larger. Raises InfalignError when no β reaches `kl`: the restricted
    KL is below log K (all weight on the top sample), and a transform flat at the top may stay further below.
    """
    k = check_num_samples(k)
    kl = check_positive(kl, "KL budget (nats)", name="kl")

    def gap(log_beta: float) -> float:
        return _kl(_weights(transform, float(np.exp(log_beta)), k)) - kl

    lo, hi = _LOG_BETA_RANGE
    g_lo, g_hi = gap(lo), gap(hi)
    if g_lo < 0 or g_hi > 0:  # KL falls as β grows (the weights flatten)
        raise InfalignError(
            f"KL budget kl={kl:g} is not reachable by {transform} restricted to K={int(k)} samples: its KL lies in "
            f"({g_hi + kl:.3g}, {g_lo + kl:.4g}) (at most log K = {np.log(int(k)):.4g}); lower kl or raise K")
    return float(np.exp(brentq(gap, lo, hi, xtol=1e-12)))


def finite_k_at_kl(transform: Transform, kl: float, k: int, procedure: str = "bon", n: int = 4,
                   draws: int = 4000, seed: int = 0) -> FiniteK | None:
    """finite_k_tilt at the β whose restricted KL Σ w log(K w) equals `kl` (finite_k_beta); None when no β
    reaches it (the restricted KL is below log K, and a transform flat at the top, like log, may stay further
    below)."""
    _check(k, procedure, n)
    kl = check_positive(kl, "kl")
    try:
        beta = finite_k_beta(transform, kl, k)
    except InfalignError:  # not reachable at this K
        return None
    return finite_k_tilt(transform, beta, k, procedure, n, draws=draws, seed=seed)
