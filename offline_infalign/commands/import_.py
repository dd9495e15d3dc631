"""`infalign import`: another system's reference dataset (K completions per prompt, raw rewards) → a scored
artifact that `infalign prepare` takes as it is."""

from __future__ import annotations

import sys

from ..config.interop import FORMAT_LABELS
from ._common import add_command, load


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "import", "ImportConfig", run,
        help=f"import a reference dataset ({FORMAT_LABELS} layouts) as a scored artifact",
        description="Read K reference completions per prompt with raw rewards (--format qrpo: the original layout, "
        "ref_completions + ref_rewards, or the verl layout, prompt_messages + offline_trajectories + offline_rewards) "
        "and write a scored artifact: prompts as given, completion texts encoded with --model's tokenizer (recorded "
        "as re-encoded text, not sampled ids), ref_logps teacher-forced by --model on those ids, the raw rewards. "
        "Every row is checked before the model loads; rerun the same command to resume after an interruption.")


def run(args) -> int:
    from ..config import ImportConfig
    from ..stages.import_ import run_import

    cfg = load(args, ImportConfig)
    m = run_import(cfg)
    got = m["imported"]
    skipped = "".join(f", skipped {got[key]} {what}" for key, what in (("num_skipped_duplicates", "duplicate(s)"),
                                                                        ("num_skipped_long", "too long"))
                      if got.get(key))
    print(f"imported {cfg.format} ({got['layout']}): {m['num_rows']} prompts x {m['num_samples']} completions"
          f"{skipped} -> {cfg.out}")
    print(f"ref_logps by {cfg.model} ({m['ref_dtype']}); cut {m['cut_fraction']:.1%}; stop token ids "
          f"{m['stop_token_ids']}")
    for line in m.get("warnings") or []:
        print(f"warning: {line}", file=sys.stderr)
    return 0
