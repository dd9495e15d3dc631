"""Offline trainer for the tilted objective (SPEC §6): a `transformers.Trainer` whose loss is `core.losses`.

    infalign train --dataset prepared/ --model BASE --loss tilted_sigmoid --beta 0.1 --out adapter/
    accelerate launch --multi_gpu --num_processes 2 -m offline_infalign.cli train ...   # DDP (GPUs or CPU)

The reference log-probs log π_ref(y|x) come either from the dataset's stored columns (`ref_chosen_logps`,
`ref_rejected_logps`, `ref_logps`, `ref_logp`; no reference forward at all) or from the policy itself with
its LoRA adapter disabled ("live"). `reference="auto"` picks stored columns when they exist and the base
weights are in the dtype the columns were computed in (manifest key `ref_dtype`, else `dtype`, else assumed
float32); 4-bit (QLoRA) or bf16 weights against float32 columns give live. The choice is logged.

Rows are tokenized once with `tokenization.encode_prompt` / `encode_completion` (the same ids the sampler
used for `ref_logps`), and log-probs are `logprobs.completion_logps`, so stored and live references agree.
Collators, one per dataset kind, produce a flat batch of sequences plus the per-row tensors a loss needs:
- pairs:    2B sequences (B chosen then B rejected);
- listwise: the real completions of B groups flattened row-major, and a (B, Kmax) mask (variable K);
- bon:      B sequences, one per row.

Logged metrics use TRL's names (`rewards/chosen` = β·h of the chosen completion, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected`), plus `kl/estimate` (see `core.losses.kl_estimates`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from . import __version__
from .core.errors import InfalignError
from .core.losses import check_beta, get_loss, kl_estimates
from .core.tradeoff import log_partition
from .logprobs import completion_logps, pad_pairs
from .tokenization import check_tokenizer, encode_completion, encode_prompt

__all__ = [
    "InfalignTrainer",
    "REQUIRED_COLUMNS",
    "REFERENCE_COLUMNS",
    "required_columns",
    "choose_reference",
    "tokenize_dataset",
    "PairsCollator",
    "ListwiseCollator",
    "BonCollator",
    "COLLATORS",
    "make_trainer",
    "train",
]

logger = logging.getLogger(__name__)

# Columns each dataset kind needs for training (beyond the reference columns).
REQUIRED_COLUMNS = {
    "pairs": ("prompt", "chosen", "rejected", "target_margin"),
    "listwise": ("prompt", "completions", "targets"),
    "bon": ("prompt", "completion", "weight"),
}
REFERENCE_COLUMNS = {
    "pairs": ("ref_chosen_logps", "ref_rejected_logps"),
    "listwise": ("ref_logps",),
    "bon": ("ref_logp",),
}
# Losses that never read log π_ref (the reference only feeds the logged metrics).
_NO_REFERENCE_LOSSES = ("weighted_sft",)


def required_columns(loss: str, kind: str) -> tuple[str, ...]:
    cols = REQUIRED_COLUMNS[kind]
    if loss in ("dpo", "ipo"):  # the baselines only need to know which completion is preferred
        cols = tuple(c for c in cols if c != "target_margin")
    return cols


def check_columns(columns, loss: str, kind: str) -> None:
    missing = [c for c in required_columns(loss, kind) if c not in columns]
    if missing:
        raise InfalignError(
            f"loss {loss!r} needs column(s) {', '.join(map(repr, missing))} of a {kind!r} dataset; the dataset has "
            f"{', '.join(sorted(columns))}"
        )


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def choose_reference(requested: str, loss: str, kind: str, columns, manifest: dict, weights_dtype: str,
                     model: str | None = None) -> tuple[str, str]:
    """('stored' | 'live' | 'none', reason). 'none': weighted SFT without stored columns skips the reference.

    'auto' takes the stored columns only when they exist, the base weights are in the dtype they were computed
    in, and the model is the one the manifest names (when it names one): otherwise they would be another
    policy's log-probs.
    """
    has_stored = all(c in columns for c in REFERENCE_COLUMNS[kind])
    stored_dtype = str(manifest.get("ref_dtype") or manifest.get("dtype") or "float32")
    if stored_dtype == "auto":  # 'auto' says nothing about what was used; the conservative reading is float32
        stored_dtype = "float32"
    if requested == "stored":
        if not has_stored:
            raise InfalignError(
                f"reference='stored' needs column(s) {', '.join(REFERENCE_COLUMNS[kind])} in the {kind!r} dataset; "
                "use reference='live' (policy with the adapter disabled) instead"
            )
        return "stored", "requested"
    if requested == "live":
        return "live", "requested"
    if not has_stored:
        if loss in _NO_REFERENCE_LOSSES:
            return "none", f"{loss} needs no reference and the dataset has no stored reference columns"
        return "live", "the dataset has no stored reference log-prob columns"
    if model is not None and manifest.get("model") and not _same_model(str(manifest["model"]), str(model)):
        return "live", (f"the stored reference log-probs are of model {manifest['model']!r}, not {model!r} "
                        "(pass reference='stored' if they are the same weights)")
    if weights_dtype != stored_dtype:
        return "live", (f"base weights are {weights_dtype} but the stored reference log-probs were computed in "
                        f"{stored_dtype}")
    return "stored", f"stored columns present and base weights are {weights_dtype}, as when they were computed"


# ---- tokenization and collators ------------------------------------------------------------------------------


def tokenize_dataset(dataset, tokenizer, kind: str, max_length: int | None = None, cache_dir: str | Path | None = None):
    """Add id columns (`prompt_ids` and `chosen_ids`/`rejected_ids`, `completions_ids` or `completion_ids`)
    with the package's one tokenization; drop rows longer than `max_length` (never truncate: stored reference
    log-probs are of whole completions). Returns (dataset, number of rows dropped).

    The tokenized table goes to `cache_dir` (or stays in memory), never next to the input artifact's files:
    `datasets` would otherwise write cache-*.arrow into the prepared folder and change its content hash."""
    check_tokenizer(tokenizer)
    text_cols = {"pairs": ("chosen", "rejected"), "listwise": ("completions",), "bon": ("completion",)}[kind]

    def encode(row):
        out = {"prompt_ids": encode_prompt(tokenizer, row["prompt"])}
        for col in text_cols:
            value = row[col]
            out[f"{col}_ids"] = ([encode_completion(tokenizer, v) for v in value] if isinstance(value, list)
                                 else encode_completion(tokenizer, value))
        return out

    # The cache name pins the input rows and the tokenizer, so a rerun into the same folder never reuses ids
    # made by another tokenizer.
    tok_id = json.dumps([tokenizer.name_or_path, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                         getattr(tokenizer, "chat_template", None)], default=str)
    key = hashlib.sha256(f"{dataset._fingerprint}|{kind}|{tok_id}".encode()).hexdigest()[:16]

    def where(name):
        if cache_dir is None:
            return {"keep_in_memory": True}
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return {"cache_file_name": str(Path(cache_dir) / f"{name}-{key}.arrow")}

    dataset = dataset.map(encode, desc="tokenize", **where("tokenized"))
    if kind == "listwise":
        short = [i for i, c in enumerate(dataset["completions"]) if len(c) < 2]
        if short:
            pid = dataset[short[0]].get("prompt_id", short[0])
            raise InfalignError(f"listwise group {pid!r} has {len(dataset[short[0]]['completions'])} completion(s); "
                                "every group needs at least 2")
    if max_length is None:
        return dataset, 0

    def fits(row):
        lengths = []
        for col in text_cols:
            ids = row[f"{col}_ids"]
            lengths += [len(x) for x in ids] if kind == "listwise" else [len(ids)]
        return len(row["prompt_ids"]) + max(lengths) <= max_length

    before = len(dataset)
    dataset = dataset.filter(fits, desc="max_length", **where(f"max_length{max_length}"))
    return dataset, before - len(dataset)


def _floats(rows, col, default=None):
    if col not in rows[0]:
        return None if default is None else torch.full((len(rows),), float(default))
    return torch.tensor([float(r[col]) for r in rows], dtype=torch.float32)


class _Collator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def _pad(self, prompts, completions):
        return pad_pairs(prompts, completions, self.pad_token_id)


class PairsCollator(_Collator):
    """Rows → 2B sequences (chosen rows then rejected rows) + target_margin, weight, stored ref log-probs (B,)."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [r["prompt_ids"] for r in rows]
        batch = self._pad(prompts + prompts, [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows])
        batch["target_margin"] = _floats(rows, "target_margin", default=0.0)
        batch["weight"] = _floats(rows, "weight", default=1.0)
        for col in REFERENCE_COLUMNS["pairs"]:
            if col in rows[0]:
                batch[col] = _floats(rows, col)
        return batch


