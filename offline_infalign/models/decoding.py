"""The hf backend's decode loops: each row's tokens drawn by inverse CDF from uniforms fixed up front, with the
row's Σ log π_ref read from the same logits (sampling.py's module doc: the record, determinism, the stop set).

`decode_shared_prefill` (the default). The prompts' forward runs ONCE per prompt (a left-padded batch of the
distinct prompts, KV cache on, LM head on the last position only); the cache is then repeated K times along the
batch (`Cache.batch_repeat_interleave`) and a hand-written loop feeds one token per step to the rows still
running. A row that draws a stop token leaves the batch at once (`Cache.batch_select_indices` keeps the others),
so finished rows cost nothing and the loop ends when every row has ended. Today's `generate` instead prefilled
every prompt K times and kept computing finished rows (fed pad) until the last row ended. No generation config
is involved at all, so nothing the model ships can add a logits processor.

`decode_with_generate`: transformers' `generate` over K copies of each prompt, greedy over the one-hot scores
of `_InverseCdfSampler` — the implementation before shared prefill. Kept as the reference the tests compare the
loop against (same ids, finish reasons and log-probs up to float rounding) and as the fallback for models whose
cache cannot be repeated and subset (no `transformers.Cache` returned).

Both return, per row (prompt-major: rows j*K .. j*K+K-1 are prompt j's), the ids (through the first stop id,
else max_new_tokens of them), the finish reason ("stop" / "length") and Σ log π_ref(y_t | x, y_<t) at T = 1
over those ids (float64 sum of float32 log-softmax terms).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager

import torch

__all__ = ["decode_shared_prefill", "decode_with_generate", "DECODERS", "sample_tokens", "truncated_probs"]

DECODERS = ("shared_prefill", "generate")


def truncated_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> torch.Tensor:
    """The sampling distribution (R, V) in vocab order, in transformers' (and vLLM's) order: temperature, then
    top-k on the tempered logits (ties with the k-th are kept, as TopKLogitsWarper does), renormalize, then
    top-p on the renormalized probabilities (a token stays while the mass strictly above it is < top_p; the top
    token always stays). Example: probs .3 .3 .2 .1 .1, top_k 2, top_p .5 → one token (.5 .5 after top-k)."""
    scores = logits.float()  # (R, V)
    if temperature != 1.0:  # x / 1 == x exactly: skip a pass over (R, V) per decoding step
        scores = scores / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]  # (R, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # renormalized over what top-k kept
    if top_p < 1.0:
        ranked, order = probs.sort(dim=-1, descending=True, stable=True)
        before = ranked.cumsum(-1) - ranked  # mass strictly above each token
        probs = torch.zeros_like(probs).scatter_(1, order, ranked * (before < top_p))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> torch.Tensor:
    """Inverse-CDF sampling: the token where the CDF of `truncated_probs` (vocab order) first exceeds u.

    logits (R, V), u (R,) uniforms in [0, 1) → token ids (R,). Deterministic given its inputs, row by row.
    """
    probs = truncated_probs(logits, temperature, top_k, top_p)
    cdf = probs.cumsum(-1)  # (R, V)
    x = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # (R, 1)
    # The first index with cdf > x. cdf only rises at positive-probability tokens, so that index is one of them;
    # none exists only when x rounds up to the total, and then the last positive-probability token is the draw.
    j = torch.searchsorted(cdf, x, right=True).squeeze(-1)  # (R,)
    past = j >= cdf.shape[-1]
    if bool(past.any()):  # rare: computed for those rows only (a (R, V) pass per step costs as much as the cdf)
        j = j.clone()
        j[past] = cdf.shape[-1] - 1 - (probs[past] > 0).flip(-1).int().argmax(-1)
    return j


def _forward_signature(model) -> set[str]:
    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's base
    return set(inspect.signature(target.forward).parameters)


def _row_logps(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per row, float32 logits (R, V) → (R,) float64."""
    logp = logits.gather(1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logp.double()


def decode_shared_prefill(model, input_ids: torch.Tensor, attention: torch.Tensor, uniforms: torch.Tensor,
                          k: int, temperature: float, top_k: int, top_p: float, stop: Sequence[int]):
    """input_ids, attention (P, W): the distinct prompts, left-padded; uniforms (P*K, T) prompt-major.

    Returns (ids per row, finish reason per row, log-prob sum per row), or None when the model's forward does
    not return a `transformers.Cache` (the caller then uses `decode_with_generate`)."""
    from transformers import Cache

    device = input_ids.device
    params = _forward_signature(model)
    cache_key = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    takes_positions = "position_ids" in params
    # Position ids as generate makes them under left padding: count real tokens only (pads get 0).
    positions = (attention.cumsum(-1) - 1).clamp(min=0) if takes_positions else None
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention, use_cache=True,
                    **({"position_ids": positions} if takes_positions else {}), **extra)
        cache = getattr(out, cache_key, None) or getattr(out, "past_key_values", None)
        if not isinstance(cache, Cache):
            return None
        # One prompt's K rows start from the same state: repeat logits and cache, never the prompt's forward.
        logits = out.logits[:, -1, :].float().repeat_interleave(k, dim=0)  # (R, V)
        cache.batch_repeat_interleave(k)
        mask = attention.repeat_interleave(k, dim=0)  # (R, W + t) for the active rows
        next_pos = attention.sum(-1).repeat_interleave(k, dim=0)  # (R,) where each row's next token sits
        rows_total, steps = uniforms.shape
        stop_t = torch.tensor(list(stop), dtype=torch.long, device=device)
        active = torch.arange(rows_total, device=device)  # the active rows' indices among all R rows
        tokens = torch.zeros((rows_total, steps), dtype=torch.long, device=device)
        lengths = torch.full((rows_total,), steps, dtype=torch.long, device=device)
        logps = torch.zeros(rows_total, dtype=torch.float64, device=device)
        for t in range(steps):
            tok = sample_tokens(logits, uniforms[active, t], temperature, top_k, top_p)  # (A,)
            tokens[active, t] = tok
            logps[active] += _row_logps(logits, tok)  # the stop token's own term included
            ended = torch.isin(tok, stop_t)
            lengths[active[ended]] = t + 1
            if t == steps - 1:
                break
            if bool(ended.any()):
                keep = (~ended).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                # Drop the ended rows: their cache rows, mask rows and positions go with them.
                cache.batch_select_indices(keep)
                active, tok, mask, next_pos = active[keep], tok[keep], mask[keep], next_pos[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            kw = {"position_ids": next_pos.unsqueeze(-1)} if takes_positions else {}
            out = model(input_ids=tok.unsqueeze(-1), attention_mask=mask, use_cache=True, **{cache_key: cache},
                        **kw)
            next_pos = next_pos + 1
            logits = out.logits[:, -1, :].float()
    lengths_l, stopped = lengths.tolist(), set(stop)
    ids = [row[:n] for row, n in zip(tokens.tolist(), lengths_l)]
    finish = ["stop" if r and r[-1] in stopped else "length" for r in ids]
    return ids, finish, logps.tolist()


class _InverseCdfSampler:
    """LogitsProcessor for greedy `generate`: draws our token, adds its log π_ref to the row's sum while the row
    has not yet drawn a stop token, and returns a one-hot on it (greedy then picks it)."""

    def __init__(self, uniforms: torch.Tensor, prompt_width: int, temperature: float, top_k: int, top_p: float,
                 stop_ids: Sequence[int], device):
        self.uniforms, self.prompt_width = uniforms.to(device), prompt_width  # (R, T)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        rows = uniforms.shape[0]
        self.logps = torch.zeros(rows, dtype=torch.float64, device=device)  # (R,)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)  # (R,) drew a stop token already

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Clamped: a backend that defers its stop check runs one step past the end, with every row finished.
        step = min(input_ids.shape[1] - self.prompt_width, self.uniforms.shape[1] - 1)
        tokens = sample_tokens(scores, self.uniforms[:, step], self.temperature, self.top_k, self.top_p)
        # `scores` are the raw logits (no other processor runs, see _generation_config): log π_ref at T = 1,
        # without keeping a (rows x steps x vocab) tensor. Rows past their stop token add nothing.
        self.logps += torch.where(self.done, 0.0, _row_logps(scores.float(), tokens))
        self.done |= torch.isin(tokens, self.stop)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tokens.unsqueeze(-1), 0.0)


