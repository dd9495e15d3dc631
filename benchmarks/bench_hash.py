"""What `--verify` costs: opening a scored artifact of P prompts x K completions with and without the content hash.

A synthetic scored artifact shaped like a real one (docs/design.md columns) is written once with
`storage.save_artifact` (so its manifest and content hash are the real ones): prompt_id, a ~200-character prompt
and its ~50 prompt_ids, and per prompt K ~400-character completions, K ~100-token completion_ids (int64, as the
sampler writes them), finish_reasons, ref_logps and rewards. Then, each `--repeats` times:
- `load_artifact(verify=False)`: the checks every open makes (manifest, row count, K per column, every float
  finite);
- `integrity.find_non_finite` alone on the opened table: the part of those checks that reads values (every
  float of `ref_logps` and `rewards`; text and id columns are skipped by type);
- `load_artifact(verify=True)`: the same plus sha256 over every data file, with the files in the page cache
  (warm: just written or read) and, for the cold figure, after `posix_fadvise(DONTNEED)` drops this artifact's
  own pages (nothing else's), so the hash reads from disk.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hash.py --prompts 100000 --k 32 --dir /tmp/bench_hash

The artifact is about 4.6 GB at the default size; `--keep` leaves it in `--dir` for a rerun (it is reused).
Building it holds the whole table in memory (~18 GB peak at the default size). `--finite-only` times the
finite check alone on an in-memory table of just the float columns (`ref_logps`, `rewards`) of P x K — all it
reads of an artifact — without writing anything:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hash.py --finite-only --prompts 100000 --k 32
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline_infalign.artifacts.integrity import find_non_finite  # noqa: E402
from offline_infalign.artifacts.storage import HASH_ALWAYS_BYTES, load_artifact, save_artifact  # noqa: E402

WORDS = np.array("the service was slow but the food was lovely and we would come back again for the view".split())


def _texts(rng, n: int, chars: int) -> pa.Array:
    """n strings of about `chars` characters of words, built as one Arrow buffer (no Python string per row)."""
    pool = " ".join(rng.choice(WORDS, size=4 * chars)).encode()  # a long text; rows are windows into it
    lengths = rng.integers(int(chars * 0.75), int(chars * 1.25), size=n)
    starts = rng.integers(0, len(pool) - int(chars * 1.25), size=n)
    data = np.frombuffer(pool, dtype=np.uint8)
    values = np.concatenate([data[s : s + m] for s, m in zip(starts, lengths)])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(values)).cast(pa.string())


def _lists(values: pa.Array, n: int, k: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), values)


def _ids(rng, n: int, mean: int, vocab: int = 50_000) -> pa.Array:
    lengths = rng.integers(mean // 2, mean * 3 // 2, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, vocab, size=int(offsets[-1]))))


def build(out: Path, prompts: int, k: int, block: int = 10_000) -> dict:
    import datasets

    rng = np.random.default_rng(0)
    tables = []
    for lo in range(0, prompts, block):
        n = min(block, prompts - lo)
        tables.append(pa.table({
            "prompt_id": pa.array([f"{i:016x}" for i in range(lo, lo + n)]),
            "prompt": _texts(rng, n, 200),
            "prompt_ids": _ids(rng, n, 50),
            "completions": _lists(_texts(rng, n * k, 400), n, k),
            "completion_ids": _lists(_ids(rng, n * k, 100), n, k),
            "finish_reasons": _lists(pa.array(np.where(rng.random(n * k) < 0.1, "length", "stop")), n, k),
            "ref_logps": _lists(pa.array(-rng.gamma(4.0, 20.0, size=n * k)), n, k),
            "rewards": _lists(pa.array(rng.normal(size=n * k)), n, k),
        }))
    dataset = datasets.Dataset(pa.concat_tables(tables))
    manifest = {"stage": "scored", "config": {"synthetic": True}, "num_samples": k}
    return save_artifact(dataset, out, manifest)


def _drop_cache(root: Path) -> None:
    """Evict this artifact's files from the page cache (only these files; needs no privileges)."""
    for f in root.rglob("*.arrow"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _time(fn, repeats: int, before=None) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds of this process) per run: on a shared machine the CPU time is the steadier."""
    wall, cpu = [], []
    for _ in range(repeats):
        if before is not None:
            before()
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def bench_finite(prompts: int, k: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    offsets = pa.array(np.arange(0, prompts * k + 1, k, dtype=np.int32))
    table = pa.table({"ref_logps": pa.ListArray.from_arrays(offsets, pa.array(-rng.gamma(4.0, 20.0, prompts * k))),
                      "rewards": pa.ListArray.from_arrays(offsets, pa.array(rng.normal(size=prompts * k)))})
    times, cpu = _time(lambda: find_non_finite(table), repeats)
    print(f"finite check of {prompts} x K={k} (ref_logps, rewards: {2 * prompts * k:,} floats): wall median "
          f"{statistics.median(times):.3f} s (runs {', '.join(f'{x:.3f}' for x in times)}), CPU median "
          f"{statistics.median(cpu):.3f} s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=100_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--dir", default="/tmp/bench_hash")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the artifact for a rerun")
    p.add_argument("--finite-only", action="store_true", help="time the finite check alone (module docstring)")
    args = p.parse_args(argv)
    if args.finite_only:
        return bench_finite(args.prompts, args.k, args.repeats)
    out = Path(args.dir) / f"scored_{args.prompts}x{args.k}"
    if not (out / "manifest.json").is_file():
        t = time.perf_counter()
        build(out, args.prompts, args.k)
        print(f"built {out} in {time.perf_counter() - t:.0f} s")
    size = sum(f.stat().st_size for f in out.rglob("*.arrow"))
    print(f"artifact: {args.prompts} prompts x K={args.k}, {size / 2**30:.2f} GiB of Arrow data "
          f"(HASH_ALWAYS_BYTES = {HASH_ALWAYS_BYTES / 2**20:.0f} MiB)")
    rows = []
    table = load_artifact(out, stage="scored", verify=False)[0].data.table
    times, cpu = _time(lambda: find_non_finite(table), args.repeats)
    print(f"{'finite check alone (every float value)':46s} wall median {statistics.median(times):6.2f} s (runs "
          f"{', '.join(f'{x:.2f}' for x in times)}), CPU median {statistics.median(cpu):6.2f} s")
    for name, verify, cold in (("open, cheap checks only (verify=False)", False, False),
                               ("open + sha256, warm page cache (verify=True)", True, False),
                               ("open + sha256, cold (pages dropped first)", True, True)):
        times, cpu = _time(lambda v=verify: load_artifact(out, stage="scored", verify=v), args.repeats,
                           (lambda: _drop_cache(out)) if cold else (lambda: None))
        rows.append((name, times))
        print(f"{name:46s} wall median {statistics.median(times):6.2f} s (runs {', '.join(f'{x:.2f}' for x in times)})"
              f", CPU median {statistics.median(cpu):6.2f} s")
    data = np.random.default_rng(0).bytes(1 << 30)
    import hashlib

    t = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    print(f"sha256 of 1 GiB in memory: {time.perf_counter() - t:.2f} s (the CPU bound of the hash on this machine)")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
