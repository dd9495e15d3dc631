"""Reward scorers behind one interface: `scorer(prompts, completions) -> np.ndarray (n,)`, plus `scorer.name`.

- `HFRewardScorer`: a Hugging Face sequence-classification reward model with ITS OWN tokenizer and chat
  template (a reward model is often trained on another template than the policy's), batched, with
  dtype/device options. Sequences longer than the reward model's context are cut from the left, keeping the
  completion, which is what is being judged. A model with several outputs (the usual two-label
  sentiment/safety classifier) is scored by the raw logit of one label, `reward_label` (an index or a name from
  its `id2label`); not a softmax probability, which saturates at 0/1 and so ties the best completions.
- `CallableScorer`: any Python callable `(prompts, completions) -> floats`, named "module:function".
- a registered name (`scorers.SCORERS`, e.g. "demo", the built-in demo reward): the function registered under it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InfalignError
from .modeling import check_safetensors, default_device, from_pretrained, load_tokenizer, resolve_dtype
from .preflight import check_model
from .scorers import SCORERS, registered_function
from .tokenization import apply_chat_template

__all__ = ["Scorer", "HFRewardScorer", "CallableScorer", "load_scorer", "check_reward", "score_texts",
           "score_in_chunks", "label_column", "RewardCallError"]


def _short(value, limit: int = 40) -> str:
    text = " ".join(str(value).split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


# What user code may raise without it being a bug of ours: any Exception, and the BaseExceptions a library raises
# to stop the process (sys.exit's SystemExit, ...). A KeyboardInterrupt is let through: it is how Ctrl-C reaches
# the command, which then says how to resume (cli.py); GeneratorExit belongs to the interpreter.
_LET_THROUGH = (KeyboardInterrupt, GeneratorExit)


def _describe(exc: BaseException) -> str:
    """'ValueError: text' in one line; a SystemExit says that the function (or a library it calls) exited."""
    if isinstance(exc, SystemExit):
        code = "" if exc.code is None else " ".join(repr(exc.code).split())[:300]
        return f"SystemExit (it called sys.exit({code}), directly or through a library)"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


class RewardCallError(InfalignError):
    """A reward callable raised: which (prompt, completion) pair of the call (`index`, None when the pair could
    not be singled out), and the original exception. `score_in_chunks` and `score_texts` restate the pair in
    their own terms (its index in the whole call; prompt_id and completion number)."""

    def __init__(self, name: str, exc: BaseException, index: int | None, where: str):
        self.name, self.exc, self.index = name, exc, index
        super().__init__(f"reward function {name!r} raised {_describe(exc)} — {where}; fix the function (it is "
                         "called as fn(prompts, completions) with lists, and must return one float per completion)")

    def at(self, where: str) -> RewardCallError:
        return RewardCallError(self.name, self.exc, self.index, where)


class Scorer:
    """Base class: `__call__(prompts: list, completions: list[str]) -> np.ndarray` of shape (n,), float64."""

    name: str = "scorer"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(completions):
            raise InfalignError(f"scorer got {len(prompts)} prompts but {len(completions)} completions")
        if not len(prompts):
            return np.zeros(0, dtype=np.float64)
        return self._check_shape(self._score(list(prompts), list(completions)), len(prompts))

    def _check_shape(self, result, n: int) -> np.ndarray:
        """`result` as float64 (n,), or an error naming what came back: one number per completion, never a
        table that happens to hold n numbers (an (n/2, 2) array), strings or ragged lists."""
        expected = f"expected one float per completion, shape ({n},)"
        try:
            out = _as_array(result)
        except (ValueError, TypeError) as exc:  # a ragged list of lists, ...
            raise InfalignError(f"scorer {self.name!r} returned {type(result).__name__} that is not an array of "
                                f"numbers ({' '.join(str(exc).split())[:120]}) for {n} completions; {expected}") \
                from None
        if out.dtype.kind not in "biuf":
            example = out.reshape(-1)[0] if out.size else None
            raise InfalignError(f"scorer {self.name!r} returned values of type {type(example).__name__} (e.g. "
                                f"{_short(example)}) for {n} completions; {expected}")
        if out.shape != (n,):
            raise InfalignError(f"scorer {self.name!r} returned shape {tuple(out.shape)} for {n} completions; "
                                f"{expected}")
        return out.astype(np.float64)

    def _score(self, prompts: list, completions: list[str]):
        raise NotImplementedError


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")  # nothing can be a tensor before torch is imported
    return torch is not None and isinstance(value, torch.Tensor)


def _as_array(result) -> np.ndarray:
    """What a scorer returned as an array. A torch tensor (or a list of them) is detached and read as float64 on
    the CPU first: numpy refuses a tensor that requires grad, one on a GPU, and bfloat16; the values are the reward
    either way, and the graph a differentiable reward built is dropped with it."""
    if _is_tensor(result):
        return result.detach().to("cpu").double().numpy()
    if isinstance(result, (list, tuple)) and any(_is_tensor(v) for v in result):
        return np.asarray([v.detach().to("cpu").double().numpy() if _is_tensor(v) else v for v in result])
    return np.asarray(result)


class CallableScorer(Scorer):
    """A Python callable `(prompts, completions) -> floats`. When it raises, the pair it raised on is found by
    bisection (at most about twice the call's work, spent only on the way to the error) and named."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    def _score(self, prompts, completions):
        try:
            return self.fn(prompts, completions)
        except _LET_THROUGH:
            raise
        except BaseException as exc:  # the user's code: whatever it raises is a bad reward, reported in one line
            index = self._locate(prompts, completions)
            if index is None:
                where = f"on a call with {len(prompts)} pairs (no single pair raises alone)"
            else:
                where = (f"on pair {index} of the call (prompt {_short(prompts[index])}, completion "
                         f"{_short(completions[index])})")
            raise RewardCallError(self.name, exc, index, where) from None

    def _locate(self, prompts, completions) -> int | None:
        """The index of a pair the callable raises on alone, halving the failing range; None if no half fails."""
        lo, hi = 0, len(prompts)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._raises(prompts[lo:mid], completions[lo:mid]):
                hi = mid
            elif self._raises(prompts[mid:hi], completions[mid:hi]):
                lo = mid
            else:
                return None
        return lo if hi - lo == 1 else None

    def _raises(self, prompts, completions) -> bool:
        try:
            self.fn(prompts, completions)
        except _LET_THROUGH:
            raise
        except BaseException:
            return True
        return False


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
            return apply_chat_template(tok, msgs + [{"role": "assistant", "content": completion}], "reward model")
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
    """A scorer from `spec`: a registered name (`SCORERS`), "module:function", a reward-model folder / hub id, or a
    callable.

    `reward_label` picks the output of a multi-output reward model; it is refused for anything else.
    A "module:function" is imported, which runs its code: callers pass only what the user named (never a
    name read from a downloaded folder; stages/evaluate.py). `allow_pickle_weights`: modeling.from_pretrained.
    """
    if reward_label is not None and (callable(spec) or isinstance(spec, Scorer) or str(spec) in SCORERS
                                     or (":" in str(spec) and not Path(str(spec)).exists())):
        raise InfalignError(f"reward_label {reward_label!r} applies to a Hugging Face reward model; "
                            f"{getattr(spec, 'name', spec)!r} is not one")
    if isinstance(spec, Scorer):
        return spec
    if callable(spec):
        return CallableScorer(spec, getattr(spec, "__name__", "callable"))
    spec = str(spec)
    if spec in SCORERS:
        return CallableScorer(registered_function(spec), spec)
    if _names_callable(spec):
        return CallableScorer(_import_callable(spec), spec)

    check_model(spec, "reward model", trust_remote_code)
    return HFRewardScorer(spec, device=device, dtype=dtype, batch_size=batch_size,
                          trust_remote_code=trust_remote_code, reward_label=reward_label,
                          allow_pickle_weights=allow_pickle_weights)


def _names_callable(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists()


def _import_callable(spec: str) -> Callable:
    """The function `module:function` names (importing the module runs its code: only names the user gave)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InfalignError(f"cannot load reward function {spec!r}: {exc}") from None
    except _LET_THROUGH:
        raise
    except BaseException as exc:  # the module's own code failed (or exited) while it was imported
        raise InfalignError(f"cannot load reward function {spec!r}: importing {module_name!r} raised "
                            f"{_describe(exc)}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise InfalignError(f"cannot load reward function {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise InfalignError(f"reward function {spec!r} is not callable")
    return fn


def check_reward(spec, trust_remote_code: bool = False) -> None:
    """Refuse, in one line and before any work, a reward `load_scorer` could not load: a "module:function" that
    does not import (it is imported: callers pass only names the user gave), a model that `preflight.check_model`
    refuses. Nothing heavy: no weights are read."""
    if callable(spec) or isinstance(spec, Scorer) or str(spec) in SCORERS:
        return
    if _names_callable(str(spec)):
        _import_callable(str(spec))
        return

    check_model(str(spec), "reward model", trust_remote_code)


def score_texts(scorer: Scorer, prompts: Sequence[Any], completions: Sequence[Sequence[str]],
                prompt_ids: Sequence[str]) -> np.ndarray:
    """Rewards (P, K) for K completions per prompt; non-finite rewards are an error naming the prompt_id."""
    k = len(completions[0]) if len(completions) else 0
    flat_p = [p for p, cs in zip(prompts, completions) for _ in cs]
    flat_c = [c for cs in completions for c in cs]
    try:
        rewards = score_in_chunks(scorer, flat_p, flat_c).reshape(len(prompts), k)
    except RewardCallError as err:
        if err.index is None:
            raise
        i, j = divmod(err.index, k)
        raise err.at(f"on prompt_id {prompt_ids[i]}, completion {j} ({_short(flat_c[err.index])})") from None
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
    parts = []
    for i in tqdm(range(0, len(prompts), chunk), desc=desc, unit="chunk", disable=desc is None):
        try:
            parts.append(np.asarray(scorer(prompts[i : i + chunk], completions[i : i + chunk]), dtype=np.float64))
        except RewardCallError as err:  # the pair's index in the whole call, not in this chunk
            if err.index is None:
                raise
            at = i + err.index
            raise RewardCallError(err.name, err.exc, at, f"on pair {at} (prompt {_short(prompts[at])}, "
                                  f"completion {_short(completions[at])})") from None
    return np.concatenate(parts) if parts else np.zeros(0)
