"""K completions per prompt from a causal LM, seeded per prompt, recorded as token ids with their `ref_logps`.

The record (docs/math.md §9). Per prompt: `prompt_ids` (the ids fed to the model: `tokenization.encode_prompt`
of the prompt as given, i.e. after any `fit_prompts` truncation), and per completion `completion_ids` (exactly
as generated, ending with the stop token when one ended it), `finish_reasons` ("stop", or "length" when cut at
max_new_tokens: no stop token and no stop-token term), `completions` (text decoded from the ids without the
final stop token, skip_special_tokens=True: for reward models and people, never re-encoded) and `ref_logps`
(Σ log π_ref over completion_ids). The stop set is `modeling.stop_token_ids`: the model's generation-config
eos ids ∪ the tokenizer's eos ∪ any extra ids, and a completion stops at the first of them it draws.

Determinism. Each prompt's randomness comes only from (seed, prompt_id): a torch.Generator seeded with
`prompt_seed(seed, prompt_id)` draws one uniform per (sample, step) up front, shape (K, max_new_tokens), and
step t of sample k takes the token at which the (truncated, tempered) CDF first exceeds u[k, t] (inverse-CDF
sampling). No random state is shared between prompts, so which other prompts share a batch, how the run is
chunked, sharded or resumed cannot change a prompt's draws. What CAN differ is the model's float rounding:
another batch means other padding and matrix shapes, which moves logits in the last bits; a token changes only
if its uniform falls within that rounding distance of one of the V CDF boundaries, so the chance grows with the
vocabulary: ~1e-3 per token at V = 32k in float32 (benchmarks/bench_sampling.py: 95 % of 40-token completions
identical between batched and one prompt per batch), far more in bf16, whose logits carry ~3 significant
digits. So we guarantee identical completions for identical batching (resume, rerun of the same command) and
identical completions up to that rounding chance across batch sizes, chunkings and shardings; tests check
equality across batch sizes on CPU in float32 at the fixtures' small vocabularies.

`ref_logps` (hf backend) come from the sampler's own logits: the decode loop (decoding.py) reads the model's
raw next-token logits (no logits processor, nothing from the model's generation config), so the log-softmax of
those logits at the drawn token is log π_ref(y_t | x, y_<t) at temperature 1, whatever temperature/top-p/top-k
the token was drawn with (they shape only the proposal). Summed up to and including the row's stop token, this
equals a teacher-forced pass over the ids to float rounding (`compute_ref_logps` is that pass, kept as the
reference implementation) and saves the second forward. It is the base policy's likelihood — what KL and every
docs/math.md §6 loss need — not the log-density of a tempered or truncated proposal.

Backends: `sample_completions` (a Hugging Face model: each prompt prefilled once, its KV cache repeated for its K
draws, ended rows dropped; see decoding.py) and `vllm_sampling.sample_completions_vllm` (the same record from a
vLLM engine; vLLM is an optional extra, imported only there).

Which numbers become the stored `ref_logps` (the sampler's, or `forward_ref_logps`: a teacher-forced transformers
pass over the sampled ids in a named precision, what the trainer's own forward computes) is the sample stage's
choice (stages/sample.py, `--ref-logps-from`; docs/math.md §9, "one precision for the reference").
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..core.errors import InfalignError
from .decoding import DECODERS, decode_shared_prefill, decode_with_generate
from .grouped_logps import grouped_ids_logps
from .logprobs import sequence_logps
from .modeling import stop_token_ids as model_stop_set
from .tokenization import check_tokenizer, encode_prompt

__all__ = ["sample_completions", "prompt_seed", "fit_prompts", "context_length",
           "compute_ref_logps", "forward_ref_logps", "record_completion"]

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

    The bound is exact: the sampler itself feeds at most prompt + max_new_tokens − 1 tokens, but train and eval
    teacher-force the whole record (prompt ids + completion ids, up to prompt + max_new_tokens) through the
    model, so that must fit the context; a model with a learned position table (GPT-2) raises IndexError one
    token past it. Nothing downstream may add a token (tests/test_bad_inputs.py tests the boundary).

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


def compute_ref_logps(model, tokenizer, prompts: Sequence[Any], completion_ids: Sequence[Sequence[int]],
                      batch_size: int = 32) -> list[float]:
    """Teacher-forced Σ log π(y|x) at temperature 1 for each (prompt, completion ids) pair, float32: the reference
    implementation of the sampler's `ref_logps` (tests, and backends that cannot read their logits)."""
    return sequence_logps(model, tokenizer, prompts, completion_ids, batch_size).tolist()


