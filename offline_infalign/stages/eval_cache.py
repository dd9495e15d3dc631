"""The samples an evaluation draws, kept in a folder and reused (docs/math.md §8, §10).

Every policy of an evaluation is judged against the same M base samples per prompt, drawn once. They are kept
with what decides them — the base model (by fingerprint, fingerprint.py), the prompts (ids and text, after fitting
to the context), M, max_new_tokens, the stop set, the dtype and the seed — and a later evaluation that uses the
folder reuses them when all of these match; anything else redraws them and says which setting changed. The
judge's rewards of the base samples are kept beside them, one entry per judge (its fingerprint and label), so
another judge rescores the same samples instead of redrawing them.

Each policy's samples (with their log-probs and token-level KL) are kept the same way, under the same key plus
the policy's own content (the adapter's files hashed whole; a fully fine-tuned model folder by its fingerprint):
evaluating a policy again — with another judge, other N, beside another policy — does not sample it again.

Files: `base_samples.jsonl` and `policy_samples/<id>.jsonl` (one line per prompt), each with an index `.json`
({"key", "sha256" of the .jsonl, and for the base "rewards": {judge: (P, M)}}) written last, so an index vouches
for a complete file; a file that does not match its index is redrawn.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts.fingerprint import fingerprint_model

__all__ = ["cache_key", "load_base", "save_base", "load_policy", "save_policy", "policy_fingerprint",
           "cached_rewards", "save_rewards", "judge_key", "BASE_FILE"]

BASE_FILE = "base_samples.jsonl"
_POLICY_DIR = "policy_samples"
_SAMPLE_FIELDS = ("prompt_ids", "completions", "completion_ids", "finish_reasons")
_DRAW_FIELDS = ("policy_logps", "ref_logps", "token_kls")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(model_fingerprint: str, rows: list[dict[str, Any]], samples: int, max_new_tokens: int,
              stop_token_ids: list[int], dtype: str, seed: int) -> dict[str, Any]:
    """What decides the draws; equal keys mean the kept samples are draws of the same thing. `seed` is the
    evaluation's (policies draw with it, the base side with seed + 1)."""
    prompts = hashlib.sha256(json.dumps([[r["prompt_id"], r["prompt"]] for r in rows]).encode()).hexdigest()
    return {"model_fingerprint": model_fingerprint, "prompts": prompts, "num_prompts": len(rows),
            "samples": int(samples), "max_new_tokens": int(max_new_tokens),
            "stop_token_ids": sorted(int(i) for i in stop_token_ids), "dtype": str(dtype), "seed": int(seed)}


def policy_fingerprint(folder) -> str:
    """A PEFT adapter's config and weights hashed whole (they are small); another model folder's fingerprint."""
    folder = Path(folder)
    files = [folder / "adapter_config.json", folder / "adapter_model.safetensors"]
    if all(f.is_file() for f in files):
        return "adapter:" + hashlib.sha256("".join(_sha256(f) for f in files).encode()).hexdigest()[:32]

    return fingerprint_model(folder)


