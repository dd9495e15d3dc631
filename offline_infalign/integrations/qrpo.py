"""QRPO's reference datasets, read and written: K reference completions per prompt with their raw rewards.

QRPO (Matrenok, Moalla, Gulcehre, "Quantile Reward Policy Optimization", 2025) samples K completions per prompt
from the reference model once, scores them, and trains on each completion's quantile among them — the same data
this package's `scored` artifact holds, apart from the token ids and the reference log-probs. Two layouts:

- `original` — the paper's code and its published reference datasets: per row, `ref_completions`, the prompt's
  chat messages followed by one assistant message whose content is a JSON list of the K completion texts, and
  `ref_rewards`, the K raw rewards in the same order. Other columns (`prompt`, `chosen`, `rejected`, the reward
  model's tokens, ...) are ignored; a `prompt_id` column is kept when present.
- `verl` — one row per prompt: `prompt_id`, `prompt_messages` (chat messages), `ref_rewards` (the rewards of the
  reference completions), `offline_trajectories` (completions, each a list of chat messages) and `offline_rewards`
  (one per trajectory); optional `tools` and `metadata`. Imported, the trajectories are the K completions, so each
  must be one assistant message and their rewards must be the ref_rewards (in any order): calibration ranks the
  K samples of the reference model themselves (docs/math.md §2, §9), so rewards of reference samples whose text
  the row lacks, or trajectories that are not reference samples, cannot be imported.

Rewards stay raw both ways: QRPO calibrates itself, with a `<=` quantile (docs/math.md §2 says how it differs from
our mid-ranks). A plain-text prompt is written as one user message (QRPO applies the chat template to it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from data_builders import normalize_prompt, prompt_id

from ..core.errors import InfalignError
from . import Imported

__all__ = ["LAYOUTS", "REQUIRED", "READS", "detect_layout", "check_columns", "read", "write", "as_messages"]

LAYOUTS = ("original", "verl")
REQUIRED = {"original": ("ref_completions", "ref_rewards"),
            "verl": ("prompt_id", "prompt_messages", "ref_rewards", "offline_trajectories", "offline_rewards")}
# What `read` looks at: the required columns and, when present, these (the rest is never read).
READS = {"original": (*REQUIRED["original"], "prompt_id"), "verl": (*REQUIRED["verl"], "tools")}
# Two float readings of one reward (a float32 and a float64 column) still count as the same reward.
_SAME_REWARD = {"rtol": 1e-6, "atol": 1e-9}


def detect_layout(columns: Sequence[str]) -> str:
    """'original' or 'verl' from the columns present; an error naming what each layout needs otherwise."""
    found = [name for name, required in REQUIRED.items() if set(required) <= set(columns)]
    if len(found) == 1:
        return found[0]
    need = "; ".join(f"{name}: {', '.join(required)}" for name, required in REQUIRED.items())
    what = "columns of both layouts" if found else "neither layout's columns"
    raise InfalignError(f"the input has {what} (its columns: {', '.join(columns)}); QRPO layouts need {need}; pass "
                        "--layout original or verl")


def check_columns(columns: Sequence[str], layout: str) -> None:
    if layout not in REQUIRED:
        raise InfalignError(f"QRPO layout {layout!r} is not known; known: {', '.join(LAYOUTS)}")
    missing = [c for c in REQUIRED[layout] if c not in columns]
    if missing:
        raise InfalignError(f"the QRPO {layout} layout needs column(s) {', '.join(missing)}; the input has "
                            f"{', '.join(columns)}")


def read(rows: Iterable[dict[str, Any]], layout: str, first_row: int = 0) -> list[Imported]:
    """The rows of `layout` as `Imported` prompts; `first_row` numbers them in messages. A row that does not
    follow the layout (a missing or empty field, a completion count other than its reward count, a reward that is
    not a finite number, ...) is one InfalignError naming the row."""
    reader = _read_original if layout == "original" else _read_verl
    return [reader(row, f"row {first_row + i}") for i, row in enumerate(rows)]


def _read_original(row: dict[str, Any], where: str) -> Imported:
    messages = row.get("ref_completions")
    if not isinstance(messages, list) or len(messages) < 2:
        raise InfalignError(f"{where}: ref_completions must be the prompt's messages followed by one assistant "
                            f"message holding the completions, got {_short(messages)}")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        raise InfalignError(f"{where}: the last message of ref_completions must be an assistant message whose "
                            f"content is a JSON list of the completion texts, got {_short(last)}")
    try:
        completions = json.loads(last["content"])
    except json.JSONDecodeError as exc:
        raise InfalignError(f"{where}: the last message of ref_completions is not a JSON list of completion texts "
                            f"({exc.msg} at character {exc.pos})") from None
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise InfalignError(f"{where}: the last message of ref_completions must hold a JSON list of strings, got "
                            f"{_short(completions)}")
    prompt = _prompt(messages[:-1], f"{where} (ref_completions)")
    pid = _prompt_id(row.get("prompt_id"), prompt, where)
    rewards = _rewards(row.get("ref_rewards"), "ref_rewards", f"{where} (prompt_id {pid})")
    if len(rewards) != len(completions):
        raise InfalignError(f"{where} (prompt_id {pid}): {len(completions)} completions in ref_completions but "
                            f"{len(rewards)} ref_rewards")
    return Imported(pid, prompt, completions, rewards)


def _read_verl(row: dict[str, Any], where: str) -> Imported:
    if row.get("tools"):
        raise InfalignError(f"{where}: prompts with tool definitions (tools) cannot be imported: the package's "
                            "prompts are chat messages without tools")
    prompt = _prompt(row.get("prompt_messages"), f"{where} (prompt_messages)")
    pid = _prompt_id(row.get("prompt_id"), None, where)
    where = f"{where} (prompt_id {pid})"
    trajectories = row.get("offline_trajectories")
    if not isinstance(trajectories, list):
        raise InfalignError(f"{where}: offline_trajectories must be a list of trajectories, got "
                            f"{_short(trajectories)}")
    completions = []
    for j, trajectory in enumerate(trajectories):
        if not (isinstance(trajectory, list) and len(trajectory) == 1 and isinstance(trajectory[0], dict)
                and trajectory[0].get("role") == "assistant" and isinstance(trajectory[0].get("content"), str)):
            raise InfalignError(f"{where}: offline trajectory {j} must be one assistant message with text content "
                                f"(a completion), got {_short(trajectory)}")
        completions.append(trajectory[0]["content"])
    rewards = _rewards(row.get("offline_rewards"), "offline_rewards", where)
    if len(rewards) != len(completions):
        raise InfalignError(f"{where}: {len(completions)} offline_trajectories but {len(rewards)} offline_rewards")
    reference = _rewards(row.get("ref_rewards"), "ref_rewards", where)
    if len(reference) != len(rewards) or not np.allclose(np.sort(reference), np.sort(rewards), **_SAME_REWARD):
        raise InfalignError(
            f"{where}: offline_rewards ({len(rewards)}) are not its ref_rewards ({len(reference)}) in another order: "
            "the imported completions are the offline trajectories, and calibration ranks each among the reference "
            "samples it comes with (docs/math.md §2, §9), so the trajectories must be exactly the reference "
            "samples the ref_rewards score")
    return Imported(pid, prompt, completions, rewards)


def _prompt(messages, where: str):
    if not isinstance(messages, list) or not messages:
        raise InfalignError(f"{where}: the prompt must be a non-empty list of chat messages, got {_short(messages)}")
    return normalize_prompt(messages, where)


def _prompt_id(given, prompt, where: str) -> str:
    if given is None and prompt is not None:
        return prompt_id(prompt)
    if not isinstance(given, (str, int)) or isinstance(given, bool) or not str(given).strip():
        raise InfalignError(f"{where}: prompt_id must be a non-empty string, got {_short(given)}")
    return str(given)


def _rewards(values, name: str, where: str) -> list[float]:
    if not isinstance(values, (list, tuple)):
        raise InfalignError(f"{where}: {name} must be a list of numbers, got {_short(values)}")
    out = []
    for j, v in enumerate(values):
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InfalignError(f"{where}: {name}[{j}] is {_short(v)}; rewards must be finite numbers")
        out.append(float(v))
    return out


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_messages(prompt) -> list[dict[str, str]]:
    """A prompt as QRPO's chat messages: a message list as it is, a plain text as one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def write(prompts: Iterable[Imported], layout: str) -> dict[str, list]:
    """The columns of `layout` for `prompts` (raw rewards; the ids and reference log-probs are not part of it)."""
    prompts = list(prompts)
    if layout == "original":
        return {"prompt_id": [p.prompt_id for p in prompts],
                "ref_completions": [as_messages(p.prompt) + [{"role": "assistant", "content": json.dumps(p.completions)}]
                                    for p in prompts],
                "ref_rewards": [list(p.rewards) for p in prompts]}
    if layout == "verl":
        return {"prompt_id": [p.prompt_id for p in prompts],
                "prompt_messages": [as_messages(p.prompt) for p in prompts],
                "ref_rewards": [list(p.rewards) for p in prompts],
                "offline_trajectories": [[[{"role": "assistant", "content": c}] for c in p.completions]
                                         for p in prompts],
                "offline_rewards": [list(p.rewards) for p in prompts]}
    raise InfalignError(f"QRPO layout {layout!r} is not known; known: {', '.join(LAYOUTS)}")
