"""KL matching by design (docs/math.md §10): the finite-K β against closed forms and the exact tilt's limit,
its elasticity against a finite difference, and the corrections on synthetic measured-KL curves."""

import math

import numpy as np
import pytest

from offline_infalign.core import tradeoff
from offline_infalign.core.errors import InfalignError
from offline_infalign.core.finite_k import finite_k_beta, kl_elasticity, restricted_kl
from offline_infalign.core.kl_match import (
    MAX_STEP,
    Try,
    first_beta,
    match_kl,
    matched_pair,
    nearest,
    next_beta,
)
from offline_infalign.core.transforms import Transform

IDENTITY, EXP = Transform("identity"), Transform("exp", 11.0)


def _identity_restricted_kl(beta: float, k: int) -> float:
    """Closed form for Φ(u) = u: w_i ∝ e^{a i}, a = 1/(Kβ) (the −½/K shift cancels in the normalization), so
    KL = a E_w[i] − log S + log K with S = Σ_{i=1..K} e^{a i} = e^a (e^{aK} − 1)/(e^a − 1) and
    E_w[i] = d log S / da = 1 + K e^{aK}/(e^{aK} − 1) − e^a/(e^a − 1)."""
    a = 1.0 / (k * beta)
    log_s = a + math.log(math.expm1(a * k)) - math.log(math.expm1(a))
    mean_i = 1 + k * math.exp(a * k) / math.expm1(a * k) - math.exp(a) / math.expm1(a)
    return a * mean_i - log_s + math.log(k)


@pytest.mark.parametrize("beta,k", [(0.3, 8), (0.1, 32), (1.5, 16), (0.02, 64)])
def test_restricted_kl_closed_form(beta, k):
    assert restricted_kl(IDENTITY, beta, k) == pytest.approx(_identity_restricted_kl(beta, k), rel=1e-10)


@pytest.mark.parametrize("transform", [IDENTITY, EXP, Transform("log")])
@pytest.mark.parametrize("kl", [0.1, 0.3, 1.0])
def test_finite_k_beta_pays_the_budget_and_sits_below_the_exact_beta(transform, kl):
    k = 32
    beta = finite_k_beta(transform, kl, k)
    assert restricted_kl(transform, beta, k) == pytest.approx(kl, rel=1e-9)
    # The restricted tilt pays less KL at the same β, so it needs a smaller β (or the same, for a gentle tilt).
    assert beta <= tradeoff.beta_for_kl(transform, kl) * (1 + 1e-6)


def test_finite_k_beta_values_and_large_k_limit():
    # The demo's setting: exp t = 11 at KL 0.3 and K = 32 needs β ≈ 0.37, the exact tilt 0.38; identity barely moves.
    exact = tradeoff.beta_for_kl(EXP, 0.3)
    at_32 = finite_k_beta(EXP, 0.3, 32)
    assert 0.02 < (exact - at_32) / exact < 0.04
    assert finite_k_beta(IDENTITY, 0.3, 32) == pytest.approx(tradeoff.beta_for_kl(IDENTITY, 0.3), rel=2e-3)
    # As K grows the restricted tilt becomes the exact one.
    assert finite_k_beta(EXP, 0.3, 5000) == pytest.approx(exact, rel=2e-3)


def test_unreachable_budget_names_it():
    with pytest.raises(InfalignError, match=r"kl=3\.5 .*K=32.*log K = 3\.466"):
        finite_k_beta(EXP, 3.5, 32)
    with pytest.raises(InfalignError, match=r"^num_samples K must be an integer >= 2 \(completions per "
                                            r"prompt\), got 1$"):
        finite_k_beta(EXP, 0.3, 1)


def test_a_bad_try_is_named():
    with pytest.raises(InfalignError, match=r"^the last try Try\(beta=0\.0, kl=0\.5\): beta must be a finite number "
                                            r"> 0, got 0\.0$"):
        next_beta(IDENTITY, 0.3, 32, [Try(0.0, 0.5)])
    with pytest.raises(InfalignError, match=r"^the last try Try\(beta=0\.3, kl=nan\): its measured KL must be "
                                            r"finite, got nan$"):
        next_beta(IDENTITY, 0.3, 32, [Try(0.3, float("nan"))])


@pytest.mark.parametrize("transform,beta", [(IDENTITY, 0.34), (EXP, 0.37), (EXP, 0.05), (Transform("log"), 0.8)])
def test_elasticity_is_the_derivative(transform, beta):
    h = 1e-5
    fd = -(math.log(restricted_kl(transform, beta * math.exp(h), 32))
           - math.log(restricted_kl(transform, beta * math.exp(-h), 32))) / (2 * h)
    assert kl_elasticity(transform, beta, 32) == pytest.approx(fd, rel=1e-5)


def test_elasticity_of_a_gentle_tilt_is_two():
    # KL ≈ Var(Φ)/(2β²) when the tilt is gentle: s → 2.
    assert kl_elasticity(IDENTITY, 50.0, 64) == pytest.approx(2.0, abs=1e-3)


