"""Teacher-forced summed log-probs of completions given prompts.

Per row (`completion_logps`): each (prompt, completion) a right-padded row, logits at every position. Evaluation
uses it (`ids_logps`, `sequence_logps`: the no-grad loop over many pairs), and it is the reference the trainer's
group forward is tested against (and its fallback).

Per group (`packed_logps`, the trainer's default): a prompt and its completions packed into one sequence
(`groups.pack_sequences`), attention computed as a shared prefix (`packed_attention`), so the prompt runs once
per group; the LM head runs only at the scored positions, a chunk of positions at a time (`target_logps`), so
the (tokens × vocabulary) logits never exist whole. Whether it is exact for a model is checked on the model,
not listed (`packed_check`: refusals by name, then packed vs per row on the first batch);
`grouped_ids_logps` is `ids_logps` through it (tests/test_groups.py, tests/test_packed_models.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .packed_attention import PackedUnsupported, packed_forward, unit_layout, use_packed_attention
from .tokenization import encode_prompt

__all__ = ["pad_pairs", "completion_logps", "sequence_logps", "ids_logps", "ids_logps_and_kl",
           "packed_logps", "target_logps", "causal_lm", "logit_map", "head_input"]


def pad_pairs(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Concatenate each prompt with its completion and right-pad.

    Returns input_ids (B, L), attention_mask (B, L), completion_mask (B, L) — 1 where the token is a
    completion token (the positions whose log-prob is summed).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)]
    b, width = len(lengths), max(lengths, default=0)
    input_ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    completion_mask = torch.zeros((b, width), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attention_mask[i, :n] = 1
        completion_mask[i, len(p) : n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """Σ_t log p(y_t | x, y_<t) over completion tokens, shape (B,). Gradients flow if enabled by the caller."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1, :]  # (B, L-1, V)
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:]  # (B, L-1): token t is predicted from position t-1
    # log_softmax in float32: bf16 log-probs summed over hundreds of tokens lose ~1 nat of precision.
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L-1)
    mask = completion_mask[:, 1:].to(logp.dtype)
    return (logp * mask).sum(-1)


def sequence_logps(model, tokenizer, prompts: Sequence, completion_ids: Sequence[Sequence[int]],
                   batch_size: int = 32, desc: str | None = None) -> np.ndarray:
    """Teacher-forced Σ log π(y|x) at temperature 1 for each (prompt, completion ids) pair, float32, shape (n,).

    `batch_size` pairs per forward pass, in the given order; a progress bar over batches when `desc` is given.
    """
    p_ids = [encode_prompt(tokenizer, p) for p in prompts]
    return ids_logps(model, p_ids, completion_ids, tokenizer.pad_token_id, batch_size, desc)


def ids_logps(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
              pad_token_id: int, batch_size: int = 32, desc: str | None = None) -> np.ndarray:
    """`sequence_logps` on prompts already encoded: Σ log π(y|x) for each (prompt ids, completion ids), float32."""
    from tqdm.auto import tqdm

    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    device = next(model.parameters()).device
    out = np.empty(len(prompt_ids), dtype=np.float32)
    with torch.no_grad():
        for lo in tqdm(range(0, len(prompt_ids), batch_size), desc=desc, unit="batch", disable=desc is None):
            p_ids, c_ids = prompt_ids[lo : lo + batch_size], completion_ids[lo : lo + batch_size]
            batch = {k: v.to(device) for k, v in pad_pairs(p_ids, c_ids, pad_token_id).items()}
            out[lo : lo + len(p_ids)] = completion_logps(model, **batch).cpu().numpy()
    return out


