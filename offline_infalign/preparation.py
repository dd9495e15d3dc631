"""Scored samples → calibrated rewards, targets Φ(u) and a training dataset (docs/math.md §2, §5, §6).

`prepare_dataset` is pure apart from building `datasets` objects: no files, so one scored artifact can be
turned into many datasets (transforms, tilts, β) in a notebook as well as by `infalign prepare`
(stages/prepare.py, which writes the artifact). The part that is the same for every kind lives here: the
(P, K) matrices, calibration, targets, the train/test split; the rows of each kind come from `kinds/`.
The train/test split is by prompt_id hash alone, so a prompt is in the same split for every transform and β.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .core.calibration import calibrate
from .core.checks import check_finite
from .core.errors import InfalignError
from .core.transforms import Transform
from .kinds import ScoredMatrices, get_kind

__all__ = ["prepare_dataset", "is_test_prompt"]


def is_test_prompt(prompt_id: str, test_fraction: float) -> bool:
    """Deterministic held-out membership: a uniform value from sha256(prompt_id) below test_fraction."""
    h = int.from_bytes(hashlib.sha256(f"split:{prompt_id}".encode()).digest()[:8], "little")
    return h / 2.0**64 < test_fraction


def _matrix(scored, column: str, ids: list[str]) -> np.ndarray:
    values = list(scored[column])
    k = len(values[0]) if values else 0
    for pid, row in zip(ids, values):
        if len(row) != k:
            raise InfalignError(f"prompt_id {pid} has {len(row)} {column} but the first prompt has {k}; "
                                "every prompt needs the same num_samples K")
    return np.asarray(values, dtype=np.float64).reshape(len(values), k)


def prepare_dataset(scored, kind: str, transform: Transform, beta: float, pairs_per_prompt: int | None = None,
                    seed: int = 0, test_fraction: float = 0.1):
    """Build a DatasetDict {train, test} of `kind` from a scored dataset (rows with K completions each).

    Args:
        scored: `datasets.Dataset` with prompt_id, prompt, completions (K), rewards (K), ref_logps (K).
        kind: a `kinds.KINDS` name (pairs, listwise, bon).
        transform: Φ (core.transforms.Transform); targets = Φ(calibrated_rewards).
        beta: KL coefficient > 0 (used by kind=bon weights; recorded by the caller for the others).
        pairs_per_prompt: pairs only; M pairs drawn without replacement per prompt (all when M ≥ K(K−1)/2).
    """
    import datasets

    dataset_kind = get_kind(kind)
    if not beta > 0:
        raise InfalignError(f"beta must be > 0, got {beta!r}")
    missing = {"prompt_id", "prompt", "completions", "rewards", "ref_logps"} - set(scored.column_names)
    if missing:
        raise InfalignError(f"scored dataset lacks column(s) {sorted(missing)}; has {scored.column_names}")
    ids = list(scored["prompt_id"])
    if not ids:
        raise InfalignError("scored dataset has no prompts")
    rewards = _matrix(scored, "rewards", ids)  # (P, K)
    check_finite(rewards, "reward", ids=ids, hint="rewards must be finite: fix the reward model or drop that prompt")
    k = rewards.shape[1]
    if k < 2:
        raise InfalignError(f"calibration needs num_samples K >= 2 completions per prompt, got K={k}")
    ref = _matrix(scored, "ref_logps", ids)  # (P, K)
    u = calibrate(rewards)  # (P, K) docs/math.md §2
    matrices = ScoredMatrices(
        ids=ids, prompts=list(scored["prompt"]), completions=list(scored["completions"]), rewards=rewards,
        calibrated=u, targets=np.asarray(transform(u), dtype=np.float64),  # (P, K) docs/math.md §5
        ref_logps=ref, beta=beta, pairs_per_prompt=pairs_per_prompt, seed=seed)
    own, types, owner = dataset_kind.build_rows(matrices)
    owner = np.asarray(owner)  # prompt index of each row
    columns = {"prompt_id": [ids[o] for o in owner], "prompt": [matrices.prompts[o] for o in owner], **own}
    features = _features(scored.features["prompt"], types)
    test = np.array([is_test_prompt(pid, test_fraction) for pid in ids], dtype=bool)
    splits = {}
    for name, mask in (("train", ~test), ("test", test)):
        rows = np.flatnonzero(mask[owner]) if len(owner) else np.zeros(0, dtype=int)
        data = {c: [v[r] for r in rows] if isinstance(v, list) else v[rows].tolist() for c, v in columns.items()}
        splits[name] = datasets.Dataset.from_dict(data, features=features)
    return datasets.DatasetDict(splits)


def _features(prompt_feature, types: dict[str, str]):
    """`datasets.Features` for prompt_id, prompt (as in the scored artifact) and a kind's typed columns."""
    from datasets import Features, List, Value

    by_type = {"str": Value("string"), "float": Value("float64"), "strs": List(Value("string")),
               "floats": List(Value("float64"))}
    return Features({"prompt_id": Value("string"), "prompt": prompt_feature,
                     **{name: by_type[t] for name, t in types.items()}})
