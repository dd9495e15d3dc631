"""core/procedures.py: the registry is the one place a procedure lives (docs/math.md §3, §4, §8).

A procedure registered at run time must work in tradeoff, estimators and finite_k with no other change.
"""

import dataclasses

import numpy as np
import pytest

from offline_infalign.core import density as D
from offline_infalign.core import estimators as E
from offline_infalign.core import finite_k as FK
from offline_infalign.core import tradeoff as T
from offline_infalign.core.errors import InfalignError
from offline_infalign.core.procedures import (
    PROCEDURE_NAMES,
    PROCEDURES,
    Procedure,
    get_procedure,
    register_procedure,
)
from offline_infalign.core.transforms import Transform


@pytest.fixture
def registered():
    """Register procedures for one test and always take them out again."""
    added, before = [], dict(PROCEDURES)

    def add(proc: Procedure) -> Procedure:
        added.append(proc.name)
        return register_procedure(proc)

    try:
        yield add
    finally:
        for name in added:
            PROCEDURES.pop(name, None)
    assert PROCEDURES == before and tuple(PROCEDURES) == PROCEDURE_NAMES


def _rewards(seed=0):
    rng = np.random.default_rng(seed)
    # integer rewards make ties, so the ½-credit terms are exercised too
    return rng.integers(0, 6, size=(5, 7)).astype(float), rng.integers(0, 6, size=(5, 9)).astype(float)


def test_builtin_entries():
    bon, won = get_procedure("bon"), get_procedure("won")
    assert (bon.label, bon.tilt_sign, bon.concave) == ("best-of-N", 1.0, True)
    assert (won.label, won.tilt_sign, won.concave) == ("worst-of-N", -1.0, False)
    with pytest.raises(InfalignError, match=r"procedure must be 'bon' or 'won', got 'mon' \(bon: best-of-N"):
        get_procedure("mon")


def test_a_bon_clone_is_accepted_everywhere_and_gives_bon_numbers(registered):
    registered(dataclasses.replace(get_procedure("bon"), name="bon-copy", label="copy-of-N"))
    t, beta = Transform("exp", 3.0), 0.2
    assert T.predict(t, beta, "bon-copy", 4) == dataclasses.replace(T.predict(t, beta, "bon", 4), procedure="bon-copy")
    assert T.win_rate(t, beta, "bon-copy", 3) == T.win_rate(t, beta, "bon", 3)
    pol, base = _rewards()
    np.testing.assert_array_equal(E.per_prompt_win_rates(pol, base, 4, "bon-copy"),
                                  E.per_prompt_win_rates(pol, base, 4, "bon"))
    assert E.estimate_win_rate(pol, base, 2, "bon-copy", num_bootstrap=20).win_rate == pytest.approx(
        E.estimate_win_rate(pol, base, 2, "bon", num_bootstrap=20).win_rate, abs=0)
    assert FK.finite_k_tilt(t, beta, 8, "bon-copy", 4, draws=300) == FK.finite_k_tilt(t, beta, 8, "bon", 4, draws=300)
    c, b = T.choose("bon-copy", 4, 0.2, with_optimum=False), T.choose("bon", 4, 0.2, with_optimum=False)
    assert (c.transform, c.beta, c.win_rate, c.procedure) == (b.transform, b.beta, b.win_rate, "bon-copy")
    # the error message lists the live registry
    with pytest.raises(InfalignError, match="'bon', 'won' or 'bon-copy'"):
        T.predict(t, beta, "mon", 4)


def _first_of_n() -> Procedure:
    """Serve the first of N draws, rewards ignored: G(x) = x, so every N gives the N = 1 (standard) win rate."""
    return Procedure(
        "first", "first-of-N", +1.0, True,
        win_integrand=lambda F, S, u, v, n: F,  # 1 − ∫ F du = ∫ u f du
        gradient_integrand=lambda F, S, u, v, n: np.ones_like(u),  # Φ_f(x) = x
        gradient_from_top=False,
        pick_weights=lambda m, n: np.full(m, 1.0 / m),  # the first draw is any sample, equally likely
        finite_k_win_rate=lambda cdf, u, n: 1.0 - (np.sum(cdf * (u[:, 1:] - u[:, :-1]), axis=1) + 1.0 - u[:, -1]),
    )


def test_a_new_procedure_needs_only_its_entry(registered):
    registered(_first_of_n())
    t, beta = Transform("log"), 0.5
    p = T.predict(t, beta, "first", 5)
    assert p.win_rate == pytest.approx(T.predict(t, beta, "bon", 1).win_rate, abs=1e-13)
    # log at β = ½ is f(u) = 3u², whose standard win rate is ∫ 3u³ du = 3/4
    assert p.win_rate == pytest.approx(0.75, abs=1e-10) and p.standard_win_rate == pytest.approx(0.75, abs=1e-12)
    pol, base = _rewards(1)
    np.testing.assert_allclose(E.per_prompt_win_rates(pol, base, 3, "first"),
                               E.per_prompt_win_rates(pol, base, 1, "bon"), rtol=0, atol=1e-15)
    fk, ref = FK.finite_k_tilt(t, beta, 8, "first", 6, draws=300), FK.finite_k_tilt(t, beta, 8, "bon", 1, draws=300)
    assert fk.win_rate == pytest.approx(ref.win_rate, abs=1e-14) and fk.kl == ref.kl
    # its optimum at a KL budget is the identity tilt (W is linear with gradient u), as for N = 1
    o = T.optimal("first", 3, 0.2)
    assert o.kl == pytest.approx(0.2, abs=1e-8)
    assert o.win_rate == pytest.approx(T.optimal("bon", 1, 0.2).win_rate, abs=1e-9)


@pytest.mark.parametrize("name", ["bon", "won"])
def test_gradient_is_the_derivative_of_the_win_rate(name):
    """d/dε W(f_ε) at ε = 0 for log f_ε = log f + ε h (renormalized) is Cov_f(Φ_f, h) (docs/math.md §4)."""
    proc, n, grid = get_procedure(name), 4, D.grid()
    base = D.tilted(Transform("identity"), 0.3)
    h = np.sin(3.0 * grid.u)
    eps = 1e-5
    plus = D.win_rate(D.density(base.log_f + eps * h), proc, n)
    minus = D.win_rate(D.density(base.log_f - eps * h), proc, n)
    phi = D.gradient(base, proc, n)
    mean = lambda x: D.total(base.f * x * grid.w, grid.h)  # noqa: E731
    cov = mean(phi * h) - mean(phi) * mean(h)
    assert abs(cov) > 1e-3
    assert (plus - minus) / (2 * eps) == pytest.approx(cov, rel=1e-6)
