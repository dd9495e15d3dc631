"""Whether the group forward (`logprobs.packed_logps`) is exact for a model: checked on the model, not listed.

Two steps, once per run (the trainer's first batch; `grouped_logps.grouped_ids_logps`'s first batch):

1. `packed_refusal`: features the packed attention cannot express are refused by name before any forward:
   layers that do not call transformers' attention interface, layer types other than full and sliding-window
   attention (recurrent, convolutional, linear or chunked attention layers would carry one completion into the
   next, or attend differently), ALiBi, attention sinks, bidirectional attention, a forward without
   `position_ids`, an encoder-decoder, torch DataParallel.
2. `check_packed`: the batch is computed both ways — per row (each sequence right-padded in its own row, the
   model's own masks and positions) and packed — without gradients, in eval mode (dropout off) and in the
   dtype the run computes in (autocast's, else the weights'). It packs when every sequence n of T_n scored
   tokens has |log π_packed(n) − log π_row(n)| ≤ tolerance · √T_n: `gap` is the largest |Δ_n| / √T_n, in
   nats per √token. Before that, one row's logits from the model's own forward are compared with the LM head
   applied to the hidden states its head receives (`logprobs.logit_map`): a model whose logits are something
   else is refused by name. During the packed forward the packed attention refuses, by name, arguments it
   does not compute (`packed_attention.PackedUnsupported`).

Why √T and these tolerances (nats per √token; measured in benchmarks/README.md, "Group forward: the check").
The packed and per-row forwards do the same arithmetic on differently shaped tensors, so an exact model's
sequences differ by rounding, which adds up over a sequence's tokens like a random walk (∝ √T), while a wrong
forward moves every token (∝ T): dividing by √T makes the noise the same for short and long sequences, and a
fault stands out more the longer the sequence. Per token instead, a batch of one-token completions would be
judged on single-token rounding (up to 0.09 nats in bfloat16 on Gemma 3 270M). Measured on Gemma 3 270M (3
prompts of 116-279 tokens, 8 sampled completions each, cut to 1-48 tokens): an exact packed forward differs by
8e-6 in float32 and 0.13 in bfloat16; positions that do not restart per completion give 0.64-0.67 (both
dtypes), completions that see each other 13. Tolerances: float32 1e-3 (float64 the same: its models still run
norms and softmaxes in float32); bfloat16 0.3, 2.2× the rounding measured and 2.2× below the subtler fault
(which grows as √T with longer completions: 1.2 when all are 24 tokens); float16 0.0375, bfloat16's scaled by
the unit roundoff (8× smaller). On tiny random models a wrong forward moves the log-probs by less (they attend
almost uniformly at their initial scale), so the tests that plant faults use float32 or peaked weights. The
check verifies the batch it sees: a window longer than every sequence of that batch is not exercised by it (the
windows themselves are tested on tiny models with short windows, tests/test_packed_models.py).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass

import torch

from .logprobs import causal_lm, head_input, logit_map, packed_logps, target_logps
from .packed_attention import PackedUnsupported, restore_attention

__all__ = ["PackedCheck", "packed_refusal", "check_packed", "packing_tolerance", "compute_dtype", "row_logps"]

_LAYER_TYPES = ("full_attention", "sliding_attention")
# nats per √token: see the module docstring
_TOLERANCE = {torch.float64: 1e-3, torch.float32: 1e-3, torch.bfloat16: 0.3, torch.float16: 0.0375}
_HEAD_CHECK_TOKENS = 32  # tokens of one row whose full logits the LM-head comparison computes


@dataclass
class PackedCheck:
    """The decision of a run: pack or not, and why not (a feature refused by name, or the measured gap)."""

    packed: bool
    reason: str | None = None
    gap: float | None = None  # max over sequences of |packed − per row| / √tokens, nats per √token
    max_seq_gap: float | None = None  # max over sequences of |packed − per row|, nats
    tolerance: float | None = None
    dtype: str | None = None
    sequences: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.gap is None:
            return self.reason or "packed"
        measured = (f"packed and per-row log-probs differ by up to {self.gap:.3g} nats per √token "
                    f"({self.max_seq_gap:.3g} nats per sequence) over {self.sequences} sequences, in {self.dtype}; "
                    f"tolerance {self.tolerance:g}")
        return measured if self.packed else f"{self.reason}: {measured}"


def packing_tolerance(dtype: torch.dtype) -> float:
    """nats per √token by which the packed and per-row log-probs of a sequence may differ (module docstring)."""
    if dtype in _TOLERANCE:
        return _TOLERANCE[dtype]
    # another (8-bit) float type: float16's, scaled by the unit roundoff
    return _TOLERANCE[torch.float16] * torch.finfo(dtype).eps / torch.finfo(torch.float16).eps


def compute_dtype(model) -> torch.dtype:
    """The dtype the model computes in: autocast's when it is on, else the least precise floating dtype of its
    parameters (a bf16 model with float32 LoRA adapters computes in bf16; 4-bit weights are not floating)."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        return torch.float32
    device = params[0].device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return max((p.dtype for p in params), key=lambda d: torch.finfo(d).eps)


