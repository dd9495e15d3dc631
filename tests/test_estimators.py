"""core/estimators.py against brute-force enumeration, hand values and the stderr formula (docs/math.md §8)."""

import itertools
import math

import numpy as np
import pytest

from offline_infalign.core.errors import InfalignError
from offline_infalign.core.estimators import (
    estimate_kl,
    estimate_win_rate,
    inference_win_rate,
    per_prompt_win_rates,
)


def brute_force(policy, base, n, procedure):
    """Average over every N-subset (without replacement) of policy and of base samples; ties count ½."""
    pick = max if procedure == "bon" else min
    total, count = 0.0, 0
    for tp in itertools.combinations(policy, n):
        x = pick(tp)
        for tb in itertools.combinations(base, n):
            y = pick(tb)
            total += 1.0 if x > y else 0.5 if x == y else 0.0
            count += 1
    return total / count


SETS = [
    ([1.0, 3.0, 3.0, 2.0], [2.0, 2.0, 0.5]),  # ties within and across sides
    ([0.0, 0.0, 0.0], [0.0, 1.0]),
    ([5.0, -1.0, 2.5, 2.5, 7.0], [2.5, 7.0, 7.0, -3.0]),
    ([1.0, 4.0, -2.0, 0.5, 3.0, 3.0], [0.0, 2.0, 5.0, 1.0, -1.0]),
]


@pytest.mark.parametrize("policy,base", SETS)
@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("procedure", ["bon", "won"])
def test_exact_matches_enumeration(policy, base, n, procedure):
    if n > min(len(policy), len(base)):
        with pytest.raises(InfalignError, match="exceeds the samples per prompt"):
            inference_win_rate(policy, base, n, procedure)
        return
    assert inference_win_rate(policy, base, n, procedure) == pytest.approx(
        brute_force(policy, base, n, procedure), abs=1e-12
    )


def test_hand_values():
    # policy {1, 3}, base {2, 2}: the only 2-subset of the policy is {1, 3}, so BoN-2 picks 3 > 2 and WoN-2 picks
    # 1 < 2. (Drawing with replacement would say 3/4 and 1/4: it counts (1, 1) and (3, 3) as draws.)
    assert inference_win_rate([1.0, 3.0], [2.0, 2.0], 2, "bon") == pytest.approx(1.0)
    assert inference_win_rate([1.0, 3.0], [2.0, 2.0], 2, "won") == pytest.approx(0.0)
    # policy {1, 2, 3}, base {2.5, 0}: BoN-2 subsets {1,2} {1,3} {2,3} pick 2, 3, 3; base picks 2.5 → 2/3
    assert inference_win_rate([1.0, 2.0, 3.0], [2.5, 0.0], 2, "bon") == pytest.approx(2 / 3)
    # identical single values: always a tie → ½
    assert inference_win_rate([4.0], [4.0], 1, "bon") == pytest.approx(0.5)


def test_n_equal_to_m_and_symmetry():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=6), rng.normal(size=5)
    # W(a vs b) + W(b vs a) = 1 for any N, with ties or without
    for proc in ("bon", "won"):
        for n in (1, 3, 5):
            assert inference_win_rate(a, b, n, proc) + inference_win_rate(b, a, n, proc) == pytest.approx(1.0)
    # N = M: best-of-N is the max of each whole set, worst-of-N the min
    assert inference_win_rate(a, b, 5, "bon") == pytest.approx(float(a[:5].max() > b.max()))
    assert inference_win_rate(a[:5], b, 5, "won") == pytest.approx(float(a[:5].min() > b.min()))


