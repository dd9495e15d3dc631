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
import os
from typing import Any

import numpy as np
import torch

from ..core.errors import InfalignError
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
    # pairs: 'all' or 'best_worst' (PAIR_CHOICES); pairs_per_prompt: draw that many of 'all'; seed: of the draw.
    options = {"pairs": "all", "pairs_per_prompt": None, "seed": 0}

    def check_options(self, options: dict[str, Any]) -> None:
        pairs = options["pairs"]
        if pairs not in PAIR_CHOICES:
            raise InfalignError(f"pairs {pairs!r} is not allowed; allowed: {', '.join(PAIR_CHOICES)}")
        if options["pairs_per_prompt"] is not None and pairs != "all":
            raise InfalignError(f"pairs_per_prompt applies to pairs='all' only, got pairs={pairs!r}")

    def build_rows(self, m: ScoredMatrices) -> Rows:
        """`pairs` = all: all untied pairs of each prompt, or `pairs_per_prompt` of them drawn without
        replacement; best_worst: (highest, lowest) raw reward per prompt, prompts whose K rewards are all equal
        skipped. Chosen = the larger raw reward."""
        rewards, targets, ref = m.rewards, m.targets, m.ref_logps
        if m.options["pairs"] == "best_worst":
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
    """(chosen index, rejected index, owner, counts) of every untied pair i < j, or `pairs_per_prompt` of them drawn
    uniformly without replacement; in the order i, then j, per prompt.

    Drawn pairs are never enumerated (at K = 100 000 there are 5e9 pairs, 40 GB per index array): the untied pairs
    of a prompt are numbered in that order, the ranks to keep are drawn (`Generator.choice` over the count costs
    the number drawn) and each rank is turned into its pair (`UntiedPairs`). The ranks drawn are those the
    enumeration of every pair drew before, so every seed gives the pairs it gave then. All pairs are listed block
    by block, after a check that they fit in memory (`_check_size`).
    """
    counts, tied = untied_counts(rewards)
    _check_size(counts, m)
    draw = m.options["pairs_per_prompt"] is not None and bool((counts > m.options["pairs_per_prompt"]).any())
    parts = []
    for lo, hi in _blocks(rewards.shape, few=draw):
        parts.append(_drawn(rewards[lo:hi], counts[lo:hi], m, lo) if draw else _every(rewards[lo:hi], lo))
    empty = np.zeros(0, dtype=np.int64)
    i, j, owner = (np.concatenate([part[n] for part in parts]) if parts else empty for n in range(3))
    first = rewards[owner, i] > rewards[owner, j]
    return np.where(first, i, j), np.where(first, j, i), owner, {"skipped_tied_pairs": int(tied.sum())}


