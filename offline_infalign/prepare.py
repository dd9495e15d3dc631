"""Scored samples → calibrated rewards, targets Φ(u) and a training dataset (SPEC §2, §5, §6).

`prepare_dataset` is pure apart from building `datasets` objects: no files, so one scored artifact can be
turned into many datasets (transforms, tilts, β) in a notebook as well as by `infalign prepare`.

Kinds (columns as in CONTRACTS.md):
- pairs: (chosen, rejected) with chosen the completion of larger target, `target_margin` = Φ_chosen − Φ_rejected
  (not divided by β, ≥ 0), `soft_label` = σ(target_margin) (SPEC §6 p), `weight` = 1 (pairs are drawn
  uniformly, so every pair stands for the same share of the all-pairs loss; the column lets a trainer weight).
- listwise: one row per prompt with all K completions, rewards, calibrated_rewards, targets, ref_logps.
- bon: one row per completion, `weight` = softmax(target/β) over its prompt's K completions (sums to 1): the
  self-normalized importance weights of the tilted policy π* against π_ref (SPEC §6, weighted SFT).
The train/test split is by prompt_id hash alone, so a prompt is in the same split for every transform and β.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .core.calibration import calibrate
from .core.errors import InfalignError
from .core.transforms import Transform

__all__ = ["prepare_dataset", "is_test_prompt", "to_trl_conversational", "KINDS"]

KINDS = ("pairs", "listwise", "bon")


def is_test_prompt(prompt_id: str, test_fraction: float) -> bool:
    """Deterministic held-out membership: a uniform value from sha256(prompt_id) below test_fraction."""
    h = int.from_bytes(hashlib.sha256(f"split:{prompt_id}".encode()).digest()[:8], "little")
    return h / 2.0**64 < test_fraction


def _pair_rng(seed: int, prompt_id: str) -> np.random.Generator:
    # Per prompt, so the pairs of a prompt do not depend on which other prompts are in the artifact.
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"pairs:{seed}:{prompt_id}".encode()).digest()[:8],
                                                "little"))


def _matrix(scored, column: str, ids: list[str]) -> np.ndarray:
    values = list(scored[column])
    k = len(values[0]) if values else 0
    for pid, row in zip(ids, values):
        if len(row) != k:
            raise InfalignError(f"prompt_id {pid} has {len(row)} {column} but the first prompt has {k}; "
                                "every prompt needs the same num_samples K")
    return np.asarray(values, dtype=np.float64).reshape(len(values), k)


def _check_finite(rewards: np.ndarray, ids: list[str]) -> None:
    bad = np.argwhere(~np.isfinite(rewards))
    if len(bad):
        i, j = (int(v) for v in bad[0])
        raise InfalignError(f"non-finite reward {float(rewards[i, j])!r} for prompt_id {ids[i]} (completion {j}); "
                            "rewards must be finite: fix the reward model or drop that prompt")


def prepare_dataset(scored, kind: str, transform: Transform, beta: float, pairs_per_prompt: int | None = None,
                    seed: int = 0, test_fraction: float = 0.1):
    """Build a DatasetDict {train, test} of `kind` from a scored dataset (rows with K completions each).

    Args:
        scored: `datasets.Dataset` with prompt_id, prompt, completions (K), rewards (K), ref_logps (K).
        transform: Φ (core.transforms.Transform); targets = Φ(calibrated_rewards).
        beta: KL coefficient > 0 (used by kind=bon weights; recorded by the caller for the others).
        pairs_per_prompt: pairs only; M pairs drawn without replacement per prompt (all when M ≥ K(K−1)/2).
    """
    import datasets

    if kind not in KINDS:
        raise InfalignError(f"kind {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    if not beta > 0:
        raise InfalignError(f"beta must be > 0, got {beta!r}")
    missing = {"prompt_id", "prompt", "completions", "rewards", "ref_logps"} - set(scored.column_names)
    if missing:
        raise InfalignError(f"scored dataset lacks column(s) {sorted(missing)}; has {scored.column_names}")
    ids = list(scored["prompt_id"])
    if not ids:
        raise InfalignError("scored dataset has no prompts")
    rewards = _matrix(scored, "rewards", ids)  # (P, K)
    _check_finite(rewards, ids)
    k = rewards.shape[1]
    if k < 2:
        raise InfalignError(f"calibration needs num_samples K >= 2 completions per prompt, got K={k}")
    ref = _matrix(scored, "ref_logps", ids)  # (P, K)
    u = calibrate(rewards)  # (P, K) SPEC §2
    targets = np.asarray(transform(u), dtype=np.float64)  # (P, K) SPEC §5
    prompts, completions = list(scored["prompt"]), list(scored["completions"])
    test = np.array([is_test_prompt(pid, test_fraction) for pid in ids], dtype=bool)
    build = {"pairs": _pairs, "listwise": _listwise, "bon": _bon}[kind]
    columns, features, owner = build(ids, prompts, completions, rewards, u, targets, ref, beta, pairs_per_prompt,
                                     seed, scored.features["prompt"])
    owner = np.asarray(owner)  # prompt index of each row
    splits = {}
    for name, mask in (("train", ~test), ("test", test)):
        rows = np.flatnonzero(mask[owner]) if len(owner) else np.zeros(0, dtype=int)
        data = {c: [v[r] for r in rows] if isinstance(v, list) else v[rows].tolist() for c, v in columns.items()}
        splits[name] = datasets.Dataset.from_dict(data, features=features)
    return datasets.DatasetDict(splits)


def _features(prompt_feature, **cols):
    from datasets import Features, List, Value

    kinds = {"str": Value("string"), "float": Value("float64"), "strs": List(Value("string")),
             "floats": List(Value("float64"))}
    return Features({"prompt_id": Value("string"), "prompt": prompt_feature,
                     **{name: kinds[t] for name, t in cols.items()}})


def _pairs(ids, prompts, completions, rewards, u, targets, ref, beta, m, seed, prompt_feature):
    p, k = targets.shape
    ii, jj = np.triu_indices(k, 1)  # all K(K−1)/2 pairs i < j
    rows_i, rows_j, owner = [], [], []
    for a, pid in enumerate(ids):
        if m is not None and m < len(ii):
            pick = np.sort(_pair_rng(seed, pid).choice(len(ii), size=m, replace=False))
        else:
            pick = np.arange(len(ii))
        rows_i.append(ii[pick])
        rows_j.append(jj[pick])
        owner.append(np.full(len(pick), a))
    i, j, owner = np.concatenate(rows_i), np.concatenate(rows_j), np.concatenate(owner)
    ti, tj = targets[owner, i], targets[owner, j]
    first = ti >= tj  # chosen = the completion with the larger target
    c_idx, r_idx = np.where(first, i, j), np.where(first, j, i)
    margin = targets[owner, c_idx] - targets[owner, r_idx]  # ≥ 0
    columns: dict[str, Any] = {
        "prompt_id": [ids[o] for o in owner],
        "prompt": [prompts[o] for o in owner],
        "chosen": [completions[o][c] for o, c in zip(owner, c_idx)],
        "rejected": [completions[o][r] for o, r in zip(owner, r_idx)],
        "target_margin": margin,
        "soft_label": 1.0 / (1.0 + np.exp(-margin)),
        "weight": np.ones(len(owner)),
        "ref_chosen_logps": ref[owner, c_idx],
        "ref_rejected_logps": ref[owner, r_idx],
    }
    feats = _features(prompt_feature, chosen="str", rejected="str", target_margin="float", soft_label="float",
                      weight="float", ref_chosen_logps="float", ref_rejected_logps="float")
    return columns, feats, owner


def _listwise(ids, prompts, completions, rewards, u, targets, ref, beta, m, seed, prompt_feature):
    columns = {"prompt_id": list(ids), "prompt": list(prompts), "completions": list(completions),
               "rewards": rewards, "calibrated_rewards": u, "targets": targets, "ref_logps": ref}
    feats = _features(prompt_feature, completions="strs", rewards="floats", calibrated_rewards="floats",
                      targets="floats", ref_logps="floats")
    return columns, feats, np.arange(len(ids))


def _bon(ids, prompts, completions, rewards, u, targets, ref, beta, m, seed, prompt_feature):
    p, k = targets.shape
    z = targets / beta
    w = np.exp(z - z.max(axis=1, keepdims=True))  # softmax(Φ/β) per prompt, shifted for overflow safety
    w /= w.sum(axis=1, keepdims=True)
    owner = np.repeat(np.arange(p), k)
    col = np.tile(np.arange(k), p)
    columns = {"prompt_id": [ids[o] for o in owner], "prompt": [prompts[o] for o in owner],
               "completion": [completions[o][c] for o, c in zip(owner, col)],
               "reward": rewards.reshape(-1), "calibrated_reward": u.reshape(-1), "target": targets.reshape(-1),
               "ref_logp": ref.reshape(-1), "weight": w.reshape(-1)}
    feats = _features(prompt_feature, completion="str", reward="float", calibrated_reward="float",
                      target="float", ref_logp="float", weight="float")
    return columns, feats, owner


def to_trl_conversational(pairs):
    """Pairs whose prompt is a message list, with chosen/rejected as one assistant message each.

    TRL's DPOTrainer reads a conversational prompt only together with conversational completions, while this
    package stores completions as plain strings (one format for every consumer). Plain-text prompts are already
    in TRL's format and come back unchanged.
    """
    if not len(pairs) or isinstance(pairs[0]["prompt"], str):
        return pairs

    def wrap(row):
        return {k: [{"role": "assistant", "content": row[k]}] for k in ("chosen", "rejected")}

    return pairs.map(wrap)