def packed_refusal(model) -> str | None:
    """Why `packed_logps` cannot be exact for this model, from its class and config alone (before any forward);
    None when nothing rules it out (then `check_packed` decides on a batch)."""
    if isinstance(model, torch.nn.DataParallel):
        return "torch DataParallel splits batches by rows (use DDP: accelerate launch)"
    base = causal_lm(model)
    config, name = base.config, type(base).__name__
    if getattr(config, "is_encoder_decoder", False):
        return f"{name} is an encoder-decoder model"
    if base.get_output_embeddings() is None:
        return f"{name} has no output embeddings (LM head) module"
    if (getattr(config, "alibi", False) or getattr(config, "position_embedding_type", None) == "alibi"
            or config.model_type in ("bloom", "mpt")):
        return "ALiBi attention biases (added to the scores inside attention: the packed attention has none)"
    if not getattr(base, "_supports_attention_backend", False):
        return f"{name}'s layers do not call transformers' attention interface"
    layer_types = set(getattr(config, "layer_types", None) or [])
    other = sorted(layer_types - set(_LAYER_TYPES))
    if other:
        return (f"layers of type {', '.join(other)} (only full and sliding-window attention layers can be packed: "
                "other layers would carry one completion into the next or attend otherwise)")
    if "sliding_attention" in layer_types and not getattr(config, "sliding_window", None):
        return "sliding-attention layers without a sliding_window"
    if getattr(config, "attention_chunk_size", None):
        return "chunked attention (attention_chunk_size)"
    if getattr(config, "use_bidirectional_attention", False):
        return "bidirectional attention (use_bidirectional_attention)"
    sinks = [type(m).__name__ for m in base.modules() if isinstance(getattr(m, "sinks", None), torch.Tensor)]
    if sinks:
        return f"attention sinks ({sinks[0]}.sinks)"
    if "position_ids" not in inspect.signature(base.forward).parameters:
        return f"{name}.forward takes no position_ids (positions could not restart for each completion)"
    return None


def row_logps(model, input_ids, attention_mask, completion_mask, rows: int = 8) -> torch.Tensor:
    """`logprobs.completion_logps` (per row, the model's own masks and positions) with the LM head applied at the
    completion positions only (`target_logps`), `rows` rows per forward: no (rows × length × vocabulary)
    logits. Equal to `completion_logps` for models whose logits are `logit_map` of their head's output, which
    `check_packed` verifies first."""
    base = causal_lm(model)
    head = base.get_output_embeddings()
    scale, softcap = logit_map(base.config)
    out = []
    for lo in range(0, input_ids.shape[0], rows):
        ids, mask = input_ids[lo: lo + rows], attention_mask[lo: lo + rows]
        scored = completion_mask[lo: lo + rows, 1:].bool()  # token t + 1 is predicted at position t
        with head_input(head) as seen:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        h = seen["h"][:, :-1][scored]
        lp = target_logps(h, head, ids[:, 1:][scored], softcap, scale=scale)
        row = scored.nonzero()[:, 0]
        out.append(torch.zeros(len(ids), dtype=lp.dtype, device=lp.device).index_add(0, row, lp))
    return torch.cat(out) if out else torch.zeros(0)


