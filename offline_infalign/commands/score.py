"""`infalign score`: add rewards from a reward model or a Python function to a samples artifact."""

from __future__ import annotations

from ._common import add_command, load


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "score", "ScoreConfig", run,
        help="score every completion of a samples artifact (resumable, shardable)",
        description="Write a scored artifact: the samples plus rewards (K per prompt). Rerun the same command to "
        "resume after an interruption.")


def run(args) -> int:
    from ..config import ScoreConfig
    from ..stages.score import run_score

    cfg = load(args, ScoreConfig)
    m = run_score(cfg)
    print(f"scored: {m['num_rows']} prompts with reward {m['reward_model']} -> {cfg.out}")
    return 0
