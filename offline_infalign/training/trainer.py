"""Offline trainer for the tilted objective (docs/math.md §6): a `transformers.Trainer` whose loss is `core.losses`.

The trainer is the same for every loss and dataset kind: it computes the policy's log-probs of the batch's
sequences, gets the reference's (stored columns, a live forward with the LoRA adapter disabled, or none; see
`reference.py`), and hands both to the loss's dataset kind (`kinds/`), which makes the `core.losses` call and
the metrics. Building the trainer from a config (dataset, model, reference choice, tokenization) is
`stages.train.make_trainer`.

Group forward (`group_forward=True`, the default): batches are whole prompts (`groups.GroupBatchSampler` for
kinds with a row per pair or completion), each prompt and each distinct completion is computed once per batch
(`groups.pack_sequences`, `logprobs.packed_logps`), and the LM head runs at completion positions only, in
chunks. The loss and its gradients are the per-row forward's (`logprobs.completion_logps`, what
`group_forward=False` runs; tests/test_groups.py). Whether a model packs is decided at the run's first batch
(`packed_check.check_packed`: features the packed attention cannot express are refused by name, then the batch
is computed both ways without gradients and compared within a per-dtype tolerance); otherwise the run goes per
row, with one warning naming the reason or the measured gap. The decision is `packed_check` on the trainer.
`completions_per_forward` (completions per forward pass) bounds memory by a chunk instead of K with an exact two-pass step:
pass 1 computes every sequence's log-prob without gradients and the loss's gradient with respect to them; pass
2 backpropagates Σ_n (∂L/∂logπ_n) · logπ_n one chunk at a time, which has the same parameter gradient.

Logged metrics use TRL's names (`rewards/chosen` = β·h of the chosen completion, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected`), plus `kl/estimate` (see `core.losses.kl_estimates`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import defaultdict

import numpy as np
import torch
from transformers import Trainer

from ..core.checks import check_beta
from ..core.errors import InfalignError
from ..core.losses import get_loss
from ..kinds import get_kind
from ..kinds.base import Collator
from ..models.groups import GroupBatchSampler, GroupCollator, prompt_groups
from ..models.logprobs import causal_lm, completion_logps, packed_logps
from ..models.packed_attention import restore_attention
from ..models.packed_check import PackedCheck, check_packed

__all__ = ["InfalignTrainer"]

logger = logging.getLogger(__name__)


class InfalignTrainer(Trainer):
    """`transformers.Trainer` whose `compute_loss` is a `core.losses` function.

    Args (beyond Trainer's): loss (a LOSSES name), beta, reference ('stored' | 'live' | 'none'),
    log_z (losses with `needs_log_z`, i.e. pointwise: log Z of the transform at beta), group_forward (batches
    of whole prompts, each prompt and distinct completion computed once; see the module docstring), completions_per_forward
    (completions per forward pass in the two-pass step; None: one pass). Works with any causal LM;
    reference='live' needs a PeftModel (the reference is the policy with its adapter disabled).
    """

    def __init__(self, *args, loss: str, beta: float, reference: str = "stored", log_z: float | None = None,
                 group_forward: bool = True, completions_per_forward: int | None = None, **kwargs):
        spec = get_loss(loss)
        fn, self.kind, self.dataset_kind = spec.fn, spec.kind, get_kind(spec.kind)
        if completions_per_forward is not None and not group_forward:
            raise InfalignError("completions_per_forward needs group_forward (chunks are pieces of a prompt's group)")
        collator = kwargs.get("data_collator")
        if group_forward and getattr(type(collator), "sequences", Collator.sequences) is Collator.sequences:
            logger.warning("group forward off: the collator %s does not say its sequences (Collator.sequences)",
                           type(collator).__name__)
            group_forward, completions_per_forward = False, None
        if group_forward:
            kwargs["data_collator"] = GroupCollator(collator, completions_per_forward)
        super().__init__(*args, **kwargs)
        if spec.needs_log_z:
            if log_z is None:
                raise InfalignError(f"the {loss} loss needs log_z = log Z(transform, beta)")
            fn = functools.partial(fn, log_z=log_z)
        self.beta = check_beta(beta, "InfalignTrainer")
        self.loss_name, self.loss_fn, self.reference = loss, fn, reference
        self.group_forward, self.completions_per_forward = group_forward, completions_per_forward
        self._packed: bool | None = None  # decided at the first batch (`check_packed`)
        self.packed_check: PackedCheck | None = None
        # compute_loss returns the mean over the micro-batch; let Trainer divide by accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # -- batches of whole prompts --------------------------------------------------------------------------------
    def get_train_dataloader(self):
        """Kinds with one row per pair or completion: batches of whole prompts (`GroupBatchSampler`), at most
        per_device_train_batch_size rows unless one prompt has more. Grouped kinds (a row is a prompt) and the
        per-row mode keep the Trainer's own loader."""
        if not self.group_forward or self.dataset_kind.grouped or not hasattr(self.train_dataset, "column_names"):
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        sampler = GroupBatchSampler(prompt_groups(self.train_dataset), self._train_batch_size, seed=self.args.seed)
        workers = self.args.dataloader_num_workers
        loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=workers, pin_memory=self.args.dataloader_pin_memory,
                            persistent_workers=bool(self.args.dataloader_persistent_workers and workers))
        return self.accelerator.prepare(loader)

    # -- log-probs ---------------------------------------------------------------------------------------------
    def _use_packed(self, model, batch) -> bool:
        if not self.group_forward or "group_units" not in batch:
            return False
        if self._packed is None:
            check = check_packed(model, batch)
            packed = check.packed
            if self.accelerator.num_processes > 1:  # every rank sees its own batch; all must take the same path
                flag = torch.tensor([float(packed)], device=batch["input_ids"].device)
                packed = bool(self.accelerator.gather(flag).min() > 0)
                if check.packed and not packed:
                    check.packed, check.reason = False, "another process's first batch failed the check"
                    restore_attention(causal_lm(model).config)
            if packed:
                logger.info("group forward: packed (%s)", check.describe())
            else:
                logger.warning("group forward: running per row (exact, slower) because %s", check.describe())
            self.packed_check, self._packed = check, packed
        return self._packed

    def _logps(self, model, batch) -> torch.Tensor:
        """log π of the batch's sequences, flat in the collator's order (one per sequence)."""
        if self._use_packed(model, batch):
            logps = packed_logps(model, batch["group_units"], batch["group_num_seqs"])
            return logps[batch["group_seq_index"]]
        return completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

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
            return self._logps(unwrapped, batch)

    def _loss(self, logps, ref, batch, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        losses, metrics = self.dataset_kind.loss(self.loss_fn, logps, ref, batch, self.beta)  # (B,)
        self._store_metrics(metrics, split)
        return (losses * self.dataset_kind.row_weight(batch, losses)).mean(), losses

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = self._logps(model, inputs)
        loss, losses = self._loss(logps, self._ref_logps(model, inputs), inputs, "train" if model.training else "eval")
        return (loss, {"losses": losses.detach()}) if return_outputs else loss

    # -- the two-pass step (completions_per_forward) --------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        """With completions_per_forward: pass 1 gives every log-prob and ∂L/∂logπ without a graph; pass 2 backpropagates
        (∂L/∂logπ) · logπ per unit (≤ completions_per_forward completions with their prompt). Same loss and gradient as one
        pass (the forwards are deterministic: no dropout, see TrainConfig), memory of one unit."""
        if self.completions_per_forward is None:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():  # the check computes in the dtype training computes in
            packed = self._use_packed(model, inputs)
        if not packed:
            return super().training_step(model, inputs, num_items_in_batch)
        units, n = inputs["group_units"], inputs["group_num_seqs"]
        with self.compute_loss_context_manager():
            with torch.no_grad():
                logps = packed_logps(model, units, n)
                ref = self._ref_logps(model, inputs)
            leaf = logps.detach().requires_grad_()
            loss, _ = self._loss(leaf[inputs["group_seq_index"]], ref, inputs, "train")
            (grad,) = torch.autograd.grad(loss, leaf)
        scale = 1.0 / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        for i, unit in enumerate(units):
            # DDP: reduce once, after the last unit (the earlier ones accumulate locally).
            sync = contextlib.nullcontext() if i == len(units) - 1 else self.accelerator.no_sync(model)
            with sync, self.compute_loss_context_manager():
                part = packed_logps(model, [unit], n)
                self.accelerator.backward((part * grad).sum() * scale)
        return loss.detach() * scale

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
