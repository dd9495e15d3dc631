"""The pairs a pairs dataset picked when it listed every pair of a prompt (the former code of kinds/pairs.py): the
reference the pair-drawing test compares with, and the baseline benchmarks/bench_pairs.py times."""

import hashlib

import numpy as np


def listed_pairs(rewards, pairs_per_prompt, seed, ids):
    """The pairs as they were picked by listing all of them: np.triu_indices, the untied ones, and a sorted draw
    of `pairs_per_prompt` of their positions in that list with the prompt's generator."""
    k = rewards.shape[1]
    ii, jj = np.triu_indices(k, 1)
    out_i, out_j, owner, tied = [], [], [], 0
    for a, pid in enumerate(ids):
        untied = np.flatnonzero(rewards[a, ii] != rewards[a, jj])
        tied += len(ii) - len(untied)
        if pairs_per_prompt is not None and pairs_per_prompt < len(untied):
            digest = hashlib.sha256(f"pairs:{seed}:{pid}".encode()).digest()[:8]
            rng = np.random.default_rng(int.from_bytes(digest, "little"))
            pick = np.sort(rng.choice(untied, size=pairs_per_prompt, replace=False))
        else:
            pick = untied
        out_i.append(ii[pick])
        out_j.append(jj[pick])
        owner.append(np.full(len(pick), a))
    i, j, owner = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(owner)
    first = rewards[owner, i] > rewards[owner, j]
    return np.where(first, i, j), np.where(first, j, i), owner, tied
