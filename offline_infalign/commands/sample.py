"""`infalign sample`: K completions per prompt from the base model, as token ids with their ref_logps."""

from __future__ import annotations

import sys

from ._common import add_command, load


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "sample", "SampleConfig", run,
        help="sample K completions per prompt from the base model (resumable, shardable)",
        description="Write an artifact folder (datasets + manifest.json) with prompt_id, prompt, prompt_ids and, K "
        "each, completion_ids, finish_reasons, completions and ref_logps. Rerun the same command to resume after "
        "an interruption.")


def run(args) -> int:
    from ..config import SampleConfig
    from ..stages.sample import run_sample

    cfg = load(args, SampleConfig)
    m = run_sample(cfg)
    print(f"samples: {m['num_rows']} prompts x {m['num_samples']} completions -> {cfg.out}"
          f" (truncated {m['num_truncated']}, skipped as too long {m['num_skipped_long']})")
    print(f"cut at max_new_tokens={cfg.max_new_tokens}: {m['cut_fraction']:.1%} of completions; "
          f"stop token ids {m['stop_token_ids']}")
    print(describe_ref_logps(m))
    for line in sample_warnings(m, cfg.max_new_tokens):
        print(f"warning: {line}", file=sys.stderr)
    return 0


def describe_ref_logps(m: dict) -> str:
    """Where the samples' ref_logps came from, as the manifest resolved it (docs/design.md, one precision)."""
    sampler = f"{m.get('backend')} in {m.get('sampler_dtype')}"
    if m.get("ref_logps_from") == "forward":
        return f"ref_logps: a {m.get('ref_dtype')} teacher-forced pass over the sampled ids (sampler: {sampler})"
    return f"ref_logps: the sampler's own ({sampler})"


# Above this fraction of cut completions the samples mostly describe the length cap, not the model's answers.
CUT_WARNING = 0.2


def sample_warnings(m: dict, max_new_tokens: int) -> list[str]:
    """What a samples manifest should warn about (docs/math.md §9): many cut completions, tempered settings."""
    out = []
    if m.get("cut_fraction", 0.0) > CUT_WARNING:
        out.append(f"{m['cut_fraction']:.0%} of completions hit max_new_tokens={max_new_tokens}; they are kept as "
                   "cut completions with no stop-token term (docs/math.md §9); raise --max-new-tokens if the "
                   "model's answers are meant to end on their own")
    if m.get("tempered"):
        out.append(f"samples drawn at temperature={m['temperature']}, top_p={m['top_p']}, top_k={m['top_k']} "
                   "come from another policy than the base model: calibration and targets would describe that "
                   "policy (docs/math.md §9); prepare refuses them unless --allow-tempered-samples")
    return out
