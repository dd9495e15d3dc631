"""Offline losses for the tilted objective (docs/math.md §6), each a small function on log-prob tensors.

Notation (docs/math.md §6): h(y) = log π_θ(y|x) − log π_ref(y|x) is a completion's log-ratio ("logratio" below),
summed over its tokens; Φ is the transformed calibrated reward ("target"); β > 0 is the KL coefficient, checked
once where it enters (the configs, `InfalignTrainer`; `core.checks.check_beta`), not on every loss call.
Every tilted loss here is minimized exactly when h = Φ/β + const(x), i.e. π_θ = π* ∝ π_ref · exp(Φ/β).

Each loss returns `(losses, metrics)`: per-example losses, shape (B,), which the trainer multiplies by the
row weight and averages, and a dict of detached scalar tensors worth logging (TRL's names: `rewards/chosen`
is β·h of the chosen completion, `rewards/margins` the chosen-minus-rejected difference, ...).

One calling convention per dataset kind, so the trainer needs one code path per kind, not per loss:
- pairs    `fn(chosen_logratios (B,), rejected_logratios (B,), target_margin (B,), beta)`;
           target_margin = Φ_chosen − Φ_rejected (≥ 0, not divided by β).
- listwise `fn(logratios (B, K), targets (B, K), mask (B, K) bool, beta)`; mask marks real completions
           (groups have variable K and are padded). `pointwise` takes `log_z` too (bind it with partial).
- bon      `fn(policy_logps (B,), weight (B,))`; weight = softmax(Φ/β) within the row's prompt.

`LOSSES` maps a loss name to its `LossSpec`; add a loss by writing its function and one registry line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .checks import check_num_samples
from .errors import InfalignError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    Metrics = dict[str, torch.Tensor]
    LossOutput = tuple[Tensor, Metrics]  # per-example losses (B,) and the metrics to log

# torch is imported inside the functions that call it, not here: the configs and every `--help` read the registry
# (`LOSSES`) below, and should not wait a second and a half for torch.

__all__ = [
    "tilted_pairwise",
    "tilted_sigmoid",
    "dpo",
    "ipo",
    "listwise",
    "pointwise",
    "weighted_sft",
    "kl_estimates",
    "LOSSES",
    "LossSpec",
    "LOSS_NAMES",
    "get_loss",
]


def _pair_metrics(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float) -> Metrics:
    chosen = (beta * chosen_logratios).detach()
    rejected = (beta * rejected_logratios).detach()
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
    }


# ---- pairs ---------------------------------------------------------------------------------------------------


def tilted_pairwise(chosen_logratios: Tensor, rejected_logratios: Tensor, target_margin: Tensor,
                    beta: float) -> LossOutput:
    """Squared reward distillation (docs/math.md §6, the IPO form): ℓ = (h_c − h_r − (Φ_c − Φ_r)/β)².

    Example: h_c = 0.5, h_r = −0.5, margin 0.3, β = 0.1 → (1.0 − 3.0)² = 4.0. At h = 0 the loss is (margin/β)².
    Shapes: all (B,) → losses (B,).
    """
    residual = chosen_logratios - rejected_logratios - target_margin / beta  # (B,)
    metrics = _pair_metrics(chosen_logratios, rejected_logratios, beta)
    metrics["loss/residual_abs"] = residual.detach().abs().mean()
    return residual.pow(2), metrics


def tilted_sigmoid(chosen_logratios: Tensor, rejected_logratios: Tensor, target_margin: Tensor,
                   beta: float) -> LossOutput:
    """Soft-label sigmoid (docs/math.md §6, the DPO form): ℓ = −p log σ(z) − (1 − p) log σ(−z), z = β(h_c − h_r),
    p = σ(Φ_c − Φ_r). Minimized at z = Φ_c − Φ_r; with p = 1 (an infinite margin) it is `dpo`.

    Example: h_c − h_r = 2, β = 0.5 → z = 1; margin 0 → p = ½ → ℓ = ½(softplus(−1) + softplus(1))
    = ½(0.31326 + 1.31326) = 0.81326. At h = 0 the loss is log 2 for every p.
    Shapes: all (B,) → losses (B,).
    """
    import torch
    import torch.nn.functional as F

    z = beta * (chosen_logratios - rejected_logratios)  # (B,)
    p = torch.sigmoid(target_margin.to(z.dtype))
    # −log σ(z) = softplus(−z): stable for large |z|.
    losses = p * F.softplus(-z) + (1.0 - p) * F.softplus(z)
    metrics = _pair_metrics(chosen_logratios, rejected_logratios, beta)
    metrics["loss/soft_label"] = p.detach().mean()
    return losses, metrics


def dpo(chosen_logratios: Tensor, rejected_logratios: Tensor, target_margin: Tensor, beta: float) -> LossOutput:
    """DPO baseline (Rafailov et al. 2023): ℓ = −log σ(β(h_c − h_r)). target_margin is ignored: the baseline
    only knows which completion is preferred.

    Example: h_c − h_r = 2, β = 0.5 → softplus(−1) = log(1 + e^{−1}) = 0.31326. At h = 0: log 2 = 0.69315.
    """
    import torch.nn.functional as F

    z = beta * (chosen_logratios - rejected_logratios)
    return F.softplus(-z), _pair_metrics(chosen_logratios, rejected_logratios, beta)


def ipo(chosen_logratios: Tensor, rejected_logratios: Tensor, target_margin: Tensor, beta: float) -> LossOutput:
    """IPO baseline (Azar et al. 2023, TRL's form): ℓ = (h_c − h_r − 1/(2β))². target_margin is ignored.

    Example: h_c − h_r = 2, β = 0.5 → (2 − 1)² = 1. At h = 0: 1/(4β²) = 1.
    """
    residual = chosen_logratios - rejected_logratios - 1.0 / (2.0 * beta)
    return residual.pow(2), _pair_metrics(chosen_logratios, rejected_logratios, beta)


# ---- listwise (K completions per row, padded and masked) ----------------------------------------------------


def _check_group(mask: torch.Tensor) -> None:
    # One sync per call (as any `if` on a tensor); the smallest group is named only when one is too small.
    counts = mask.sum(-1)
    if bool((counts < 2).any()):
        check_num_samples(int(counts.min()), "listwise loss", what="completions in a group")


def _group_metrics(logratios: Tensor, targets: Tensor, mask: Tensor, beta: float) -> Metrics:
    """TRL-style metrics for a group: 'chosen' is the completion with the largest target, 'rejected' the smallest."""
    import torch

    neg_inf = torch.finfo(targets.dtype).min
    best = targets.masked_fill(~mask, neg_inf).argmax(-1, keepdim=True)  # (B, 1)
    worst = targets.masked_fill(~mask, -neg_inf).argmin(-1, keepdim=True)
    h = logratios.detach()
    return _pair_metrics(h.gather(-1, best).squeeze(-1), h.gather(-1, worst).squeeze(-1), beta)


def listwise(logratios: Tensor, targets: Tensor, mask: Tensor, beta: float) -> LossOutput:
    """Listwise cross-entropy (docs/math.md §6): ℓ = −Σ_i q_i log softmax(β h)_i with q = softmax(Φ), both over the
    row's real completions. Minimized at β h = Φ + const, for every group (Gibbs' inequality).

    Example: K = 2, Φ = (1, 0), h = (0, 0) → q = (0.73106, 0.26894), softmax(βh) = (½, ½) → ℓ = log 2.
    With h = (2, 0), β = 0.5: softmax = σ(±1) = (0.73106, 0.26894) = q → ℓ = entropy(q) = 0.58220.
    At h = 0 the loss is log K for every Φ.
    Shapes: logratios, targets (B, K) float; mask (B, K) bool → losses (B,).
    """
    import torch

    mask = mask.bool()
    _check_group(mask)
    neg_inf = torch.finfo(logratios.dtype).min
    log_p = torch.log_softmax((beta * logratios).masked_fill(~mask, neg_inf), dim=-1)  # (B, K)
    q = torch.softmax(targets.to(logratios.dtype).masked_fill(~mask, neg_inf), dim=-1)  # (B, K), 0 on padding
    losses = -(q * log_p.masked_fill(~mask, 0.0)).sum(-1)
    return losses, _group_metrics(logratios, targets, mask, beta)


def pointwise(logratios: Tensor, targets: Tensor, mask: Tensor, beta: float, log_z: float) -> LossOutput:
    """Quantile-reward regression (docs/math.md §6, QRPO-style): ℓ = mean_i (β h_i − Φ_i + β log Z)² over the row's
    real completions, Z = ∫₀¹ exp(Φ(u)/β) du (`core.tradeoff.log_partition`). Needs no pairs: the calibrated
    reward is Uniform(0, 1) under π_ref, so log Z is the same for every prompt.

    Example: β = 0.5, log Z = 1, Φ = (1, 0), h = (1, −2) → (0.5 − 1 + 0.5)² = 0 and (−1 − 0 + 0.5)² = 0.25,
    mean 0.125. At h = 0: mean_i (Φ_i − β log Z)².
    Shapes: logratios, targets, mask (B, K) → losses (B,).
    """
    mask = mask.bool()
    if mask.sum(-1).min() < 1:
        raise InfalignError("a pointwise group has no completions")
    residual = beta * logratios - targets.to(logratios.dtype) + beta * float(log_z)  # (B, K)
    sq = residual.pow(2).masked_fill(~mask, 0.0)
    losses = sq.sum(-1) / mask.sum(-1)
    metrics = _group_metrics(logratios, targets, mask, beta)  # a 1-completion row is its own chosen and rejected
    metrics["loss/residual_abs"] = (residual.detach().abs().masked_fill(~mask, 0.0).sum() / mask.sum())
    return losses, metrics


# ---- bon (one row per completion, weighted) ------------------------------------------------------------------


def weighted_sft(policy_logps: Tensor, weight: Tensor) -> LossOutput:
    """Weighted SFT / BoN distillation (docs/math.md §6): ℓ_i = −w_i log π_θ(y_i|x), w = softmax(Φ/β) within the prompt
    (self-normalized importance weights of π* against π_ref). Needs no reference log-probs.

    Example: log π = (−2, −1), w = (0.25, 0.75) → (0.5, 0.75).
    Shapes: (B,) → losses (B,). Summing over a prompt's rows gives docs/math.md §6's ℓ; the trainer averages over rows,
    which only rescales it.
    """
    losses = -weight.to(policy_logps.dtype) * policy_logps
    return losses, {"logps/weighted": (weight * policy_logps).detach().sum() / weight.sum().clamp_min(1e-12)}


# ---- KL estimate for logging ---------------------------------------------------------------------------------


def kl_estimates(logratios: torch.Tensor, mask: torch.Tensor | None = None) -> Metrics:
    """Running KL estimates from log-ratios h of base samples y ~ π_ref (the dataset's completions).

    - `kl/estimate`: self-normalized importance-weighted Σ e^h h / Σ e^h ≈ E_{π_θ}[h] = KL(π_θ ‖ π_ref), the KL
      the tradeoff tool predicts. Biased for small batches and when π_θ drifts far from π_ref; a trend, not a
      measurement (evaluation measures KL on samples from π_θ, docs/math.md §8).
    - `kl/reverse`: mean of −h ≈ E_{π_ref}[−h] = KL(π_ref ‖ π_θ) (unbiased when the rows are base samples).
    Pair datasets hold selected samples (e.g. best/worst), so both are approximate there.

    Example: h = (0, log 2) → e^h = (1, 2) → kl/estimate = 2 log 2 / 3 = 0.46210; kl/reverse = −log 2 / 2.
    """
    import torch

    h = logratios.detach().float().reshape(-1)
    if mask is not None:
        h = h[mask.reshape(-1).bool()]
    if h.numel() == 0:
        return {}
    w = torch.softmax(h, dim=0)
    return {"kl/estimate": (w * h).sum(), "kl/reverse": (-h).mean()}


# ---- registry ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSpec:
    """Everything the rest of the package needs to know about a loss; config, trainer and evaluation read it.

    fn: the function above, called with its dataset kind's convention (module docstring).
    kind: the dataset kind it trains on (`offline_infalign.kinds`).
    tilted: its minimizer is the tilted policy π* (the tradeoff tool's predictions apply); False for baselines.
    needs_reference: it reads log π_ref (through h); weighted SFT does not.
    needs_margin: it reads the targets (pairs: `target_margin`); DPO/IPO only need which completion is preferred.
    needs_log_z: it takes `log_z` = log Z(Φ, β) (bind it with functools.partial).
    """

    name: str
    fn: Callable
    kind: str
    tilted: bool
    needs_reference: bool = True
    needs_margin: bool = True
    needs_log_z: bool = False
    help: str = ""


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("tilted_pairwise", tilted_pairwise, "pairs", tilted=True, help="(h_c - h_r - margin/beta)^2"),
        LossSpec("tilted_sigmoid", tilted_sigmoid, "pairs", tilted=True, help="soft-label DPO, p = sigmoid(margin)"),
        LossSpec("dpo", dpo, "pairs", tilted=False, needs_margin=False, help="DPO baseline"),
        LossSpec("ipo", ipo, "pairs", tilted=False, needs_margin=False, help="IPO baseline"),
        LossSpec("listwise", listwise, "listwise", tilted=True, help="softmax(targets) vs softmax(beta h)"),
        LossSpec("pointwise", pointwise, "listwise", tilted=True, needs_log_z=True,
                 help="(beta h - target + beta log Z)^2"),
        LossSpec("weighted_sft", weighted_sft, "bon", tilted=True, needs_reference=False,
                 help="BoN distillation, weights softmax(target/beta)"),
    )
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)


def get_loss(name: str) -> LossSpec:
    """The spec of a loss name; InfalignError naming the allowed names otherwise."""
    if name not in LOSSES:
        raise InfalignError(f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}")
    return LOSSES[name]
