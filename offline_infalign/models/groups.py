"""Group batches: each prompt once, each distinct completion once (the data side of the trainer's group forward).

A batch's sequences — (prompt ids, completion ids) in the kind's order, as its collator lays them out — are
gathered by prompt: a *group* is one prompt and its distinct completions (listwise: its K; pairs: the chosen
and rejected completions of the prompt's pairs, each once however many pairs it is in; bon: the prompt's rows).
A group is *packed* into one sequence, prompt then every completion, with

- position ids that restart at len(prompt) for each completion, so each completion sees the positions it has
  in its own (prompt + completion) sequence;
- the attention layout `packed_attention` reads (where each prompt and completion sits in the row): a
  completion attends to the prompt and to its own earlier tokens, the prompt to itself; segment ids (0: prompt,
  j + 1: completion j, -1: padding) say the same per token.

With that mask and those positions every token's hidden state is the one the per-row forward computes, so the
log-probs — and their gradients, the prompt's included — are the per-row ones (tests/test_groups.py), while the
prompt runs once per group and a completion once per batch.

`pack_sequences` cuts the packed rows into *units* (forward passes): all groups in one unit, or, with
`completions_per_forward` (completions per forward pass), pieces of at most that many completions, each with its prompt —
the unit of the trainer's two-pass backward, whose memory is bounded by a chunk, not by K.

`GroupBatchSampler` makes batches of whole prompts for kinds with one row per completion or pair, so that a
prompt's rows meet in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["GroupCollator", "GroupBatchSampler", "pack_sequences", "prompt_groups"]


def pack_sequences(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                   pad_token_id: int, completions_per_forward: int | None = None) -> dict[str, Any]:
    """Pack sequences (prompt_ids[n], completion_ids[n]) by prompt into forward units (see the module docstring).

    Returns a dict:
      group_units: list of units, each {input_ids, position_ids, segments: (R, L); score_index: (T,) flat indices
        into (R·L) of the positions whose next token is scored; score_targets: (T,) those tokens; score_seq: (T,)
        the distinct sequence each belongs to; prompt_index (R, Pmax), prompt_len (R,), comp_index (N, Cmax),
        comp_len (N,), comp_row (N,): where each prompt and non-empty completion sits (flat indices, padded with
        a valid one), for `packed_attention`};
      group_seq_index: (N,) the distinct sequence of each input sequence (its log-prob is that one's);
      group_num_seqs: number of distinct sequences.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    groups: dict[tuple, dict[tuple, int]] = {}  # prompt -> {completion: distinct id}, both in first-seen order
    seq_index, num_seqs = [], 0
    for p, c in zip(prompt_ids, completion_ids):
        distinct = groups.setdefault(tuple(p), {})
        key = tuple(c)
        if key not in distinct:
            distinct[key] = num_seqs
            num_seqs += 1
        seq_index.append(distinct[key])
    pieces = []  # (prompt, [(distinct id, completion)]): one packed row each
    for prompt, distinct in groups.items():
        items = [(i, c) for c, i in distinct.items()]
        step = completions_per_forward or len(items)
        pieces += [(prompt, items[lo: lo + step]) for lo in range(0, len(items), step)]
    units, current, count = [], [], 0
    for piece in pieces:  # one unit without completions_per_forward; else at most completions_per_forward completions per unit
        if completions_per_forward is not None and current and count + len(piece[1]) > completions_per_forward:
            units.append(current)
            current, count = [], 0
        current.append(piece)
        count += len(piece[1])
    units.append(current)
    return {"group_units": [_pack_rows(u, pad_token_id) for u in units],
            "group_seq_index": torch.tensor(seq_index, dtype=torch.long), "group_num_seqs": num_seqs}


def _pack_rows(pieces, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows of (prompt + its completions), right-padded, with positions, segments and the scored positions."""
    width = max(len(p) + sum(len(c) for _, c in items) for p, items in pieces)
    r = len(pieces)
    input_ids = np.full((r, width), pad_token_id, dtype=np.int64)
    positions = np.zeros((r, width), dtype=np.int64)
    segments = np.full((r, width), -1, dtype=np.int64)
    score_index, score_targets, score_seq = [], [], []
    pmax = max(len(p) for p, _ in pieces)
    prompt_index = np.zeros((r, pmax), dtype=np.int64)
    prompt_len = np.array([len(p) for p, _ in pieces], dtype=np.int64)
    comps = []  # (row, flat start, length) of each non-empty completion: the queries of `packed_attention`
    for row, (prompt, items) in enumerate(pieces):
        n_p = len(prompt)
        input_ids[row, :n_p] = prompt
        positions[row, :n_p] = np.arange(n_p)
        segments[row, :n_p] = 0
        prompt_index[row] = row * width + np.minimum(np.arange(pmax), max(n_p - 1, 0))  # padded: a valid index
        start = n_p
        for j, (seq, completion) in enumerate(items):
            n_c = len(completion)
            input_ids[row, start: start + n_c] = completion
            positions[row, start: start + n_c] = np.arange(n_p, n_p + n_c)
            segments[row, start: start + n_c] = j + 1
            if n_c:
                comps.append((row, row * width + start, n_c))
            # Token t of the completion is predicted at the position before it: the prompt's last token for t = 0
            # (shared by every completion), else the completion's own token t - 1. Without a prompt the first
            # token is not scored, as in the per-row forward (`completion_logps`).
            src = np.arange(start - 1, start + n_c - 1)
            if n_p > 0 and n_c > 0:
                src[0] = n_p - 1
            keep = slice(0 if n_p > 0 else 1, n_c)
            score_index.append(row * width + src[keep])
            score_targets.append(np.asarray(completion, dtype=np.int64)[keep])
            score_seq.append(np.full(len(src[keep]), seq, dtype=np.int64))
            start += n_c

    def cat(parts):
        return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))

    cmax = max((n for _, _, n in comps), default=0)
    comp_index = np.array([s + np.minimum(np.arange(cmax), n - 1) for _, s, n in comps], dtype=np.int64)
    return {"input_ids": torch.from_numpy(input_ids), "position_ids": torch.from_numpy(positions),
            "segments": torch.from_numpy(segments), "score_index": cat(score_index),
            "score_targets": cat(score_targets), "score_seq": cat(score_seq),
            "prompt_index": torch.from_numpy(prompt_index), "prompt_len": torch.from_numpy(prompt_len),
            "comp_index": torch.from_numpy(comp_index.reshape(len(comps), cmax)),
            "comp_len": torch.tensor([n for _, _, n in comps], dtype=torch.long),
            "comp_row": torch.tensor([row for row, _, _ in comps], dtype=torch.long)}


class GroupCollator:
    """A kind's collator plus the packed group layout of its batch (`pack_sequences`).

    The kind's own keys (row tensors, and its right-padded per-row sequences, which the per-row reference path
    and tests read) are kept as they are; the group keys are added. `completions_per_forward`: completions per forward unit.
    """

    def __init__(self, collator, completions_per_forward: int | None = None):
        if not hasattr(collator, "sequences"):
            raise TypeError(f"{type(collator).__name__} has no sequences(rows): it cannot be packed by prompt")
        self.collator, self.completions_per_forward = collator, completions_per_forward
        self.pad_token_id = collator.pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(rows)
        prompts, completions = self.collator.sequences(rows)
        batch.update(pack_sequences(prompts, completions, self.pad_token_id, self.completions_per_forward))
        return batch


def prompt_groups(dataset) -> list[list[int]]:
    """Row indices of each prompt, in first-seen order: by `prompt_id` when the rows have it, else by
    `prompt_ids`. (Rows of one prompt id with other prompt ids would only share less: `pack_sequences` groups by
    the ids themselves.)"""
    column = "prompt_id" if "prompt_id" in dataset.column_names else "prompt_ids"
    index: dict[Any, list[int]] = {}
    for lo in range(0, len(dataset), 10_000):
        for i, key in enumerate(dataset[lo: lo + 10_000][column], start=lo):
            index.setdefault(tuple(key) if isinstance(key, list) else key, []).append(i)
    return list(index.values())


class GroupBatchSampler:
    """Batches of whole prompts: prompts in a seeded random order (new each epoch), added to a batch while it
    holds at most `max_rows` rows; a prompt with more rows than that is a batch alone.

    The prompts that share a batch are drawn once, so every epoch has the same number of batches (the Trainer
    sizes its schedule from `len`); their order is reshuffled each epoch. `batch_size = None` tells accelerate
    the batches vary in size (its sharding for several processes then keeps whole batches).
    """

    batch_size = None
    drop_last = False

    def __init__(self, groups: list[list[int]], max_rows: int, seed: int = 0):
        self.seed, self.epoch, self._explicit_epoch = seed, 0, False
        order = np.random.default_rng([seed, 0x67]).permutation(len(groups))
        self.batches: list[list[int]] = []
        current: list[int] = []
        for g in order:
            rows = groups[g]
            if current and len(current) + len(rows) > max_rows:
                self.batches.append(current)
                current = []
            current = current + list(rows)
        if current:
            self.batches.append(current)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._explicit_epoch = epoch, True

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.batches))
        if not self._explicit_epoch:  # no set_epoch from the loader (e.g. under accelerate's sharding): count
            self.epoch += 1
        self._explicit_epoch = False
        for b in order:
            yield list(self.batches[b])