class ListwiseCollator(_Collator):
    """Rows of K_b completions → Σ K_b sequences (row-major) + (B, Kmax) mask, targets and stored ref_logps."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sizes = [len(r["completions_ids"]) for r in rows]
        b, kmax = len(rows), max(sizes)
        mask = torch.zeros((b, kmax), dtype=torch.bool)
        for i, k in enumerate(sizes):
            mask[i, :k] = True
        prompts = [r["prompt_ids"] for r, k in zip(rows, sizes) for _ in range(k)]
        completions = [c for r in rows for c in r["completions_ids"]]
        batch = self._pad(prompts, completions)
        batch["mask"] = mask

        def padded(col):
            out = torch.zeros((b, kmax), dtype=torch.float32)
            for i, r in enumerate(rows):
                out[i, : sizes[i]] = torch.tensor([float(v) for v in r[col]])
            return out

        batch["targets"] = padded("targets")
        batch["weight"] = _floats(rows, "weight", default=1.0)
        if "ref_logps" in rows[0]:
            batch["ref_logps"] = padded("ref_logps")
        return batch


class BonCollator(_Collator):
    """Rows → B sequences + weight and stored ref_logp (B,)."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._pad([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows])
        batch["weight"] = _floats(rows, "weight")
        if "ref_logp" in rows[0]:
            batch["ref_logp"] = _floats(rows, "ref_logp")
        return batch


