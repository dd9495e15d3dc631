"""How a (prompt, completion) pair becomes token ids — the ONE place this is decided.

Sampling computes `ref_logps` with these ids and the trainer recomputes policy log-probs with them, so the
stored reference log-probs and a live reference forward agree token for token.

- prompt: plain text → `tokenizer(text)` ids (with the tokenizer's own special tokens, e.g. BOS);
  a list of chat messages → the tokenizer's chat template with `add_generation_prompt=True`.
- completion: `tokenizer(text, add_special_tokens=False)` ids followed by EOS, so the probability of stopping
  is part of log π(y|x) (as TRL's DPO does). Completions are stored as text; ids are always re-derived.
`tokenize_dataset` adds these ids to a prepared dataset for training, for the text columns its kind names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .core.errors import InfalignError

__all__ = ["encode_prompt", "encode_completion", "check_tokenizer", "prompt_text", "tokenize_dataset"]


def check_tokenizer(tokenizer) -> None:
    """Batching needs a pad token and completions need EOS; say how to fix it when they are missing."""
    if tokenizer.eos_token_id is None:
        raise InfalignError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token; set one before use")
    if tokenizer.pad_token_id is None:
        raise InfalignError(
            f"tokenizer {tokenizer.name_or_path!r} has no pad_token; set one (commonly "
            "`tokenizer.pad_token = tokenizer.eos_token`) or pass --pad-token-as-eos"
        )


def prompt_text(tokenizer, prompt: Any) -> str:
    """The prompt as the model sees it: chat-templated text for a message list, the text itself otherwise."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise InfalignError(
                f"prompt is a list of chat messages but tokenizer {tokenizer.name_or_path!r} has no chat_template"
            )
        # tokenize=False: in transformers 5 tokenize=True returns a dict, and we want one code path.
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    raise InfalignError(f"prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}")


def encode_prompt(tokenizer, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    # A chat template already writes BOS and role markers itself; adding special tokens would double BOS.
    return list(tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def encode_completion(tokenizer, completion: str) -> list[int]:
    return list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def tokenize_dataset(dataset, tokenizer, kind, max_length: int | None = None, cache_dir: str | Path | None = None):
    """Add id columns (`prompt_ids` and `<column>_ids` for each of the kind's text columns, e.g. `chosen_ids`)
    with the package's one tokenization; drop rows longer than `max_length` (never truncate: stored reference
    log-probs are of whole completions). `kind` is a `kinds.DatasetKind` or its name.
    Returns (dataset, number of rows dropped).

    The tokenized table goes to `cache_dir` (or stays in memory), never next to the input artifact's files:
    `datasets` would otherwise write cache-*.arrow into the prepared folder and change its content hash."""
    if isinstance(kind, str):
        from .kinds import get_kind  # here, not at the top: kinds -> logprobs -> tokenization

        kind = get_kind(kind)
    check_tokenizer(tokenizer)
    text_cols = kind.text_columns

    def encode(row):
        out = {"prompt_ids": encode_prompt(tokenizer, row["prompt"])}
        for col in text_cols:
            value = row[col]
            out[f"{col}_ids"] = ([encode_completion(tokenizer, v) for v in value] if isinstance(value, list)
                                 else encode_completion(tokenizer, value))
        return out

    # The cache name pins the input rows and the tokenizer, so a rerun into the same folder never reuses ids
    # made by another tokenizer.
    tok_id = json.dumps([tokenizer.name_or_path, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                         getattr(tokenizer, "chat_template", None)], default=str)
    key = hashlib.sha256(f"{dataset._fingerprint}|{kind.name}|{tok_id}".encode()).hexdigest()[:16]

    def where(name):
        if cache_dir is None:
            return {"keep_in_memory": True}
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return {"cache_file_name": str(Path(cache_dir) / f"{name}-{key}.arrow")}

    dataset = dataset.map(encode, desc="tokenize", **where("tokenized"))
    kind.check_rows(dataset)
    if max_length is None:
        return dataset, 0

    def fits(row):
        lengths = []
        for col in text_cols:
            ids = row[f"{col}_ids"]
            lengths += [len(x) for x in ids] if kind.grouped else [len(ids)]
        return len(row["prompt_ids"]) + max(lengths) <= max_length

    before = len(dataset)
    dataset = dataset.filter(fits, desc="max_length", **where(f"max_length{max_length}"))
    return dataset, before - len(dataset)