def ids_logps_and_kl(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                     pad_token_id: int, batch_size: int = 32, desc: str | None = None,
                     chunk_logits: int = 2**24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Σ log π(y|x), Σ log π_ref(y|x) and Σ_t KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)) of each (prompt, completion) pair.

    `model` is a policy whose `disable_adapter()` context gives π_ref (a PeftModel, or modeling.FullPolicy).
    Both sides run on the same padded batches and their log-probs are gathered by the same code, in float32 as in
    `completion_logps`. The third value sums, over the completion's positions (each position where the
    sampler drew a token, the stop token's included), the exact KL between the two next-token distributions:
    summed over completions drawn from π it is an unbiased estimate of the sequence KL(π ‖ π_ref), with a much
    smaller variance than the log-ratio of the drawn tokens (docs/math.md §8). The vocabulary sums run a chunk of
    positions at a time, about `chunk_logits` logits (float32) per side. Returns three (n,) arrays.
    """
    from tqdm.auto import tqdm

    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    device = next(model.parameters()).device
    logp_pi, logp_ref = np.empty(len(prompt_ids), dtype=np.float32), np.empty(len(prompt_ids), dtype=np.float32)
    kl = np.empty(len(prompt_ids), dtype=np.float64)
    with torch.no_grad():
        for lo in tqdm(range(0, len(prompt_ids), batch_size), desc=desc, unit="batch", disable=desc is None):
            p_ids, c_ids = prompt_ids[lo : lo + batch_size], completion_ids[lo : lo + batch_size]
            batch = {k: v.to(device) for k, v in pad_pairs(p_ids, c_ids, pad_token_id).items()}
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            logits_pi = model(**inputs).logits[:, :-1, :]  # (B, L-1, V): token t is predicted at position t-1
            with model.disable_adapter():
                logits_ref = model(**inputs).logits[:, :-1, :]
            targets = batch["input_ids"][:, 1:].unsqueeze(-1)
            mask = batch["completion_mask"][:, 1:]
            b, width, vocab = logits_pi.shape
            sums = torch.zeros((3, b), dtype=torch.float64, device=device)
            step = max(1, chunk_logits // max(1, b * vocab))
            for s in range(0, width, step):
                m = mask[:, s : s + step].to(torch.float32)
                # float32 log-softmax, as completion_logps: bf16 log-probs lose ~1 nat over hundreds of tokens.
                lp = torch.log_softmax(logits_pi[:, s : s + step].float(), dim=-1)
                lq = torch.log_softmax(logits_ref[:, s : s + step].float(), dim=-1)
                t = targets[:, s : s + step]
                sums[0] += (lp.gather(-1, t).squeeze(-1) * m).sum(-1).double()
                sums[1] += (lq.gather(-1, t).squeeze(-1) * m).sum(-1).double()
                sums[2] += ((lp.exp() * (lp - lq)).sum(-1) * m).sum(-1).double()
            rows = slice(lo, lo + len(p_ids))
            logp_pi[rows], logp_ref[rows] = sums[0].cpu().numpy(), sums[1].cpu().numpy()
            kl[rows] = sums[2].cpu().numpy()
    return logp_pi, logp_ref, kl


# ---- the group forward ---------------------------------------------------------------------------------------


def causal_lm(model):
    """The transformers causal LM inside DDP / PEFT wrappers."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def logit_map(config) -> tuple[float | None, float | None]:
    """(scale, softcap) of the map from LM head outputs to logits that the model's own forward applies:
    Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling`, Gemma 2/3 soft-cap at
    `final_logit_softcapping`. `packed_check` verifies it on each model (any other map is refused by name)."""
    scale = float(getattr(config, "logit_scale", None) or 1.0) / float(getattr(config, "logits_scaling", None) or 1.0)
    return (None if scale == 1.0 else scale), (getattr(config, "final_logit_softcapping", None) or None)


@contextlib.contextmanager
def head_input(head, keep_logits: bool = False):
    """Yields a dict whose "h" becomes the input of the model's first call of `head` (its output embeddings) in
    the block: the last hidden states, as the model hands them to its LM head. Unless `keep_logits`, the head
    is handed an empty slice instead, so the model computes no logits (`target_logps` scores the positions that
    count). Works whether or not the model's forward has `logits_to_keep`."""
    seen: dict = {}

    def grab(module, args):
        if "h" in seen or not args:
            return None
        seen["h"] = args[0]
        return None if keep_logits else (args[0].narrow(-2, 0, 0), *args[1:])

    handle = head.register_forward_pre_hook(grab)
    try:
        yield seen
    finally:
        handle.remove()


def packed_logps(model, units: Sequence[dict], num_seqs: int, head_chunk: int | None = None) -> torch.Tensor:
    """Σ log π(y|x) of each distinct sequence of packed units (`groups.pack_sequences`), shape (num_seqs,),
    float32 (float64 for a float64 model). Gradients flow when enabled by the caller.

    The forward goes through `model` itself (so DDP's gradient hooks, autocast and gradient checkpointing see
    it); the input of its LM head is taken with a pre-hook that hands the head an empty slice, so the model
    computes no logits, and is scored at the completion positions only (`target_logps`, with the model's
    `logit_map`). Attention is `packed_attention`'s, which the first call installs (other calls still get the
    model's own). Exact for the models `packed_check.check_packed` passes; raises `PackedUnsupported` when the
    model asks the packed attention for something it does not compute."""
    base = causal_lm(model)
    use_packed_attention(base.config)
    head = base.get_output_embeddings()
    scale, softcap = logit_map(base.config)
    # MoE: the router's auxiliary loss is not part of the objective (neither path adds it) and would read the
    # packed call's placeholder mask as a padding mask
    extra = {"output_router_logits": False} if getattr(base.config, "output_router_logits", False) else {}
    # float32 at least (as `completion_logps`), float64 for a float64 model (tests check exactness there)
    out = torch.zeros(num_seqs, dtype=torch.promote_types(head.weight.dtype, torch.float32),
                      device=head.weight.device)
    for unit in units:
        layout = unit_layout(unit)
        with head_input(head) as seen, packed_forward():
            model(input_ids=unit["input_ids"], position_ids=unit["position_ids"], use_cache=False,
                  attention_mask=_no_mask(base.config, unit["input_ids"]), infalign_layout=layout, **extra)
        if not layout.get("calls"):
            raise PackedUnsupported(f"{type(base).__name__}'s layers did not call transformers' attention interface")
        if "h" not in seen:
            raise PackedUnsupported(f"{type(base).__name__} does not compute its logits with its output embeddings")
        h = seen.pop("h")
        h = h.reshape(-1, h.shape[-1]).index_select(0, unit["score_index"])
        lp = target_logps(h, head, unit["score_targets"], softcap, head_chunk, scale)
        out = out.index_add(0, unit["score_seq"], lp.to(out.dtype))
    return out


