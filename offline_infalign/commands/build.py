"""`infalign build`: sample → score → prepare in one command (each stage resumable)."""

from __future__ import annotations

from ._common import add_command, load
from .prepare import describe, describe_guidance
from .sample import describe_ref_logps


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "build", "BuildConfig", run,
        help="sample, score and prepare in one go: OUT/samples, OUT/scored, OUT/prepared",
        description="Runs `sample`, `score` and `prepare` below --out. With --shard I/N only sample and score run, "
        "into OUT/shard-I-of-N/; join the shards with `infalign merge`, then run `infalign prepare`. Rerun the "
        "same command to resume.")


def run(args) -> int:
    from ..config import BuildConfig
    from ..stages.build import run_build

    cfg = load(args, BuildConfig)
    ms = run_build(cfg)
    paths = cfg.paths()
    print(f"samples: {ms['samples']['num_rows']} prompts x {ms['samples']['num_samples']} -> {paths['samples']}")
    print(describe_ref_logps(ms["samples"]))
    print(f"scored with {ms['scored']['reward_model']} -> {paths['scored']}")
    if "prepared" in ms:
        print(describe(ms["prepared"]) + f" -> {paths['prepared']}")
        for line in describe_guidance(ms["prepared"]):
            print(line)
    else:
        print("shard done; when all shards are: infalign merge --inputs OUT/shard-*/scored --out OUT/scored")
    return 0