def _generation_config(max_new_tokens: int, stop: Sequence[int], pad_token_id: int):
    from transformers import GenerationConfig

    # Greedy over the one-hot scores of our sampler, every built-in processor neutral: our processor must see
    # the raw logits (it reads log π_ref from them) and its choice must stand. A list of eos ids stops each row
    # on the first of them it draws (EosTokenCriteria); finished rows are filled with pad, cut off below.
    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, eos_token_id=list(stop), pad_token_id=pad_token_id,
    )


@contextmanager
def _bare_generation_config(model):
    """`generate` fills every field our GenerationConfig leaves unset from the model's own generation_config,
    which can switch on processors that change the logits (suppress_tokens, bad_words_ids, forced_eos_token_id,
    sequence_bias, ...); an empty one stands in for it during sampling."""
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's base
    saved = getattr(target, "generation_config", None)
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


def decode_with_generate(model, input_ids: torch.Tensor, attention: torch.Tensor, uniforms: torch.Tensor,
                         k: int, temperature: float, top_k: int, top_p: float, stop: Sequence[int],
                         pad_token_id: int):
    """Same inputs and result as `decode_shared_prefill`, with `generate` over K copies of each prompt."""
    width, steps = input_ids.shape[1], uniforms.shape[1]
    sampler = _InverseCdfSampler(uniforms, width, temperature, top_k, top_p, stop, input_ids.device)
    with torch.no_grad(), _bare_generation_config(model):
        out = model.generate(input_ids=input_ids.repeat_interleave(k, dim=0),
                             attention_mask=attention.repeat_interleave(k, dim=0),
                             generation_config=_generation_config(steps, stop, pad_token_id),
                             logits_processor=[sampler])
    stopped, ids, finish = set(stop), [], []
    for row in out[:, width:].tolist():
        end = next((t + 1 for t, tok in enumerate(row) if tok in stopped), None)  # through the first stop id
        ids.append(row[:end] if end is not None else row)
        finish.append("stop" if end is not None else "length")
    return ids, finish, sampler.logps.tolist()