COLLATORS = {"pairs": PairsCollator, "listwise": ListwiseCollator, "bon": BonCollator}


# ---- the trainer -----------------------------------------------------------------------------------------------


class InfalignTrainer(Trainer):
    """`transformers.Trainer` whose `compute_loss` is a `core.losses` function.

    Args (beyond Trainer's): loss (a LOSSES name), beta, reference ('stored' | 'live' | 'none'),
    log_z (pointwise only: log Z of the transform at beta). Works with any causal LM; reference='live' needs a
    PeftModel (the reference is the policy with its adapter disabled).
    """

    def __init__(self, *args, loss: str, beta: float, reference: str = "stored", log_z: float | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        spec = get_loss(loss)
        fn, self.kind = spec.fn, spec.kind
        if loss == "pointwise":
            if log_z is None:
                raise InfalignError("the pointwise loss needs log_z = log Z(transform, beta)")
            fn = functools.partial(fn, log_z=log_z)
        self.loss_name, self.loss_fn, self.beta, self.reference = loss, fn, check_beta(beta), reference
        # compute_loss returns the mean over the micro-batch; let Trainer divide by accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # -- log-probs ---------------------------------------------------------------------------------------------
    def _ref_logps(self, model, batch, stored: torch.Tensor | None) -> torch.Tensor | None:
        if self.reference == "stored":
            return stored.to(batch["input_ids"].device)
        if self.reference == "none":
            return None
        unwrapped = self.accelerator.unwrap_model(model)
        if not hasattr(unwrapped, "disable_adapter"):
            raise InfalignError("reference='live' needs a PEFT model (the reference is the adapter-disabled policy)")
        with torch.no_grad(), unwrapped.disable_adapter():
            return completion_logps(unwrapped, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = completion_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        metrics: dict[str, torch.Tensor] = {}
        if self.kind == "pairs":
            b = logps.shape[0] // 2
            stored = None
            if self.reference == "stored":
                stored = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]])
            ref = self._ref_logps(model, inputs, stored)  # (2B,)
            h = logps - ref.to(logps.dtype)
            losses, metrics = self.loss_fn(h[:b], h[b:], inputs["target_margin"].to(logps.dtype), self.beta)
            metrics["logps/chosen"] = logps[:b].detach().mean()
            metrics["logps/rejected"] = logps[b:].detach().mean()
            metrics.update(kl_estimates(h))
        elif self.kind == "listwise":
            mask = inputs["mask"]
            stored = inputs["ref_logps"][mask] if self.reference == "stored" else None
            ref = self._ref_logps(model, inputs, stored)  # (ΣK,)
            h = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device).masked_scatter(
                mask, logps - ref.to(logps.dtype))  # (B, Kmax), row-major like the collator
            losses, metrics = self.loss_fn(h, inputs["targets"].to(logps.dtype), mask, self.beta)
            lp = torch.zeros_like(h).masked_scatter(mask, logps.detach())
            targets = inputs["targets"]
            best = targets.masked_fill(~mask, -math.inf).argmax(-1, keepdim=True)
            worst = targets.masked_fill(~mask, math.inf).argmin(-1, keepdim=True)
            metrics["logps/chosen"] = lp.gather(-1, best).mean()
            metrics["logps/rejected"] = lp.gather(-1, worst).mean()
            metrics.update(kl_estimates(h, mask))
        else:  # bon
            losses, metrics = self.loss_fn(logps, inputs["weight"].to(logps.dtype))
            metrics["logps/completion"] = logps.detach().mean()
            ref = self._ref_logps(model, inputs, inputs.get("ref_logp"))
            if ref is not None:
                metrics.update(kl_estimates(logps - ref.to(logps.dtype)))
        weight = inputs["weight"].to(losses.dtype) if self.kind != "bon" else torch.ones_like(losses)
        loss = (losses * weight).mean()
        self._store_metrics(metrics, "train" if model.training else "eval")
        return (loss, {"losses": losses.detach()}) if return_outputs else loss

    # -- logging: average the per-step metrics over each logging window, TRL style --------------------------
    def _store_metrics(self, metrics: dict[str, torch.Tensor], split: str) -> None:
        keys = sorted(metrics)
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys])  # (M,)
        if self.accelerator.num_processes > 1:  # every rank has the same keys (they depend on the loss only)
            values = self.accelerator.gather(values.to(self.accelerator.device)[None]).mean(0)
        for key, value in zip(keys, values.tolist()):
            self._metrics[split][key].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for key, values in self._metrics[split].items():
            if values:
                logs[prefix + key] = float(np.mean(values))
        self._metrics[split].clear()
        super().log(logs, start_time)


