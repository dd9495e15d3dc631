"""`train` stage: a prepared dataset → a LoRA/QLoRA adapter, its tokenizer, model card and training record.

    infalign train --dataset prepared/ --model BASE --loss tilted_sigmoid --beta 0.1 --out adapter/
    accelerate launch --multi_gpu --num_processes 2 -m offline_infalign.cli train ...   # DDP (GPUs or CPU)

The loss (`core.losses.LossSpec`) names the dataset kind it trains on (`kinds/`); the kind says which columns
the dataset needs and how rows become batches. The reference log-probs log π_ref(y|x) come either from the
dataset's stored columns (no reference forward at all) or from the policy itself with its LoRA adapter disabled
("live"). `reference="auto"` picks stored columns when they exist, were computed by this model (fingerprint) and
the base weights are in the dtype the columns were computed in (manifest key `ref_dtype`, else `dtype`, else
assumed float32); 4-bit (QLoRA) or bf16 weights against float32 columns give live. Then the self-check
(`reference.check_stored_reference`, `reference_check` sequences, 32 by default) recomputes a seeded sample of the
stored columns with the base weights and records the gap (mean and max, per sequence and per token) as
`reference_check` in infalign_train.json; above `reference_tolerance` auto goes live and stored warns. The choice
and its reason are logged and recorded.

Rows carry the sampled token ids when the dataset was prepared from samples that have them (docs/math.md §9):
the trainer computes log-probs on exactly those ids, the ones the sampler summed for `ref_logps` (a completion
cut at max_new_tokens has no stop-token term in either). Rows without ids (a dataset made by hand from text) are
tokenized once with `tokenization.tokenize_dataset`. Log-probs are `logprobs.completion_logps`, so stored and
live references agree.
The dataset manifest's `warnings` (e.g. samples drawn at temperature != 1, a β too small for K) are repeated in
the model card and in the training record's `warnings`, which evaluation shows.
Writes into OUT: the adapter, the tokenizer, README.md (model card), `infalign_train.json` (the training
record, read back by `training_record`; written last), `train_config.json` (the run's config, written before the
first checkpoint) and checkpoints under OUT/checkpoints. The folder follows the data builder's rule
(`checkpoints.py`): the same command resumes from the newest complete checkpoint or, finished, does nothing;
another config is refused with the diff; the folder is locked for the run.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from .. import __version__
from ..artifacts.checkpoints import (
    CheckpointMarker,
    check_folder,
    dataset_fingerprint,
    freed_on_disk_full,
    resume_checkpoint,
    run_config,
    start_run,
)
from ..artifacts.fingerprint import fingerprint_model, fingerprint_tokenizer
from ..artifacts.output_folder import disk_full_as_one_line
from ..artifacts.storage import load_artifact, output_lock, write_json_atomic
from ..artifacts.training_record import TRAIN_INFO, dataset_warnings, model_card
from ..config import config_to_dict
from ..core.checks import check_beta
from ..core.errors import InfalignError
from ..core.losses import get_loss
from ..core.tradeoff import log_partition
from ..core.transforms import Transform
from ..kinds import get_kind
from ..models import modeling
from ..models.modeling import load_tokenizer
from ..models.preflight import check_model
from ..models.tokenization import tokenize_dataset
from ..training.guard import NonFiniteGuard, progress_closed_on_error
from ..training.reference import (
    check_stored_reference,
    choose_reference,
    decide_reference,
    reference_tolerance,
    same_model,
)
from ..training.trainer import InfalignTrainer

__all__ = ["make_trainer", "train", "TrainerInfo"]

logger = logging.getLogger(__name__)


def _load_dataset(path: str, split: str, verify: bool | None = None):
    from datasets import DatasetDict


    data, manifest = load_artifact(path, stage="prepared", verify=verify)
    if isinstance(data, DatasetDict):
        if split not in data:
            raise InfalignError(f"dataset {path!r} has no split {split!r}; it has {', '.join(data)}")
        data = data[split]
    return data, manifest


def _transform_from_manifest(manifest: dict, loss: str):
    name = manifest.get("transform")
    if not name:
        raise InfalignError(f"the dataset manifest names no transform; the {loss} loss needs it for log Z")
    return Transform(name, manifest.get("tilt"))


def _check_stored_ids_model(dataset, kind, manifest: dict, cfg, fingerprint: str | None) -> None:
    """Stored token ids are the sampling tokenizer's: training another model on them is right only when its
    tokenizer gives each id the same token. With the sampler's `tokenizer_fingerprint` in the manifest that is
    checked (fingerprint.fingerprint_tokenizer) before the model loads; without it, a warning."""
    stored = [c for c in ("prompt_ids", *kind.id_columns.values()) if c in dataset.column_names]
    sampled_with = manifest.get("tokenizer") or manifest.get("model")
    if not stored or (manifest.get("model_fingerprint") and fingerprint == manifest["model_fingerprint"]):
        return  # no ids, or the very files the samples were drawn with, tokenizer included
    recorded = manifest.get("tokenizer_fingerprint")
    if recorded:
        mine = fingerprint_tokenizer(load_tokenizer(cfg.model, cfg.trust_remote_code))
        if mine != recorded:
            raise InfalignError(f"the dataset's token ids ({', '.join(stored)}) were made by tokenizer "
                                f"{sampled_with!r} ({recorded}), and model {cfg.model!r} has another tokenizer "
                                f"({mine}): its ids would mean other tokens. Train the model the samples were "
                                "drawn from (or one with its tokenizer), or sample this model")
    elif sampled_with and not same_model(str(sampled_with), str(cfg.model)):
        logger.warning("the dataset's token ids (%s) were made by tokenizer %r and are used as they are for model "
                       "%r: right only if both share one tokenizer", ", ".join(stored), sampled_with, cfg.model)


def _run_config(cfg) -> dict[str, Any]:
    return run_config(cfg, fingerprint_model(cfg.model), dataset_fingerprint(cfg.dataset))


@dataclass(frozen=True)
class TrainerInfo:
    """What `make_trainer` decided besides the trainer, for the training record and the model card."""

    manifest: dict[str, Any]  # the prepared dataset's
    beta: float
    kind: str
    reference: str  # "stored", "live" or "none"
    reference_reason: str
    reference_check: dict[str, Any] | None  # the stored reference's self-check, when it ran
    log_z: float | None  # the pointwise loss's log Z
    run_config: dict[str, Any]


def make_trainer(cfg, config: dict[str, Any] | None = None) -> tuple[InfalignTrainer, TrainerInfo]:
    """Load dataset, policy and reference choice for `cfg` and build the trainer (not yet trained).

    config: the run config (`checkpoints.run_config`; computed when not given), recorded in each checkpoint's
    completion marker.
    """
    spec = get_loss(cfg.loss)
    kind = get_kind(spec.kind)
    dataset, manifest, beta = _dataset_at_beta(cfg, spec, kind)
    # log Z = log ∫₀¹ exp(Φ(u)/β) du for the pointwise loss (docs/math.md §4/§6).
    log_z = float(log_partition(_transform_from_manifest(manifest, cfg.loss), beta)) if spec.needs_log_z else None

    config = config or _run_config(cfg)
    _check_stored_ids_model(dataset, kind, manifest, cfg, config["model_fingerprint"])

    use_gpu = torch.cuda.is_available()
    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(use_gpu and torch.cuda.is_bf16_supported())
    if bf16 and not use_gpu:
        logger.warning("bf16 on CPU is slow and imprecise; consider --no-bf16")
    model, tokenizer = _load_policy(cfg, bf16, use_gpu)
    weights_dtype = modeling.base_weights_dtype(model)
    reference, why = choose_reference(cfg.reference, cfg.loss, kind.name, dataset.column_names, manifest,
                                      weights_dtype, cfg.model, fingerprint=config["model_fingerprint"])
    if reference == "live" and cfg.full_finetune:
        raise InfalignError(f"full_finetune needs the dataset's stored reference log-probs, but reference=auto "
                            f"chose live: {why}. A live reference is the policy with its LoRA adapter disabled, "
                            "and full fine-tuning has none; pass --reference stored to use the stored columns "
                            "anyway (e.g. computed in another dtype), prepare the dataset from samples of this "
                            "model, or train with LoRA")
    logger.info("reference log-probs: %s (%s)", reference, why)

    out = Path(cfg.out)
    args = _training_args(cfg, out / "checkpoints", bf16, use_gpu)
    with args.main_process_first(desc="tokenize"):  # rank 0 writes the cache, the others read it
        dataset, dropped = tokenize_dataset(dataset, tokenizer, kind, cfg.max_length, cache_dir=out / "tokenized")
    if dropped:
        logger.warning("dropped %d row(s) longer than max_length=%d", dropped, cfg.max_length)
    if len(dataset) == 0:
        raise InfalignError(f"no training rows left in {cfg.dataset!r} (split {cfg.split!r})")
    check = None
    if reference == "stored" and cfg.reference_check:
        reference, why, check = _check_reference(cfg, model, dataset, kind, tokenizer.pad_token_id, reference, why,
                                                 weights_dtype)
    trainer = InfalignTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=kind.collator(tokenizer.pad_token_id),
        processing_class=tokenizer, loss=cfg.loss, beta=beta, reference=reference, log_z=log_z,
        group_forward=cfg.group_forward, completions_per_forward=cfg.completions_per_forward,
    )
    trainer.add_callback(CheckpointMarker(config, cfg.save_total_limit))
    trainer.add_callback(NonFiniteGuard())  # a NaN loss or gradient stops the run before it reaches the weights
    return trainer, TrainerInfo(manifest=manifest, beta=beta, kind=kind.name, reference=reference,
                                reference_reason=why, reference_check=check, log_z=log_z, run_config=config)


def _dataset_at_beta(cfg, spec, kind):
    """(dataset, manifest, beta): the prepared split, checked for the loss, with the rows at the run's beta."""
    dataset, manifest = _load_dataset(cfg.dataset, cfg.split, cfg.verify)
    if manifest.get("kind") != kind.name:
        raise InfalignError(f"loss {cfg.loss!r} trains on a {kind.name!r} dataset, but {cfg.dataset!r} is "
                            f"kind={manifest.get('kind')!r}")
    kind.check_columns(dataset.column_names, spec)
    for warning in dataset_warnings(manifest):  # once per run; the model card and the training record repeat them
        logger.warning("dataset %s: %s", cfg.dataset, warning)
    if cfg.beta is not None:
        beta = float(cfg.beta)  # checked by TrainConfig
    elif manifest.get("beta") is None:
        raise InfalignError("beta is not given and the dataset manifest has none; pass --beta")
    else:  # read from disk: checked here, where it enters
        beta = check_beta(manifest["beta"], f"train: the manifest of {cfg.dataset!r}")
    if kind.beta_in_rows and manifest.get("beta") is not None and not math.isclose(beta, float(manifest["beta"])):
        logger.info("beta %g differs from the dataset's %g: recomputing the %s weights", beta, manifest["beta"],
                    kind.name)
        dataset = kind.at_beta(dataset, beta)
    return dataset, manifest, beta


