"""Offline trainer for the tilted objective (docs/math.md §6): a `transformers.Trainer` whose loss is `core.losses`.

The trainer is the same for every loss and dataset kind: it computes the policy's log-probs of the batch's
sequences (`logprobs.completion_logps`), gets the reference's (stored columns, a live forward with the LoRA
adapter disabled, or none; see `reference.py`), and hands both to the loss's dataset kind (`kinds/`), which
makes the `core.losses` call and the metrics. Building the trainer from a config (dataset, model, reference
choice, tokenization) is `stages.train.make_trainer`.

Logged metrics use TRL's names (`rewards/chosen` = β·h of the chosen completion, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected`), plus `kl/estimate` (see `core.losses.kl_estimates`).
"""

from __future__ import annotations

import functools
from collections import defaultdict

import numpy as np
import torch
from transformers import Trainer

from .core.errors import InfalignError
from .core.losses import check_beta, get_loss
from .kinds import get_kind
from .logprobs import completion_logps

__all__ = ["InfalignTrainer"]


class InfalignTrainer(Trainer):
    """`transformers.Trainer` whose `compute_loss` is a `core.losses` function.

    Args (beyond Trainer's): loss (a LOSSES name), beta, reference ('stored' | 'live' | 'none'),
    log_z (losses with `needs_log_z`, i.e. pointwise: log Z of the transform at beta). Works with any causal LM;
    reference='live' needs a PeftModel (the reference is the policy with its adapter disabled).
    """

    def __init__(self, *args, loss: str, beta: float, reference: str = "stored", log_z: float | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        spec = get_loss(loss)
        fn, self.kind, self.dataset_kind = spec.fn, spec.kind, get_kind(spec.kind)
        if spec.needs_log_z:
            if log_z is None:
                raise InfalignError(f"the {loss} loss needs log_z = log Z(transform, beta)")
            fn = functools.partial(fn, log_z=log_z)
        self.loss_name, self.loss_fn, self.beta, self.reference = loss, fn, check_beta(beta), reference
        # compute_loss returns the mean over the micro-batch; let Trainer divide by accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # -- log-probs ---------------------------------------------------------------------------------------------
    def _ref_logps(self, model, batch) -> torch.Tensor | None:
        """log π_ref of the batch's sequences, flat in the collator's order; None without a reference."""
        if self.reference == "stored":
            return self.dataset_kind.stored_reference(batch).to(batch["input_ids"].device)
        if self.reference == "none":
            return None
        unwrapped = self.accelerator.unwrap_model(model)
        if not hasattr(unwrapped, "disable_adapter"):
            raise InfalignError("reference='live' needs a PEFT model (the reference is the adapter-disabled policy)")
        with torch.no_grad(), unwrapped.disable_adapter():
            return completion_logps(unwrapped, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = completion_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        ref = self._ref_logps(model, inputs)
        losses, metrics = self.dataset_kind.loss(self.loss_fn, logps, ref, inputs, self.beta)  # (B,)
        loss = (losses * self.dataset_kind.row_weight(inputs, losses)).mean()
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
