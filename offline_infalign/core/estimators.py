"""Win-rate and KL estimates of a trained policy from samples (SPEC §8).

Best-of-N / worst-of-N win rates are computed exactly from the two empirical reward distributions of a prompt
(N draws with replacement from each side, ties count ½), with no resampling noise: the max of N draws from an
empirical CDF F has P(max ≤ r) = F(r)^N, and the min has P(min ≥ r) = S(r)^N with S(r) = P(draw ≥ r); each
procedure's terms are its `empirical_win` in core/procedures.py. Prompts are averaged, with a seeded
percentile bootstrap over prompts for the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import check_finite
from .errors import InfalignError
from .procedures import check_n, get_procedure

__all__ = ["WinRateEstimate", "KLEstimate", "inference_win_rate", "per_prompt_win_rates", "estimate_win_rate",
           "estimate_kl"]

@dataclass(frozen=True)
class WinRateEstimate:
    win_rate: float  # mean over prompts
    ci_low: float  # percentile bootstrap interval over prompts
    ci_high: float
    per_prompt: np.ndarray  # (P,) exact win rate of each prompt


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
    """Exact BoN/WoN win rate of each prompt, shape (P,), from policy (P, M) and base (P, M') rewards.

    For every policy value r (each sample, duplicates sharing their value's mass) the procedure's
    `empirical_win` gives P[X = r] for the policy's pick X and its chance to beat the base's pick, ties ½:
      BoN: P[X = r] = Fp(r)^N − Fp⁻(r)^N,   win given X = r: Fb⁻(r)^N + ½ (Fb(r)^N − Fb⁻(r)^N)
      WoN: P[X = r] = Sp(r)^N − Sp⁺(r)^N,   win given X = r: 1 − Sb(r)^N + ½ (Sb(r)^N − Sb⁺(r)^N)
    with F(r) = P(draw ≤ r), F⁻(r) = P(draw < r), S(r) = P(draw ≥ r) = 1 − F⁻(r), S⁺(r) = 1 − F(r).
    Counting is by broadcast comparison, in blocks of prompts so memory stays bounded.
    """
    proc = get_procedure(procedure)
    n = check_n(n)
    pol = _as_rows(policy_rewards, "policy rewards")  # (P, M)
    base = _as_rows(base_rewards, "base rewards")  # (P, M')
    if pol.shape[0] != base.shape[0]:
        raise InfalignError(f"policy rewards have {pol.shape[0]} prompts but base rewards have {base.shape[0]}")
    num_p, m = pol.shape
    mb = base.shape[1]
    out = np.empty(num_p)
    block = max(1, 2**22 // (m * max(m, mb)))
    for lo in range(0, num_p, block):
        pp = pol[lo : lo + block]  # (B, M)
        bb = base[lo : lo + block]  # (B, M')
        r = pp[:, :, None]  # (B, M, 1) evaluation points: the policy's own values
        fp = (pp[:, None, :] <= r).mean(-1)  # (B, M) P(policy draw ≤ r)
        fp_lt = (pp[:, None, :] < r).mean(-1)
        fb = (bb[:, None, :] <= r).mean(-1)  # (B, M) P(base draw ≤ r)
        fb_lt = (bb[:, None, :] < r).mean(-1)
        mult = (fp - fp_lt) * m  # (B, M) copies of r among the policy samples (≥ 1)
        mass, win = proc.empirical_win(fp, fp_lt, fb, fb_lt, n)  # P[pick = r], P[pick beats base's | = r]
        out[lo : lo + block] = (mass * win / mult).sum(-1)
    return out


def inference_win_rate(policy_rewards, base_rewards, n: int, procedure: str = "bon") -> float:
    """Exact BoN/WoN win rate of one prompt's policy samples (M,) against its base samples (M',), ties ½."""
    pol = np.asarray(policy_rewards, dtype=np.float64)
    base = np.asarray(base_rewards, dtype=np.float64)
    if pol.ndim != 1 or base.ndim != 1:
        raise InfalignError(f"inference_win_rate takes 1-D reward arrays, got shapes {pol.shape} and {base.shape}")
    return float(per_prompt_win_rates(pol[None], base[None], n, procedure)[0])


def estimate_win_rate(policy_rewards, base_rewards, n: int, procedure: str = "bon", num_bootstrap: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> WinRateEstimate:
    """Mean over prompts of the exact per-prompt win rate, with a percentile bootstrap interval over prompts.

    Args: policy_rewards (P, M), base_rewards (P, M'); n the inference-time N; the bootstrap draws P prompts
    with replacement `num_bootstrap` times from a numpy Generator seeded with `seed` (reproducible).
    """
    if isinstance(num_bootstrap, bool) or not isinstance(num_bootstrap, (int, np.integer)) or num_bootstrap < 1:
        raise InfalignError(f"num_bootstrap must be an integer >= 1, got {num_bootstrap!r}")
    if not (0.0 < float(confidence) < 1.0):
        raise InfalignError(f"confidence must be in (0, 1), got {confidence!r}")
    per_prompt = per_prompt_win_rates(policy_rewards, base_rewards, n, procedure)  # (P,)
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
    return WinRateEstimate(mean, float(min(lo_q, mean)), float(max(hi_q, mean)), per_prompt)


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