# ---- train(cfg) ------------------------------------------------------------------------------------------------


def _load_dataset(path: str, split: str):
    from datasets import DatasetDict

    from .storage import load_artifact

    data, manifest = load_artifact(path, stage="prepared")
    if isinstance(data, DatasetDict):
        if split not in data:
            raise InfalignError(f"dataset {path!r} has no split {split!r}; it has {', '.join(data)}")
        data = data[split]
    return data, manifest


def _bon_weights(dataset, beta: float):
    """Recompute weight = softmax(target/β) within each prompt (the stored weights are for the manifest's β)."""
    if "target" not in dataset.column_names or "prompt_id" not in dataset.column_names:
        raise InfalignError("a bon dataset trained at a beta other than its manifest's needs the 'target' and "
                            "'prompt_id' columns to recompute its weights")
    ids = np.asarray(dataset["prompt_id"])
    z = np.asarray(dataset["target"], dtype=np.float64) / beta
    _, group = np.unique(ids, return_inverse=True)
    zmax = np.full(group.max() + 1, -np.inf)
    np.maximum.at(zmax, group, z)
    e = np.exp(z - zmax[group])
    total = np.zeros_like(zmax)
    np.add.at(total, group, e)
    return dataset.remove_columns("weight").add_column("weight", (e / total[group]).tolist())


