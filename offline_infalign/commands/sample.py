"""`infalign sample`: K completions per prompt from the base model, with teacher-forced ref_logps."""

from __future__ import annotations

from ._common import add_command, load


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "sample", "SampleConfig", run,
        help="sample K completions per prompt from the base model (resumable, shardable)",
        description="Write an artifact folder (datasets + manifest.json) with prompt_id, prompt, completions (K) "
        "and ref_logps (K). Rerun the same command to resume after an interruption.")


def run(args) -> int:
    from ..config import SampleConfig
    from ..stages.sample import run_sample

    cfg = load(args, SampleConfig)
    m = run_sample(cfg)
    print(f"samples: {m['num_rows']} prompts x {m['num_samples']} completions -> {cfg.out}"
          f" (truncated {m['num_truncated']}, skipped as too long {m['num_skipped_long']})")
    return 0
