"""BoN rows: one row per completion, weighted (docs/math.md §6, weighted SFT / best-of-N distillation).

Rows: `completion` (and `completion_ids`, as sampled, when the scored input has ids), `reward`,
`calibrated_reward`, `target`, `ref_logp`, and `weight` = softmax(target/β) over
its prompt's K completions (sums to 1): the self-normalized importance weights of the tilted policy π* against
π_ref. Batch: B sequences, one per row. Loss call: `fn(policy log-probs (B,), weight (B,))`; the weight is
inside the loss, so the trainer does not weight the rows again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.errors import InfalignError
from ..core.losses import kl_estimates
from .base import Collator, DatasetKind, Rows, ScoredMatrices, floats

__all__ = ["BonKind", "BonCollator"]


class BonCollator(Collator):
    """Rows → B sequences + weight and stored ref_logp (B,)."""

    def sequences(self, rows):
        return [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows]

    def row_tensors(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"weight": floats(rows, "weight")}
        if "ref_logp" in rows[0]:
            batch["ref_logp"] = floats(rows, "ref_logp")
        return batch


class BonKind(DatasetKind):
    name = "bon"
    required_columns = ("prompt", "completion", "weight")
    reference_columns = ("ref_logp",)
    id_columns = {"completion": "completion_ids"}
    beta_in_rows = True  # weight = softmax(target/β)

    def build_rows(self, m: ScoredMatrices) -> Rows:
        p, k = m.targets.shape
        z = m.targets / m.beta
        w = np.exp(z - z.max(axis=1, keepdims=True))  # softmax(Φ/β) per prompt, shifted for overflow safety
        w /= w.sum(axis=1, keepdims=True)
        owner = np.repeat(np.arange(p), k)
        columns, types = self.completion_columns(m, owner, {"completion": np.tile(np.arange(k), p)})
        columns.update({"reward": m.rewards.reshape(-1), "calibrated_reward": m.calibrated.reshape(-1),
                        "target": m.targets.reshape(-1), "ref_logp": m.ref_logps.reshape(-1),
                        "weight": w.reshape(-1)})
        types.update({c: "float" for c in ("reward", "calibrated_reward", "target", "ref_logp", "weight")})
        return Rows(columns, types, owner)

    def at_beta(self, dataset, beta: float):
        """Recompute weight = softmax(target/β) within each prompt (the stored weights are for the manifest's β)."""
        if "target" not in dataset.column_names or "prompt_id" not in dataset.column_names:
            raise InfalignError("a bon dataset trained at a beta other than its manifest's needs the 'target' and "
                                "'prompt_id' columns to recompute its weights")
        ids = np.asarray(dataset["prompt_id"])
        z = np.asarray(dataset["target"], dtype=np.float64) / beta
        _, group = np.unique(ids, return_inverse=True)
        zmax = np.full(group.max() + 1, -np.inf)
        np.maximum.at(zmax, group, z)
        e = np.exp(z - zmax[group])
        total = np.zeros_like(zmax)
        np.add.at(total, group, e)
        return dataset.remove_columns("weight").add_column("weight", (e / total[group]).tolist())

    def collator(self, pad_token_id: int) -> BonCollator:
        return BonCollator(pad_token_id)

    def stored_reference(self, batch):
        return batch.get("ref_logp")  # (B,)

    def loss(self, fn, logps, ref, batch, beta):
        losses, metrics = fn(logps, batch["weight"].to(logps.dtype))
        metrics["logps/completion"] = logps.detach().mean()
        if ref is not None:  # weighted SFT runs without a reference when the dataset stores none
            metrics.update(kl_estimates(logps - ref.to(logps.dtype)))
        return losses, metrics

    def row_weight(self, batch, losses):
        return torch.ones_like(losses)  # the weight is already inside the loss