def _transform_from_manifest(manifest: dict):
    from .core.transforms import Transform

    name = manifest.get("transform")
    if not name:
        raise InfalignError("the dataset manifest names no transform; the pointwise loss needs it for log Z")
    return Transform(name, manifest.get("tilt"))


def _model_card(cfg, manifest: dict, beta: float, reference: str, metrics: dict) -> str:
    transform = manifest.get("transform")
    tilt = manifest.get("tilt")
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {cfg.model}",
        "tags: [offline-infalign, lora, infalign]",
        "---",
        "",
        f"# InfAlign adapter for `{cfg.model}`",
        "",
        "LoRA adapter trained offline with [offline-infalign](https://arxiv.org/abs/2412.19792) to approximate the "
        "tilted policy π* ∝ π_ref · exp(Φ(C)/β) (C: calibrated reward, Φ: transform).",
        "",
        "| | |",
        "|---|---|",
        f"| dataset | `{Path(cfg.dataset).resolve()}` (manifest: `{Path(cfg.dataset).resolve() / 'manifest.json'}`) |",
        f"| dataset kind | {manifest.get('kind')} |",
        f"| transform | {transform} |",
        f"| tilt | {tilt} |",
        f"| beta | {beta} |",
        f"| loss | {cfg.loss} |",
        f"| procedure / n | {manifest.get('procedure')} / {manifest.get('n')} |",
        f"| reward model | {manifest.get('reward_model')} |",
        f"| reference log-probs | {reference} |",
        f"| LoRA | r={cfg.lora_r}, alpha={cfg.lora_alpha or 2 * cfg.lora_r}, dropout={cfg.lora_dropout}, "
        f"targets={', '.join(cfg.target_modules)}{', QLoRA nf4' if cfg.qlora else ''} |",
        f"| offline-infalign | {__version__} |",
        "",
        "Load it with `offline_infalign.modeling.load_adapted(base_model, adapter_dir)`; evaluate it with "
        "`infalign eval --policy <this folder>`.",
        "",
        "Final training metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                                              if isinstance(v, (int, float))),
        "",
    ]
    return "\n".join(lines)


def _resume_path(cfg, checkpoints: Path):
    value = cfg.resume_from_checkpoint
    if value is None:
        return None
    if str(value).lower() in ("latest", "true"):
        found = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if not found:
            raise InfalignError(f"resume_from_checkpoint='latest' but {str(checkpoints)!r} holds no checkpoint")
        return str(found[-1])
    if not Path(value).is_dir():
        raise InfalignError(f"resume_from_checkpoint {value!r} is not a checkpoint folder")
    return str(value)


