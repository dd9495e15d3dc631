"""Matching a trained policy's KL to a budget by design (docs/math.md §10).

The β at which the *exact* tilt pays a KL budget (tradeoff.beta_for_kl) is not the β at which a policy trained
offline on K samples per prompt pays it: the learner sits between the exact tilt and the tilt restricted to its
K samples (core/finite_k.py), and the restricted tilt pays less KL at the same β. So the first β comes from the
finite-K model (`finite_k.finite_k_beta`), and the measured KL corrects it:

    log β_{i+1} = log β_i + (log KL_i − log ε) / s_i,

a step on log KL against log β, which is close to a straight line (KL ≈ Var(Φ)/(2β²) for a gentle tilt). The
slope s_0 is the finite-K model's own elasticity at β_0 (finite_k.kl_elasticity); after two measurements it is
the secant through the last two, kept within a factor SLOPE_RANGE of the model's (a measured KL is noisy, and a
secant through two close, noisy points can point anywhere). Each step is capped at a factor MAX_STEP in β.
At most MAX_CORRECTIONS corrections; the matching stops as soon as a measured KL is within TOLERANCE nats of ε.

Pure: the caller trains and measures (`match_kl` takes the measurement as a function, `next_beta` the tries so
far), so a resumed run that re-measures the same tries takes the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .checks import check_positive
from .errors import InfalignError
from .finite_k import finite_k_beta, kl_elasticity
from .transforms import Transform

__all__ = ["Try", "TOLERANCE", "MAX_CORRECTIONS", "first_beta", "next_beta", "nearest", "match_kl"]

TOLERANCE = 0.02  # nats: a measured KL this close to the budget needs no further correction
MAX_CORRECTIONS = 2
SLOPE_RANGE = 3.0  # the secant slope is kept within [s_model / 3, 3 s_model]
MAX_STEP = 4.0  # one correction moves β by at most this factor
_KL_FLOOR = 1e-3  # a measured KL at or below 0 (noise around a tiny KL) is read as this, so its log exists


@dataclass(frozen=True)
class Try:
    beta: float
    kl: float  # the KL measured for the policy trained at beta


def first_beta(transform: Transform, kl: float, k: int) -> float:
    """β_0: where the tilt restricted to K samples pays `kl` (finite_k.finite_k_beta)."""
    return finite_k_beta(transform, kl, k)


def _log_kl(kl: float) -> float:
    return math.log(max(float(kl), _KL_FLOOR))


def next_beta(transform: Transform, kl: float, k: int, tries: Sequence[Try], tolerance: float = TOLERANCE,
              max_corrections: int = MAX_CORRECTIONS) -> float | None:
    """The next β to train at, or None when matching is over (the last try is within `tolerance` of `kl`, or
    `max_corrections` corrections have been made). No tries yet: first_beta."""
    kl = check_positive(kl, "KL budget (nats)", name="kl")
    if not tries:
        return first_beta(transform, kl, k)
    last = tries[-1]
    if abs(last.kl - kl) <= tolerance or len(tries) > max_corrections:
        return None
    if not (math.isfinite(last.beta) and last.beta > 0 and math.isfinite(last.kl)):
        raise InfalignError(f"a try must have a finite beta > 0 and a finite measured KL, got {last}")
    s_model = kl_elasticity(transform, last.beta, k)
    slope = s_model
    if len(tries) >= 2:
        prev = tries[-2]
        d_log_beta = math.log(last.beta / prev.beta)
        if abs(d_log_beta) > 1e-9:
            secant = -(_log_kl(last.kl) - _log_kl(prev.kl)) / d_log_beta
            # A secant of the wrong sign (KL rose with β: noise) says nothing; fall back to the model's slope.
            if secant > 0:
                slope = min(max(secant, s_model / SLOPE_RANGE), s_model * SLOPE_RANGE)
    step = (_log_kl(last.kl) - math.log(kl)) / slope
    step = min(max(step, -math.log(MAX_STEP)), math.log(MAX_STEP))
    return float(last.beta * math.exp(step))


def nearest(tries: Sequence[Try], kl: float) -> Try:
    """The try whose measured KL is nearest `kl` (in nats)."""
    if not tries:
        raise InfalignError("no tries to choose from")
    return min(tries, key=lambda t: abs(t.kl - kl))


def match_kl(measure: Callable[[float], float], transform: Transform, kl: float, k: int,
             tolerance: float = TOLERANCE, max_corrections: int = MAX_CORRECTIONS) -> list[Try]:
    """Train-and-measure at β_0, then correct (next_beta) until within `tolerance` or out of corrections.

    measure(beta) -> the KL measured for a policy trained at beta. Returns every try, in order; `nearest`
    picks the one to report.
    """
    tries: list[Try] = []
    while (beta := next_beta(transform, kl, k, tries, tolerance, max_corrections)) is not None:
        tries.append(Try(beta, float(measure(beta))))
    return tries
