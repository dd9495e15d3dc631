"""`infalign train [CONFIG.yaml] --dataset DIR --model PATH --loss NAME --beta B --out DIR [...]`.

Trains a LoRA (or QLoRA) adapter on a prepared dataset (docs/math.md §6). YAML keys are the flag names with
underscores; flags override the file. Multi-GPU / multi-process runs go through accelerate:

    accelerate launch --multi_gpu --num_processes 2 -m offline_infalign.cli train CONFIG.yaml   # 2 GPUs, DDP

The same command runs two DDP processes on a CPU-only machine (torchrun + gloo; tested). Do not add `--cpu`:
with it, accelerate's launcher starts ONE process. per_device_train_batch_size is per process: the
effective batch is it × processes × gradient_accumulation_steps (infalign_train.json records both).
"""

from __future__ import annotations

from ._common import add_command, load


def _description() -> str:
    from ..core.losses import LOSSES

    tilted = ", ".join(name for name, spec in LOSSES.items() if spec.tilted)
    baselines = ", ".join(name for name, spec in LOSSES.items() if not spec.tilted)
    return (f"Fit pi* ∝ pi_ref · exp(Phi(C)/beta) offline with one of the docs/math.md §6 losses ({tilted}) or a "
            f"baseline ({baselines}). Writes the adapter, the tokenizer, a model card (README.md) and "
            "infalign_train.json into --out; checkpoints go to OUT/checkpoints. Reference log-probs are the "
            "dataset's stored columns when valid (no reference forward), else the policy with its adapter disabled.")


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "train", "TrainConfig", run,
        help="train a LoRA/QLoRA adapter toward the tilted policy on a prepared dataset",
        description=_description,
        positional_config=True)


def run(args) -> int:
    import logging
    import os

    from ..config import TrainConfig
    from ..stages.train import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load(args, TrainConfig)
    out = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate/torchrun only the main process reports
        return 0
    print(f"wrote adapter, tokenizer, README.md and infalign_train.json to {out}")
    return 0
