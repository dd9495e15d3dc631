"""Stop training at the first non-finite gradient or logged loss, before it reaches the weights.

A NaN or inf in a loss (one NaN in the data, a β so small that Φ/β overflows, a diverging learning rate)
makes every gradient NaN, and one optimizer step then makes every trained weight NaN. transformers does not
stop: its `logging_nan_inf_filter` (on by default) replaces a NaN loss in the log by the running mean, so the
run ends "successfully" with a finite-looking `train_loss` and a NaN model.

`NonFiniteGuard` checks, before every optimizer step, that the gradient of every trainable parameter is finite
(a fused norm per parameter: one small reduction per tensor, no copy), and at every log that `loss`,
`grad_norm` and the final `train_loss` are. It raises one InfalignError naming the step and the first
parameter or metric; nothing is written as final (the stage writes the adapter and its record only after
`trainer.train()` returns), and complete checkpoints from before the step stay, so the same command resumes
from them once the cause is fixed. Under DDP/FSDP every process takes part in the decision, so all of them
stop together instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import contextlib
import math

import torch
from transformers import TrainerCallback

from ..core.errors import InfalignError

__all__ = ["NonFiniteGuard", "progress_closed_on_error"]

_LOGGED = ("loss", "grad_norm", "train_loss")
_CAUSES = ("a non-finite value in the dataset, a beta so small that targets/beta overflow, or a learning rate "
           "that diverged")


def _first_bad_gradient(model) -> str | None:
    """The name of the first trainable parameter whose gradient holds a NaN or inf (None: all finite)."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    if not named:
        return None
    grads = [g for _, g in named]
    # One norm per tensor: NaN if any element is NaN, inf if any is inf (or the sum of squares overflows,
    # which the clipping that follows would turn into NaN weights as well).
    norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [g.norm() for g in grads]
    finite = torch.isfinite(torch.stack([n.float().to(grads[0].device) for n in norms]))
    bad = finite.logical_not().any()
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # one decision for all ranks
        flag = bad.to(torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        bad = flag.bool()
    if not bool(bad):
        return None
    index = torch.nonzero(~finite)
    return named[int(index[0])][0] if len(index) else "(a parameter on another process)"


class NonFiniteGuard(TrainerCallback):
    """Raise at the first non-finite gradient (before the optimizer step) or logged loss (module docstring)."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return control
        name = _first_bad_gradient(model)
        if name is not None:
            raise InfalignError(f"training stopped at step {state.global_step + 1}: the gradient of {name} is not "
                                f"finite (the loss is NaN or infinite), caused by {_CAUSES}. Nothing was "
                                "written as final; complete checkpoints before this step are kept")
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in _LOGGED:
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise InfalignError(f"training stopped at step {state.global_step}: {key} is {value}, caused by "
                                    f"{_CAUSES}. Nothing was written as final; complete checkpoints before this "
                                    "step are kept")
        return control


@contextlib.contextmanager
def progress_closed_on_error(trainer):
    """An error that stops training (this guard's, a full disk) prints on a line of its own: the Trainer's
    progress bar, left open by the exception, is closed first (tqdm ends its line)."""
    try:
        yield
    except Exception:
        for callback in trainer.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None)
            if bar is not None:
                bar.close()
                callback.training_bar = None
        raise
