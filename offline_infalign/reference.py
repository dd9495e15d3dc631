"""Where the trainer gets log π_ref(y|x): the dataset's stored columns, a live forward, or nowhere.

- stored: the kind's reference columns (`ref_chosen_logps`/`ref_rejected_logps`, `ref_logps`, `ref_logp`),
  computed by the sampler; no reference forward at all.
- live: the policy itself with its LoRA adapter disabled.
- none: a loss that never reads the reference (`LossSpec.needs_reference` False) on a dataset without stored
  columns; the reference then feeds no metric either.
"""

from __future__ import annotations

from pathlib import Path

from .core.errors import InfalignError
from .core.losses import get_loss
from .kinds import get_kind

__all__ = ["choose_reference", "same_model"]


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