def _load_policy(cfg, bf16: bool, use_gpu: bool):
    set_seed(cfg.seed)  # peft draws the LoRA A init from the global RNG, before Trainer seeds anything
    model, tokenizer = modeling.load_policy(
        cfg.model, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules, qlora=cfg.qlora, dtype="bfloat16" if bf16 else "float32",
        full_finetune=cfg.full_finetune,
        # 4-bit weights cannot be moved after loading, so each process loads them onto its own GPU
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))} if cfg.qlora and use_gpu else None,
        gradient_checkpointing=cfg.gradient_checkpointing, trust_remote_code=cfg.trust_remote_code,
        allow_pickle_weights=cfg.allow_pickle_weights,
    )
    # Dropout in the base model would make the policy (and a live reference) noisy; only LoRA dropout stays.
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and "lora_dropout" not in name:
            module.p = 0.0
    return model, tokenizer


def _training_args(cfg, checkpoints: Path, bf16: bool, use_gpu: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=None,  # rotation is CheckpointMarker's, after a checkpoint is marked complete
        seed=cfg.seed,
        bf16=bf16,
        use_cpu=not use_gpu,
        report_to=cfg.report_to,
        remove_unused_columns=False,  # the collator needs the raw columns
        dataloader_pin_memory=use_gpu,
        ddp_find_unused_parameters=False,
    )


