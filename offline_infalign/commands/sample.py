"""`infalign sample`: K completions per prompt from the base model, with teacher-forced ref_logps."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..config import SampleConfig, add_config_arguments

    p = subparsers.add_parser(
        "sample", help="sample K completions per prompt from the base model (resumable, shardable)",
        description="Write an artifact folder (datasets + manifest.json) with prompt_id, prompt, completions (K) "
        "and ref_logps (K). Rerun the same command to resume after an interruption.")
    p.add_argument("--config", help="YAML file with SampleConfig keys; command-line flags override it")
    add_config_arguments(p, SampleConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import SampleConfig, load_config, overrides_from_args
    from ..stages.sample import run_sample

    cfg = load_config(SampleConfig, args.config, overrides_from_args(args, SampleConfig))
    m = run_sample(cfg)
    print(f"samples: {m['num_rows']} prompts x {m['num_samples']} completions -> {cfg.out}"
          f" (truncated {m['num_truncated']}, skipped as too long {m['num_skipped_long']})")
    return 0
