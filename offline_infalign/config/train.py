"""Config of `infalign train` (stages/train.py): LoRA/QLoRA (or full) training toward the tilted policy."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..core.checks import check_beta
from ..core.errors import InfalignError
from ..core.losses import LOSSES
from .base import ALLOW_PICKLE_HELP, VERIFY_HELP, field, positive_int

__all__ = ["TrainConfig"]

_REFERENCES = ("auto", "stored", "live")


def _loss_names() -> list[str]:
    """The registered losses, the tilted ones first, then the baselines (dpo, ipo): the order `--help` shows."""
    return [n for n, s in LOSSES.items() if s.tilted] + [n for n, s in LOSSES.items() if not s.tilted]


def _loss_help() -> str:
    """'... tilted_pairwise, tilted_sigmoid, dpo, ipo <- pairs; listwise, pointwise <- listwise; ...' from the
    registry: a loss trains only on datasets of its kind."""
    by_kind: dict[str, list[str]] = {}
    for spec in LOSSES.values():
        by_kind.setdefault(spec.kind, []).append(spec.name)
    kinds = "; ".join(f"{', '.join(names)} <- {kind}" for kind, names in by_kind.items())
    return f"loss (docs/math.md §6); its dataset kind must match the dataset's: {kinds}"


@dataclasses.dataclass
class TrainConfig:
    """`infalign train`: fit the tilted policy (docs/math.md §6) on a prepared dataset with LoRA or QLoRA."""

    # `chunk_size` meant prompts per resumable chunk in sample/score and completions per forward pass here; this
    # one was renamed (the old key is refused, naming the new one: config/base.py `renamed_keys`).
    RENAMED: ClassVar[dict[str, str]] = {"chunk_size": "completions_per_forward"}

    dataset: str = field(help="prepared dataset folder (`infalign prepare` output)")
    model: str = field(help="base model: local path or hub id (the reference policy)")
    loss: str = field(help=_loss_help(), choices=_loss_names())
    out: str = field(help="output folder: adapter, tokenizer, model card, infalign_train.json")
    beta: float | None = field(None, help="KL coefficient beta (default: the dataset manifest's beta)")
    split: str = field("train", help="dataset split to train on")
    max_steps: int | None = field(None, help="optimizer steps (overrides num_train_epochs when set)")
    num_train_epochs: float = field(1.0, help="passes over the dataset")
    learning_rate: float = field(5e-5, help="peak learning rate (AdamW)")
    lr_scheduler_type: str = field("linear", help="transformers scheduler name: linear, cosine, constant, ... (one "
                                   "that needs no lr_scheduler_kwargs)")
    warmup_steps: int = field(0, help="linear warmup steps (>= 0)")
    lora_r: int = field(16, help="LoRA rank")
    lora_alpha: int | None = field(None, help="LoRA alpha (default: 2 * lora_r)")
    lora_dropout: float = field(0.0, help="LoRA dropout (default 0: dropout makes the log-ratios h noisy, and TRL "
                                "disables it too)")
    target_modules: list[str] = field(["all-linear"], help="modules that get LoRA: 'all-linear' or module names "
                                      "such as q_proj v_proj")
    qlora: bool = field(False, help="4-bit nf4 base weights (bitsandbytes), double quantization")
    full_finetune: bool = field(False, help="train every weight instead of a LoRA adapter (no qlora; needs the "
                                "dataset's stored reference log-probs: there is no adapter to disable for a live "
                                "reference). Memory: weights + gradients + AdamW's two moments, all in the weight "
                                "dtype = 16 bytes/param in float32, 8 in bf16 (270M params: 4.3 GB / 2.2 GB), "
                                "plus activations; OUT gets a full model folder")
    per_device_train_batch_size: int = field(8, help="rows per device per step (a pairs row is 2 sequences, a "
                                             "listwise row K); with group_forward a batch holds whole prompts: "
                                             "at most this many rows, or one prompt's rows when it has more")
    gradient_accumulation_steps: int = field(1, help="micro-batches per step")
    reference: str = field("auto", help="reference log-probs: stored (dataset columns, no reference forward), live "
                           "(policy with the adapter disabled), auto (stored when present, computed by this model "
                           "in the dtype of its base weights, and within reference_tolerance of its own forward "
                           "on reference_check sampled sequences)", choices=_REFERENCES)
    reference_check: int = field(32, help="with stored reference log-probs: sequences (seeded sample) recomputed "
                                 "with the base weights before training; the gap goes to the log and "
                                 "infalign_train.json, and decides auto (0: no check)")
    reference_tolerance: float | None = field(None, help="largest mean gap per token (nats) between stored and "
                                              "recomputed reference log-probs that auto accepts (default: 1e-3 for "
                                              "float32 base weights, 3e-2 for 16-bit ones)")
    seed: int = field(0, help="seed for LoRA init and data order")
    logging_steps: int = field(10, help="log metrics every this many steps")
    save_steps: int | None = field(500, help="checkpoint every this many steps into OUT/checkpoints (null: never)")
    save_total_limit: int | None = field(2, help="complete checkpoints kept (older ones are deleted once a newer "
                                         "one is complete)")
    resume_from_checkpoint: str | None = field(None, help="explicit override: a checkpoint folder, or 'latest' "
                                               "(newest complete in OUT/checkpoints); may change max_steps/"
                                               "num_train_epochs, refuses a checkpoint of another config. Without "
                                               "it the same command resumes by itself from the newest complete "
                                               "checkpoint")
    group_forward: bool = field(True, help="batches of whole prompts; each prompt computed once per batch and each "
                                "distinct completion once (a prompt and its completions packed into one sequence, "
                                "each completion attending to the prompt and to itself), the LM head only at "
                                "completion positions; same loss and gradients as one row per sequence (false: "
                                "that per-row forward, the reference, on batches of rows)")
    completions_per_forward: int | None = field(
        None, help="completions per forward pass: an exact two-pass step (log-probs without gradients, then "
        "backward a chunk at a time) whose memory is a chunk's, whatever K (null: one pass; needs group_forward and "
        "lora_dropout 0)")
    gradient_checkpointing: bool = field(False, help="recompute activations in backward (less memory, ~30% "
                                         "slower)")
    bf16: bool | None = field(None, help="bf16 weights and autocast (default: on for a bf16-capable GPU, off on "
                              "CPU)")
    max_length: int | None = field(None, help="drop rows whose prompt + completion is longer (never truncated: the "
                                   "stored reference log-probs are of the whole completion)")
    report_to: str = field("none", help="none, all, or one installed logger: tensorboard, wandb, ...")
    trust_remote_code: bool = field(False, help="allow custom model code from the hub (off by default)")
    allow_pickle_weights: bool = field(False, help=ALLOW_PICKLE_HELP)
    verify: bool | None = field(None, help=VERIFY_HELP)

    def __post_init__(self):
        for name in ("dataset", "model", "out"):
            if not getattr(self, name):
                raise InfalignError(f"train: {name} is required, got {getattr(self, name)!r}")
        if self.loss not in _loss_names():
            raise InfalignError(f"train: unknown loss {self.loss!r}; allowed: {', '.join(_loss_names())}")
        if self.reference not in _REFERENCES:
            raise InfalignError(f"train: reference {self.reference!r} not allowed; allowed: {', '.join(_REFERENCES)}")
        if self.beta is not None:
            check_beta(self.beta, "train")
        for name in ("lora_r", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps"):
            positive_int("train", name, getattr(self, name))
        for name in ("max_steps", "save_steps", "max_length", "lora_alpha", "save_total_limit"):
            positive_int("train", name, getattr(self, name), optional=True)
        positive_int("train", "reference_check", self.reference_check, 0)
        if self.reference_tolerance is not None and not 0.0 <= float(self.reference_tolerance) < float("inf"):
            raise InfalignError(f"train: reference_tolerance must be a finite number >= 0, got "
                                f"{self.reference_tolerance!r}")
        if not float(self.learning_rate) > 0.0:
            raise InfalignError(f"train: learning_rate must be > 0, got {self.learning_rate!r}")
        if not float(self.num_train_epochs) > 0.0:
            raise InfalignError(f"train: num_train_epochs must be > 0, got {self.num_train_epochs!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise InfalignError(f"train: lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        positive_int("train", "completions_per_forward", self.completions_per_forward, optional=True)
        if self.completions_per_forward is not None and not self.group_forward:
            raise InfalignError("train: completions_per_forward needs group_forward (a chunk is part of a prompt's "
                                "group)")
        if self.completions_per_forward is not None and float(self.lora_dropout) > 0.0:
            # the two passes must see the same forward; dropout would draw two different ones
            raise InfalignError(f"train: completions_per_forward needs lora_dropout 0 (got {self.lora_dropout}): the two-pass "
                                "step recomputes each chunk and dropout would change it")
        if self.full_finetune and self.qlora:
            raise InfalignError("train: full_finetune trains every weight; it cannot be combined with qlora (4-bit "
                                "weights are frozen)")
        if self.full_finetune and self.reference == "live":
            raise InfalignError("train: reference='live' is the policy with its LoRA adapter disabled; "
                                "full_finetune has no adapter. Use the dataset's stored reference log-probs "
                                "(reference auto or stored)")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not self.target_modules:
            raise InfalignError("train: target_modules must name at least one module (or 'all-linear')")
        if not all(isinstance(t, str) and t.strip() for t in self.target_modules):
            raise InfalignError(f"train: target_modules must be module names, got {self.target_modules!r}")
        # Settings transformers reads only when the trainer is built, after the model loaded (a traceback there):
        # checked now. The target modules are checked against the model once it loads (modeling.load_policy).
        positive_int("train", "warmup_steps", self.warmup_steps, 0)
        _check_scheduler(self.lr_scheduler_type)
        _check_report_to(self.report_to)


def _check_scheduler(name: str) -> None:
    """A scheduler transformers knows and train can run: built on a one-parameter optimizer from the settings train
    passes (warmup and total steps, no `lr_scheduler_kwargs`), and stepped without a metric (train evaluates
    nothing, so reduce_lr_on_plateau and greedy, whose `step` takes the evaluation metric, cannot run). Refused now,
    with the names that would run, instead of a traceback once the model has loaded."""
    import inspect

    import torch
    from transformers import SchedulerType, get_scheduler

    def problem(value: str) -> str | None:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        try:
            scheduler = get_scheduler(value, optimizer, num_warmup_steps=1, num_training_steps=10)
        except (ValueError, TypeError, KeyError):
            return "needs settings train does not pass (lr_scheduler_kwargs)"
        step = inspect.signature(scheduler.step).parameters.values()
        if any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in step):
            return "steps on an evaluation metric, and train evaluates nothing"
        return None

    names = [s.value for s in SchedulerType]
    why = "is not a transformers scheduler" if name not in names else problem(name)
    if why is not None:
        usable = [n for n in names if problem(n) is None]
        raise InfalignError(f"train: lr_scheduler_type {name!r} {why}; allowed: {', '.join(usable)}")


def _check_report_to(name: str) -> None:
    """'none', 'all' (every logger installed) or one logger transformers integrates, which must be installed."""
    if name in ("none", "all"):
        return
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    if name not in INTEGRATION_TO_CALLBACK:
        raise InfalignError(f"train: report_to {name!r} is not a logger transformers knows; allowed: none, all, "
                            f"{', '.join(INTEGRATION_TO_CALLBACK)}")
    if name not in get_available_reporting_integrations():
        raise InfalignError(f"train: report_to {name!r} needs the {name} package, which is not installed here "
                            f"(pip install {name}), or pass --report-to none")