def _check_reference(cfg, model, dataset, kind, pad_token_id: int, reference: str, why: str, weights_dtype: str):
    """The self-check of stored reference log-probs (`reference.check_stored_reference`) on the base weights as
    the trainer runs them; returns (reference, reason, the check's record for infalign_train.json)."""
    import contextlib


    tolerance = cfg.reference_tolerance if cfg.reference_tolerance is not None else reference_tolerance(weights_dtype)
    # The policy with its adapter disabled is the base model; full fine-tuning has not changed its weights yet.
    base = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with base:
        check = check_stored_reference(model, dataset, kind, pad_token_id, cfg.reference_check, seed=cfg.seed,
                                       batch_size=cfg.per_device_train_batch_size)
    check.update(tolerance_per_token=tolerance, weights_dtype=weights_dtype)
    reference, why = decide_reference(cfg.reference, reference, why, check, tolerance)
    logger.info("reference self-check: %s (%s)", reference, why)
    if reference == "live" and cfg.full_finetune:
        raise InfalignError(f"full_finetune needs the dataset's stored reference log-probs, but reference=auto "
                            f"chose live: {why}")
    return reference, why, check


def _is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch (the environment says so before any process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def train(cfg) -> Path:
    """Train a LoRA/QLoRA adapter on a prepared dataset; returns the output folder (see module docstring).

    The same command into a finished folder returns at once; into an unfinished one it resumes from the newest
    complete checkpoint; another config is refused (checkpoints.py). The main process locks OUT for the run.
    """


    check_model(cfg.model, "model", cfg.trust_remote_code)  # a bad path is one line, before anything is read
    with output_lock(cfg.out) if _is_main_process() else disk_full_as_one_line(cfg.out):
        return _train(cfg)


def _train(cfg) -> Path:
    out = Path(cfg.out)
    config = _run_config(cfg)
    state = check_folder(out, config, explicit=cfg.resume_from_checkpoint is not None)
    if state == "finished":
        logger.info("%s already holds this run's adapter (%s): nothing to do", out, TRAIN_INFO)
        return out
    resume = resume_checkpoint(cfg.resume_from_checkpoint, out / "checkpoints", config)
    trainer, info = make_trainer(cfg, config)
    manifest, beta, reference, why = info.manifest, info.beta, info.reference, info.reference_reason
    tokenizer = trainer.processing_class
    if trainer.is_world_process_zero():
        start_run(out, config)  # after everything loaded: a command that fails early pins nothing on the folder
    # A checkpoint half-written on a full disk is deleted at once; an error mid-training starts its own line.
    with freed_on_disk_full(out / "checkpoints"), progress_closed_on_error(trainer):
        result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    if history:
        metrics.update({k: v for k, v in history[-1].items() if "/" in k or k == "loss"})

    # adapter_config.json + adapter_model.safetensors, or with full_finetune config.json + model.safetensors
    trainer.save_model(str(out))  # (main process only)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        (out / "README.md").write_text(model_card(cfg, manifest, beta, reference, metrics))
        record = {
            "config": config_to_dict(cfg),
            "dataset_manifest": manifest,
            "dataset_manifest_path": str(Path(cfg.dataset).resolve() / "manifest.json"),
            # The resolved folder (a relative path names another model from another directory) and what it held.
            "model": str(Path(cfg.model).resolve()) if Path(cfg.model).is_dir() else cfg.model,
            "model_as_given": cfg.model,
            "model_fingerprint": config["model_fingerprint"],
            "dataset_fingerprint": config["dataset_fingerprint"],
            "resumed_from": resume,
            "transform": manifest.get("transform"),
            "tilt": manifest.get("tilt"),
            "beta": beta,
            "loss": cfg.loss,
            "kind": info.kind,
            "procedure": manifest.get("procedure"),
            "n": manifest.get("n"),
            "reward_model": manifest.get("reward_model"),
            "reference": reference,
            "reference_reason": why,
            "reference_check": info.reference_check,
            # the group forward's first-batch decision (packed, or per row with the reason / measured gap)
            "packed_check": trainer.packed_check.as_dict() if trainer.packed_check else None,
            "log_z": info.log_z,
            "warnings": dataset_warnings(manifest),
            "global_step": trainer.state.global_step,
            "world_size": trainer.args.world_size,
            "total_train_batch_size": trainer.args.world_size * trainer.args.per_device_train_batch_size
            * trainer.args.gradient_accumulation_steps,
            "final_metrics": metrics,
            "package_version": __version__,
        }
        write_json_atomic(out / TRAIN_INFO, record)  # last: its presence means the adapter is finished
    return out
