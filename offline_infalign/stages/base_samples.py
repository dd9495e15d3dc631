"""The base side of an evaluation, drawn once and kept in the eval folder (docs/math.md §8, §10).

Every policy of an evaluation is judged against the same M base samples per prompt, and a later evaluation into
the same folder reuses them when they are still draws of the same thing: the same base model (by fingerprint,
fingerprint.py), the same prompts (ids and text, after fitting to the context), the same M, max_new_tokens, stop
set, dtype and seed. Anything else redraws them and says which setting changed. The judge's rewards of the base
samples are kept beside them, one entry per judge (its fingerprint and label), so another judge rescores the
same samples instead of redrawing them.

Files: `base_samples.jsonl` (one line per prompt: prompt_id, prompt, prompt_ids, completions, completion_ids,
finish_reasons) and `base_samples.json` ({"key": ..., "sha256": of the .jsonl, "rewards": {judge: (P, M)}}),
the .json written last, so its presence means the .jsonl beside it is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["SAMPLES_FILE", "INDEX_FILE", "cache_key", "load", "save", "cached_rewards", "save_rewards",
           "judge_key"]

SAMPLES_FILE = "base_samples.jsonl"
INDEX_FILE = "base_samples.json"
_FIELDS = ("prompt_ids", "completions", "completion_ids", "finish_reasons")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(model_fingerprint: str, rows: list[dict[str, Any]], samples: int, max_new_tokens: int,
              stop_token_ids: list[int], dtype: str, seed: int) -> dict[str, Any]:
    """What decides the base draws; equal keys mean the cached samples are draws of the same thing. `seed` is the
    evaluation's (the base side draws with seed + 1)."""
    prompts = hashlib.sha256(json.dumps([[r["prompt_id"], r["prompt"]] for r in rows]).encode()).hexdigest()
    return {"model_fingerprint": model_fingerprint, "prompts": prompts, "num_prompts": len(rows),
            "samples": int(samples), "max_new_tokens": int(max_new_tokens),
            "stop_token_ids": sorted(int(i) for i in stop_token_ids), "dtype": str(dtype), "seed": int(seed)}


def _index(out: Path) -> dict[str, Any] | None:
    path = out / INDEX_FILE
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return index if isinstance(index, dict) and isinstance(index.get("key"), dict) else None


def load(out: Path, key: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str]:
    """(P sample dicts as the sampler returns them, "reused") when the folder holds base samples drawn under
    `key`; else (None, why they are (re)drawn)."""
    index = _index(out)
    if index is None:
        return None, "drawn (none in the folder)"
    if key["model_fingerprint"].endswith("?"):  # a hub id that cannot be resolved now: not checkable
        return None, "redrawn: the base model's fingerprint cannot be checked (hub not reachable)"
    old = index["key"]
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in key.items() if old.get(k) != v]
    if changed:
        shown = [c if not c.startswith(("prompts:", "model_fingerprint:")) else c.split(":")[0] + " changed"
                 for c in changed]
        return None, "redrawn: " + "; ".join(shown)
    path = out / SAMPLES_FILE
    if not path.is_file() or _sha256(path) != index.get("sha256"):
        return None, f"redrawn: {SAMPLES_FILE} is missing or changed since it was written"
    samples = []
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            samples.append({f: row[f] for f in _FIELDS})
    if len(samples) != key["num_prompts"]:
        return None, f"redrawn: {SAMPLES_FILE} has {len(samples)} prompts, not {key['num_prompts']}"
    return samples, "reused"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(out: Path, key: dict[str, Any], rows: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
    """Write the base samples and their key (the key last); rewards of an earlier draw are dropped."""
    (out / INDEX_FILE).unlink(missing_ok=True)  # the old index must not vouch for the new file while it is written
    lines = [json.dumps({"prompt_id": r["prompt_id"], "prompt": r["prompt"],
                         **{f: [list(c) for c in s[f]] if f == "completion_ids" else list(s[f]) for f in _FIELDS}})
             for r, s in zip(rows, samples)]
    _write_atomic(out / SAMPLES_FILE, "".join(line + "\n" for line in lines))
    _write_atomic(out / INDEX_FILE, json.dumps({"key": key, "sha256": _sha256(out / SAMPLES_FILE),
                                                "rewards": {}}) + "\n")


def judge_key(fingerprint: str, reward_label: str | None) -> str:
    return fingerprint if reward_label is None else f"{fingerprint}#label={reward_label}"


def cached_rewards(out: Path, judge: str) -> list[list[float]] | None:
    """The judge's rewards of the cached base samples, (P, M) lists, or None when this judge has not scored them."""
    if judge.endswith("?"):  # a judge whose fingerprint cannot be checked is never trusted from the cache
        return None
    index = _index(out)
    return None if index is None else index.get("rewards", {}).get(judge)


def save_rewards(out: Path, judge: str, rewards: list[list[float]]) -> None:
    index = _index(out)
    if index is None:
        return
    index.setdefault("rewards", {})[judge] = rewards
    _write_atomic(out / INDEX_FILE, json.dumps(index) + "\n")
