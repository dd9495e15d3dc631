"""Teacher-forced log-probs grouped by prompt: each prompt once, packed with its completions after the first
batch's check (`packed_check.check_packed`), per row otherwise — the trainer's own forward, used for the stored
reference (`sampling.forward_ref_logps`) so that both sides compute the same numbers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .groups import pack_sequences
from .logprobs import completion_logps, packed_logps, pad_pairs
from .packed_check import check_packed

__all__ = ["grouped_ids_logps"]

log = logging.getLogger(__name__)


def grouped_ids_logps(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                      pad_token_id: int, batch_size: int = 32, desc: str | None = None) -> np.ndarray:
    """`ids_logps` (same arguments, same float32 (n,) result in the given order, no gradients) computed by
    prompt: the sequences are gathered by prompt ids, each forward is whole prompts with at most `batch_size`
    sequences (a prompt with more is cut into pieces of `batch_size`, each with its prompt), and runs packed
    (`packed_logps`: the prompt once, each distinct completion once, the LM head at completion positions
    only) when `packed_check.check_packed` passes on the first batch; otherwise every batch runs per row
    (`completion_logps`), with one warning saying why. `batch_size` counts sequences, as in `ids_logps`, so a
    batch holds no more tokens than its per-row batch would (it holds fewer: each prompt once). A progress bar
    over batches when `desc` is given."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    by_prompt: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompt_ids):
        by_prompt.setdefault(tuple(p), []).append(i)
    batches, current = [], []
    for members in by_prompt.values():
        for lo in range(0, len(members), batch_size):
            piece = members[lo: lo + batch_size]
            if current and len(current) + len(piece) > batch_size:
                batches.append(current)
                current = []
            current = current + piece
    if current:
        batches.append(current)
    device = next(model.parameters()).device
    out = np.empty(len(prompt_ids), dtype=np.float32)
    packed = None
    with torch.no_grad():
        for rows in tqdm(batches, desc=desc, unit="batch", disable=desc is None):
            p_ids, c_ids = [prompt_ids[i] for i in rows], [completion_ids[i] for i in rows]
            # The first batch is built both ways for the check; after it, only the way the run computes.
            if packed is not True:
                batch = {k: v.to(device) for k, v in pad_pairs(p_ids, c_ids, pad_token_id).items()}
            if packed is not False:
                group = pack_sequences(p_ids, c_ids, pad_token_id)
                group["group_units"] = [{k: v.to(device) for k, v in u.items()} for u in group["group_units"]]
                group["group_seq_index"] = group["group_seq_index"].to(device)
            if packed is None:
                verdict = check_packed(model, {**batch, **group})
                packed = verdict.packed
                if not packed:
                    log.warning("grouped log-probs: running per row (exact, slower) because %s", verdict.describe())
            if packed:
                lp = packed_logps(model, group["group_units"], group["group_num_seqs"])[group["group_seq_index"]]
            else:
                lp = completion_logps(model, **batch)
            out[rows] = lp.float().cpu().numpy()
    return out