def make_trainer(cfg) -> tuple[InfalignTrainer, dict[str, Any]]:
    """Load dataset, policy and reference choice for `cfg` and build the trainer (not yet trained).

    Returns (trainer, info) with info keys manifest, beta, kind, reference, reference_reason, log_z.
    """
    from transformers import TrainingArguments, set_seed

    from . import modeling

    kind = get_loss(cfg.loss).kind
    dataset, manifest = _load_dataset(cfg.dataset, cfg.split)
    if manifest.get("kind") != kind:
        raise InfalignError(f"loss {cfg.loss!r} trains on a {kind!r} dataset, but {cfg.dataset!r} is "
                            f"kind={manifest.get('kind')!r}")
    check_columns(dataset.column_names, cfg.loss, kind)
    beta = cfg.beta if cfg.beta is not None else manifest.get("beta")
    if beta is None:
        raise InfalignError("beta is not given and the dataset manifest has none; pass --beta")
    beta = check_beta(beta)
    if kind == "bon" and manifest.get("beta") is not None and not math.isclose(beta, float(manifest["beta"])):
        logger.info("beta %g differs from the dataset's %g: recomputing the bon weights", beta, manifest["beta"])
        dataset = _bon_weights(dataset, beta)
    # log Z = log ∫₀¹ exp(Φ(u)/β) du for the pointwise loss (SPEC §4/§6).
    log_z = float(log_partition(_transform_from_manifest(manifest), beta)) if cfg.loss == "pointwise" else None

    use_gpu = torch.cuda.is_available()
    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(use_gpu and torch.cuda.is_bf16_supported())
    if bf16 and not use_gpu:
        logger.warning("bf16 on CPU is slow and imprecise; consider --no-bf16")
    set_seed(cfg.seed)  # peft draws the LoRA A init from the global RNG, before Trainer seeds anything
    model, tokenizer = modeling.load_policy(
        cfg.model, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules, qlora=cfg.qlora, dtype="bfloat16" if bf16 else "float32",
        # 4-bit weights cannot be moved after loading, so each process loads them onto its own GPU
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))} if cfg.qlora and use_gpu else None,
        gradient_checkpointing=cfg.gradient_checkpointing, trust_remote_code=cfg.trust_remote_code,
    )
    # Dropout in the base model would make the policy (and a live reference) noisy; only LoRA dropout stays.
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and "lora_dropout" not in name:
            module.p = 0.0
    weights_dtype = modeling.base_weights_dtype(model)
    reference, why = choose_reference(cfg.reference, cfg.loss, kind, dataset.column_names, manifest, weights_dtype,
                                      cfg.model)
    logger.info("reference log-probs: %s (%s)", reference, why)

    out = Path(cfg.out)
    checkpoints = out / "checkpoints"
    args = TrainingArguments(
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
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        bf16=bf16,
        use_cpu=not use_gpu,
        report_to=cfg.report_to,
        remove_unused_columns=False,  # the collator needs the raw columns
        dataloader_pin_memory=use_gpu,
        ddp_find_unused_parameters=False,
    )
    with args.main_process_first(desc="tokenize"):  # rank 0 writes the cache, the others read it
        dataset, dropped = tokenize_dataset(dataset, tokenizer, kind, cfg.max_length, cache_dir=out / "tokenized")
    if dropped:
        logger.warning("dropped %d row(s) longer than max_length=%d", dropped, cfg.max_length)
    if len(dataset) == 0:
        raise InfalignError(f"no training rows left in {cfg.dataset!r} (split {cfg.split!r})")
    trainer = InfalignTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=COLLATORS[kind](tokenizer.pad_token_id),
        processing_class=tokenizer, loss=cfg.loss, beta=beta, reference=reference, log_z=log_z,
    )
    info = {"manifest": manifest, "beta": beta, "kind": kind, "reference": reference, "reference_reason": why,
            "log_z": log_z}
    return trainer, info


def train(cfg) -> Path:
    """Train a LoRA/QLoRA adapter on a prepared dataset; returns the output folder (see module docstring)."""
    from .config import config_to_dict

    trainer, info = make_trainer(cfg)
    manifest, beta, reference, why = info["manifest"], info["beta"], info["reference"], info["reference_reason"]
    out = Path(cfg.out)
    tokenizer = trainer.processing_class
    result = trainer.train(resume_from_checkpoint=_resume_path(cfg, out / "checkpoints"))
    metrics = dict(result.metrics)
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    if history:
        metrics.update({k: v for k, v in history[-1].items() if "/" in k or k == "loss"})

    trainer.save_model(str(out))  # adapter_config.json + adapter_model.safetensors (main process only)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        (out / "README.md").write_text(_model_card(cfg, manifest, beta, reference, metrics))
        record = {
            "config": config_to_dict(cfg),
            "dataset_manifest": manifest,
            "dataset_manifest_path": str(Path(cfg.dataset).resolve() / "manifest.json"),
            "model": cfg.model,
            "transform": manifest.get("transform"),
            "tilt": manifest.get("tilt"),
            "beta": beta,
            "loss": cfg.loss,
            "kind": info["kind"],
            "procedure": manifest.get("procedure"),
            "n": manifest.get("n"),
            "reward_model": manifest.get("reward_model"),
            "reference": reference,
            "reference_reason": why,
            "log_z": info["log_z"],
            "global_step": trainer.state.global_step,
            "world_size": trainer.args.world_size,
            "total_train_batch_size": trainer.args.world_size * trainer.args.per_device_train_batch_size
            * trainer.args.gradient_accumulation_steps,
            "final_metrics": metrics,
            "package_version": __version__,
        }
        (out / "infalign_train.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out
