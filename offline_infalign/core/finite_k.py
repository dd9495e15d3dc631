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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from .checks import check_positive
from .errors import InfalignError
from .procedures import Procedure, check_n, get_procedure
from .transforms import Transform

__all__ = ["FiniteK", "sample_weights", "finite_k_tilt", "finite_k_at_kl"]


@dataclass(frozen=True)
class FiniteK:
    win_rate: float  # BoN_N / WoN_N win rate against the base served the same way, mean over draws
    stderr: float  # Monte Carlo standard error of win_rate
    kl: float  # Σ w log(K w): KL of the restricted tilt against the K-sample empirical base
    beta: float


def _check(k, procedure, n) -> tuple[Procedure, int]:
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise InfalignError(f"num_samples K must be an integer >= 2, got {k!r}")
    return get_procedure(procedure), check_n(n)


def sample_weights(transform: Transform, beta: float, k: int) -> np.ndarray:
    """w_i ∝ exp(Φ(c_i)/β) over the K ranks, c_i = (i − ½)/K, shape (K,), ascending in reward."""
    if not beta > 0:
        raise InfalignError(f"beta must be > 0, got {beta!r}")
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
    w = sample_weights(transform, beta, k)
    cdf = np.cumsum(w)[:-1]  # (K−1,) F on [U_(i), U_(i+1))
    u = np.sort(np.random.default_rng(seed).random((draws, k)), axis=1)  # (D, K)
    wins = proc.finite_k_win_rate(cdf, u, n)  # (D,)
    return FiniteK(float(wins.mean()), float(wins.std(ddof=1) / np.sqrt(draws)), _kl(w), float(beta))


def finite_k_at_kl(transform: Transform, kl: float, k: int, procedure: str = "bon", n: int = 4,
                   draws: int = 4000, seed: int = 0) -> FiniteK | None:
    """finite_k_tilt at the β whose restricted KL Σ w log(K w) equals `kl`; None when no β reaches it (the
    restricted KL is below log K, and a transform flat at the top, like log, may stay further below)."""
    _check(k, procedure, n)
    kl = check_positive(kl, "kl")

    def gap(log_beta: float) -> float:
        return _kl(sample_weights(transform, float(np.exp(log_beta)), k)) - kl

    # KL falls as β grows (the weights flatten); bracket over a wide range of log β.
    lo, hi = -15.0, 15.0
    if gap(lo) < 0 or gap(hi) > 0:
        return None
    log_beta = brentq(gap, lo, hi, xtol=1e-12)
    return finite_k_tilt(transform, float(np.exp(log_beta)), k, procedure, n, draws=draws, seed=seed)