def _head_mismatch(model, input_ids, attention_mask, tolerance: float) -> str | None:
    """Compare the model's own logits with `logit_map(head(h))` on the first tokens of one row."""
    base = causal_lm(model)
    head = base.get_output_embeddings()
    n = min(_HEAD_CHECK_TOKENS, int(attention_mask[0].sum()))
    if n < 2:
        return None
    ids = input_ids[:1, :n]
    with head_input(head, keep_logits=True) as seen:
        logits = model(input_ids=ids, attention_mask=attention_mask[:1, :n], use_cache=False).logits
    if "h" not in seen or logits is None or logits.shape[1] != n:
        return f"{type(base).__name__} does not compute its logits with its output embeddings"
    own = torch.log_softmax(logits[0, :-1].to(torch.promote_types(logits.dtype, torch.float32)), -1)
    own = own.gather(-1, ids[0, 1:, None]).squeeze(-1)
    scale, softcap = logit_map(base.config)
    ours = target_logps(seen["h"][0, :-1], head, ids[0, 1:], softcap, scale=scale)
    gap = float((own - ours.to(own.dtype)).abs().max())
    if not gap <= tolerance:
        return (f"its logits are not its LM head's output (differ by {gap:.3g} nats per token): a scaling or "
                "post-processing of the logits that the group forward does not apply")
    return None


def check_packed(model, batch: dict) -> PackedCheck:
    """Decide whether to pack, on one batch (the keys of `pad_pairs` and of `groups.pack_sequences`, on the
    model's device). Leaves the packed attention installed only when the answer is yes."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    dtype = compute_dtype(model)
    tolerance = packing_tolerance(dtype)
    n = int(batch["input_ids"].shape[0])
    common = dict(tolerance=tolerance, dtype=str(dtype).removeprefix("torch."), sequences=n)
    why = packed_refusal(model)
    if why:
        return PackedCheck(False, why, **common)
    config = causal_lm(model).config
    training = {m: m.training for m in model.modules()}
    model.eval()  # dropout off: both forwards must be deterministic to be compared
    try:
        with torch.no_grad():
            why = _head_mismatch(model, batch["input_ids"], batch["attention_mask"], tolerance)
            if why:
                return PackedCheck(False, why, **common)
            rows = row_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
            try:
                packed = packed_logps(model, batch["group_units"], batch["group_num_seqs"])
            except torch.OutOfMemoryError:
                raise
            except PackedUnsupported as e:
                restore_attention(config)
                return PackedCheck(False, str(e), **common)
            except Exception as e:  # noqa: BLE001 — any failure of the packed forward means: run per row
                restore_attention(config)
                return PackedCheck(False, f"its packed forward failed ({type(e).__name__}: {str(e)[:200]})", **common)
            packed = packed[batch["group_seq_index"]]
    finally:
        for module, mode in training.items():
            module.training = mode
    if not torch.isfinite(rows).all():
        restore_attention(config)
        return PackedCheck(False, "its per-row log-probs are not finite, so the packed ones cannot be checked",
                           **common)
    tokens = batch["completion_mask"][:, 1:].sum(-1).clamp_min(1).to(rows.device, torch.float64)
    diff = (packed.double() - rows.double()).abs()
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, math.inf))
    gap, seq_gap = (float((diff / tokens.sqrt()).max()), float(diff.max())) if n else (0.0, 0.0)
    ok = gap <= tolerance
    if not ok:
        restore_attention(config)
    return PackedCheck(ok, None if ok else "packed and per-row log-probs differ", gap=gap, max_seq_gap=seq_gap,
                       **common)
