"""Core math benchmarks: calibration throughput, one `choose` call, the optimum at one KL.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_core.py      (or `make bench`)
Goals on a 2-core CPU: calibration of 100,000 prompts × 64 samples < 1 s; `choose` < 10 s.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from offline_infalign.core.calibration import calibrate  # noqa: E402
from offline_infalign.core.tradeoff import choose, optimal  # noqa: E402


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main() -> None:
    rows = []
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(100_000, 64))
    times, _ = timed(lambda: calibrate(rewards), 5)
    rows.append(("calibrate 100,000 x 64 (continuous)", times, "< 1 s", ""))
    tied = np.round(rewards, 1)  # heavy ties: ~40 distinct values per row
    times, _ = timed(lambda: calibrate(tied), 3)
    rows.append(("calibrate 100,000 x 64 (ties)", times, "< 1 s", ""))
    for procedure, n, kl in [("bon", 4, 0.25), ("bon", 8, 0.25), ("won", 4, 0.25), ("bon", 16, 1.0)]:
        times, c = timed(lambda p=procedure, n=n, kl=kl: choose(p, n, kl), 2)
        rows.append((f"choose {procedure} N={n} kl={kl} (with optimum)", times, "< 10 s",
                     f"t={c.tilt:.3f} beta={c.beta:.4f} W={c.win_rate:.4f} opt={c.optimal_win_rate:.4f}"))
    for procedure, n, kl in [("bon", 4, 0.25), ("won", 4, 0.25)]:
        times, o = timed(lambda p=procedure, n=n, kl=kl: optimal(p, n, kl), 2)
        rows.append((f"optimal {procedure} N={n} kl={kl}", times, "",
                     f"beta={o.beta:.4f} W={o.win_rate:.4f} ({o.iterations} mirror steps)"))

    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"| {'benchmark':44s} | {'first (s)':>9s} | {'median (s)':>10s} | {'goal':>6s} | result |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 12}|{'-' * 8}|--------|")
    for name, times, goal, note in rows:
        print(f"| {name:44s} | {times[0]:9.3f} | {statistics.median(times):10.3f} | {goal:>6s} | {note} |")


if __name__ == "__main__":
    main()
