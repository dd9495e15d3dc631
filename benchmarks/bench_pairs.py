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
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline_infalign.kinds.pairs import _all_pairs  # noqa: E402
from tests.listed_pairs import listed_pairs  # noqa: E402  (the former code, also the test's reference)


def matrices(rewards, pairs_per_prompt):
    p, k = rewards.shape
    # a kind's prepare options travel in `options` (kinds/pairs.py)
    return SimpleNamespace(ids=[f"p{a}" for a in range(p)], rewards=rewards,
                           options={"pairs": "all", "pairs_per_prompt": pairs_per_prompt, "seed": 0}, prompts=["a prompt of some length"] * p, completion_ids=None,
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
            old = listed_pairs(rewards, per_prompt, 0, m.ids)[:3]
            assert all(np.array_equal(a, b) for a, b in zip(new[:3], old)), "the two differ"
            t_old = t_new = float("inf")
            for _ in range(args.repeats):  # interleaved
                t_old = min(t_old, cpu(listed_pairs, rewards, per_prompt, 0, m.ids))
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
