"""The numbers of an evaluation report from scored samples (docs/math.md §8), next to the tradeoff tool's prediction.

Pure: arrays in, a JSON-ready dict out, so the arithmetic is testable without models (stages/evaluate.py
draws and scores the samples). The win rates are exact over each side's empirical distribution
(core.estimators) with a bootstrap interval over prompts; the KL is the mean log π(y|x) − log π_ref(y|x)
over the policy's own samples; predictions come from core.tradeoff for the adapter's transform, tilt and β. `compare` gives, for policies
judged against the same base samples on the same prompts, each one's paired difference from a baseline
(docs/math.md §10) beside both KLs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..core.checks import check_finite
from ..core.errors import InfalignError
from ..core.estimators import compare_win_rates, estimate_kl, estimate_win_rate
from ..core.losses import LOSSES
from ..core.procedures import PROCEDURE_NAMES
from ..core.tradeoff import predict

__all__ = ["summarize", "compare", "make_predict_fn", "default_ns", "length_summary", "cut_note", "PREDICTION_NOTE",
           "PredictFn", "CUT_NOTE_ABOVE"]

PREDICTION_NOTE = (
    "'predicted' values come from the calibrated-space analysis (docs/math.md §4) and assume the policy is exactly "
    "the tilted policy pi_ref * exp(Phi(C)/beta) / Z for the adapter's transform, tilt and beta; a finite-data, "
    "LoRA-trained adapter only approximates it, so read the gap as how well training reached the target."
)

# Above this fraction of completions cut at max_new_tokens (on either side) the report says what that means.
CUT_NOTE_ABOVE = 0.05

PredictFn = Callable[[str, int], Any]  # (procedure, n) -> object with .win_rate, .kl, .standard_win_rate, or None


def _as_2d(name: str, a) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InfalignError(f"{name} must have shape (prompts, samples) with both >= 1, got shape {arr.shape}")
    return check_finite(arr, name, hint="the judge or the log-probs produced NaN/inf")


def _float(x) -> float | None:
    return None if x is None else float(x)


def summarize(
    policy_rewards,
    base_rewards,
    log_ratios,
    procedures: Sequence[str],
    ns: Sequence[int],
    predict_fn: PredictFn | None = None,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    token_kls=None,
) -> dict[str, Any]:
    """The numbers of a report from scored samples (docs/math.md §8).

    policy_rewards (P, M): judge rewards of M policy samples per prompt; base_rewards (P, M'): of M' base samples;
    log_ratios (P, M) or flat: log π(y|x) − log π_ref(y|x) for the policy samples; token_kls (like log_ratios,
    optional): each policy sample's token-level KL (logprobs.ids_logps_and_kl). With token_kls, "kl" and
    "kl_stderr" are their mean and its standard error, and "kl_sequence" / "kl_sequence_stderr" those of the
    log-ratios (the same KL, estimated with more variance); without, "kl" is the log-ratios'.
    predict_fn(procedure, n) returns a core.tradeoff.Prediction (or None when no prediction applies).
    Returns {"kl", "kl_stderr", "predicted_kl", "standard_win_rate": {...}, "results": {proc: {str(n): {...}}},
    "mean_reward": {"policy", "base"}, "num_prompts", "samples"}; each win-rate entry has win_rate, ci_low,
    ci_high and predicted (None without a prediction).
    """
    pol = _as_2d("policy_rewards", policy_rewards)  # (P, M)
    base = _as_2d("base_rewards", base_rewards)  # (P, M')
    if pol.shape[0] != base.shape[0]:
        raise InfalignError(f"policy_rewards has {pol.shape[0]} prompts but base_rewards has {base.shape[0]}")
    ratios = np.asarray(log_ratios, dtype=np.float64)
    if ratios.size != pol.size:
        raise InfalignError(f"log_ratios has {ratios.size} values but there are {pol.size} policy samples")
    for procedure in procedures:
        if procedure not in PROCEDURE_NAMES:
            raise InfalignError(f"procedure {procedure!r} not allowed; allowed: {', '.join(PROCEDURE_NAMES)}")

    def entry(procedure: str, n: int, predicted: float | None) -> dict[str, Any]:
        est = estimate_win_rate(pol, base, n, procedure, num_bootstrap=num_bootstrap, confidence=confidence,
                                seed=seed)
        return {"win_rate": float(est.win_rate), "ci_low": float(est.ci_low), "ci_high": float(est.ci_high),
                "predicted": _float(predicted)}

    def prediction(procedure: str, n: int):
        return predict_fn(procedure, n) if predict_fn is not None else None

    sequence_kl = estimate_kl(ratios)
    if token_kls is not None:
        tokens = np.asarray(token_kls, dtype=np.float64)
        if tokens.shape != ratios.shape:
            raise InfalignError(f"token_kls has shape {tokens.shape} but log_ratios {ratios.shape}")
        kl = estimate_kl(tokens)
    else:
        kl = sequence_kl
    # KL and N = 1 (one draw from each side) do not depend on the procedure: any registered one computes them.
    first = prediction(procedures[0] if procedures else PROCEDURE_NAMES[0], 1)
    results: dict[str, dict[str, Any]] = {}
    for procedure in procedures:
        results[procedure] = {}
        for n in ns:
            pred = prediction(procedure, int(n))
            results[procedure][str(int(n))] = entry(procedure, int(n), None if pred is None else pred.win_rate)
    return {
        "kl": float(kl.kl),
        "kl_stderr": float(kl.stderr),
        **({} if token_kls is None else {"kl_sequence": float(sequence_kl.kl),
                                         "kl_sequence_stderr": float(sequence_kl.stderr)}),
        "predicted_kl": None if first is None else _float(first.kl),
        "standard_win_rate": entry(PROCEDURE_NAMES[0], 1, None if first is None else first.standard_win_rate),
        "results": results,
        "mean_reward": {"policy": float(pol.mean()), "base": float(base.mean())},
        "num_prompts": int(pol.shape[0]),
        "samples": int(pol.shape[1]),
    }


def compare(policy_rewards: dict[str, Any], base_rewards, kls: dict[str, tuple[float, float]], baseline: str,
            procedures: Sequence[str], ns: Sequence[int], kl_tolerance: float, num_bootstrap: int = 1000,
            confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each policy against `baseline`: differences of win rates with paired bootstrap intervals (docs/math.md §10).

    policy_rewards: {name: (P, M) judge rewards}, every policy on the same P prompts in the same order as
    base_rewards (P, M'), the base samples they all share. kls: {name: (kl, kl_stderr)}.
    Returns {name: {"baseline", "kl": {name: kl, baseline: kl}, "kl_stderr": {...}, "kl_difference",
    "kl_matched" (|difference| <= kl_tolerance), "kl_tolerance", "standard": {difference, ci_low, ci_high},
    "results": {procedure: {str(n): {difference, ci_low, ci_high}}}}} for every policy but the baseline.
    A difference of win rates at unmatched KL is confounded by the KL: more KL buys win rate along the curve.
    """
    if baseline not in policy_rewards:
        raise InfalignError(f"baseline {baseline!r} is not one of the policies ({', '.join(policy_rewards)})")
    base = _as_2d("base_rewards", base_rewards)
    rewards = {name: _as_2d(f"rewards of policy {name!r}", r) for name, r in policy_rewards.items()}

    def diff(name: str, procedure: str, n: int) -> dict[str, float]:
        d = compare_win_rates(rewards[name], rewards[baseline], base, n, procedure, num_bootstrap=num_bootstrap,
                              confidence=confidence, seed=seed)
        return {"difference": float(d.difference), "ci_low": float(d.ci_low), "ci_high": float(d.ci_high)}

    out: dict[str, dict[str, Any]] = {}
    for name in rewards:
        if name == baseline:
            continue
        gap = float(kls[name][0] - kls[baseline][0])
        out[name] = {
            "baseline": baseline,
            "kl": {name: float(kls[name][0]), baseline: float(kls[baseline][0])},
            "kl_stderr": {name: float(kls[name][1]), baseline: float(kls[baseline][1])},
            "kl_difference": gap,
            "kl_matched": bool(abs(gap) <= kl_tolerance),
            "kl_tolerance": float(kl_tolerance),
            "standard": diff(name, PROCEDURE_NAMES[0], 1),
            "results": {proc: {str(int(n)): diff(name, proc, int(n)) for n in ns} for proc in procedures},
        }
    return out


def length_summary(sides: dict[str, Sequence[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per side, the fraction of completions cut at max_new_tokens and the mean completion length (docs/math.md §8).

    sides: {"policy": P sample dicts, "base": ...}, each with `completion_ids` (K lists) and `finish_reasons`
    (K of "stop"/"length"), as the sampler returns them. The length is in tokens as generated: the stop token
    counts when one ended the completion. Returns {"cut_fraction": {side: f}, "mean_length": {side: mean}}.
    """
    out: dict[str, dict[str, float]] = {"cut_fraction": {}, "mean_length": {}}
    for side, samples in sides.items():
        reasons = [r for s in samples for r in s["finish_reasons"]]
        lengths = [len(c) for s in samples for c in s["completion_ids"]]
        if not reasons or len(reasons) != len(lengths):
            raise InfalignError(f"{side} samples have {len(reasons)} finish reasons for {len(lengths)} completions")
        bad = sorted({r for r in reasons} - {"stop", "length"})
        if bad:
            raise InfalignError(f"{side} samples have finish reasons {bad}; allowed: stop, length")
        out["cut_fraction"][side] = float(np.mean([r == "length" for r in reasons]))
        out["mean_length"][side] = float(np.mean(lengths))
    return out


def cut_note(cut_fraction: dict[str, float], max_new_tokens: int) -> str | None:
    """The report's note when many completions were cut at max_new_tokens (None when few were)."""
    if max(cut_fraction.values(), default=0.0) <= CUT_NOTE_ABOVE:
        return None
    sides = " and ".join(f"{f:.0%} of the {side} samples" for side, f in cut_fraction.items())
    return (f"{sides} hit max_new_tokens={max_new_tokens}: win rates and KL refer to the length-truncated "
            "policies (a cut completion has no stop-token term, docs/math.md §9); raise --max-new-tokens to "
            "measure the policy the adapter was trained as")


def default_ns(samples: int, trained_n: int | None = None) -> list[int]:
    """1, 2, 4, ... up to `samples`, `samples` itself, and the N the adapter was trained for (if it fits).

    N = M is included: the estimator draws the N without replacement, so it stays unbiased there (docs/math.md §8).
    """
    ns = {1, int(samples)}
    n = 2
    while n <= samples:
        ns.add(n)
        n *= 2
    if trained_n is not None and 1 <= int(trained_n) <= samples:
        ns.add(int(trained_n))
    return sorted(ns)


def _untilted(loss) -> bool:
    """A baseline loss (DPO, IPO) does not target a tilt of the calibrated reward: no prediction applies.

    An unknown loss name (a foreign record) is not known to be a baseline, so it keeps its prediction.
    """
    return isinstance(loss, str) and loss in LOSSES and not LOSSES[loss].tilted


def make_predict_fn(transform, beta: float | None, loss: str | None) -> PredictFn | None:
    """predict(procedure, n) from core.tradeoff for the adapter's tilt, or None when no tilt applies."""
    if transform is None or beta is None or _untilted(loss):
        return None

    cache: dict[tuple[str, int], Any] = {}

    def fn(procedure: str, n: int):
        if (procedure, n) not in cache:
            cache[(procedure, n)] = predict(transform, beta, procedure=procedure, n=n)
        return cache[(procedure, n)]

    return fn