# ---- one kept file and its index ------------------------------------------------------------------------------
def _index(path: Path) -> dict[str, Any] | None:
    try:
        index = json.loads(path.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return index if isinstance(index, dict) and isinstance(index.get("key"), dict) else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load(path: Path, key: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str]:
    """(the kept lines, "reused") when `path` was written under `key`, else (None, why they are (re)drawn)."""
    index = _index(path)
    if index is None:
        return None, "drawn (none kept)"
    if key["model_fingerprint"].endswith("?"):  # a hub id that cannot be resolved now: not checkable
        return None, "redrawn: the base model's fingerprint cannot be checked (hub not reachable)"
    old = index["key"]
    changed = [k for k, v in key.items() if old.get(k) != v]
    if changed:
        opaque = ("prompts", "model_fingerprint", "policy")  # hashes: say that they changed, not the hex
        return None, "redrawn: " + "; ".join(f"{k} changed" if k in opaque else f"{k}: {old.get(k)!r} -> {key[k]!r}"
                                             for k in changed)
    if not path.is_file() or _sha256(path) != index.get("sha256"):
        return None, f"redrawn: {path.name} is missing or changed since it was written"
    with open(path) as fh:
        lines = [json.loads(line) for line in fh]
    if len(lines) != key["num_prompts"]:
        return None, f"redrawn: {path.name} has {len(lines)} prompts, not {key['num_prompts']}"
    return lines, "reused"


def _save(path: Path, key: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)  # the old index must not vouch for the new file
    _write_atomic(path, "".join(json.dumps(line) + "\n" for line in lines))
    _write_atomic(path.with_suffix(".json"), json.dumps({"key": key, "sha256": _sha256(path), "rewards": {}}) + "\n")


def _sample_line(row: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_id": row["prompt_id"], "prompt": row["prompt"],
            **{f: [list(c) for c in sample[f]] if f == "completion_ids" else list(sample[f]) for f in _SAMPLE_FIELDS}}


# ---- the base side --------------------------------------------------------------------------------------------
def load_base(folder: Path, key: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str]:
    """(P sample dicts as the sampler returns them, "reused"), or (None, why they are (re)drawn)."""
    lines, note = _load(Path(folder) / BASE_FILE, key)
    return (None if lines is None else [{f: line[f] for f in _SAMPLE_FIELDS} for line in lines]), note


def save_base(folder: Path, key: dict[str, Any], rows: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
    """Keep the base samples under `key`; rewards of an earlier draw are dropped with its index."""
    _save(Path(folder) / BASE_FILE, key, [_sample_line(r, s) for r, s in zip(rows, samples)])


def judge_key(fingerprint: str, reward_label: str | None) -> str:
    return fingerprint if reward_label is None else f"{fingerprint}#label={reward_label}"


def cached_rewards(folder: Path, judge: str) -> list[list[float]] | None:
    """The judge's rewards of the kept base samples, (P, M) lists, or None when this judge has not scored them."""
    if judge.endswith("?"):  # a judge whose fingerprint cannot be checked is never trusted from the cache
        return None
    index = _index(Path(folder) / BASE_FILE)
    return None if index is None else index.get("rewards", {}).get(judge)


def save_rewards(folder: Path, judge: str, rewards: list[list[float]]) -> None:
    path = Path(folder) / BASE_FILE
    index = _index(path)
    if index is None:
        return
    index.setdefault("rewards", {})[judge] = rewards
    _write_atomic(path.with_suffix(".json"), json.dumps(index) + "\n")


# ---- a policy -------------------------------------------------------------------------------------------------
def _policy_path(folder: Path, fingerprint: str) -> Path:
    return Path(folder) / _POLICY_DIR / f"{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}.jsonl"


def load_policy(folder: Path, key: dict[str, Any], fingerprint: str) -> tuple[dict[str, Any] | None, str]:
    """A policy's kept draws (the dict stages/evaluate.py `_draw_policy` returns), or (None, why not)."""
    lines, note = _load(_policy_path(folder, fingerprint), {**key, "policy": fingerprint})
    if lines is None:
        return None, note
    arrays = {f: np.asarray([line[f] for line in lines], dtype=np.float64) for f in _DRAW_FIELDS}
    return {"prompt_ids": [line["prompt_ids"] for line in lines],
            "policy_samples": [{f: line[f] for f in _SAMPLE_FIELDS} for line in lines],
            **arrays, "log_ratios": arrays["policy_logps"] - arrays["ref_logps"]}, note


def save_policy(folder: Path, key: dict[str, Any], fingerprint: str, rows: list[dict[str, Any]],
                draws: dict[str, Any]) -> None:
    lines = [{**_sample_line(r, s), **{f: draws[f][i].tolist() for f in _DRAW_FIELDS}}
             for i, (r, s) in enumerate(zip(rows, draws["policy_samples"]))]
    _save(_policy_path(folder, fingerprint), {**key, "policy": fingerprint}, lines)
