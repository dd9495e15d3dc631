"""Teacher-forced summed log-probs of completions given prompts, batched with right padding.

Used by sampling (`ref_logps`), the trainer (policy and live-reference log-probs) and evaluation (KL), so all
three compute log π(y|x) identically. Right padding keeps default position ids correct without extra logic.
`sequence_logps` is the no-grad loop over many pairs that sampling and evaluation share.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .tokenization import encode_prompt

__all__ = ["pad_pairs", "completion_logps", "sequence_logps", "ids_logps"]


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
