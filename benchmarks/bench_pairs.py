"""How a pairs dataset's pairs are picked: by listing every pair of a prompt (np.triu_indices, the former code, kept
here as the reference) against `kinds.pairs._all_pairs` (pairs numbered and drawn without listing them; blocks of
prompts at once). Both side by side in one run, on the same rewards, interleaved, best of `--repeats` by CPU time.
The two must give the same pairs; the script checks it on every run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pairs.py --repeats 3

Shapes: 20 000 prompts × K = 32 (all pairs, and 8 per prompt), continuous rewards (no ties) and rewards in 5
levels (many ties); and 2 prompts × K = 100 000 with 10 pairs per prompt, where listing is not attempted (5e9
pairs per prompt: 40 GB per index array).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline_infalign.kinds.pairs import _all_pairs  # noqa: E402


def listed(rewards, pairs_per_prompt, seed, ids):
    """The former code: every pair i < j listed per prompt, the untied ones kept, a sorted draw of them."""
    k = rewards.shape[1]
    ii, jj = np.triu_indices(k, 1)
    out_i, out_j, owner = [], [], []
    for a, pid in enumerate(ids):
        untied = np.flatnonzero(rewards[a, ii] != rewards[a, jj])
        if pairs_per_prompt is not None and pairs_per_prompt < len(untied):
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"pairs:{seed}:{pid}".encode()).digest()[:8],
                                                       "little"))
            pick = np.sort(rng.choice(untied, size=pairs_per_prompt, replace=False))
        else:
            pick = untied
        out_i.append(ii[pick])
        out_j.append(jj[pick])
        owner.append(np.full(len(pick), a))
    i, j, owner = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(owner)
    first = rewards[owner, i] > rewards[owner, j]
    return np.where(first, i, j), np.where(first, j, i), owner


def matrices(rewards, pairs_per_prompt):
    p, k = rewards.shape
    return SimpleNamespace(ids=[f"p{a}" for a in range(p)], rewards=rewards, pairs_per_prompt=pairs_per_prompt,
                           seed=0, prompts=["a prompt of some length"] * p, completion_ids=None,
                           completions=[["a completion of some length"] * min(k, 64)] * p)


def cpu(fn, *args) -> float:
    t = time.process_time()
    fn(*args)
    return time.process_time() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    # 20 000 prompts: all pairs at K = 32 are 9.9M rows, which _all_pairs' memory check passes on a 24 GiB machine
    parser.add_argument("--prompts", type=int, default=20_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'shape':44s} {'listing (CPU s)':>15s} {'drawing (CPU s)':>15s} {'speed-up':>8s}")
    for label, rewards in (("continuous", rng.normal(size=(args.prompts, 32))),
                           ("5 levels", rng.integers(0, 5, size=(args.prompts, 32)).astype(float))):
        for per_prompt in (None, 8):
            m = matrices(rewards, per_prompt)
            new = _all_pairs(rewards, m)
            old = listed(rewards, per_prompt, 0, m.ids)
            assert all(np.array_equal(a, b) for a, b in zip(new[:3], old)), "the two differ"
            t_old = t_new = float("inf")
            for _ in range(args.repeats):  # interleaved
                t_old = min(t_old, cpu(listed, rewards, per_prompt, 0, m.ids))
                t_new = min(t_new, cpu(_all_pairs, rewards, m))
            shape = f"{args.prompts} x K=32, {label}, {'all pairs' if per_prompt is None else '8 per prompt'}"
            print(f"{shape:44s} {t_old:15.2f} {t_new:15.2f} {t_old / t_new:7.2f}x")
    rewards = np.round(rng.normal(size=(2, 100_000)), 2)
    tracemalloc.start()
    t_new = cpu(_all_pairs, rewards, matrices(rewards, 10))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{'2 x K=100000, 2 decimals, 10 per prompt':44s} {'(not run)':>15s} {t_new:15.3f}   peak {peak / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