@pytest.mark.parametrize("procedure,n", [("bon", 4), ("bon", 8), ("won", 8)])
def test_unbiased_on_an_exact_tilted_population(procedure, n):
    """Seeded Monte Carlo: M = N samples per side from an exact tilt in the calibrated space (docs/math.md §4),
    where the true win rate is known in closed form; the estimator's mean over many prompts must match it.
    Drawing the N with replacement from the M samples fails this test: it is biased low, most at N = M."""
    from offline_infalign.core import tradeoff
    from offline_infalign.core.transforms import Transform

    beta = 0.5  # identity tilt f(u) ∝ exp(u/β): its inverse CDF is closed form
    truth = tradeoff.predict(Transform("identity"), beta, procedure, n).win_rate
    rng = np.random.default_rng(123)
    prompts, m = 20000, n
    policy = np.log1p(rng.random((prompts, m)) * np.expm1(1 / beta)) * beta  # u with density ∝ exp(u/β)
    base = rng.random((prompts, m))  # u ~ Uniform(0, 1): the base policy in the calibrated space
    est = per_prompt_win_rates(policy, base, n, procedure)
    se = est.std(ddof=1) / math.sqrt(prompts)
    assert abs(est.mean() - truth) < 4 * se, (est.mean(), truth, se)


def test_batched_rows_are_independent():
    rng = np.random.default_rng(1)
    pol = rng.integers(0, 4, size=(7, 5)).astype(float)
    base = rng.integers(0, 4, size=(7, 3)).astype(float)
    rows = per_prompt_win_rates(pol, base, 3, "won")
    for i in range(7):
        assert rows[i] == pytest.approx(inference_win_rate(pol[i], base[i], 3, "won"), abs=1e-12)


def test_bootstrap_interval():
    rng = np.random.default_rng(2)
    pol, base = rng.normal(0.3, 1, size=(40, 6)), rng.normal(0, 1, size=(40, 6))
    est = estimate_win_rate(pol, base, 4, "bon", num_bootstrap=500, seed=7)
    assert est.win_rate == pytest.approx(est.per_prompt.mean())
    assert est.ci_low <= est.win_rate <= est.ci_high and est.ci_low < est.ci_high
    again = estimate_win_rate(pol, base, 4, "bon", num_bootstrap=500, seed=7)
    assert (again.ci_low, again.ci_high) == (est.ci_low, est.ci_high)
    other = estimate_win_rate(pol, base, 4, "bon", num_bootstrap=500, seed=8)
    assert (other.ci_low, other.ci_high) != (est.ci_low, est.ci_high)
    # width ≈ 2·1.96·sd/√P for a mean of P prompts (normal approximation), within a loose factor
    width = 2 * 1.96 * est.per_prompt.std(ddof=1) / math.sqrt(40)
    assert 0.7 * width < est.ci_high - est.ci_low < 1.3 * width


def test_kl_estimate_by_hand():
    # flat [1, 2, 3, 6]: mean 3, sample variance ((−2)²+(−1)²+0+3²)/3 = 14/3, stderr = √(14/3)/2
    k = estimate_kl([1.0, 2.0, 3.0, 6.0])
    assert k.kl == pytest.approx(3.0) and k.stderr == pytest.approx(math.sqrt(14 / 3) / 2)
    # (P, M) = 3 prompts: per-prompt means 1, 2, 6 → mean 3, sd² = (4+1+9)/2 = 7, stderr = √7/√3
    k2 = estimate_kl([[0.0, 2.0], [2.0, 2.0], [5.0, 7.0]])
    assert k2.kl == pytest.approx(3.0) and k2.stderr == pytest.approx(math.sqrt(7 / 3))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: inference_win_rate([1.0], [2.0], 0, "bon"), "got 0"),
        (lambda: inference_win_rate([1.0], [2.0], 2, "mon"), "'mon'"),
        (lambda: inference_win_rate([1.0, np.nan], [2.0], 2, "bon"), "non-finite"),
        (lambda: per_prompt_win_rates(np.ones((2, 3)), np.ones((3, 3)), 2), "2 prompts"),
        (lambda: estimate_win_rate(np.ones((2, 3)), np.ones((2, 3)), 2, confidence=1.5), "1.5"),
        (lambda: estimate_win_rate(np.ones((2, 3)), np.ones((2, 3)), 2, num_bootstrap=0), "got 0"),
        (lambda: estimate_kl([]), "non-empty"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(InfalignError, match=match):
        call()
