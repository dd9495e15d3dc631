"""Attention of packed groups (`groups.pack_sequences`): a prompt and its completions in one row, computed as a
shared prefix instead of one dense masked (L × L) attention.

In a packed row the prompt's queries attend causally to the prompt; each completion's queries attend to the
prompt's keys and causally to their own. A dense mask over the row would compute every (completion,
other completion) block and throw it away: (P + K·C)² scores per head where the group needs P² + K·C·(P + C).
Here each part is one `scaled_dot_product_attention` call on gathered rows — the prompts (R, P), and the
completions (N, C) against their prompt's keys followed by their own (N, P + C) — and the outputs are put back
in place. Gathering a prompt's keys for each completion is differentiable (its backward sums the completions'
contributions), so the prompt still runs once and its gradient is exact.

It is installed as an attention implementation (`transformers.AttentionInterface`) that takes over only the
calls carrying `infalign_layout` (`logprobs.packed_logps` passes it through the model's keyword arguments, so a
layer recomputed under gradient checkpointing gets it again) and hands every other call to the model's own
implementation. What a layer passes is honoured or refused, never dropped: a sliding window (Mistral, Phi-3,
Gemma 2/3, Qwen 2/3, StarCoder2, ...) is applied to the positions each token has in its own (prompt + completion)
sequence, as in its per-row forward; soft-capped attention logits (Gemma 2) are computed as the eager
implementation computes them (scores, tanh cap, float32 softmax); any other argument with a value (attention
sinks, a position bias, `is_causal=False`, ...) raises `PackedUnsupported` naming it, as does a layer that calls
attention without the layout during a packed forward (its model does not pass its keyword arguments down), so
the caller runs per row instead of computing something else (`packed_check`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys

import torch
import torch.nn.functional as F

__all__ = ["use_packed_attention", "restore_attention", "unit_layout", "packed_forward", "PackedUnsupported"]

PREFIX = "infalign_packed:"
_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # sdpa's enable_gqa

# Arguments a layer may pass that do not change what the packed computation must be (bookkeeping, or flags whose
# only value here is the default); every other argument with a value is refused by name (`_unexpected`).
_IGNORED = {"position_ids", "cache_position", "use_cache", "output_attentions", "output_hidden_states",
            "output_router_logits", "return_dict", "layer_idx"}
_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("infalign_packed_forward", default=False)


class PackedUnsupported(RuntimeError):
    """The model asked the packed attention for something it does not compute (the message names it)."""


@contextlib.contextmanager
def packed_forward():
    """Marks a packed forward: an attention call without the layout inside it is refused (`PackedUnsupported`)
    instead of running the model's own attention on a packed row."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def use_packed_attention(config) -> None:
    """Route the model's attention through `packed_attention` (idempotent): packed calls are computed here, the
    others by the implementation the model had (its masks too)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    current = config._attn_implementation or "eager"
    if current.startswith(PREFIX):
        return
    name = PREFIX + current
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, functools.partial(packed_attention, base=current))
        if current in ALL_MASK_ATTENTION_FUNCTIONS:
            type(ALL_MASK_ATTENTION_FUNCTIONS).register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    config._attn_implementation = name


def restore_attention(config) -> None:
    """Undo `use_packed_attention`: the model's own implementation again (a run that does not pack keeps the
    model exactly as it came, whatever its code compares the implementation's name with)."""
    current = config._attn_implementation or ""
    if current.startswith(PREFIX):
        config._attn_implementation = current[len(PREFIX):]


