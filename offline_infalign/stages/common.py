"""Helpers shared by the chunked stages (sample, score): shard slices, chunk slices, progress bars."""

from __future__ import annotations

import numpy as np


def shard_slice(n: int, shard: tuple[int, int] | None) -> slice:
    if shard is None:
        return slice(0, n)
    bounds = np.array_split(np.arange(n), shard[1])[shard[0]]
    return slice(int(bounds[0]), int(bounds[-1]) + 1) if len(bounds) else slice(0, 0)


def chunk_slices(n: int, size: int) -> list[slice]:
    return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]


def progress_bar(total: int, desc: str, unit: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
