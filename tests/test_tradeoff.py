"""core/tradeoff.py against closed forms, hand-derived values and seeded Monte Carlo (docs/math.md §4, §7)."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.integrate import quad

from offline_infalign.core import tradeoff as T
from offline_infalign.core.errors import InfalignError
from offline_infalign.core.transforms import Transform

IDENTITY, LOG = Transform("identity"), Transform("log")


# ------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_log_tilt_is_base_best_of_n(n):
    """Φ = log u, β = 1/(N−1) gives f = N u^{N−1}: the base model's own best-of-N (docs/math.md §4).

    KL = ∫ f log f = log N + (N−1) ∫ N u^{N−1} log u du = log N + (N−1)·N·(−1/N²) = log N − (N−1)/N.
    Standard win rate = ∫ u N u^{N−1} du = N/(N+1).
    BoN_N win rate (hand derivation): the policy's BoN output X has CDF F(x)^N = (x^N)^N = x^{N²}, the base's
    BoN output Y has CDF y^N, so P[X > Y] = ∫ P[Y < x] dP_X(x) = ∫ x^N · N² x^{N²−1} dx = N²/(N² + N)
    = N/(N+1). (Equivalently 1 − ∫ F^N N u^{N−1} du = 1 − N/(N²+N).)
    """
    p = T.predict(LOG, 1.0 / (n - 1), "bon", n)
    assert p.kl == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-9)
    assert p.standard_win_rate == pytest.approx(n / (n + 1), abs=1e-9)
    assert p.win_rate == pytest.approx(n / (n + 1), abs=1e-9)


def _won_of_base_bon_exact(n: int) -> Fraction:
    """WoN_N win rate of the policy f = N u^{N−1} (F = u^N), by exact polynomial algebra (no quadrature).

    Policy WoN output X: P[X > y] = (1 − F(y))^N = (1 − y^N)^N. Base WoN output Y has density N(1−y)^{N−1}.
    W = ∫₀¹ (1 − y^N)^N N (1 − y)^{N−1} dy; expand both binomials and integrate y^{Nk+j} term by term:
      = N Σ_k Σ_j C(N,k)(−1)^k C(N−1,j)(−1)^j / (Nk + j + 1).     For N = 2 this is 2·11/30 = 11/15.
    """
    total = Fraction(0)
    for k in range(n + 1):
        for j in range(n):
            total += Fraction(math.comb(n, k) * (-1) ** k * math.comb(n - 1, j) * (-1) ** j, n * k + j + 1)
    return n * total


def test_won_closed_form_hand_value():
    assert _won_of_base_bon_exact(2) == Fraction(11, 15)  # the hand computation in the docstring
    for n in (2, 3, 5):
        w = T.win_rate(LOG, 1.0 / (n - 1), "won", n)
        assert w == pytest.approx(float(_won_of_base_bon_exact(n)), abs=1e-9)


@pytest.mark.parametrize("beta", [0.005, 0.3, 5.0])
def test_identity_tilt_closed_forms(beta):
    """f = e^{u/β}/Z, Z = β(e^{1/β} − 1): log Z = 1/β + log β + log(1 − e^{−1/β});
    E_f[u] = 1/(1 − e^{−1/β}) − β;  KL = E_f[u]/β − log Z. Small β (0.005) checks the log-space handling."""
    log_z = 1 / beta + math.log(beta) + math.log(-math.expm1(-1 / beta))
    mean_u = 1 / (-math.expm1(-1 / beta)) - beta
    assert T.log_partition(IDENTITY, beta) == pytest.approx(log_z, abs=1e-9)
    assert T.standard_win_rate(IDENTITY, beta) == pytest.approx(mean_u, abs=1e-9)
    assert T.kl_divergence(IDENTITY, beta) == pytest.approx(mean_u / beta - log_z, abs=1e-8)


def test_log_partition_against_quad():
    t = Transform("exp", 6.0)
    beta = 0.4
    z, _ = quad(lambda u: math.exp(float(t(u)) / beta), 0, 1, epsabs=1e-13, epsrel=1e-13)
    assert T.log_partition(t, beta) == pytest.approx(math.log(z), abs=1e-9)


@pytest.mark.parametrize("procedure", ["bon", "won"])
def test_large_beta_is_the_base_policy(procedure):
    for t in (IDENTITY, LOG, Transform("exp", 10.0 if procedure == "bon" else -10.0)):
        p = T.predict(t, 1e6, procedure, 4)
        assert abs(p.win_rate - 0.5) < 1e-5
        assert abs(p.standard_win_rate - 0.5) < 1e-5
        assert 0 <= p.kl < 1e-9


def test_win_rate_n1_is_standard_win_rate():
    t = Transform("exp", 3.0)
    for proc in ("bon", "won"):
        assert T.win_rate(t, 0.2, proc, 1) == pytest.approx(T.standard_win_rate(t, 0.2), abs=1e-10)


# -------------------------------------------------------------------------------------- seeded Monte Carlo
def _inverse_cdf_sampler(transform, beta, rng, size):
    """Sample u ~ f ∝ exp(Φ(u)/β) by inverse CDF on a fine uniform grid (independent of the module's grid)."""
    u = np.linspace(0.0, 1.0, 400_001)
    log_w = transform(np.clip(u, 1e-300, 1)) / beta
    w = np.exp(log_w - log_w.max())
    cdf = np.concatenate(([0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(u))))
    cdf /= cdf[-1]
    return np.interp(rng.random(size), cdf, u)


@pytest.mark.parametrize(
    "procedure,transform,beta",
    [("bon", Transform("exp", 8.0), 0.2), ("won", Transform("exp", -8.0), 0.2), ("bon", IDENTITY, 0.1),
     ("won", LOG, 0.5)],
)
def test_monte_carlo_matches_integrals(procedure, transform, beta):
    n, trials = 4, 100_000
    rng = np.random.default_rng(1234)
    policy = _inverse_cdf_sampler(transform, beta, rng, (trials, n))
    base = rng.random((trials, n))
    pick = np.max if procedure == "bon" else np.min
    wins = (pick(policy, axis=1) > pick(base, axis=1)).astype(float)  # ties have probability 0
    mc, se = wins.mean(), wins.std(ddof=1) / math.sqrt(trials)
    p = T.predict(transform, beta, procedure, n)
    assert abs(p.win_rate - mc) < 4 * se
    # standard win rate: P[u_policy > u_base] with one draw each
    std_wins = (policy[:, 0] > base[:, 0]).astype(float)
    assert abs(p.standard_win_rate - std_wins.mean()) < 4 * std_wins.std(ddof=1) / math.sqrt(trials)
    # KL = E_f[log f(u)], log f = Φ/β − log Z with Z from scipy quad
    z, _ = quad(lambda x: math.exp(float(transform(max(x, 1e-300))) / beta), 0, 1, epsabs=1e-12, epsrel=1e-12)
    log_f = transform(np.clip(policy[:, 0], 1e-300, 1)) / beta - math.log(z)
    assert abs(p.kl - log_f.mean()) < 4 * log_f.std(ddof=1) / math.sqrt(trials)


# --------------------------------------------------------------------------------------------- beta_for_kl
@pytest.mark.parametrize(
    "transform", [IDENTITY, LOG, Transform("exp", 5.0), Transform("exp", -5.0), Transform("power", 2.0)]
)
@pytest.mark.parametrize("kl", [0.01, 0.25, 2.0])
def test_beta_for_kl_round_trip(transform, kl):
    beta = T.beta_for_kl(transform, kl)
    assert T.kl_divergence(transform, beta) == pytest.approx(kl, abs=1e-9)


def test_beta_for_kl_log_closed_form():
    # f = (θ+1) u^θ with θ = 1/β: KL = log(θ+1) + θ E[log u] = log(θ+1) − θ/(θ+1). θ = 3 → β = 1/3.
    kl = math.log(4) - 3 / 4
    assert T.beta_for_kl(LOG, kl) == pytest.approx(1 / 3, rel=1e-8)


# ----------------------------------------------------------------------------------------- optimum, choose
@pytest.mark.parametrize("procedure", ["bon", "won"])
def test_optimum_beats_every_tilt_at_the_same_kl(procedure):
    n, kl = 4, 0.5
    opt = T.optimal(procedure, n, kl)
    assert opt.kl == pytest.approx(kl, abs=1e-7)
    sign = 1 if procedure == "bon" else -1
    rivals = [IDENTITY, LOG] + [Transform("exp", sign * t) for t in (1, 2, 5, 10, 20)]
    for t in rivals:
        w = T.win_rate(t, T.beta_for_kl(t, kl), procedure, n)
        assert opt.win_rate >= w - 1e-9, t
    # f integrates to 1 on the returned grid (trapezoid in u is coarse but fine to 1e-3 here)
    assert np.trapezoid(opt.density, opt.u) == pytest.approx(1.0, abs=1e-3)


def test_bon_optimum_beats_base_best_of_n_closed_form():
    # At KL = log N − (N−1)/N the log tilt (the base BoN_N) wins N/(N+1); the optimum must do at least as well.
    n = 4
    opt = T.optimal("bon", n, math.log(n) - (n - 1) / n)
    assert opt.win_rate >= n / (n + 1) - 1e-9
    assert opt.win_rate > n / (n + 1) + 1e-3  # and strictly better: the log tilt is not optimal for BoN_4


def test_optimum_n1_is_identity_tilt():
    kl = 0.3
    opt = T.optimal("bon", 1, kl)
    assert opt.win_rate == pytest.approx(T.standard_win_rate(IDENTITY, T.beta_for_kl(IDENTITY, kl)), abs=1e-8)


@pytest.mark.parametrize("procedure,sign", [("bon", 1), ("won", -1)])
def test_choose(procedure, sign):
    n, kl = 4, 0.25
    c = T.choose(procedure, n, kl)
    assert c.transform.name == "exp" and np.sign(c.tilt) == sign and c.tilt == c.transform.tilt
    assert c.kl == pytest.approx(kl, abs=1e-9)
    assert c.win_rate == pytest.approx(T.win_rate(c.transform, c.beta, procedure, n), abs=1e-12)
    assert c.optimal_win_rate >= c.win_rate - 1e-9
    for t in (1.0, 3.0, 8.0, 30.0):
        rival = Transform("exp", sign * t)
        assert c.win_rate >= T.win_rate(rival, T.beta_for_kl(rival, kl), procedure, n) - 1e-9
    assert c.win_rate > T.win_rate(IDENTITY, T.beta_for_kl(IDENTITY, kl), procedure, n)


def test_choose_n1_returns_identity():
    c = T.choose("won", 1, 0.2)
    assert c.transform == IDENTITY and c.tilt is None
    assert c.optimal_win_rate == pytest.approx(c.win_rate, abs=1e-8)


def test_curves():
    c = T.choose("bon", 4, 0.5, with_optimum=False)
    curves = T.tradeoff_curves("bon", 4, [IDENTITY, ("chosen", c.transform)], kl_max=0.5, num_points=8)
    assert [cv.label for cv in curves] == ["identity", "chosen", "optimal"]
    for cv in curves:
        assert np.all(np.diff(cv.kl) > 0) and np.all(np.diff(cv.win_rate) > 0)
        assert cv.kl[-1] >= 0.5 - 1e-9
    opt = curves[-1]
    for kl, w in zip(opt.kl, opt.win_rate):  # each optimum point beats each transform at exactly its KL
        for t in (IDENTITY, c.transform):
            assert w >= T.win_rate(t, T.beta_for_kl(t, kl), "bon", 4) - 1e-9


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: T.predict(IDENTITY, 0.1, "mon", 4), "'mon'"),
        (lambda: T.predict(IDENTITY, 0.1, "bon", 0), "got 0"),
        (lambda: T.predict(IDENTITY, 0.1, "bon", 2.5), "got 2.5"),
        (lambda: T.predict(IDENTITY, 0.0, "bon", 4), "^beta must be a finite number > 0, got 0.0$"),
        (lambda: T.kl_divergence(IDENTITY, -1), "^beta must be a finite number > 0, got -1$"),
        (lambda: T.beta_for_kl(IDENTITY, 0), "kl=0"),
        (lambda: T.beta_for_kl(IDENTITY, 50.0), r"kl=50 is not reachable .*KL in"),
        (lambda: T.choose("bon", 4, -0.1), "kl=-0.1"),
        (lambda: T.optimal("won", 0, 0.1), "got 0"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(InfalignError, match=match):
        call()
