"""What `infalign COMMAND --help` costs: wall-clock time of a fresh interpreter printing each command's help, and
whether it imported torch (`tests/test_help_imports.py` asserts the latter; this script measures the time).

Each run is a new `python -m offline_infalign COMMAND --help` process (interpreter start, imports, argparse), so
the figures are what a user waits for. Commands are interleaved round-robin `--repeats` times, so a burst of load
on a shared machine hits every command alike; the median is reported.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_help.py --repeats 7
    # the same, with another checkout's package first on the path (e.g. the code before a change, side by side):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_help.py --repeats 7 --source /tmp/old_checkout
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline_infalign.cli import COMMANDS as _COMMANDS  # noqa: E402  (cli imports nothing heavy)

COMMANDS = [""] + _COMMANDS

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


def run_once(command: str, source: str | None = None) -> tuple[float, bool] | None:
    """(seconds, imported torch) of one `infalign COMMAND --help`; None when that code has no such command."""
    argv = [sys.executable, "-c", PROBE, *command.split(), "--help"]
    env = {**os.environ, "PYTHONPATH": source} if source else None
    t0 = time.perf_counter()
    # Run outside the repository: `python -c` puts the working folder first on sys.path, before PYTHONPATH.
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    elapsed = time.perf_counter() - t0
    if "usage: infalign" not in done.stdout:
        return None
    return elapsed, "NO-TORCH" not in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--source", help="also time the package found in this folder (put first on PYTHONPATH), "
                        "interleaved with this checkout's")
    args = parser.parse_args()
    sources = [None] + ([args.source] if args.source else [])
    times = {(s, c): [] for s in sources for c in COMMANDS}
    torch_seen: dict = {}
    run_once("")  # warm the page cache once; not counted
    for _ in range(args.repeats):
        for command in COMMANDS:
            for source in sources:
                result = run_once(command, source)
                if result is not None:
                    times[source, command].append(result[0])
                    torch_seen[source, command] = result[1]
    for source in sources:
        print(f"\n{source or 'this checkout'}:")
        print(f"{'command':26s} {'median (s)':>10s} {'min (s)':>8s}  imports torch")
        for command in COMMANDS:
            label = f"infalign {command} --help".replace("  ", " ")
            t = times[source, command]
            if not t:
                print(f"{label:26s} {'(no such command)':>19s}")
                continue
            print(f"{label:26s} {statistics.median(t):10.2f} {min(t):8.2f}  "
                  f"{'yes' if torch_seen[source, command] else 'no'}")


if __name__ == "__main__":
    main()