def _base_function(module, base: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[base]
    return sys.modules[type(module).__module__].eager_attention_forward  # "eager": the model file's own


def unit_layout(unit: dict) -> dict:
    """The index tensors of one packed unit that `packed_attention` reads (masks are added lazily, per window)."""
    return {k: unit[k] for k in ("prompt_index", "prompt_len", "comp_index", "comp_len", "comp_row")}


def packed_attention(module, query, key, value, attention_mask, *, base: str, **kwargs):
    """An attention implementation (transformers' signature): query (R, H, L, D), key/value (R, Hkv, L, D) →
    (R, L, H, D). Without `infalign_layout` it is the model's own implementation `base`."""
    layout = kwargs.pop("infalign_layout", None)
    if layout is None:
        if _ACTIVE.get():
            raise PackedUnsupported(f"{type(module).__name__} calls attention without the packed layout (its model "
                                    "does not pass its keyword arguments down to attention)")
        return _base_function(module, base)(module, query, key, value, attention_mask, **kwargs)
    _unexpected(module, kwargs)
    layout["calls"] = layout.get("calls", 0) + 1
    r, h, length, d = query.shape
    hkv = key.shape[1]
    scale, dropout, window = kwargs.get("scaling"), kwargs.get("dropout", 0.0), kwargs.get("sliding_window")
    attend = functools.partial(_sdpa if kwargs.get("softcap") is None else _softcapped, scale=scale, dropout=dropout,
                               softcap=kwargs.get("softcap"))
    q = query.transpose(1, 2).reshape(r * length, h, d)
    k = key.transpose(1, 2).reshape(r * length, hkv, d)
    v = value.transpose(1, 2).reshape(r * length, hkv, d)
    prompt_mask, comp_mask, prompt_valid, comp_valid = _masks(layout, window)
    pi, ci = layout["prompt_index"], layout["comp_index"]
    parts = []
    if pi.shape[1]:
        parts.append((pi[prompt_valid], attend(q[pi], k[pi], v[pi], prompt_mask)[prompt_valid]))
    if ci.shape[0]:
        keys = torch.cat([pi[layout["comp_row"]], ci], dim=1)  # (N, P + C): the prompt's keys, then its own
        parts.append((ci[comp_valid], attend(q[ci], k[keys], v[keys], comp_mask)[comp_valid]))
    # the dtype attention returns (under autocast it need not be the query's)
    out = q.new_zeros(r * length, h, d, dtype=parts[0][1].dtype if parts else q.dtype)
    for index, o in parts:
        out = out.index_put((index,), o)
    return out.view(r, length, h, d), None


def _unexpected(module, kwargs) -> None:
    """Refuse (by name) what a layer asks for that the packed attention does not compute."""
    if kwargs.get("is_causal") is False:
        raise PackedUnsupported(f"{type(module).__name__} asks for non-causal (bidirectional) attention")
    known = _IGNORED | {"scaling", "dropout", "sliding_window", "softcap", "is_causal"}
    extra = sorted(k for k, v in kwargs.items() if k not in known and v is not None)
    if extra:
        raise PackedUnsupported(f"{type(module).__name__} passes attention arguments the packed attention does not "
                                f"compute: {', '.join(extra)}")


def _sdpa(q, k, v, mask, scale, dropout, softcap=None):
    """(B, T, H, D) queries against (B, S, Hkv, D) keys/values under a (B, 1, T, S) boolean mask → (B, T, H, D)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    extra = {}
    if k.shape[1] != q.shape[1]:
        if _GQA:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, **extra)
    return o.transpose(1, 2)


def _softcapped(q, k, v, mask, scale, dropout, softcap):
    """`_sdpa` with soft-capped scores, softcap · tanh(q·k · scale / softcap), computed as transformers' eager
    implementations of soft-capping models do (sdpa has no soft-cap): explicit scores, a float32 softmax cast back
    to the query's dtype. (B, T, H, D) → (B, T, H, D)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    if dropout:
        weights = F.dropout(weights, p=dropout)
    return torch.matmul(weights, v).transpose(1, 2)


def _masks(layout: dict, window: int | None):
    """(prompt mask (R, 1, P, P), completion mask (N, 1, C, P + C), prompt_valid (R, P), comp_valid (N, C)),
    cached in the layout per window. A padded query slot may see its own slot, so no row is empty (an empty
    row is NaN in sdpa and would poison the backward even though its output is dropped)."""
    cache = layout.setdefault("_masks", {})
    if window in cache:
        return cache[window]
    p_len, c_len, c_row = layout["prompt_len"], layout["comp_len"], layout["comp_row"]
    pmax, cmax = layout["prompt_index"].shape[1], layout["comp_index"].shape[1]
    dev = p_len.device
    i_p, i_c = torch.arange(pmax, device=dev), torch.arange(cmax, device=dev)
    prompt_valid = i_p[None, :] < p_len[:, None]  # (R, P)
    comp_valid = i_c[None, :] < c_len[:, None]  # (N, C)
    pm = (i_p[None, :, None] >= i_p[None, None, :]) & prompt_valid[:, None, :]  # (R, P, P)
    if window is not None:
        pm &= (i_p[:, None] - i_p[None, :])[None] < window
    pm |= torch.eye(pmax, dtype=torch.bool, device=dev)[None]
    own_p = p_len[c_row]  # (N,) the prompt length of each completion's row
    to_prompt = (i_p[None, None, :] < own_p[:, None, None]).expand(-1, cmax, -1)  # (N, C, P)
    to_own = (i_c[None, :, None] >= i_c[None, None, :]) & comp_valid[:, None, :]  # (N, C, C)
    if window is not None:
        # query i is at position P_row + i; prompt key j at j; own key j' at P_row + j'
        to_prompt = to_prompt & ((own_p[:, None, None] + i_c[None, :, None] - i_p[None, None, :]) < window)
        to_own = to_own & ((i_c[:, None] - i_c[None, :])[None] < window)
    to_own = to_own | torch.eye(cmax, dtype=torch.bool, device=dev)[None]
    cache[window] = (pm[:, None], torch.cat([to_prompt, to_own], dim=2)[:, None], prompt_valid, comp_valid)
    return cache[window]
