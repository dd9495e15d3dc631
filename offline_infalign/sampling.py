"""K completions per prompt from a causal LM, seeded per prompt, with teacher-forced `ref_logps`.

Determinism. Each prompt's randomness comes only from (seed, prompt_id): a torch.Generator seeded with
`prompt_seed(seed, prompt_id)` draws one uniform per (sample, step) up front, shape (K, max_new_tokens), and
step t of sample k takes the token at which the (truncated, tempered) CDF first exceeds u[k, t] (inverse-CDF
sampling). No random state is shared between prompts, so which other prompts share a batch, how the run is
chunked, sharded or resumed cannot change a prompt's draws. What CAN differ is the model's float rounding:
another batch means other padding and matrix shapes, which moves logits in the last bits; a token changes only
if its uniform falls within that rounding distance of a CDF boundary (probability ~1e-6 per token in float32,
far more in bf16, whose logits carry ~3 significant digits). So we guarantee identical completions for
identical batching (resume, rerun of the same command) and identical completions up to that rounding chance
across batch sizes and chunkings; tests check equality across batch sizes on CPU in float32.

`ref_logps` are Σ log π_ref(y_t | x, y_<t) at temperature 1 with no top-p/top-k, teacher-forced on the ids
`tokenization.encode_completion(text)` (the decoded text re-encoded, plus EOS). They are the base policy's
likelihood — what KL and every docs/math.md §6 loss need — not the log-density of the sampling proposal: with
temperature ≠ 1 or top-p/top-k the completions are drawn from a sharpened/truncated π_ref, while `ref_logps`
still score them under π_ref itself. A completion cut at max_new_tokens without EOS is scored with EOS
appended, like every completion (the stored text is the unit, not the sampled ids).

Backends: `sample_completions` (Hugging Face `generate`, default) and `sample_completions_vllm` (optional
extra, imported only when called).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from .core.errors import InfalignError
from .logprobs import sequence_logps
from .tokenization import check_tokenizer, encode_completion, encode_prompt

__all__ = ["sample_completions", "sample_completions_vllm", "prompt_seed", "sample_tokens", "fit_prompts",
           "context_length", "compute_ref_logps"]

log = logging.getLogger("offline_infalign")
LONG_PROMPT_POLICIES = ("truncate", "skip", "fail")


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A 63-bit seed from (seed, prompt_id): the only source of randomness for that prompt's samples."""
    digest = hashlib.sha256(f"{int(seed)}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _check_params(num_samples, max_new_tokens, temperature, top_p, top_k, batch_size) -> None:
    if not isinstance(num_samples, int) or num_samples < 1:
        raise InfalignError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InfalignError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise InfalignError(f"temperature must be > 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise InfalignError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise InfalignError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InfalignError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> torch.Tensor:
    """Inverse-CDF sampling: the token where the tempered, top-k/top-p truncated CDF first exceeds u.

    logits (R, V), u (R,) uniforms in [0, 1) → token ids (R,). Deterministic given its inputs, row by row.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (R, V)
    if top_k > 0 or top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        if top_k > 0:
            probs[:, top_k:] = 0.0
        if top_p < 1.0:
            before = probs.cumsum(-1) - probs  # mass strictly above each token; the top token always stays
            probs = probs * (before < top_p)
    else:
        order = None
    cdf = probs.cumsum(-1)  # (R, V)
    x = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # (R, 1)
    j = torch.searchsorted(cdf, x, right=True)  # first index with cdf > x: never a zero-probability token
    last_positive = (probs > 0).long().cumsum(-1).argmax(-1, keepdim=True)  # guards x rounding up to the total
    j = torch.minimum(j, last_positive)
    return (order.gather(1, j) if order is not None else j).squeeze(-1)


class _InverseCdfSampler:
    """LogitsProcessor for greedy `generate`: replaces the scores by a one-hot on our sampled token."""

    def __init__(self, uniforms: torch.Tensor, prompt_width: int, temperature: float, top_k: int, top_p: float):
        self.uniforms, self.prompt_width = uniforms, prompt_width  # (R, T)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        u = self.uniforms[:, step].to(scores.device)
        tokens = sample_tokens(scores, u, self.temperature, self.top_k, self.top_p)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tokens.unsqueeze(-1), 0.0)


def context_length(model, tokenizer=None) -> int | None:
    """The model's maximum sequence length (None when it declares none)."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_prompts(tokenizer, rows: Sequence[dict[str, Any]], max_prompt_tokens: int, policy: str = "fail"):
    """Make every prompt fit in `max_prompt_tokens` (context length − max_new_tokens).

    policy: "fail" raises naming the prompt_id; "skip" drops it; "truncate" cuts from the left (drops the oldest
    chat messages first, then the oldest words of what is left) and logs a warning. The stored prompt is the
    truncated one, so sampling, scoring and training all see the same text; its prompt_id stays the source
    prompt's, so ids (and seeds, splits) keep matching the source.
    Returns (rows, num_truncated, num_skipped).
    """
    if policy not in LONG_PROMPT_POLICIES:
        raise InfalignError(f"on_long_prompt must be one of {', '.join(LONG_PROMPT_POLICIES)}, got {policy!r}")
    if max_prompt_tokens < 1:
        raise InfalignError(f"no room for a prompt: the context length leaves {max_prompt_tokens} prompt tokens "
                            "after max_new_tokens; lower max_new_tokens")
    kept, truncated, skipped = [], 0, 0
    for row in rows:
        n = len(encode_prompt(tokenizer, row["prompt"]))
        if n <= max_prompt_tokens:
            kept.append(row)
            continue
        if policy == "fail":
            raise InfalignError(
                f"prompt {row['prompt_id']} has {n} tokens but the model context leaves {max_prompt_tokens} after "
                "max_new_tokens; pass --on-long-prompt truncate or skip, or lower max_new_tokens"
            )
        if policy == "skip":
            skipped += 1
            continue
        prompt = _truncate_left(tokenizer, row["prompt"], max_prompt_tokens)
        log.warning("prompt %s truncated from the left: %d -> %d tokens", row["prompt_id"], n,
                    len(encode_prompt(tokenizer, prompt)))
        kept.append({**row, "prompt": prompt})
        truncated += 1
    return kept, truncated, skipped


def _truncate_left(tokenizer, prompt, limit: int):
    if not isinstance(prompt, str):
        msgs = list(prompt)
        while len(msgs) > 1 and len(encode_prompt(tokenizer, msgs)) > limit:
            msgs = msgs[1:]
        if len(encode_prompt(tokenizer, msgs)) <= limit:
            return msgs
        last = msgs[-1]
        return [{**last, "content": _cut_text(tokenizer, last["content"], limit,
                                              lambda t: len(encode_prompt(tokenizer, [{**last, "content": t}])))}]
    return _cut_text(tokenizer, prompt, limit, lambda t: len(encode_prompt(tokenizer, t)))


def _cut_text(tokenizer, text: str, limit: int, length) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = max(0, min(len(ids), limit - (length(text) - len(ids))))
    # Decoding then re-encoding can merge tokens differently; shrink until the re-encoded prompt fits.
    while True:
        cut = tokenizer.decode(ids[len(ids) - keep :]) if keep else ""
        if length(cut) <= limit or keep == 0:
            if not cut.strip():
                raise InfalignError(f"cannot truncate prompt to {limit} tokens: nothing of it would remain")
            return cut
        keep -= 1


def compute_ref_logps(model, tokenizer, prompts: Sequence[Any], completions: Sequence[str],
                      batch_size: int = 32) -> list[float]:
    """Teacher-forced Σ log π(y|x) at temperature 1 for each (prompt, completion text) pair, float32."""
    c_ids = [encode_completion(tokenizer, c) for c in completions]
    return sequence_logps(model, tokenizer, prompts, c_ids, batch_size).tolist()


def sample_completions(model, tokenizer, prompts: list, prompt_ids: list[str], num_samples: int,
                       max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                       seed: int = 0, batch_size: int = 8, progress: bool = True) -> list[dict[str, list]]:
    """K = num_samples completions per prompt with the Hugging Face backend.

    Args:
        prompts: P prompts (strings or chat message lists; see tokenization.encode_prompt).
        prompt_ids: P ids; with `seed` they alone determine each prompt's draws.
        batch_size: prompts per `generate` call (batch_size × K rows), left-padded.
        progress: show a progress bar (prompts/s, completions/s), or an open tqdm bar to advance.
    Returns:
        P dicts in input order: {"completions": K strings, "ref_logps": K floats}.
    """
    _check_params(num_samples, max_new_tokens, temperature, top_p, top_k, batch_size)
    if len(prompts) != len(prompt_ids):
        raise InfalignError(f"{len(prompts)} prompts but {len(prompt_ids)} prompt_ids")
    check_tokenizer(tokenizer)
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    was_training = model.training
    model.eval()  # dropout off: sampling and ref_logps must be the deterministic base policy
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    # Similar lengths together waste less padding; results do not depend on the grouping (see module doc).
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    gen_config = GenerationConfig(
        # Greedy over the one-hot scores of our sampler; every other processor explicitly neutral so values in
        # the model's own generation_config (sampling, penalties) cannot alter the distribution.
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    results: list[dict[str, list] | None] = [None] * len(prompts)
    # `progress` may be a caller's open bar (the pipeline's bar over all chunks): advance it, do not close it.
    own_bar = not hasattr(progress, "update")
    bar = tqdm(total=len(prompts), desc="sampling", unit="prompt", disable=not progress,
               dynamic_ncols=True) if own_bar else progress
    try:
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            texts = _generate_batch(model, tokenizer, [encoded[i] for i in idx], [prompt_ids[i] for i in idx],
                                    num_samples, max_new_tokens, temperature, top_p, top_k, seed, gen_config,
                                    device)
            flat_prompts = [prompts[i] for i in idx for _ in range(num_samples)]
            logps = compute_ref_logps(model, tokenizer, flat_prompts, texts, batch_size=len(texts))
            for j, i in enumerate(idx):
                sl = slice(j * num_samples, (j + 1) * num_samples)
                results[i] = {"completions": texts[sl], "ref_logps": logps[sl]}
            bar.update(len(idx))
            bar.set_postfix(completions_per_s=f"{bar.n * num_samples / max(bar.format_dict['elapsed'], 1e-9):.1f}")
    finally:
        if own_bar:
            bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]


def _generate_batch(model, tokenizer, encoded, ids, k, max_new_tokens, temperature, top_p, top_k, seed,
                    gen_config, device) -> list[str]:
    width = max(len(e) for e in encoded)
    rows = len(encoded) * k
    input_ids = torch.full((rows, width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    uniforms = torch.empty((rows, max_new_tokens), dtype=torch.float32)
    for j, (e, pid) in enumerate(zip(encoded, ids)):
        sl = slice(j * k, (j + 1) * k)
        input_ids[sl, width - len(e) :] = torch.tensor(e, dtype=torch.long)  # left padding: generation continues
        attention[sl, width - len(e) :] = 1  # at the right edge of every row
        gen = torch.Generator().manual_seed(prompt_seed(seed, pid))
        uniforms[sl] = torch.rand((k, max_new_tokens), generator=gen, dtype=torch.float32)
    sampler = _InverseCdfSampler(uniforms, width, temperature, top_k, top_p)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                             generation_config=gen_config, logits_processor=[sampler])
    texts = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


def sample_completions_vllm(llm, tokenizer, prompts: list, prompt_ids: list[str], num_samples: int,
                            max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                            seed: int = 0, batch_size: int = 8, progress: bool = True) -> list[dict[str, list]]:
    """Same interface with a `vllm.LLM` (tensor parallelism is set when it is built, see `load_vllm`).

    Each request carries its own seed `prompt_seed(seed, prompt_id)`, so draws are per prompt as in the hf
    backend (vLLM's own sampler: the same seed gives different completions than the hf backend). `ref_logps`
    come from a second vLLM pass scoring prompt+completion ids with `prompt_logprobs` at temperature 1.
    `batch_size` is unused: vLLM schedules its own batches.
    """
    _check_params(num_samples, max_new_tokens, temperature, top_p, top_k, batch_size)
    check_tokenizer(tokenizer)
    from vllm import SamplingParams  # optional extra: only imported here
    from vllm.inputs import TokensPrompt

    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    params = [SamplingParams(n=num_samples, temperature=temperature, top_p=top_p,
                             top_k=top_k if top_k > 0 else -1, max_tokens=max_new_tokens,
                             seed=prompt_seed(seed, pid) % (2**31)) for pid in prompt_ids]
    outs = llm.generate([TokensPrompt(prompt_token_ids=e) for e in encoded], params, use_tqdm=progress)
    texts = [[tokenizer.decode([t for t in c.token_ids if t != tokenizer.eos_token_id], skip_special_tokens=True)
              for c in o.outputs] for o in outs]
    full, starts = [], []
    for e, group in zip(encoded, texts):
        for text in group:
            full.append(TokensPrompt(prompt_token_ids=e + encode_completion(tokenizer, text)))
            starts.append(len(e))
    scored = llm.generate(full, SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0), use_tqdm=progress)
    logps = []
    for o, start in zip(scored, starts):
        # prompt_logprobs[t] maps token ids to Logprob objects and always includes the actual token at t.
        logps.append(float(sum(o.prompt_logprobs[t][tok].logprob
                               for t, tok in enumerate(o.prompt_token_ids) if t >= start)))
    return [{"completions": group, "ref_logps": logps[j * num_samples : (j + 1) * num_samples]}
            for j, group in enumerate(texts)]


def load_vllm(model_path: str, tensor_parallel_size: int = 1, dtype: str = "auto", seed: int = 0,
              trust_remote_code: bool = False, max_model_len: int | None = None):
    from vllm import LLM

    return LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
               trust_remote_code=trust_remote_code, max_model_len=max_model_len)
