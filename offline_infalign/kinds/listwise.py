"""Listwise: one row per prompt with all its completions (docs/math.md §6, listwise and pointwise losses).

Rows: `completions`, `rewards`, `calibrated_rewards`, `targets`, `ref_logps` (K each; K may vary per row), and
`completion_ids` (K id lists, as sampled) when the scored input has ids.
Batch: the real completions of B groups flattened row-major, and a (B, Kmax) `mask` marking them.
Loss call: `fn(h (B, Kmax), targets (B, Kmax), mask, β)`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..core.checks import check_num_samples
from ..core.losses import kl_estimates
from .base import Collator, DatasetKind, Rows, ScoredMatrices, floats

__all__ = ["ListwiseKind", "ListwiseCollator"]


class ListwiseCollator(Collator):
    """Rows of K_b completions → Σ K_b sequences (row-major) + (B, Kmax) mask, targets and stored ref_logps."""

    def sequences(self, rows):
        prompts = [r["prompt_ids"] for r in rows for _ in r["completion_ids"]]
        return prompts, [c for r in rows for c in r["completion_ids"]]

    def row_tensors(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sizes = [len(r["completion_ids"]) for r in rows]
        b, kmax = len(rows), max(sizes)
        mask = torch.zeros((b, kmax), dtype=torch.bool)
        for i, k in enumerate(sizes):
            mask[i, :k] = True
        batch = {"mask": mask}

        def padded(col):
            out = torch.zeros((b, kmax), dtype=torch.float32)
            for i, r in enumerate(rows):
                out[i, : sizes[i]] = torch.tensor([float(v) for v in r[col]])
            return out

        batch["targets"] = padded("targets")
        batch["weight"] = floats(rows, "weight", default=1.0)
        if "ref_logps" in rows[0]:
            batch["ref_logps"] = padded("ref_logps")
        return batch


class ListwiseKind(DatasetKind):
    name = "listwise"
    required_columns = ("prompt", "completions", "targets")
    reference_columns = ("ref_logps",)
    id_columns = {"completions": "completion_ids"}
    grouped = True

    def build_rows(self, m: ScoredMatrices) -> Rows:
        owner = np.arange(len(m.ids))
        columns, types = self.completion_columns(m, owner, {"completions": None})
        columns.update({"rewards": m.rewards, "calibrated_rewards": m.calibrated, "targets": m.targets,
                        "ref_logps": m.ref_logps})
        types.update({c: "floats" for c in ("rewards", "calibrated_rewards", "targets", "ref_logps")})
        return Rows(columns, types, owner)

    def check_rows(self, dataset) -> None:
        short = [i for i, c in enumerate(dataset["completions"]) if len(c) < 2]
        if short:
            row = dataset[short[0]]
            check_num_samples(len(row["completions"]), f"listwise group {row.get('prompt_id', short[0])!r}",
                              what="completions in a group")

    def collator(self, pad_token_id: int) -> ListwiseCollator:
        return ListwiseCollator(pad_token_id)

    def stored_reference(self, batch):
        return batch["ref_logps"][batch["mask"]]  # (ΣK,), row-major like the sequences

    def loss(self, fn, logps, ref, batch, beta):
        mask = batch["mask"]
        h = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device).masked_scatter(
            mask, logps - ref.to(logps.dtype))  # (B, Kmax), row-major like the collator
        losses, metrics = fn(h, batch["targets"].to(logps.dtype), mask, beta)
        lp = torch.zeros_like(h).masked_scatter(mask, logps.detach())
        targets = batch["targets"]
        best = targets.masked_fill(~mask, -math.inf).argmax(-1, keepdim=True)
        worst = targets.masked_fill(~mask, math.inf).argmin(-1, keepdim=True)
        metrics["logps/chosen"] = lp.gather(-1, best).mean()
        metrics["logps/rejected"] = lp.gather(-1, worst).mean()
        metrics.update(kl_estimates(h, mask))
        return losses, metrics
