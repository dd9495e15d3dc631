"""Matching a trained policy's KL to a budget by design (docs/math.md §10).

The β at which the *exact* tilt pays a KL budget (tradeoff.beta_for_kl) is not the β at which a policy trained
offline on K samples per prompt pays it: the learner sits between the exact tilt and the tilt restricted to its
K samples (core/finite_k.py), and the restricted tilt pays less KL at the same β. So the first β comes from the
finite-K model (`finite_k.finite_k_beta`), and the measured KL corrects it:

    log β_{i+1} = log β_i + (log KL_i − log ε) / s_i,

a step on log KL against log β, which is close to a straight line (KL ≈ Var(Φ)/(2β²) for a gentle tilt). The
slope s_i is the finite-K model's own elasticity at β_i (finite_k.kl_elasticity). After two measurements the
secant through the last two enters too, as the geometric mean of the secant's slope and the model's: a trained
policy's KL carries the noise of its training (on the demo the same β trained with other seeds paid KLs up to
0.07 apart), so a secant through two tries a few tenths apart in log β is itself noisy (one such secant read 1.1
where the slope was 2.2 and sent the next try past the budget), while the model's elasticity tracked every slope
measured there (identity 1.65 against 1.0–1.6, exp 2.6 against 2.2–2.4). A secant of the wrong sign (KL rose
with β) is dropped; the secant is kept within a factor SLOPE_RANGE of the model's first. Each step is capped at a
factor MAX_STEP in β. At most MAX_CORRECTIONS corrections; the matching stops as soon as a measured KL is within
TOLERANCE nats of ε.

Pure: the caller trains and measures (`match_kl` takes the measurement as a function, `next_beta` the tries so
far), so a resumed run that re-measures the same tries takes the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .checks import check_beta, check_positive
from .errors import InfalignError
from .finite_k import finite_k_beta, kl_elasticity
from .transforms import Transform

__all__ = ["Try", "TOLERANCE", "MAX_CORRECTIONS", "first_beta", "next_beta", "nearest", "matched_pair", "match_kl"]

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
    check_beta(last.beta, f"the last try {last}")
    if not math.isfinite(last.kl):
        raise InfalignError(f"the last try {last}: its measured KL must be finite, got {last.kl!r}")
    s_model = kl_elasticity(transform, last.beta, k)
    slope = s_model
    if len(tries) >= 2:
        prev = tries[-2]
        d_log_beta = math.log(last.beta / prev.beta)
        if abs(d_log_beta) > 1e-9:
            secant = -(_log_kl(last.kl) - _log_kl(prev.kl)) / d_log_beta
            # A secant of the wrong sign (KL rose with β: noise) says nothing; fall back to the model's slope.
            if secant > 0:
                secant = min(max(secant, s_model / SLOPE_RANGE), s_model * SLOPE_RANGE)
                slope = math.sqrt(secant * s_model)  # the noisy secant shrunk toward the model (module docstring)
    step = (_log_kl(last.kl) - math.log(kl)) / slope
    step = min(max(step, -math.log(MAX_STEP)), math.log(MAX_STEP))
    return float(last.beta * math.exp(step))


def nearest(tries: Sequence[Try], kl: float) -> Try:
    """The try whose measured KL is nearest `kl` (in nats)."""
    if not tries:
        raise InfalignError("no tries to choose from")
    return min(tries, key=lambda t: abs(t.kl - kl))


def matched_pair(tries_a: Sequence[Try], tries_b: Sequence[Try], kl: float, tolerance: float) -> tuple[Try, Try]:
    """The try of each policy to compare: of the pairs whose KLs are within `tolerance` of each other, the one
    whose mean KL is nearest `kl`; when no pair is, the pair with the closest KLs. Only KLs are looked at."""
    if not tries_a or not tries_b:
        raise InfalignError("no tries to choose from")
    pairs = [(a, b) for a in tries_a for b in tries_b]
    matched = [(a, b) for a, b in pairs if abs(a.kl - b.kl) <= tolerance]
    if matched:
        return min(matched, key=lambda p: abs((p[0].kl + p[1].kl) / 2 - kl))
    return min(pairs, key=lambda p: abs(p[0].kl - p[1].kl))


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
