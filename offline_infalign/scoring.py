"""Reward scorers behind one interface: `scorer(prompts, completions) -> np.ndarray (n,)`, plus `scorer.name`.

- `HFRewardScorer`: a Hugging Face sequence-classification reward model with ITS OWN tokenizer and chat
  template (a reward model is often trained on another template than the policy's), batched, with
  dtype/device options. Sequences longer than the reward model's context are cut from the left, keeping the
  completion, which is what is being judged. A model with several outputs (the usual two-label
  sentiment/safety classifier) is scored by the raw logit of one label, `reward_label` (an index or a name from
  its `id2label`); not a softmax probability, which saturates at 0/1 and so ties the best completions.
- `CallableScorer`: any Python callable `(prompts, completions) -> floats`, named "module:function".
- "demo": the built-in demo reward (`offline_infalign.demo.assets.demo_reward`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import InfalignError

__all__ = ["Scorer", "HFRewardScorer", "CallableScorer", "load_scorer", "score_texts", "score_in_chunks",
           "label_column"]


class Scorer:
    """Base class: `__call__(prompts: list, completions: list[str]) -> np.ndarray` of shape (n,), float64."""

    name: str = "scorer"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(completions):
            raise InfalignError(f"scorer got {len(prompts)} prompts but {len(completions)} completions")
        if not len(prompts):
            return np.zeros(0, dtype=np.float64)
        out = np.asarray(self._score(list(prompts), list(completions)), dtype=np.float64).reshape(-1)
        if out.shape != (len(prompts),):
            raise InfalignError(f"scorer {self.name!r} returned {out.size} rewards for {len(prompts)} completions")
        return out

    def _score(self, prompts: list, completions: list[str]):
        raise NotImplementedError


class CallableScorer(Scorer):
    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    def _score(self, prompts, completions):
        return self.fn(prompts, completions)


def _labels(config) -> dict[int, str]:
    id2label = getattr(config, "id2label", None) or {}
    return {i: str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)}


def label_column(name: str, config, reward_label: int | str | None) -> int:
    """The logit column that is the reward: 0 for a one-output model; for several outputs, `reward_label`
    as an index ('1' or 1) or a label name from the model's `id2label`, else an error listing the labels."""
    labels = _labels(config)
    allowed = "{" + ", ".join(f"{i}: {v!r}" for i, v in labels.items()) + "}"
    if reward_label is None:
        if len(labels) == 1:
            return 0
        raise InfalignError(f"reward model {name!r} has {len(labels)} outputs {allowed}; choose the reward with "
                            "--reward-label (an index or a label name)")
    text = str(reward_label).strip()
    if text.isdigit():
        if int(text) < len(labels):
            return int(text)
        raise InfalignError(f"reward_label {reward_label!r} is out of range for reward model {name!r}; allowed: "
                            f"an index 0..{len(labels) - 1} or a label name of {allowed}")
    matches = [i for i, v in labels.items() if v == text]
    if len(matches) != 1:
        why = "is not a label" if not matches else "names several labels"
        raise InfalignError(f"reward_label {reward_label!r} {why} of reward model {name!r}; allowed: an index "
                            f"0..{len(labels) - 1} or a label name of {allowed}")
    return matches[0]


