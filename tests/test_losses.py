"""core.losses against hand-computed values (the arithmetic is in each loss's docstring) and docs/math.md §6 properties."""

import math

import pytest
import torch

from offline_infalign.core import losses as L
from offline_infalign.core.errors import InfalignError


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_tilted_pairwise_hand_value():
    out, m = L.tilted_pairwise(t(0.5), t(-0.5), t(0.3), beta=0.1)
    assert out.item() == pytest.approx(4.0)  # (1.0 − 0.3/0.1)² = (−2)²
    assert m["rewards/chosen"].item() == pytest.approx(0.05)
    assert m["rewards/rejected"].item() == pytest.approx(-0.05)
    assert m["rewards/margins"].item() == pytest.approx(0.1)
    assert m["rewards/accuracies"].item() == 1.0


def test_tilted_sigmoid_hand_value_and_hard_label_is_dpo():
    out, _ = L.tilted_sigmoid(t(1.0), t(-1.0), t(0.0), beta=0.5)
    # z = 1, p = ½: ½ log(1 + e^{-1}) + ½ log(1 + e)
    assert out.item() == pytest.approx(0.5 * (math.log1p(math.exp(-1)) + math.log1p(math.e)))
    assert out.item() == pytest.approx(0.81326, abs=1e-5)
    hc, hr = t(0.3, -1.2, 2.0), t(-0.4, 0.5, 2.5)
    hard, _ = L.tilted_sigmoid(hc, hr, t(math.inf, math.inf, math.inf), beta=0.7)
    ref, _ = L.dpo(hc, hr, t(0.1, 0.2, 0.3), beta=0.7)
    torch.testing.assert_close(hard, ref)


def test_dpo_ipo_hand_values():
    d, _ = L.dpo(t(1.0), t(-1.0), t(0.0), beta=0.5)
    assert d.item() == pytest.approx(math.log1p(math.exp(-1.0)))  # 0.31326
    i, _ = L.ipo(t(1.0), t(-1.0), t(0.0), beta=0.5)
    assert i.item() == pytest.approx(1.0)  # (2 − 1/(2·0.5))²


def test_listwise_hand_values():
    targets, mask = t(1.0, 0.0).unsqueeze(0), torch.tensor([[True, True]])
    out0, _ = L.listwise(t(0.0, 0.0).unsqueeze(0), targets, mask, beta=0.5)
    assert out0.item() == pytest.approx(math.log(2))
    out1, m = L.listwise(t(2.0, 0.0).unsqueeze(0), targets, mask, beta=0.5)
    q = 1 / (1 + math.exp(-1))
    assert out1.item() == pytest.approx(-(q * math.log(q) + (1 - q) * math.log(1 - q)))  # entropy of q: minimum
    assert out1.item() == pytest.approx(0.58220, abs=1e-5)
    assert m["rewards/margins"].item() == pytest.approx(1.0)  # β·(2 − 0)


def test_listwise_padding_is_ignored():
    h = t(0.3, -0.2, 0.9).unsqueeze(0)
    phi = t(0.1, 0.7, 0.4).unsqueeze(0)
    full, _ = L.listwise(h, phi, torch.ones(1, 3, dtype=torch.bool), beta=0.3)
    padded, _ = L.listwise(
        torch.cat([h, t(99.0)[None]], 1), torch.cat([phi, t(-5.0)[None]], 1),
        torch.tensor([[True, True, True, False]]), beta=0.3,
    )
    torch.testing.assert_close(full, padded)


def test_pointwise_hand_value():
    out, _ = L.pointwise(t(1.0, -2.0).unsqueeze(0), t(1.0, 0.0).unsqueeze(0), torch.tensor([[True, True]]),
                         beta=0.5, log_z=1.0)
    assert out.item() == pytest.approx(0.125)  # mean(0², 0.5²)


def test_weighted_sft_hand_value():
    out, m = L.weighted_sft(t(-2.0, -1.0), t(0.25, 0.75))
    torch.testing.assert_close(out, t(0.5, 0.75))
    assert m["logps/weighted"].item() == pytest.approx(-1.25)


def test_kl_estimates_hand_value():
    m = L.kl_estimates(t(0.0, math.log(2)))
    assert m["kl/estimate"].item() == pytest.approx(2 * math.log(2) / 3)
    assert m["kl/reverse"].item() == pytest.approx(-math.log(2) / 2)


@pytest.mark.parametrize("name", ["tilted_pairwise", "tilted_sigmoid", "listwise", "pointwise"])
def test_minimizer_is_the_tilt(name):
    """docs/math.md §6: h = Φ/β + const(x) is a stationary point (zero gradient) and beats perturbations."""
    beta, phi = 0.4, t(0.05, 0.3, 0.55, 0.95)
    log_z = math.log(sum(math.exp(u / beta) for u in [(i + 0.5) / 1000 for i in range(1000)]) / 1000)

    def total(h):
        if L.LOSSES[name].kind == "pairs":
            i, j = torch.triu_indices(4, 4, 1)
            out, _ = L.LOSSES[name].fn(h[i], h[j], phi[i] - phi[j], beta)
        else:
            fn = L.LOSSES[name].fn
            kw = {"log_z": log_z} if name == "pointwise" else {}
            out, _ = fn(h[None], phi[None], torch.ones(1, 4, dtype=torch.bool), beta, **kw)
        return out.sum()

    const = 0.0 if name == "pointwise" else 1.7  # pointwise pins the constant to −log Z
    h_star = (phi / beta + const - (log_z if name == "pointwise" else 0.0)).requires_grad_(True)
    value = total(h_star)
    (grad,) = torch.autograd.grad(value, h_star)
    assert grad.abs().max().item() < 1e-9
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert total(h_star.detach() + 0.1 * torch.randn(4, generator=gen, dtype=torch.float64)) > value


def test_bad_input():
    # beta is checked once where it enters (configs, InfalignTrainer: tests/test_checks.py), not on every loss call
    with pytest.raises(InfalignError, match=r"^listwise loss: num_samples K must be an integer >= 2 \(completions in "
                                            r"a group\), got 1$"):
        L.listwise(t(0.0, 0.0).unsqueeze(0), t(0.0, 1.0).unsqueeze(0), torch.tensor([[True, False]]), beta=1.0)
    with pytest.raises(InfalignError, match="unknown loss 'dpoo'"):
        L.get_loss("dpoo")


def test_registry_kinds():
    known = {"tilted_pairwise": "pairs", "tilted_sigmoid": "pairs", "dpo": "pairs", "ipo": "pairs",
             "listwise": "listwise", "pointwise": "listwise", "weighted_sft": "bon"}
    assert {k: L.LOSSES[k].kind for k in known} == known
    # every loss, these and any registered later, trains on a registered kind
    from offline_infalign.kinds import KIND_NAMES

    assert all(spec.kind in KIND_NAMES and spec.name == name for name, spec in L.LOSSES.items())
