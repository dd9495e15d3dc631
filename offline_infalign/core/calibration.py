"""Calibrated rewards: a completion's quantile among the base model's own completions (docs/math.md §2).

    c_i = ( #{j : r_j < r_i} + ½ #{j : r_j = r_i} ) / K        j over all K samples, i included

so c_i lies in [1/(2K), 1 − 1/(2K)] and the row mean is exactly ½. Everything is vectorized over a leading
batch of prompts: rewards of shape (P, K) (or any (..., K)) give calibrated rewards of the same shape.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .checks import check_finite, check_num_samples
from .errors import InfalignError

__all__ = ["calibrate", "calibrate_against"]

_BLOCK_VALUES = 2**19  # rewards ranked per rankdata call


def _check(rewards: np.ndarray, what: str) -> None:
    if rewards.ndim == 0:
        raise InfalignError(f"{what} must have a last axis of samples, got a scalar")
    # check_finite names where the first bad value sits, so a caller can map it back to a prompt_id.
    check_finite(rewards, what, hint="rewards must be finite (fix or drop that completion before calibrating)")


def _as_float(x, what: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InfalignError(f"{what} must be numeric, got {type(x).__name__}: {exc}") from None


def calibrate(rewards) -> np.ndarray:
    """Mid-rank calibrated rewards along the last axis.

    Args:
        rewards: raw rewards, shape (..., K) with K ≥ 2; each row is one prompt's K base samples.
    Returns:
        float64 array of the same shape, values in [1/(2K), 1 − 1/(2K)].
    Raises:
        InfalignError: K < 2 or any non-finite reward.
    """
    r = _as_float(rewards, "rewards")
    _check(r, "rewards")
    k = check_num_samples(r.shape[-1], what="rewards per prompt: the last axis")
    # With average (mid) ranks R in 1..K: #{r_j < r_i} + ½ #{r_j = r_i} = R − ½ (i counts itself once).
    # rankdata is vectorized along the axis; it runs on blocks of ~0.5M values so its several temporaries stay
    # small and are reused (one call on 100k × 64 allocates ~50 MB per temporary; first calls were up to 2x slower).
    flat = r.reshape(-1, k)
    out = np.empty(flat.shape, dtype=np.float64)
    block = max(1, _BLOCK_VALUES // k)
    for lo in range(0, flat.shape[0], block):
        ranks = rankdata(flat[lo : lo + block], method="average", axis=-1)
        ranks -= 0.5
        ranks /= k
        out[lo : lo + block] = ranks
    return out.reshape(r.shape)


def calibrate_against(rewards, reference) -> np.ndarray:
    """Calibrate completions outside the sample set against each prompt's K base-sample rewards.

    Args:
        rewards: rewards of new completions, shape (..., M).
        reference: the same prompts' base-sample rewards, shape (..., K), K ≥ 2; leading shapes must match.
    Returns:
        shape (..., M): (#{ref < r} + ½ #{ref = r}) / K, clipped to [1/(2K), 1 − 1/(2K)] (docs/math.md §2).
    """
    r = _as_float(rewards, "rewards")
    ref = _as_float(reference, "reference rewards")
    _check(r, "rewards")
    _check(ref, "reference rewards")
    k = check_num_samples(ref.shape[-1], what="reference rewards per prompt: the last axis")
    if r.shape[:-1] != ref.shape[:-1]:
        raise InfalignError(
            f"rewards with leading shape {r.shape[:-1]} do not match reference rewards {ref.shape[:-1]}"
        )
    if r.size == 0:
        return np.empty(r.shape, dtype=np.float64)
    # Count by broadcasting (..., M, K) comparisons, in blocks of prompts so memory stays bounded.
    flat_r = r.reshape(-1, r.shape[-1])  # (P, M)
    flat_ref = ref.reshape(-1, k)  # (P, K)
    c = np.empty(flat_r.shape, dtype=np.float64)
    block = max(1, 2**24 // max(1, flat_r.shape[1] * k))
    for lo in range(0, flat_r.shape[0], block):
        rr = flat_r[lo : lo + block, :, None]  # (B, M, 1)
        ff = flat_ref[lo : lo + block, None, :]  # (B, 1, K)
        c[lo : lo + block] = ((ff < rr).sum(-1) + 0.5 * (ff == rr).sum(-1)) / k
    return np.clip(c, 0.5 / k, 1.0 - 0.5 / k).reshape(r.shape)
