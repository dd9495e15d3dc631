"""`infalign merge`: join the shard artifacts of one sharded run, checking each shard is there exactly once."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..config import MergeConfig, add_config_arguments

    p = subparsers.add_parser(
        "merge", help="join shard artifacts (samples or scored) of one --shard I/N run",
        description="Checks that shards 0..N-1 are each present exactly once, that they were made with the same "
        "config, and that no prompt appears twice; writes the rows in shard order.")
    p.add_argument("--config", help="YAML file with MergeConfig keys; command-line flags override it")
    add_config_arguments(p, MergeConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import MergeConfig, load_config, overrides_from_args
    from ..stages.merge import run_merge

    cfg = load_config(MergeConfig, args.config, overrides_from_args(args, MergeConfig))
    m = run_merge(cfg)
    print(f"merged {len(m['merged_from'])} shards: {m['num_rows']} prompts ({m['stage']}) -> {cfg.out}")
    return 0
