"""core/estimators.py against brute-force enumeration, hand values and the stderr formula (SPEC §8)."""

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
    """Average over every ordered N-tuple (with replacement) of policy and of base samples; ties count ½."""
    pick = max if procedure == "bon" else min
    total, count = 0.0, 0
    for tp in itertools.product(policy, repeat=n):
        x = pick(tp)
        for tb in itertools.product(base, repeat=n):
            y = pick(tb)
            total += 1.0 if x > y else 0.5 if x == y else 0.0
            count += 1
    return total / count


SETS = [
    ([1.0, 3.0, 3.0, 2.0], [2.0, 2.0, 0.5]),  # ties within and across sides
    ([0.0, 0.0, 0.0], [0.0, 1.0]),
    ([5.0, -1.0, 2.5, 2.5, 7.0], [2.5, 7.0, 7.0, -3.0]),
    ([1.0], [1.0, 2.0, 0.0]),
]


@pytest.mark.parametrize("policy,base", SETS)
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("procedure", ["bon", "won"])
def test_exact_matches_enumeration(policy, base, n, procedure):
    assert inference_win_rate(policy, base, n, procedure) == pytest.approx(
        brute_force(policy, base, n, procedure), abs=1e-12
    )


def test_hand_values():
    # policy {1, 3}, base {2, 2}: BoN-2 wins unless both policy draws are 1 → 3/4; WoN-2 wins only if both are 3.
    assert inference_win_rate([1.0, 3.0], [2.0, 2.0], 2, "bon") == pytest.approx(0.75)
    assert inference_win_rate([1.0, 3.0], [2.0, 2.0], 2, "won") == pytest.approx(0.25)
    # identical single values: always a tie → ½ for every N
    assert inference_win_rate([4.0], [4.0], 7, "bon") == pytest.approx(0.5)


def test_large_n_and_symmetry():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=6), rng.normal(size=5)
    # W(a vs b) + W(b vs a) = 1 for any N, with ties or without
    for proc in ("bon", "won"):
        assert inference_win_rate(a, b, 50, proc) + inference_win_rate(b, a, 50, proc) == pytest.approx(1.0)
    # N → ∞: best-of-N is the max of each set
    assert inference_win_rate(a, b, 2000, "bon") == pytest.approx(float(a.max() > b.max()), abs=1e-6)


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
