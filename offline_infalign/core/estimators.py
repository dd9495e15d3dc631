"""Win-rate and KL estimates of a trained policy from samples (docs/math.md §8).

Best-of-N / worst-of-N win rates are the U-statistic of docs/math.md §8: the average, over every N-subset of a
prompt's M policy samples and every N-subset of its M' base samples, of 1{pick beats pick} + ½·1{tie}. It is
unbiased for every N ≤ min(M, M'); drawing the N with replacement instead is not (it counts one sample drawn
twice as two draws, and reads 1–2.5 points low for N near M). Computed in closed form by order statistics:
sorted, each side's pick is its j-th value with the procedure's `pick_weights` (core/procedures.py), so a
prompt costs O(M log M). Prompts are averaged, with a seeded percentile bootstrap over prompts for the
interval.

Two policies measured against the same base samples on the same prompts are compared by the per-prompt
difference of their win rates (docs/math.md §10): its mean is unbiased for the difference of win rates, and
one bootstrap that resamples the same prompts for both (paired) has the variance of the difference, far below
the sum of the two policies' own variances when they share the base side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import check_finite
from .errors import InfalignError
from .procedures import check_n, get_procedure

__all__ = ["WinRateEstimate", "KLEstimate", "PairedDifference", "inference_win_rate", "per_prompt_win_rates",
           "estimate_win_rate", "estimate_kl", "paired_difference", "compare_win_rates"]

@dataclass(frozen=True)
class WinRateEstimate:
    win_rate: float  # mean over prompts
    ci_low: float  # percentile bootstrap interval over prompts
    ci_high: float
    per_prompt: np.ndarray  # (P,) unbiased win rate of each prompt


@dataclass(frozen=True)
class PairedDifference:
    difference: float  # mean over prompts of d(x) = w_A(x) − w_B(x)
    ci_low: float  # percentile bootstrap interval over prompts, the same prompts resampled for both policies
    ci_high: float
    per_prompt: np.ndarray  # (P,) d(x)


@dataclass(frozen=True)
class KLEstimate:
    kl: float  # mean log π(y|x) − log π_ref(y|x) over y ~ π
    stderr: float  # its standard error (see estimate_kl)


def _as_rows(x, what: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InfalignError(f"{what} must be a numeric array (prompts × samples), got {exc}") from None
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[0] == 0:
        raise InfalignError(f"{what} must have shape (prompts, samples) with at least one of each, got {a.shape}")
    return check_finite(a, what, hint="rewards must be finite")


def per_prompt_win_rates(policy_rewards, base_rewards, n: int, procedure: str = "bon") -> np.ndarray:
    """Unbiased BoN/WoN win rate of each prompt, shape (P,), from policy (P, M) and base (P, M') rewards.

    With a (M,) and b (M',) sorted and p = pick_weights(M, N), q = pick_weights(M', N) (docs/math.md §8):
      W = Σ_j p_j [ Q(b < a_j) + ½ Q(b = a_j) ],   Q(b < x) = Σ_{l: b_l < x} q_l,
    which equals the average over all N-subset pairs of 1{pick(S) > pick(T)} + ½·1{=}. Ties within a side are
    handled by the sort: tied positions carry the mass of their common value.
    """
    proc = get_procedure(procedure)
    n = check_n(n)
    pol = np.sort(_as_rows(policy_rewards, "policy rewards"), axis=1)  # (P, M)
    base = np.sort(_as_rows(base_rewards, "base rewards"), axis=1)  # (P, M')
    if pol.shape[0] != base.shape[0]:
        raise InfalignError(f"policy rewards have {pol.shape[0]} prompts but base rewards have {base.shape[0]}")
    m, mb = pol.shape[1], base.shape[1]
    if n > min(m, mb):
        raise InfalignError(f"N={n} exceeds the samples per prompt (policy {m}, base {mb}): the win rate of "
                            "N-subsets needs N <= both (docs/math.md §8); sample more or lower N")
    p = proc.pick_weights(m, n)  # (M,)
    q_cum = np.concatenate([[0.0], np.cumsum(proc.pick_weights(mb, n))])  # (M'+1,) Q of the first l values
    out = np.empty(pol.shape[0])
    for i, (a, b) in enumerate(zip(pol, base)):
        below = q_cum[np.searchsorted(b, a, side="left")]  # Q(b < a_j)
        at_or_below = q_cum[np.searchsorted(b, a, side="right")]  # Q(b ≤ a_j)
        out[i] = float(p @ (0.5 * (below + at_or_below)))
    return out


def inference_win_rate(policy_rewards, base_rewards, n: int, procedure: str = "bon") -> float:
    """Unbiased BoN/WoN win rate of one prompt's policy samples (M,) against its base samples (M',), ties ½."""
    pol = np.asarray(policy_rewards, dtype=np.float64)
    base = np.asarray(base_rewards, dtype=np.float64)
    if pol.ndim != 1 or base.ndim != 1:
        raise InfalignError(f"inference_win_rate takes 1-D reward arrays, got shapes {pol.shape} and {base.shape}")
    return float(per_prompt_win_rates(pol[None], base[None], n, procedure)[0])


def _check_bootstrap(num_bootstrap, confidence) -> None:
    if isinstance(num_bootstrap, bool) or not isinstance(num_bootstrap, (int, np.integer)) or num_bootstrap < 1:
        raise InfalignError(f"num_bootstrap must be an integer >= 1, got {num_bootstrap!r}")
    if not (0.0 < float(confidence) < 1.0):
        raise InfalignError(f"confidence must be in (0, 1), got {confidence!r}")


def _bootstrap_interval(per_prompt: np.ndarray, num_bootstrap: int, confidence: float, seed: int
                        ) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the per-prompt values and its percentile bootstrap interval over prompts
    (P prompts drawn with replacement `num_bootstrap` times from a numpy Generator seeded with `seed`)."""
    rng = np.random.default_rng(seed)
    num_p = per_prompt.size
    means = np.empty(int(num_bootstrap))
    chunk = max(1, 2**22 // num_p)  # bounded memory for many prompts
    for lo in range(0, int(num_bootstrap), chunk):
        k = min(chunk, int(num_bootstrap) - lo)
        means[lo : lo + k] = per_prompt[rng.integers(0, num_p, size=(k, num_p))].mean(1)
    alpha = 1.0 - float(confidence)
    lo_q, hi_q = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    mean = float(per_prompt.mean())
    # The percentile interval of a skewed statistic can miss its point estimate by rounding; keep it inside.
    return mean, float(min(lo_q, mean)), float(max(hi_q, mean))


def estimate_win_rate(policy_rewards, base_rewards, n: int, procedure: str = "bon", num_bootstrap: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> WinRateEstimate:
    """Mean over prompts of the unbiased per-prompt win rate, with a percentile bootstrap interval over prompts.

    Args: policy_rewards (P, M), base_rewards (P, M'); n the inference-time N; the bootstrap draws P prompts
    with replacement `num_bootstrap` times from a numpy Generator seeded with `seed` (reproducible).
    """
    _check_bootstrap(num_bootstrap, confidence)
    per_prompt = per_prompt_win_rates(policy_rewards, base_rewards, n, procedure)  # (P,)
    return WinRateEstimate(*_bootstrap_interval(per_prompt, num_bootstrap, confidence, seed), per_prompt)


def paired_difference(per_prompt_a, per_prompt_b, num_bootstrap: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> PairedDifference:
    """Difference of two policies' win rates measured on the same prompts, with a paired bootstrap interval.

    per_prompt_a, per_prompt_b: (P,) per-prompt win rates of policies A and B against the same base samples,
    prompt i of one being prompt i of the other (per_prompt_win_rates). d = a − b per prompt; the estimate is
    mean(d) and the interval resamples prompts, so both policies move together in every resample
    (docs/math.md §10). Prompts are the independent units; within a prompt anything may be correlated.
    """
    _check_bootstrap(num_bootstrap, confidence)
    a = check_finite(np.asarray(per_prompt_a, dtype=np.float64), "per-prompt win rates of A")
    b = check_finite(np.asarray(per_prompt_b, dtype=np.float64), "per-prompt win rates of B")
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise InfalignError(f"paired_difference needs two (P,) arrays over the same prompts, got shapes {a.shape} "
                            f"and {b.shape}")
    d = a - b
    return PairedDifference(*_bootstrap_interval(d, num_bootstrap, confidence, seed), d)


def compare_win_rates(policy_a_rewards, policy_b_rewards, base_rewards, n: int, procedure: str = "bon",
                      num_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> PairedDifference:
    """W_A − W_B for the procedure and N, both against the same base rewards (P, M'), paired by prompt.

    policy_a_rewards (P, M_A), policy_b_rewards (P, M_B): judge rewards of each policy's samples on the same P
    prompts, in the same order as base_rewards.
    """
    a = per_prompt_win_rates(policy_a_rewards, base_rewards, n, procedure)
    b = per_prompt_win_rates(policy_b_rewards, base_rewards, n, procedure)
    return paired_difference(a, b, num_bootstrap, confidence, seed)


def estimate_kl(log_ratios) -> KLEstimate:
    """KL(π ‖ π_ref) ≈ mean of log π(y|x) − log π_ref(y|x) over policy samples y, with its standard error.

    log_ratios: (P, M) (M samples for each of P prompts) or flat (S,).
    Flat: stderr = sd / √S (sample sd, ddof 1). (P, M) with P ≥ 2: the samples of one prompt share it, so the
    independent units are prompts: kl = mean of the P per-prompt means, stderr = sd(per-prompt means) / √P.
    (P = 1 falls back to the flat formula over its M samples.) A single value has stderr nan.
    """
    try:
        a = np.asarray(log_ratios, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InfalignError(f"log_ratios must be numeric, got {exc}") from None
    if a.size == 0 or a.ndim > 2:
        raise InfalignError(f"log_ratios must be a non-empty flat or (prompts, samples) array, got shape {a.shape}")
    check_finite(a, "log_ratios", hint="check the policy and reference log-probs")
    units = a.mean(axis=1) if a.ndim == 2 and a.shape[0] >= 2 else a.reshape(-1)
    kl = float(units.mean())
    stderr = float(units.std(ddof=1) / math.sqrt(units.size)) if units.size >= 2 else float("nan")
    return KLEstimate(kl, stderr)