def untied_counts(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(untied pairs, tied pairs) per prompt of a (P, K) reward matrix, from its groups of equal rewards:
    tied = Σ_groups c(c − 1)/2, untied = K(K − 1)/2 − tied. O(PK log K), nothing of size K²."""
    p, k = rewards.shape
    if not p * k:
        return np.zeros(p, dtype=np.int64), np.zeros(p, dtype=np.int64)
    ranked = np.sort(rewards, axis=1)
    new_group = np.ones((p, k), dtype=bool)
    new_group[:, 1:] = ranked[:, 1:] != ranked[:, :-1]  # != : -0.0 and 0.0 are one reward
    starts = np.flatnonzero(new_group.ravel())
    sizes = np.diff(np.r_[starts, p * k])
    tied = np.bincount(starts // k, weights=sizes * (sizes - 1) // 2, minlength=p).astype(np.int64)
    return k * (k - 1) // 2 - tied, tied


# Working memory per block of prompts: `UntiedPairs` holds ~10 int64 values per completion, `_every` ~33 bytes per
# pair (two float64 gathers, a mask, the indices found). 32 MB blocks keep the temporaries in a few tens of MB and
# run fastest of 0.1-32 MB (K = 32: 1.2 s for 20 000 prompts in one block of 80 MB arrays, 0.5 s in blocks of 2 000).
_BLOCK_BYTES = 1 << 25


def _blocks(shape: tuple[int, int], few: bool):
    p, k = shape
    per_prompt = 80 * k if few else 33 * (k * (k - 1) // 2)
    size = max(1, _BLOCK_BYTES // max(per_prompt, 1))
    return [(lo, min(lo + size, p)) for lo in range(0, p, size)]


def _every(rewards: np.ndarray, offset: int):
    """(i, j, owner) of every untied pair of a block of prompts, listed as i < j row by row."""
    ii, jj = np.triu_indices(rewards.shape[1], 1)
    owner, pair = np.nonzero(rewards[:, ii] != rewards[:, jj])  # row-major: by prompt, then i, then j
    return ii[pair], jj[pair], owner + offset


def _drawn(rewards: np.ndarray, counts: np.ndarray, m: ScoredMatrices, offset: int):
    """(i, j, owner) of `pairs_per_prompt` untied pairs drawn per prompt of a block (all of them where fewer)."""
    ranks, prompts = [], []
    for a, count in enumerate(counts.tolist()):
        if m.options["pairs_per_prompt"] < count:
            pid = m.ids[offset + a]
            ranks.append(np.sort(_pair_rng(m.options["seed"], pid).choice(count, size=m.options["pairs_per_prompt"], replace=False)))
        else:
            ranks.append(np.arange(count))
        prompts.append(np.full(len(ranks[-1]), a))
    prompts = np.concatenate(prompts) if prompts else np.zeros(0, dtype=np.int64)
    i, j = UntiedPairs(rewards).at(prompts, np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64))
    return i, j, prompts + offset


class UntiedPairs:
    """The untied pairs (i, j) — i < j, rewards[i] != rewards[j] — of each prompt of a (P, K) reward block,
    numbered 0..counts[a]-1 per prompt in the order i, then j, without listing them: O(PK log K) to set up,
    O(log PK) per pair looked up (`at`).

    Row i of a prompt holds u_i = (K − 1 − i) − (members of i's reward group after i) untied pairs, so a rank r
    falls in the row i whose cumulative count passes r, as its o-th pair. The o-th index after i outside i's group
    is j = i + 1 + o + k, where k counts the members of the group it skips: those after i (i is the p-th of its
    group by index, e_m the m-th) that come before j, i.e. with e_m − m ≤ o + i − p. e_m − m never decreases along
    a group, so k is one binary search over every group's e_m − m laid end to end, each group offset by `stride`.
    """

    def __init__(self, rewards: np.ndarray):
        p, k = rewards.shape
        self.k = k
        order = np.argsort(rewards, axis=1, kind="stable")  # by reward, ties by index
        ranked = np.take_along_axis(rewards, order, axis=1)
        new_group = np.ones((p, k), dtype=bool)
        new_group[:, 1:] = ranked[:, 1:] != ranked[:, :-1]  # != : -0.0 and 0.0 are one reward, as before
        group_of_pos = np.cumsum(new_group.ravel()) - 1  # groups numbered across the block; a prompt starts one
        self.group_starts = np.flatnonzero(new_group.ravel())  # first flat position of each group
        sizes = np.diff(np.r_[self.group_starts, p * k])
        pos_in_group = np.arange(p * k) - self.group_starts[group_of_pos]  # m of each flat position
        flat = (order + k * np.arange(p)[:, None]).ravel()  # flat index (prompt a, completion i) of each position
        self.group = np.empty(p * k, dtype=np.int64)
        self.rank_in_group = np.empty(p * k, dtype=np.int64)
        self.group[flat], self.rank_in_group[flat] = group_of_pos, pos_in_group
        same_after = sizes[self.group] - 1 - self.rank_in_group
        untied = (k - 1 - np.tile(np.arange(k), p)) - same_after  # u_i, flat
        self.ends = np.cumsum(untied)  # pairs of every row up to this one, across prompts
        self.row_starts = self.ends - untied
        self.counts = untied.reshape(p, k).sum(axis=1)
        self.prompt_starts = np.r_[0, np.cumsum(self.counts)[:-1]] if p else np.zeros(0, dtype=np.int64)
        self.stride = 2 * k + 1  # more than any e_m − m or query below: the groups never mix in the search
        self.keys = group_of_pos * self.stride + (order.ravel() - pos_in_group)  # e_m − m, group after group

    def at(self, prompts: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(i, j) of the pairs numbered `ranks` (each < counts of its prompt) of prompts `prompts` (block rows)."""
        prompts, ranks = np.asarray(prompts, dtype=np.int64), np.asarray(ranks, dtype=np.int64)
        row = np.searchsorted(self.ends, self.prompt_starts[prompts] + ranks, side="right")  # flat (a, i)
        i = row - prompts * self.k
        o = self.prompt_starts[prompts] + ranks - self.row_starts[row]  # the pair's place within row i
        g, p = self.group[row], self.rank_in_group[row]
        covered = np.searchsorted(self.keys, g * self.stride + o + i - p, side="right")
        skipped = covered - self.group_starts[g] - (p + 1)
        return i, i + 1 + o + skipped


# What one pairs row costs in memory at the peak of prepare, beyond its texts and ids: index arrays, Python lists of
# references per column and split, five floats as Python objects, the Arrow table. Measured: 1.94 kB per row in
# all, for 2M rows of 37-byte completions with 8 ids and 20-byte prompts with 6 ids (peak RSS growth); what the texts
# and ids count for below is 0.2 kB of it, so the estimate stays under the real peak and refuses only what cannot fit.
_ROW_OVERHEAD_BYTES = 1536


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no check
        return None


def _check_size(counts: np.ndarray, m: ScoredMatrices) -> None:
    """Refuse, before any row exists, a pairs dataset that cannot fit in this machine's memory: all K(K−1)/2 pairs
    grow with K², so K = 100 000 asks for 5e9 rows (terabytes) per prompt. Each row holds its prompt and two
    completions (text and ids); their mean sizes are read from the first prompts."""
    drawn = m.options["pairs_per_prompt"]
    rows = int(counts.sum() if drawn is None else np.minimum(counts, drawn).sum())
    memory = _physical_memory()
    if memory is None or not rows:
        return
    some = range(min(len(m.ids), 32))
    texts = [c for a in some for c in m.completions[a][:64]]
    completion = np.mean([len(t.encode()) for t in texts]) if texts else 0.0
    if m.completion_ids is not None:
        completion += 4 * np.mean([len(c) for a in some for c in m.completion_ids[a][:64]])  # int32 ids
    prompt = np.mean([len(str(m.prompts[a]).encode()) for a in some])  # its text, and its ids about as much
    need = rows * (_ROW_OVERHEAD_BYTES + 2 * completion + 2 * prompt)
    if need > memory:
        k = m.rewards.shape[1]
        hint = ("lower --pairs-per-prompt" if m.options["pairs_per_prompt"] is not None else
                "pass --pairs-per-prompt M (M pairs drawn per prompt) or --pairs best_worst")
        raise InfalignError(f"a pairs dataset of {rows:,} rows (K = {k}: up to K(K-1)/2 = {k * (k - 1) // 2:,} pairs "
                            f"per prompt, {len(m.ids)} prompts) needs about {need / 2**30:,.0f} GiB of memory to "
                            f"build, more than this machine's {memory / 2**30:,.0f} GiB; {hint}")


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
