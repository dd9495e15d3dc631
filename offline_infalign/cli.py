"""`infalign` command line: `infalign {tradeoff,sample,score,prepare,build,train,eval,demo,import,export} ...`.

Each subcommand lives in `offline_infalign/commands/<name>.py` with two functions: `add_parser(subparsers)`
(one `commands._common.add_command` call; the command's flags are added only when it is used, so `--help` is
instant) and `run(args) -> int`. Bad input raises InfalignError, which is reported here as one line on stderr
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .commands._common import CommandParser
from .core.errors import InfalignError

# Order is the order shown in `infalign --help`.
COMMANDS = ["demo", "tradeoff", "sample", "score", "prepare", "build", "merge", "train", "eval", "import", "export"]
# A command whose name is a Python keyword lives in `commands/<name>_.py`.
_MODULES = {"import": "import_"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infalign",
        description="Inference-aware alignment (InfAlign-CTRL), offline: build calibrated datasets, train the "
        "tilted policy, evaluate best-of-N / worst-of-N win rates, and pick the transform and beta.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"offline-infalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for name in COMMANDS:
        importlib.import_module(f".commands.{_MODULES.get(name, name)}", __package__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # peft imports bitsandbytes whenever it is installed, and on an AVX512-bf16 CPU bitsandbytes then warns that an
    # optional kernels package is missing — on every command, QLoRA or not. The fallback it uses is correct. Where the
    # kernels package is installed, it logs instead that it cannot check its hub repository offline: the same noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("kernels").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InfalignError as exc:
        print(f"infalign {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infalign {args.command}: interrupted; finished chunks are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
