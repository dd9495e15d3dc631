"""Where the trainer gets log π_ref(y|x): the dataset's stored columns, a live forward, or nowhere.

- stored: the kind's reference columns (`ref_chosen_logps`/`ref_rejected_logps`, `ref_logps`, `ref_logp`),
  written by the sample stage; no reference forward at all.
- live: the policy itself with its LoRA adapter disabled.
- none: a loss that never reads the reference (`LossSpec.needs_reference` False) on a dataset without stored
  columns; the reference then feeds no metric either.

Stored columns must be what the trainer's own forward of the base weights computes on the same ids (docs/math.md
§9): a reference off by e(y) moves the fitted policy by e(y). Two checks stand before they are used:
`choose_reference` reads the manifests (the model's fingerprint, the precision `ref_dtype` they were computed in),
then `check_stored_reference` recomputes a seeded sample of them with the trainer's forward and measures the gap;
`decide_reference` turns an `auto` choice live above the tolerance and warns for `stored`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InfalignError
from ..core.losses import get_loss
from ..kinds import get_kind
from ..models.sampling import forward_ref_logps

__all__ = ["choose_reference", "same_model", "check_stored_reference", "decide_reference", "reference_tolerance",
           "CHECK_SEQUENCES"]

logger = logging.getLogger(__name__)

# Sequences the self-check recomputes by default (seeded sample of the training rows).
CHECK_SEQUENCES = 32
# Default tolerance on the mean gap per token (nats), by the precision of the base weights; measured on Gemma 3
# 270M (benchmarks/README.md, "One precision for the reference"). float32: 40x the gap between the hf sampler's
# float32 numbers and a float32 teacher-forced pass (2.3e-5 mean, 3.6e-5 max per token), 8x under what a bfloat16
# reference read by float32 training is off by (8.0e-3 per token; vLLM's bf16 scoring pass: 7.9e-3). 16-bit: the
# bf16 forward's own rounding moves with the batch shape by 8.3e-3 per token on average (2.3e-2 at most), so 3e-2
# passes a bf16 reference of these weights and catches a foreign one (vLLM and transformers are reported to
# disagree by up to ~0.3 per token in bf16).
_TOLERANCE = {"float32": 1e-3, "float64": 1e-3}
_TOLERANCE_16BIT = 3e-2


def same_model(a: str, b: str) -> bool:
    """Two paths to one folder, or the same hub id. Only a fallback for manifests without a model fingerprint:
    a relative path recorded in one directory may name another folder in another."""
    pa, pb = Path(a), Path(b)
    if pa.exists() or pb.exists():
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return a == b


def choose_reference(requested: str, loss: str, kind: str, columns, manifest: dict, weights_dtype: str,
                     model: str | None = None, fingerprint: str | None = None) -> tuple[str, str]:
    """('stored' | 'live' | 'none', reason). 'none': weighted SFT without stored columns skips the reference.

    'auto' takes the stored columns only when they exist, the base weights are in the dtype they were computed
    in, and the model is the one that computed them: its `fingerprint` (fingerprint.fingerprint_model) equals the
    manifest's `model_fingerprint` (or, for a manifest without one, the paths name one folder). Otherwise they
    would be another policy's log-probs.
    """
    reference_columns = get_kind(kind).reference_columns
    has_stored = all(c in columns for c in reference_columns)
    stored_dtype = str(manifest.get("ref_dtype") or manifest.get("dtype") or "float32")
    if stored_dtype == "auto":  # 'auto' says nothing about what was used; the conservative reading is float32
        stored_dtype = "float32"
    if requested == "stored":
        if not has_stored:
            raise InfalignError(
                f"reference='stored' needs column(s) {', '.join(reference_columns)} in the {kind!r} dataset; "
                "use reference='live' (policy with the adapter disabled) instead"
            )
        return "stored", "requested"
    if requested == "live":
        return "live", "requested"
    if not has_stored:
        if not get_loss(loss).needs_reference:
            return "none", f"{loss} needs no reference and the dataset has no stored reference columns"
        return "live", "the dataset has no stored reference log-prob columns"
    recorded = manifest.get("model_fingerprint")
    if recorded and fingerprint:
        if recorded != fingerprint:
            return "live", (f"the stored reference log-probs were computed by model {manifest.get('model')!r} "
                            f"(fingerprint {recorded}), but the model trained is {model!r} (fingerprint "
                            f"{fingerprint}): other weights or files (pass reference='stored' to use them anyway)")
    elif model is not None and manifest.get("model") and not same_model(str(manifest["model"]), str(model)):
        return "live", (f"the stored reference log-probs are of model {manifest['model']!r}, not {model!r} "
                        "(the dataset records no model fingerprint; pass reference='stored' if they are the same "
                        "weights)")
    if weights_dtype != stored_dtype:
        return "live", (f"base weights are {weights_dtype} but the stored reference log-probs were computed in "
                        f"{stored_dtype}")
    same = " by the same model (fingerprint " + str(recorded) + ")" if recorded and fingerprint else ""
    return "stored", (f"stored columns present and base weights are {weights_dtype}, as when they were "
                      f"computed{same}")


def reference_tolerance(weights_dtype: str) -> float:
    """The default tolerance (nats per token, mean over the checked sequences) for base weights of this dtype."""
    return _TOLERANCE.get(weights_dtype, _TOLERANCE_16BIT)


def check_stored_reference(model, dataset, kind, pad_token_id: int, num_sequences: int = CHECK_SEQUENCES,
                           seed: int = 0, batch_size: int = 8) -> dict[str, Any]:
    """Recompute the stored log π_ref of a seeded sample of the dataset's sequences with `model` and compare.

    model: the base weights as the trainer runs them (the policy with its adapter disabled; the caller does
    that). dataset: tokenized training rows of `kind` with its reference columns. Up to `num_sequences`
    sequences, drawn from up to as many rows. The forward is the sample stage's teacher-forced pass
    (`sampling.forward_ref_logps`: the trainer's group forward, float32 log-softmax), so a reference that pass
    stored checks to rounding.
    Returns {sequences, tokens, gap_per_sequence: {mean, max}, gap_per_token: {mean (Σ|gap| / Σ tokens), max
    (largest |gap| / tokens of one sequence)}, seconds}.
    """
    import torch


    rng = np.random.default_rng(seed)
    picked = sorted(int(i) for i in rng.choice(len(dataset), size=min(num_sequences, len(dataset)), replace=False))
    rows = [dataset[i] for i in picked]
    collator = kind.collator(pad_token_id)
    prompts, completions = collator.sequences(rows)
    stored = kind.stored_reference(collator(rows)).double().numpy()
    pick = np.sort(rng.choice(len(prompts), size=min(num_sequences, len(prompts)), replace=False))
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            live = np.array([x for (x,) in forward_ref_logps(model, [prompts[i] for i in pick],
                                                              [[completions[i]] for i in pick], pad_token_id,
                                                              batch_size)], dtype=np.float64)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    gap = np.abs(live - stored[pick])
    tokens = np.array([max(1, len(completions[i])) for i in pick], dtype=np.float64)
    return {"sequences": int(len(pick)), "tokens": int(tokens.sum()),
            "gap_per_sequence": {"mean": float(gap.mean()), "max": float(gap.max())},
            "gap_per_token": {"mean": float(gap.sum() / tokens.sum()), "max": float((gap / tokens).max())},
            "seconds": round(seconds, 3)}


def decide_reference(requested: str, reference: str, why: str, check: dict[str, Any], tolerance: float
                     ) -> tuple[str, str]:
    """The reference after the self-check: `auto` goes live when the stored columns are off by more than
    `tolerance` nats per token on average (saying by how much); `stored` stays stored with a warning."""
    per_token, per_seq = check["gap_per_token"], check["gap_per_sequence"]
    measured = (f"recomputed on {check['sequences']} sampled sequences, the stored reference log-probs differ from "
                f"this model's own forward by {per_token['mean']:.2e} nats per token on average (up to "
                f"{per_seq['max']:.3g} nats per sequence)")
    if per_token["mean"] <= tolerance:
        return reference, f"{why}; {measured}, within the tolerance {tolerance:g}"
    if requested == "stored":
        logger.warning("reference='stored' as requested, but %s, above the tolerance %g: the fitted policy moves by "
                       "that error (docs/math.md §9)", measured, tolerance)
        return reference, f"requested; {measured}, above the tolerance {tolerance:g}"
    return "live", (f"{measured}, above the tolerance {tolerance:g} (e.g. computed in another precision or by "
                    "another implementation); the reference is computed live (pass reference='stored' to use them "
                    "anyway)")
