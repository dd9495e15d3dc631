"""How a (prompt, completion) pair becomes token ids — the ONE place this is decided.

Sampling computes `ref_logps` with these ids and the trainer recomputes policy log-probs with them, so the
stored reference log-probs and a live reference forward agree token for token.

- prompt: plain text → `tokenizer(text)` ids (with the tokenizer's own special tokens, e.g. BOS);
  a list of chat messages → the tokenizer's chat template with `add_generation_prompt=True`.
- completion: `tokenizer(text, add_special_tokens=False)` ids followed by EOS, so the probability of stopping
  is part of log π(y|x) (as TRL's DPO does).
Sampled completions do not go through `encode_completion`: their ids are the record (docs/math.md §9) — kept by
the sampler exactly as generated (ending with the stop token only when one ended them, so a completion cut at
max_new_tokens has no stop-token term) and carried by prepare. `tokenize_dataset` uses such stored id columns as
they are and encodes text only where a dataset has none (datasets made by hand from text, as before).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..core.errors import InfalignError

__all__ = ["encode_prompt", "encode_completion", "check_tokenizer", "prompt_text", "apply_chat_template",
           "tokenize_dataset", "check_stored_ids"]


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
        return apply_chat_template(tokenizer, list(prompt), "tokenizer", add_generation_prompt=True)
    raise InfalignError(f"prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}")


def apply_chat_template(tokenizer, messages: list[dict], what: str = "tokenizer", **kwargs) -> str:
    """`tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)`; a template that raises (many refuse a
    `system` message, or roles that do not alternate, with jinja's raise_exception) is one InfalignError naming the
    tokenizer, what it said and the roles of the conversation it was given."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as exc:  # jinja2's TemplateError, or whatever the template's own code raises
        text = " ".join(str(exc).split())[:300]
        roles = ", ".join(str(m.get("role")) for m in messages)
        raise InfalignError(f"the chat template of {what} {tokenizer.name_or_path!r} raised {type(exc).__name__}: "
                            f"{text} (on a conversation with roles: {roles}); change the prompts to what the "
                            "template accepts (e.g. fold a system message into the first user message) or fix the "
                            "template") from None


def encode_prompt(tokenizer, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    # A chat template already writes BOS and role markers itself; adding special tokens would double BOS.
    return list(tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def encode_completion(tokenizer, completion: str) -> list[int]:
    return list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def tokenize_dataset(dataset, tokenizer, kind, max_length: int | None = None, cache_dir: str | Path | None = None):
    """Make sure the dataset has `prompt_ids` and the kind's id columns (e.g. `chosen_ids`, `completion_ids`):
    a column already there (the sampled ids, docs/math.md §9) is used as it is; a missing one is encoded from
    its text with the package's one tokenization. Drop rows longer than `max_length` (never truncate: stored
    reference log-probs are of whole completions). `kind` is a `kinds.DatasetKind` (its `id_columns`).
    Returns (dataset, number of rows dropped).

    The tokenized table goes to `cache_dir` (or stays in memory), never next to the input artifact's files:
    `datasets` would otherwise write cache-*.arrow into the prepared folder and change its content hash."""
    check_tokenizer(tokenizer)
    present = set(dataset.column_names)
    stored = [c for c in ("prompt_ids", *kind.id_columns.values()) if c in present]
    check_stored_ids(dataset, stored, tokenizer)
    encode_prompt_ids = "prompt_ids" not in present
    to_encode = {text: ids for text, ids in kind.id_columns.items() if ids not in present}

    def encode(row):
        out = {"prompt_ids": encode_prompt(tokenizer, row["prompt"])} if encode_prompt_ids else {}
        for col, ids_col in to_encode.items():
            value = row[col]
            out[ids_col] = ([encode_completion(tokenizer, v) for v in value] if isinstance(value, list)
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

    if encode_prompt_ids or to_encode:
        dataset = dataset.map(encode, desc="tokenize", **where("tokenized"))
    kind.check_rows(dataset)
    if max_length is None:
        return dataset, 0
    id_cols = list(kind.id_columns.values())

    def fits(row):
        lengths = []
        for col in id_cols:
            ids = row[col]
            lengths += [len(x) for x in ids] if kind.grouped else [len(ids)]
        return len(row["prompt_ids"]) + max(lengths) <= max_length

    before = len(dataset)
    dataset = dataset.filter(fits, desc="max_length", **where(f"max_length{max_length}"))
    return dataset, before - len(dataset)


def check_stored_ids(dataset, columns, tokenizer) -> None:
    """Stored ids must be ids of this tokenizer: refuse a negative id or one past its vocabulary (the ids of
    another tokenizer would index other embeddings, or none)."""
    import pyarrow.compute as pc

    size = len(tokenizer)
    for col in columns:
        values = dataset.data.column(col)
        while hasattr(values.type, "value_type"):  # list<list<int>> -> list<int> -> int
            values = pc.list_flatten(values)
        if len(values) == 0:
            continue
        lo, hi = pc.min_max(values).values()
        if lo.as_py() < 0 or hi.as_py() >= size:
            raise InfalignError(f"column {col!r} holds token id {hi.as_py() if hi.as_py() >= size else lo.as_py()}, "
                                f"outside tokenizer {tokenizer.name_or_path!r} (vocabulary size {size}); the "
                                "dataset's ids were made by another tokenizer")