class HFRewardScorer(Scorer):
    """A sequence-classification reward model: one logit per (prompt, completion), column `reward_label`."""

    def __init__(self, path: str, device: str | None = None, dtype: str | None = None, batch_size: int = 16,
                 trust_remote_code: bool = False, model=None, tokenizer=None, reward_label: int | str | None = None,
                 allow_pickle_weights: bool = False):
        from transformers import AutoModelForSequenceClassification

        from .modeling import check_safetensors, default_device, from_pretrained, load_tokenizer

        if not isinstance(batch_size, int) or batch_size < 1:
            raise InfalignError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.name, self.batch_size = str(path), batch_size
        self.device = default_device(device)
        if model is None:  # a pickle-only folder is refused before anything of it is read
            check_safetensors(path, allow_pickle_weights, "reward model")
        # No EOS fallback: the model finds each row's last real token by the pad id, which must not be a token
        # (like EOS) that the texts it judges end with; the reward model's author chooses it.
        self.tokenizer = tokenizer or load_tokenizer(path, trust_remote_code, pad_token_as_eos=False)
        if self.tokenizer.pad_token_id is None:
            raise InfalignError(
                f"reward model tokenizer {self.name!r} has no pad_token; batching needs one (set "
                "`tokenizer.pad_token = tokenizer.eos_token` and save it with the reward model)"
            )
        if model is None:
            from .modeling import resolve_dtype  # 'auto': bf16 on a bf16-capable GPU, float32 otherwise

            model = from_pretrained(AutoModelForSequenceClassification, path, what="reward model",
                                    allow_pickle_weights=allow_pickle_weights,
                                    dtype=resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code)
        self.column = label_column(self.name, model.config, reward_label)
        self.label = _labels(model.config)[self.column] if model.config.num_labels > 1 else None
        if model.config.pad_token_id is None:  # how the model finds each row's last real token
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(self.device).eval()
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_length = min(limit or 10**9, self.tokenizer.model_max_length or 10**9)

    def text(self, prompt: Any, completion: str) -> str:
        """The (prompt, completion) conversation as the reward model reads it."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            return tok.apply_chat_template(msgs + [{"role": "assistant", "content": completion}], tokenize=False)
        if not isinstance(prompt, str):
            raise InfalignError(f"prompt is a list of chat messages but reward model tokenizer {self.name!r} "
                                "has no chat_template")
        sep = "" if prompt[-1:].isspace() or completion[:1].isspace() else " "
        return prompt + sep + completion

    def _score(self, prompts, completions):
        import torch

        texts = [self.text(p, c) for p, c in zip(prompts, completions)]
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        tok = self.tokenizer
        side = tok.truncation_side
        tok.truncation_side = "left"  # keep the completion when a conversation exceeds the context
        out = np.empty(len(texts), dtype=np.float64)
        try:
            for lo in range(0, len(texts), self.batch_size):
                idx = order[lo : lo + self.batch_size]
                # A chat template already writes special tokens itself.
                enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                          return_tensors="pt", add_special_tokens=not getattr(tok, "chat_template", None))
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                with torch.no_grad():
                    out[idx] = self.model(**enc).logits[:, self.column].float().cpu().numpy()
        finally:
            tok.truncation_side = side
        return out


def load_scorer(spec, device: str | None = None, dtype: str | None = None, batch_size: int = 16,
                trust_remote_code: bool = False, reward_label: int | str | None = None,
                allow_pickle_weights: bool = False) -> Scorer:
    """A scorer from `spec`: "demo", "module:function", a reward-model folder / hub id, or a callable.

    `reward_label` picks the output of a multi-output reward model; it is refused for anything else.
    A "module:function" is imported, which runs its code: callers pass only what the user named (never a
    name read from a downloaded folder; stages/evaluate.py). `allow_pickle_weights`: modeling.from_pretrained.
    """
    if reward_label is not None and (callable(spec) or isinstance(spec, Scorer) or str(spec) == "demo"
                                     or (":" in str(spec) and not Path(str(spec)).exists())):
        raise InfalignError(f"reward_label {reward_label!r} applies to a Hugging Face reward model; "
                            f"{getattr(spec, 'name', spec)!r} is not one")
    if isinstance(spec, Scorer):
        return spec
    if callable(spec):
        return CallableScorer(spec, getattr(spec, "__name__", "callable"))
    spec = str(spec)
    if spec == "demo":
        from .demo.assets import demo_reward

        return CallableScorer(demo_reward, "demo")
    if ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise InfalignError(f"cannot load reward function {spec!r}: {exc}") from None
        if not callable(fn):
            raise InfalignError(f"reward function {spec!r} is not callable")
        return CallableScorer(fn, spec)
    return HFRewardScorer(spec, device=device, dtype=dtype, batch_size=batch_size,
                          trust_remote_code=trust_remote_code, reward_label=reward_label,
                          allow_pickle_weights=allow_pickle_weights)


def score_texts(scorer: Scorer, prompts: Sequence[Any], completions: Sequence[Sequence[str]],
                prompt_ids: Sequence[str]) -> np.ndarray:
    """Rewards (P, K) for K completions per prompt; non-finite rewards are an error naming the prompt_id."""
    k = len(completions[0]) if len(completions) else 0
    flat_p = [p for p, cs in zip(prompts, completions) for _ in cs]
    flat_c = [c for cs in completions for c in cs]
    rewards = score_in_chunks(scorer, flat_p, flat_c).reshape(len(prompts), k)
    bad = np.argwhere(~np.isfinite(rewards))
    if len(bad):
        i, j = (int(v) for v in bad[0])
        raise InfalignError(f"reward model {scorer.name!r} gave a non-finite reward {float(rewards[i, j])!r} for prompt_id "
                            f"{prompt_ids[i]} (completion {j}); rewards must be finite")
    return rewards


def score_in_chunks(scorer: Scorer, prompts: Sequence[Any], completions: Sequence[str], chunk: int | None = None,
                    desc: str | None = None) -> np.ndarray:
    """Flat rewards (n,) of (prompt, completion) pairs, `chunk` pairs per scorer call (all at once by default).

    Chunks exist for the progress bar, shown when `desc` is given: the scorer batches internally either way.
    """
    from tqdm.auto import tqdm

    chunk = chunk or max(len(prompts), 1)
    parts = [np.asarray(scorer(prompts[i : i + chunk], completions[i : i + chunk]), dtype=np.float64)
             for i in tqdm(range(0, len(prompts), chunk), desc=desc, unit="chunk", disable=desc is None)]
    return np.concatenate(parts) if parts else np.zeros(0)
