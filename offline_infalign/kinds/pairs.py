"""Pairs: one row per (chosen, rejected) pair of a prompt's completions (docs/math.md §6, pairwise losses).

Rows: `chosen` is the completion of larger raw reward (so of larger target), `target_margin` = Φ_chosen −
Φ_rejected (not divided by β, ≥ 0), `soft_label` = σ(target_margin), `weight` = 1 (pairs are drawn uniformly, so
every pair stands for the same share of the all-pairs loss; the column lets a trainer weight),
`ref_chosen_logps` / `ref_rejected_logps`, and `chosen_ids` / `rejected_ids` when the scored input has ids.
Which pairs (`pairs`): `all` — every pair of a prompt, or `pairs_per_prompt` of them drawn without replacement;
`best_worst` — one pair per prompt, the highest against the lowest raw reward (the DPO/IPO baselines of
docs/math.md §6). Either way a pair of EQUAL raw rewards is never a row: equal rewards mean equal targets, and
a row would name a winner the data do not have (DPO's loss reads only which one is chosen). The minimizer of the
tilted losses is unchanged (a tied pair only asks h_i = h_j, which the tilt satisfies), and the skipped pairs
are counted in the manifest.
Batch: 2B sequences, the B chosen then the B rejected. Loss call: `fn(h_chosen, h_rejected, target_margin, β)`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from ..core.losses import kl_estimates
from . import PAIR_CHOICES
from .base import Collator, DatasetKind, Rows, ScoredMatrices, floats

__all__ = ["PairsKind", "PairsCollator", "PAIR_CHOICES", "to_trl_conversational"]


def _pair_rng(seed: int, prompt_id: str) -> np.random.Generator:
    # Per prompt, so the pairs of a prompt do not depend on which other prompts are in the artifact.
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"pairs:{seed}:{prompt_id}".encode()).digest()[:8],
                                                "little"))


class PairsCollator(Collator):
    """Rows → 2B sequences (chosen rows then rejected rows) + target_margin, weight, stored ref log-probs (B,)."""

    def sequences(self, rows):
        prompts = [r["prompt_ids"] for r in rows]
        return prompts + prompts, [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]

    def row_tensors(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"target_margin": floats(rows, "target_margin", default=0.0),
                 "weight": floats(rows, "weight", default=1.0)}
        for col in PairsKind.reference_columns:
            if col in rows[0]:
                batch[col] = floats(rows, col)
        return batch


class PairsKind(DatasetKind):
    name = "pairs"
    required_columns = ("prompt", "chosen", "rejected", "target_margin")
    margin_columns = ("target_margin",)
    reference_columns = ("ref_chosen_logps", "ref_rejected_logps")
    id_columns = {"chosen": "chosen_ids", "rejected": "rejected_ids"}

    def build_rows(self, m: ScoredMatrices) -> Rows:
        """`m.pairs` = all: all untied pairs of each prompt, or `pairs_per_prompt` of them drawn without
        replacement; best_worst: (highest, lowest) raw reward per prompt, prompts whose K rewards are all equal
        skipped. Chosen = the larger raw reward."""
        rewards, targets, ref = m.rewards, m.targets, m.ref_logps
        if m.pairs == "best_worst":
            c_idx, r_idx, owner, counts = _best_worst(rewards)
        else:
            c_idx, r_idx, owner, counts = _all_pairs(rewards, m)
        margin = targets[owner, c_idx] - targets[owner, r_idx]  # ≥ 0: Φ is increasing and rewards are untied
        columns, types = self.completion_columns(m, owner, {"chosen": c_idx, "rejected": r_idx})
        columns.update({
            "target_margin": margin,
            "soft_label": 1.0 / (1.0 + np.exp(-margin)),
            "weight": np.ones(len(owner)),
            "ref_chosen_logps": ref[owner, c_idx],
            "ref_rejected_logps": ref[owner, r_idx],
        })
        types.update({c: "float" for c in ("target_margin", "soft_label", "weight", "ref_chosen_logps",
                                           "ref_rejected_logps")})
        return Rows(columns, types, owner, counts)

    def collator(self, pad_token_id: int) -> PairsCollator:
        return PairsCollator(pad_token_id)

    def stored_reference(self, batch):
        return torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])  # (2B,)

    def loss(self, fn, logps, ref, batch, beta):
        b = logps.shape[0] // 2
        h = logps - ref.to(logps.dtype)  # (2B,)
        losses, metrics = fn(h[:b], h[b:], batch["target_margin"].to(logps.dtype), beta)
        metrics["logps/chosen"] = logps[:b].detach().mean()
        metrics["logps/rejected"] = logps[b:].detach().mean()
        metrics.update(kl_estimates(h))
        return losses, metrics


def _all_pairs(rewards: np.ndarray, m: ScoredMatrices):
    """(chosen index, rejected index, owner, counts) of every untied pair i < j, or `pairs_per_prompt` of them."""
    k = rewards.shape[1]
    ii, jj = np.triu_indices(k, 1)  # all K(K−1)/2 pairs i < j
    rows_i, rows_j, owner, tied = [], [], [], 0
    for a, pid in enumerate(m.ids):
        untied = np.flatnonzero(rewards[a, ii] != rewards[a, jj])
        tied += len(ii) - len(untied)
        if m.pairs_per_prompt is not None and m.pairs_per_prompt < len(untied):
            pick = np.sort(_pair_rng(m.seed, pid).choice(untied, size=m.pairs_per_prompt, replace=False))
        else:
            pick = untied
        rows_i.append(ii[pick])
        rows_j.append(jj[pick])
        owner.append(np.full(len(pick), a))
    i, j, owner = np.concatenate(rows_i), np.concatenate(rows_j), np.concatenate(owner)
    first = rewards[owner, i] > rewards[owner, j]
    return np.where(first, i, j), np.where(first, j, i), owner, {"skipped_tied_pairs": tied}


def _best_worst(rewards: np.ndarray):
    """(chosen, rejected, owner, counts): per prompt the first highest and the first lowest raw reward (the K
    samples are exchangeable, so which of equal rewards is taken does not matter); all-tied prompts skipped."""
    rows = np.arange(rewards.shape[0])
    best, worst = rewards.argmax(axis=1), rewards.argmin(axis=1)
    keep = rewards[rows, best] > rewards[rows, worst]
    return best[keep], worst[keep], rows[keep], {"skipped_tied_prompts": int((~keep).sum())}


def to_trl_conversational(pairs):
    """Pairs whose prompt is a message list, with chosen/rejected as one assistant message each.

    TRL's DPOTrainer reads a conversational prompt only together with conversational completions, while this
    package stores completions as plain strings (one format for every consumer). Plain-text prompts are already
    in TRL's format and come back unchanged.
    """
    if not len(pairs) or isinstance(pairs[0]["prompt"], str):
        return pairs

    def wrap(row):
        return {k: [{"role": "assistant", "content": row[k]}] for k in ("chosen", "rejected")}

    return pairs.map(wrap)