def test_first_try_is_the_finite_k_beta_and_a_close_one_stops():
    beta0 = next_beta(EXP, 0.3, 32, [])
    assert beta0 == first_beta(EXP, 0.3, 32) == finite_k_beta(EXP, 0.3, 32)
    assert next_beta(EXP, 0.3, 32, [Try(beta0, 0.315)]) is None  # within ±0.02
    assert next_beta(EXP, 0.3, 32, [Try(beta0, 0.285)]) is None
    assert next_beta(EXP, 0.3, 32, [Try(beta0, 0.35)]) is not None


def test_first_correction_uses_the_model_slope():
    beta0 = first_beta(EXP, 0.3, 32)
    s = kl_elasticity(EXP, beta0, 32)
    beta1 = next_beta(EXP, 0.3, 32, [Try(beta0, 0.4)])
    assert math.log(beta1 / beta0) == pytest.approx(math.log(0.4 / 0.3) / s)  # too much KL: a larger β


def test_corrections_reach_a_power_law_learner():
    # A learner whose KL is c·β^-s (a straight line in log-log), its slope off the model's (1.65 at β_0): two
    # corrections reach ±0.02 of the budget.
    for c, s in [(0.05, 2.0), (0.02, 2.6), (0.05, 1.5), (0.04, 1.2)]:
        tries = match_kl(lambda beta, c=c, s=s: c * beta ** -s, IDENTITY, 0.3, 32)
        assert len(tries) <= 3 and abs(tries[-1].kl - 0.3) <= 0.02, (c, s, tries)


def test_second_correction_is_the_secant_shrunk_toward_the_model():
    tries = [Try(0.40, 0.20), Try(0.33, 0.26)]
    secant = -(math.log(0.26) - math.log(0.20)) / math.log(0.33 / 0.40)
    s_model = kl_elasticity(EXP, 0.33, 32)
    assert s_model / 3 < secant < 3 * s_model
    step = math.log(next_beta(EXP, 0.3, 32, tries) / 0.33)
    assert step == pytest.approx((math.log(0.26) - math.log(0.3)) / math.sqrt(secant * s_model))


def test_learner_off_the_model_by_a_constant_factor():
    # Measured KL = r · (the finite-K model's KL): the matching reaches ±0.02 within two corrections.
    for r in (0.7, 0.85, 1.3, 1.45):
        tries = match_kl(lambda beta, r=r: r * restricted_kl(EXP, beta, 32), EXP, 0.3, 32)
        assert len(tries) <= 3 and abs(nearest(tries, 0.3).kl - 0.3) <= 0.02, (r, tries)


def test_noise_and_caps():
    beta0 = first_beta(IDENTITY, 0.3, 32)
    s = kl_elasticity(IDENTITY, beta0 * 1.1, 32)
    # KL rose with β between the two tries (noise): the secant says nothing, the model's slope is used.
    tries = [Try(beta0, 0.40), Try(beta0 * 1.1, 0.45)]
    assert math.log(next_beta(IDENTITY, 0.3, 32, tries) / (beta0 * 1.1)) == pytest.approx(math.log(0.45 / 0.3) / s)
    # A huge miss moves β by at most MAX_STEP; a measured KL <= 0 is read as a tiny positive one.
    assert next_beta(IDENTITY, 0.3, 32, [Try(beta0, 50.0)]) == pytest.approx(beta0 * MAX_STEP)
    assert next_beta(IDENTITY, 0.3, 32, [Try(beta0, -0.01)]) == pytest.approx(beta0 / MAX_STEP)
    # Never more than two corrections, whatever is measured.
    calls = []
    tries = match_kl(lambda beta: calls.append(beta) or 0.9, IDENTITY, 0.3, 32)
    assert len(tries) == len(calls) == 3
    assert nearest([Try(1.0, 0.25), Try(2.0, 0.33)], 0.3).beta == 2.0
    with pytest.raises(InfalignError, match="kl=0"):
        next_beta(IDENTITY, 0, 32, [])
    assert np.isfinite(next_beta(IDENTITY, 0.3, 32, [Try(beta0, 0.2), Try(beta0, 0.25)]))


def test_matched_pair_looks_at_kls_only():
    # The demo's seed-1 tries: identity nearest the budget (0.320) has no exp try within 0.03; the pair
    # (0.266, 0.273) is matched and is the one compared.
    identity = [Try(0.34, 0.402), Try(0.40, 0.320), Try(0.42, 0.266)]
    exp = [Try(0.37, 0.237), Try(0.32, 0.273), Try(0.28, 0.365)]
    a, b = matched_pair(identity, exp, 0.3, 0.03)
    assert (a.kl, b.kl) == (0.266, 0.273)
    # Several matched pairs: the one whose mean KL is nearest the budget.
    a, b = matched_pair([Try(1, 0.25), Try(2, 0.31)], [Try(3, 0.26), Try(4, 0.30)], 0.3, 0.03)
    assert (a.kl, b.kl) == (0.31, 0.30)
    # None matched: the closest KLs.
    a, b = matched_pair([Try(1, 0.10), Try(2, 0.45)], [Try(3, 0.30)], 0.3, 0.03)
    assert (a.kl, b.kl) == (0.45, 0.30)
    with pytest.raises(InfalignError, match="no tries"):
        matched_pair([], [Try(1, 0.3)], 0.3, 0.03)
