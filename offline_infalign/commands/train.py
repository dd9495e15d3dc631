"""`infalign train [CONFIG.yaml] --dataset DIR --model PATH --loss NAME --beta B --out DIR [...]`.

Trains a LoRA (or QLoRA) adapter on a prepared dataset (SPEC §6). YAML keys are the flag names with
underscores; flags override the file. Multi-GPU / multi-process runs go through accelerate:

    accelerate launch --multi_gpu --num_processes 2 -m offline_infalign.cli train CONFIG.yaml   # 2 GPUs, DDP

The same command runs two DDP processes on a CPU-only machine (torchrun + gloo; tested). Do not add `--cpu`:
with it, accelerate's launcher starts ONE process. per_device_train_batch_size is per process: the
effective batch is it × processes × gradient_accumulation_steps (infalign_train.json records both).
"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..config import TrainConfig, add_config_arguments

    p = subparsers.add_parser(
        "train",
        help="train a LoRA/QLoRA adapter toward the tilted policy on a prepared dataset",
        description="Fit pi* ∝ pi_ref · exp(Phi(C)/beta) offline with one of the SPEC §6 losses (tilted_pairwise, "
        "tilted_sigmoid, listwise, pointwise, weighted_sft) or a baseline (dpo, ipo). Writes the adapter, the "
        "tokenizer, a model card (README.md) and infalign_train.json into --out; checkpoints go to OUT/checkpoints. "
        "Reference log-probs are the dataset's stored columns when valid (no reference forward), else the policy "
        "with its adapter disabled.",
    )
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG.yaml",
                   help="YAML file with TrainConfig keys; flags given on the command line override it")
    # The other commands spell the file `--config`; accept that here too so one habit works everywhere.
    p.add_argument("--config", dest="config_flag", default=None, metavar="CONFIG.yaml",
                   help="the same YAML file, as a flag (like the other commands)")
    add_config_arguments(p, TrainConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    import logging
    import os

    from ..config import TrainConfig, load_config, overrides_from_args
    from ..core.errors import InfalignError
    from ..trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.config and args.config_flag and args.config != args.config_flag:
        raise InfalignError(f"two config files given: {args.config!r} and --config {args.config_flag!r}; pass one")
    cfg = load_config(TrainConfig, args.config or args.config_flag, overrides_from_args(args, TrainConfig))
    out = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate/torchrun only the main process reports
        return 0
    print(f"wrote adapter, tokenizer, README.md and infalign_train.json to {out}")
    return 0
