"""How a (prompt, completion) pair becomes token ids — the ONE place this is decided.

Sampling computes `ref_logps` with these ids and the trainer recomputes policy log-probs with them, so the
stored reference log-probs and a live reference forward agree token for token.

- prompt: plain text → `tokenizer(text)` ids (with the tokenizer's own special tokens, e.g. BOS);
  a list of chat messages → the tokenizer's chat template with `add_generation_prompt=True`.
- completion: `tokenizer(text, add_special_tokens=False)` ids followed by EOS, so the probability of stopping
  is part of log π(y|x) (as TRL's DPO does). Completions are stored as text; ids are always re-derived.
"""

from __future__ import annotations

from typing import Any

from .core.errors import InfalignError

__all__ = ["encode_prompt", "encode_completion", "check_tokenizer", "prompt_text"]


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
