"""What `infalign COMMAND --help` costs: wall-clock time of a fresh interpreter printing each command's help, and
whether it imported torch (`tests/test_help_imports.py` asserts the latter; this script measures the time).

Each run is a new `python -m offline_infalign COMMAND --help` process (interpreter start, imports, argparse), so
the figures are what a user waits for. Commands are interleaved round-robin `--repeats` times, so a burst of load
on a shared machine hits every command alike; the median is reported.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_help.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = ["", "demo", "tradeoff", "sample", "score", "prepare", "build", "merge", "train", "eval"]

# Prints the help, then on stderr whether torch was imported along the way.
PROBE = """
import sys
from offline_infalign.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("TORCH" if "torch" in sys.modules else "NO-TORCH", file=sys.stderr)
"""


def run_once(command: str) -> tuple[float, bool]:
    argv = [sys.executable, "-c", PROBE, *command.split(), "--help"]
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t0
    return elapsed, "NO-TORCH" not in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {c: [] for c in COMMANDS}
    torch_seen: dict[str, bool] = {}
    run_once("")  # warm the page cache once; not counted
    for _ in range(args.repeats):
        for command in COMMANDS:
            elapsed, with_torch = run_once(command)
            times[command].append(elapsed)
            torch_seen[command] = with_torch
    print(f"{'command':26s} {'median (s)':>10s} {'min (s)':>8s}  imports torch")
    for command in COMMANDS:
        label = f"infalign {command} --help".replace("  ", " ")
        print(f"{label:26s} {statistics.median(times[command]):10.2f} {min(times[command]):8.2f}  "
              f"{'yes' if torch_seen[command] else 'no'}")


if __name__ == "__main__":
    main()