def _no_mask(config, input_ids):
    """A prepared-looking 4D mask (per layer type when the model has several), which the model's mask code
    returns as it is instead of building an (L × L) one that `packed_attention` would not read."""
    mask = torch.ones((input_ids.shape[0], 1, 1, 1), dtype=torch.bool, device=input_ids.device)
    layer_types = getattr(config, "layer_types", None)
    return {t: mask for t in set(layer_types)} if layer_types else mask


def target_logps(hidden: torch.Tensor, head, targets: torch.Tensor, softcap: float | None = None,
                 chunk: int | None = None, scale: float | None = None) -> torch.Tensor:
    """log softmax(logits)[targets] with logits = softcap · tanh(scale · head(hidden) / softcap) (`logit_map`),
    (T,) float32, `chunk` positions at a time (default: about 2^24 logits per chunk, at most 1024 positions), so
    neither the (T × V) logits nor an fp32 copy of them exist.

    A frozen plain Linear head (LoRA never targets it) takes the exact shortcut of `_TargetLogProbs`; a
    trainable head recomputes each chunk's logits in backward (checkpointing)."""
    vocab = head.weight.shape[0]
    chunk = chunk or max(16, min(1024, 2**24 // vocab))
    weight, bias = head.weight, getattr(head, "bias", None)
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    if type(head) is torch.nn.Linear and frozen:
        return _TargetLogProbs.apply(hidden, weight, bias, targets, chunk, softcap, scale)

    def part(h, t):
        return _logits_logp(head(h), t, softcap, scale)[0]

    if not torch.is_grad_enabled():
        return torch.cat([part(hidden[lo: lo + chunk], targets[lo: lo + chunk])
                          for lo in range(0, len(targets), chunk)] or [hidden.new_zeros(0, dtype=torch.float32)])
    from torch.utils.checkpoint import checkpoint

    return torch.cat([checkpoint(part, hidden[lo: lo + chunk], targets[lo: lo + chunk], use_reentrant=False)
                      for lo in range(0, len(targets), chunk)] or [hidden.new_zeros(0, dtype=torch.float32)])


def _logits_logp(logits, targets, softcap, scale=None):
    """(log p of the targets (c,), full log-probs (c, V), tanh of the soft-capped logits or None), in float32
    (bf16 log-probs summed over hundreds of tokens lose ~1 nat), as `completion_logps` computes them."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if scale is not None:
        z = z * scale
    capped = None
    if softcap:
        capped = torch.tanh(z / softcap)
        z = capped * softcap
    logp = torch.log_softmax(z, dim=-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), logp, capped


class _TargetLogProbs(torch.autograd.Function):
    """Chunked log p(target) under a frozen linear head, exact, with (T, d) saved for backward instead of logits.

    d log p_t / d h_t = W^T (onehot_t − p_t) (times 1 − tanh² under soft-capping, times the logit scale): a
    d-vector, computed in the
    forward pass while the chunk's p_t exists; backward scales it by the incoming gradient. Two matmuls per
    chunk, as autograd's forward + backward would take, and no (T × V) tensor kept."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, softcap, scale=None):
        need = ctx.needs_input_grad[0]
        out = torch.empty(len(targets), dtype=torch.promote_types(weight.dtype, torch.float32), device=hidden.device)
        direction = torch.empty_like(hidden) if need else None
        with torch.autocast(hidden.device.type, enabled=False):
            for lo in range(0, len(targets), chunk):
                t = targets[lo: lo + chunk]
                lp, logp, capped = _logits_logp(F.linear(hidden[lo: lo + chunk].to(weight.dtype), weight, bias), t,
                                                softcap, scale)
                out[lo: lo + chunk] = lp
                if need:
                    dz = logp.exp_().neg_()  # −p, in place: the chunk's log-probs are done with
                    dz[torch.arange(len(t), device=t.device), t] += 1.0
                    if capped is not None:
                        dz.mul_(1.0 - capped * capped)
                    if scale is not None:
                        dz.mul_(scale)
                    direction[lo: lo + chunk] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(direction)
        return out

    @staticmethod
    def backward(ctx, grad):
        (direction,) = ctx.saved_tensors
        return grad[:, None].to(direction.dtype) * direction, None, None, None, None, None, None
