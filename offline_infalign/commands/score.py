"""`infalign score`: add rewards from a reward model or a Python function to a samples artifact."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..config import ScoreConfig, add_config_arguments

    p = subparsers.add_parser(
        "score", help="score every completion of a samples artifact (resumable, shardable)",
        description="Write a scored artifact: the samples plus rewards (K per prompt). Rerun the same command to "
        "resume after an interruption.")
    p.add_argument("--config", help="YAML file with ScoreConfig keys; command-line flags override it")
    add_config_arguments(p, ScoreConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import ScoreConfig, load_config, overrides_from_args
    from ..stages.score import run_score

    cfg = load_config(ScoreConfig, args.config, overrides_from_args(args, ScoreConfig))
    m = run_score(cfg)
    print(f"scored: {m['num_rows']} prompts with reward {m['reward_model']} -> {cfg.out}")
    return 0