# Logits one teacher-forced batch may hold per row (the first batch's check and a model that does not pack compute
# sequences × length × vocabulary of them): at V = 262k, 8 sequences of 300 tokens are already 2.5 GB in float32.
_FORWARD_LOGITS = 2**27


def forward_ref_logps(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[Sequence[int]]],
                      pad_token_id: int, batch_size: int = 8, desc: str | None = None) -> list[list[float]]:
    """Teacher-forced Σ log π(y|x) of each prompt's completions, on the ids as sampled, in the model's dtype
    (log-softmax in float32): what the trainer's own forward of these weights computes (docs/math.md §9), by
    the same code (`grouped_logps.grouped_ids_logps`: each prompt once, packed after its first-batch check).

    prompt_ids: P prompts' ids; completion_ids: per prompt, its completions' ids. Returns per prompt a list of
    floats, one per completion. `batch_size` prompts' completions per forward pass at most, fewer when the
    per-row logits of a batch (the first batch is also computed per row, to check the packed forward) would
    pass `_FORWARD_LOGITS`."""
    flat_p = [p for p, group in zip(prompt_ids, completion_ids) for _ in group]
    flat_c = [c for group in completion_ids for c in group]
    if not flat_c:
        return [[] for _ in prompt_ids]
    longest = max(len(p) + len(c) for p, c in zip(flat_p, flat_c))
    vocab = int(model.config.get_text_config().vocab_size)
    per_prompt = max(len(g) for g in completion_ids)
    rows = max(1, min(batch_size * per_prompt, _FORWARD_LOGITS // max(1, longest * vocab)))
    # The group forward, as the trainer computes: each prompt once (packed when its first-batch check passes).
    logps = grouped_ids_logps(model, flat_p, flat_c, pad_token_id, rows, desc).tolist()
    out, at = [], 0
    for group in completion_ids:
        out.append([float(x) for x in logps[at : at + len(group)]])
        at += len(group)
    return out


def _stop_set(model, tokenizer, stop_token_ids) -> list[int]:
    # A given set is used as it is (evaluation passes the samples' recorded set); otherwise the model's.
    stop = model_stop_set(model, tokenizer) if stop_token_ids is None else model_stop_set(None, None, stop_token_ids)
    if not stop:
        raise InfalignError("stop_token_ids must hold at least one id")
    return stop


def record_completion(tokenizer, ids: Sequence[int], stop: Sequence[int], finish: str) -> dict[str, Any]:
    """One completion's record: ids, finish reason, and its text (decoded without the final stop token)."""
    ids = [int(t) for t in ids]
    body = ids[:-1] if finish == "stop" and ids and ids[-1] in stop else ids
    return {"completion_ids": ids, "finish_reason": finish,
            "completion": tokenizer.decode(body, skip_special_tokens=True)}


def _group(records: list[dict[str, Any]], prompt_ids: list[int], logps) -> dict[str, list]:
    """One prompt's record; without `logps` (None) it has no "ref_logps" (a forward pass adds them later)."""
    group = {"prompt_ids": list(prompt_ids), "completion_ids": [r["completion_ids"] for r in records],
             "finish_reasons": [r["finish_reason"] for r in records],
             "completions": [r["completion"] for r in records]}
    if logps is not None:
        group["ref_logps"] = [float(x) for x in logps]
    return group


def sample_completions(model, tokenizer, prompts: list, prompt_ids: list[str], num_samples: int,
                       max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                       seed: int = 0, batch_size: int = 8, progress: bool = True,
                       stop_token_ids: Sequence[int] | None = None,
                       decoder: str = "shared_prefill") -> list[dict[str, list]]:
    """K = num_samples completions per prompt with the Hugging Face backend.

    Args:
        prompts: P prompts (strings or chat message lists; see tokenization.encode_prompt).
        prompt_ids: P prompt_id strings; with `seed` they alone determine each prompt's draws.
        batch_size: prompts decoded together (one left-padded prefill of batch_size rows, then batch_size × K
            decoding rows).
        progress: show a progress bar (prompts/s, completions/s), or an open tqdm bar to advance.
        stop_token_ids: the stop set, used as given; default `modeling.stop_token_ids(model, tokenizer)`.
        decoder: "shared_prefill" (each prompt's forward once, its KV cache repeated for the K draws, ended rows
            dropped) or "generate" (transformers' generate over K copies of each prompt: the reference the
            tests compare against, and the fallback for a model that returns no transformers.Cache); the same
            completions either way up to float rounding (see decoding.py).
    Returns:
        P dicts in input order (see the module doc): "prompt_ids" (token ids), "completion_ids",
        "finish_reasons", "completions" and "ref_logps" (K each).
    """
    _check_params(num_samples, max_new_tokens, temperature, top_p, top_k, batch_size)
    if len(prompts) != len(prompt_ids):
        raise InfalignError(f"{len(prompts)} prompts but {len(prompt_ids)} prompt_ids")
    check_tokenizer(tokenizer)
    from tqdm.auto import tqdm

    if decoder not in DECODERS:
        raise InfalignError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")

    stop = _stop_set(model, tokenizer, stop_token_ids)
    was_training = model.training
    model.eval()  # dropout off: sampling and ref_logps must be the deterministic base policy
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    # Similar lengths together waste less padding; results do not depend on the grouping (see module doc).
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[dict[str, list] | None] = [None] * len(prompts)
    # `progress` may be a caller's open bar (the pipeline's bar over all chunks): advance it, do not close it.
    own_bar = not hasattr(progress, "update")
    bar = tqdm(total=len(prompts), desc="sampling", unit="prompt", disable=not progress,
               dynamic_ncols=True) if own_bar else progress
    try:
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            records, logps = _generate_batch(model, tokenizer, [encoded[i] for i in idx],
                                             [prompt_ids[i] for i in idx], num_samples, max_new_tokens,
                                             temperature, top_p, top_k, seed, stop, device, decoder)
            for j, i in enumerate(idx):
                sl = slice(j * num_samples, (j + 1) * num_samples)
                results[i] = _group(records[sl], encoded[i], logps[sl])
            bar.update(len(idx))
            bar.set_postfix(
                completions_per_s=f"{bar.n * num_samples / max(bar.format_dict['elapsed'], 1e-9):.1f}")
    finally:
        if own_bar:
            bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]


def _generate_batch(model, tokenizer, encoded, ids, k, max_new_tokens, temperature, top_p, top_k, seed, stop,
                    device, decoder) -> tuple[list[dict[str, Any]], list[float]]:
    width = max(len(e) for e in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    uniforms = torch.empty((len(encoded) * k, max_new_tokens), dtype=torch.float32)
    for j, (e, pid) in enumerate(zip(encoded, ids)):
        input_ids[j, width - len(e) :] = torch.tensor(e, dtype=torch.long)  # left padding: generation continues
        attention[j, width - len(e) :] = 1  # at the right edge of every row
        gen = torch.Generator().manual_seed(prompt_seed(seed, pid))
        uniforms[j * k : (j + 1) * k] = torch.rand((k, max_new_tokens), generator=gen, dtype=torch.float32)
    args = (model, input_ids.to(device), attention.to(device), uniforms.to(device), k, temperature, top_k, top_p,
            stop)
    out = decode_shared_prefill(*args) if decoder == "shared_prefill" else None
    if out is None:  # asked for, or a model whose forward returns no transformers.Cache
        out = decode_with_generate(*args, tokenizer.pad_token_id)
    rows, finishes, logps = out
    stop_set = set(stop)
    return [record_completion(tokenizer, r, stop_set, f) for r, f in zip(rows, finishes)], logps
