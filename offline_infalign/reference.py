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
    """The same hub id, or two paths to one folder."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def choose_reference(requested: str, loss: str, kind: str, columns, manifest: dict, weights_dtype: str,
                     model: str | None = None) -> tuple[str, str]:
    """('stored' | 'live' | 'none', reason). 'none': weighted SFT without stored columns skips the reference.

    'auto' takes the stored columns only when they exist, the base weights are in the dtype they were computed
    in, and the model is the one the manifest names (when it names one): otherwise they would be another
    policy's log-probs.
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
    if model is not None and manifest.get("model") and not same_model(str(manifest["model"]), str(model)):
        return "live", (f"the stored reference log-probs are of model {manifest['model']!r}, not {model!r} "
                        "(pass reference='stored' if they are the same weights)")
    if weights_dtype != stored_dtype:
        return "live", (f"base weights are {weights_dtype} but the stored reference log-probs were computed in "
                        f"{stored_dtype}")
    return "stored", f"stored columns present and base weights are {weights_dtype}, as when they were computed"
