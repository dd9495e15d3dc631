"""core.finite_k against hand values, order-statistic closed forms, a brute-force simulation and docs/math.md §4."""

import math

import numpy as np
import pytest

from offline_infalign.core import tradeoff
from offline_infalign.core.errors import InfalignError
from offline_infalign.core.finite_k import finite_k_at_kl, finite_k_tilt, sample_weights
from offline_infalign.core.transforms import Transform


def test_weights_and_kl_by_hand():
    # K = 2, identity, β = 0.5: c = (1/4, 3/4), logits (0.5, 1.5), w = (1, e)/(1 + e),
    # KL = Σ w log(2 w).
    w = sample_weights(Transform("identity"), 0.5, 2)
    e = math.e
    assert w == pytest.approx([1 / (1 + e), e / (1 + e)])
    expected_kl = sum(x * math.log(2 * x) for x in (1 / (1 + e), e / (1 + e)))
    assert finite_k_tilt(Transform("identity"), 0.5, 2, "bon", 1, draws=10).kl == pytest.approx(expected_kl)


@pytest.mark.parametrize("procedure", ["bon", "won"])
def test_n_equals_1_is_the_weighted_mean_of_order_statistics(procedure):
    # N = 1: win = E[u under π_K] = Σ w_i E[U_(i)] = Σ w_i i/(K+1) (uniform order statistics), for BoN and WoN.
    t, beta, k = Transform("exp", 4.0), 0.3, 6
    w = sample_weights(t, beta, k)
    closed = float(np.sum(w * np.arange(1, k + 1) / (k + 1)))
    est = finite_k_tilt(t, beta, k, procedure, 1, draws=20000, seed=1)
    assert abs(est.win_rate - closed) < 4 * est.stderr + 1e-12


@pytest.mark.parametrize("procedure", ["bon", "won"])
def test_matches_a_brute_force_simulation_of_the_game(procedure):
    # Play the game directly: K uniforms are the samples' true quantiles; the policy draws N of them with
    # replacement by w; the base draws N fresh uniforms; compare the max (BoN) or min (WoN).
    t, beta, k, n = Transform("exp", 5.0 if procedure == "bon" else -5.0), 0.4, 8, 3
    w = sample_weights(t, beta, k)
    rng = np.random.default_rng(7)
    trials = 60000
    u = np.sort(rng.random((trials, k)), axis=1)
    picks = rng.choice(k, size=(trials, n), p=w)
    policy = np.take_along_axis(u, picks, axis=1)
    base = rng.random((trials, n))
    agg = np.max if procedure == "bon" else np.min
    wins = (agg(policy, axis=1) > agg(base, axis=1)).astype(float)  # ties have probability 0
    sim, sim_se = wins.mean(), wins.std(ddof=1) / np.sqrt(trials)
    est = finite_k_tilt(t, beta, k, procedure, n, draws=20000, seed=3)
    assert abs(est.win_rate - sim) < 4 * math.hypot(est.stderr, sim_se)


@pytest.mark.parametrize("procedure", ["bon", "won"])
def test_large_k_recovers_the_spec_section_4_values(procedure):
    t = Transform("exp", 8.0 if procedure == "bon" else -8.0)
    beta = 0.4
    est = finite_k_tilt(t, beta, 3000, procedure, 4, draws=200, seed=0)
    assert est.win_rate == pytest.approx(tradeoff.win_rate(t, beta, procedure, 4), abs=0.005)
    assert est.kl == pytest.approx(tradeoff.kl_divergence(t, beta), abs=0.005)


def test_small_k_costs_the_exp_tilt_more_than_identity():
    # Best-of-4 at KL 0.3: exact tilts win 0.817 (exp) and 0.748 (identity). Restricted to K samples at the same
    # KL, the exp tilt loses ~0.13 at K = 12 and ~0.02 at K = 64, so its edge over identity grows with K.
    choice = tradeoff.choose("bon", 4, 0.3)
    identity = Transform("identity")
    exact_gap = choice.win_rate - tradeoff.win_rate(identity, tradeoff.beta_for_kl(identity, 0.3), "bon", 4)
    ceilings = {}
    for k in (12, 64):
        e = finite_k_at_kl(choice.transform, 0.3, k, "bon", 4, draws=3000)
        i = finite_k_at_kl(identity, 0.3, k, "bon", 4, draws=3000)
        assert e.kl == pytest.approx(0.3, abs=1e-6) and i.kl == pytest.approx(0.3, abs=1e-6)
        ceilings[k] = (e.win_rate, e.win_rate - i.win_rate)
    assert choice.win_rate - ceilings[12][0] > 0.1 and choice.win_rate - ceilings[64][0] < 0.035
    assert ceilings[12][1] + 0.015 < ceilings[64][1] < exact_gap + 0.005


def test_bad_input_and_unreachable_kl():
    with pytest.raises(InfalignError, match=r"^num_samples K must be an integer >= 2 \(completions per "
                                            r"prompt\), got 1$"):
        finite_k_tilt(Transform("identity"), 0.5, 1)
    with pytest.raises(InfalignError, match="procedure must be 'bon' or 'won', got 'mean'"):
        finite_k_tilt(Transform("identity"), 0.5, 4, "mean")
    with pytest.raises(InfalignError, match="^beta must be a finite number > 0, got 0$"):
        finite_k_tilt(Transform("identity"), 0, 4)
    assert finite_k_at_kl(Transform("identity"), 10.0, 8) is None  # above log 8
