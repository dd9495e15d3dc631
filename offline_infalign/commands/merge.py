"""`infalign merge`: join the shard artifacts of one sharded run, checking each shard is there exactly once."""

from __future__ import annotations

from ._common import add_command, load


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "merge", "MergeConfig", run,
        help="join shard artifacts (samples or scored) of one --shard I/N run",
        description="Checks that shards 0..N-1 are each present exactly once, that they were made with the same "
        "config, and that no prompt appears twice; writes the rows in shard order.")


def run(args) -> int:
    from ..config import MergeConfig
    from ..stages.merge import run_merge

    cfg = load(args, MergeConfig)
    m = run_merge(cfg)
    print(f"merged {len(m['merged_from'])} shards: {m['num_rows']} prompts ({m['stage']}) -> {cfg.out}")
    return 0
