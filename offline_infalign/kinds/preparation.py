"""Scored samples → calibrated rewards, targets Φ(u) and a training dataset (docs/math.md §2, §5, §6).

`prepare` is pure apart from building `datasets` objects: no files, so one scored artifact can be
turned into many datasets (transforms, tilts, β) in a notebook as well as by `infalign prepare`
(stages/prepare.py, which writes the artifact). The part that is the same for every kind lives here: the
(P, K) matrices, calibration, targets, the train/test split; the rows of each kind come from `kinds/`.
The train/test split is by prompt_id hash alone, so a prompt is in the same split for every transform and β.
When the scored artifact has the sampler's token ids (`prompt_ids`, `completion_ids`), every row carries the
ids of its prompt and completions next to their text (docs/math.md §9: the ids are the record, the text is
decoded from them), and training uses those ids instead of encoding the text again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.calibration import calibrate
from ..core.checks import check_beta, check_finite, check_num_samples
from ..core.errors import InfalignError
from ..core.finite_k import finite_k_tilt
from ..core.procedures import get_procedure
from ..core.tradeoff import predict
from ..core.transforms import Transform
from . import ScoredMatrices, get_kind

__all__ = ["prepare", "kind_options", "Prepared", "is_test_prompt", "guidance", "Guidance"]


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


def _completion_ids(scored, ids: list[str], k: int) -> list[list[list[int]]] | None:
    """The sampled token ids (docs/math.md §9), K id lists per prompt, or None when the artifact has none."""
    if "completion_ids" not in scored.column_names:
        return None
    table = list(scored["completion_ids"])
    for pid, row in zip(ids, table):
        if len(row) != k:
            raise InfalignError(f"prompt_id {pid} has {len(row)} completion_ids lists but {k} rewards; the "
                                "scored artifact's columns must describe the same K completions")
    return table


@dataclass(frozen=True)
class Prepared:
    """The prepared DatasetDict {train, test}, the kind's counts of what it left out (e.g. tied pairs), and warnings
    about the data (prompts whose K rewards are all equal) for the manifest."""

    data: Any
    counts: dict[str, int]
    warnings: tuple[str, ...] = ()


# A warning is recorded when at least this share of the prompts has K equal rewards (and none of them carries a
# preference); all of them is refused.
TIED_PROMPTS_WARNING = 0.1


def _tied_prompts(rewards: np.ndarray, ids: list[str], kind: str) -> list[str]:
    """Refuse rewards equal within every prompt; warn when many prompts are so.

    A prompt whose K rewards are all equal has no preference in it, whatever the kind: pairs has no untied pair to
    make a row of (the prompt gives none), listwise and bon give it flat targets and equal weights (its rows ask the
    policy to stay at the base model there, which is what its data says). When it is every prompt, the reward
    carried no information at all (a constant function, a classifier saturated at one label): pairs would write
    zero rows, listwise and bon a dataset that trains nothing but a copy of the base model, so it is refused for
    every kind, naming the value."""
    flat = (rewards == rewards[:, :1]).all(axis=1)
    if flat.all():
        raise InfalignError(f"every one of the {len(ids)} prompts has all K={rewards.shape[1]} rewards equal (e.g. "
                            f"prompt_id {ids[0]}: {float(rewards[0, 0])!r}): the reward gives no preference between "
                            f"completions, so a {kind} dataset would carry none (a constant reward, or a classifier "
                            "saturated at one label?); check the reward model and --reward-label")
    share = float(flat.mean())
    if share < TIED_PROMPTS_WARNING:
        return []
    effect = ("they give no pairs" if kind == "pairs" else
              "their targets are flat, so their rows only pull the policy toward the base model")
    return [f"{int(flat.sum())} of {len(ids)} prompts ({share:.0%}) have all K={rewards.shape[1]} rewards equal: "
            f"{effect}; a reward that ties this often may be saturated or coarse"]


def kind_options(dataset_kind, options: dict[str, Any]) -> dict[str, Any]:
    """The kind's options: its defaults updated with `options`, checked by the kind; an option the kind does not
    have is refused."""
    foreign = sorted(set(options) - set(dataset_kind.options))
    if foreign:
        own = ", ".join(dataset_kind.options) or "none"
        raise InfalignError(f"{', '.join(foreign)} does not apply to kind {dataset_kind.name!r} (its options: {own})")
    merged = {**dataset_kind.options, **options}
    dataset_kind.check_options(merged)
    return merged


def prepare(scored, kind: str, transform: Transform, beta: float, test_fraction: float = 0.1,
            **options: Any) -> Prepared:
    """Build a DatasetDict {train, test} of `kind` from a scored dataset (rows with K completions each), with the
    counts of what was left out (tied pairs or prompts) and the warnings.

    Args:
        scored: `datasets.Dataset` with prompt_id, prompt, completions (K), rewards (K), ref_logps (K), and,
            from the sampler, prompt_ids and completion_ids (K id lists), which the rows then carry (pairs:
            chosen_ids / rejected_ids; listwise: completion_ids; bon: completion_ids) so that training computes
            log π on exactly the sampled tokens (docs/math.md §9).
        kind: a `kinds.KINDS` name (pairs, listwise, bon).
        transform: Φ (core.transforms.Transform); targets = Φ(calibrated_rewards).
        beta: KL coefficient > 0 (used by kind=bon weights; recorded by the caller for the others).
        options: the kind's own (`DatasetKind.options`), e.g. for pairs: `pairs`, 'all' (every untied pair) or
            'best_worst' (highest vs lowest raw reward per prompt); `pairs_per_prompt`, pairs='all' only: M untied
            pairs drawn without replacement per prompt (all when fewer); `seed` of that draw.
    """
    import datasets

    dataset_kind = get_kind(kind)
    beta = check_beta(beta, "prepare")
    options = kind_options(dataset_kind, options)
    missing = {"prompt_id", "prompt", "completions", "rewards", "ref_logps"} - set(scored.column_names)
    if missing:
        raise InfalignError(f"scored dataset lacks column(s) {sorted(missing)}; has {scored.column_names}")
    ids = list(scored["prompt_id"])
    if not ids:
        raise InfalignError("scored dataset has no prompts")
    rewards = _matrix(scored, "rewards", ids)  # (P, K)
    check_finite(rewards, "reward", ids=ids, hint="rewards must be finite: fix the reward model or drop that prompt")
    k = check_num_samples(rewards.shape[1], "prepare", what="completions per prompt of the scored dataset")
    warnings = _tied_prompts(rewards, ids, kind)
    test = np.array([is_test_prompt(pid, test_fraction) for pid in ids], dtype=bool)
    if test.all():
        raise InfalignError(f"test_fraction {test_fraction:g} puts all {len(ids)} prompts in the test split and "
                            "none in train (held-out prompts are chosen by prompt_id hash); lower --test-fraction")
    ref = _matrix(scored, "ref_logps", ids)  # (P, K)
    u = calibrate(rewards)  # (P, K) docs/math.md §2
    matrices = ScoredMatrices(
        ids=ids, prompts=list(scored["prompt"]), completions=list(scored["completions"]), rewards=rewards,
        calibrated=u, targets=np.asarray(transform(u), dtype=np.float64),  # (P, K) docs/math.md §5
        ref_logps=ref, beta=beta, completion_ids=_completion_ids(scored, ids, k), options=options)
    rows = dataset_kind.build_rows(matrices)
    owner = np.asarray(rows.owner, dtype=np.int64)  # prompt index of each row
    columns = {"prompt_id": [ids[o] for o in owner], "prompt": [matrices.prompts[o] for o in owner]}
    types = dict(rows.types)
    if "prompt_ids" in scored.column_names:  # the prompt exactly as the sampler encoded it
        prompt_ids = list(scored["prompt_ids"])
        columns["prompt_ids"] = [prompt_ids[o] for o in owner]
        types = {"prompt_ids": "ints", **types}
    columns.update(rows.columns)
    features = _features(scored.features["prompt"], types)
    if not (~test[owner]).any():  # pairs: every train prompt's rewards tied
        raise InfalignError(f"the train split would have no {kind} rows: its {int((~test).sum())} prompt(s) (of "
                            f"{len(ids)}; {int(test.sum())} held out for test) have all their rewards equal, so no "
                            "pair has a winner")
    splits = {}
    for name, mask in (("train", ~test), ("test", test)):
        keep = np.flatnonzero(mask[owner]) if len(owner) else np.zeros(0, dtype=int)
        data = {c: [v[r] for r in keep] if isinstance(v, list) else v[keep].tolist() for c, v in columns.items()}
        splits[name] = datasets.Dataset.from_dict(data, features=features)
    return Prepared(datasets.DatasetDict(splits), dict(rows.counts), tuple(warnings))


def _features(prompt_feature, types: dict[str, str]):
    """`datasets.Features` for prompt_id, prompt (as in the scored artifact) and the typed columns."""
    from datasets import Features, List, Value

    by_type = {"str": Value("string"), "float": Value("float64"), "strs": List(Value("string")),
               "floats": List(Value("float64")), "ints": List(Value("int32")), "intss": List(List(Value("int32")))}
    return Features({"prompt_id": Value("string"), "prompt": prompt_feature,
                     **{name: by_type[t] for name, t in types.items()}})


# ---- guidance: what this K buys at this β (docs/math.md §7, core/finite_k.py) ---------------------------------

# β floor. The losses ask the policy's log-ratio h to follow Φ/β (docs/math.md §6), so over a prompt's K samples
# they ask for log-ratio gaps up to the spread S = (Φ(c_K) − Φ(c_1))/β of the targets at the K calibrated ranks
# c_i = (i − ½)/K. The exp tilts the tradeoff tool picks for best-/worst-of-N (N ≤ 16, KL ≤ 1, K ≤ 256) span
# S ≈ 0.1–13 nats; a β at the search floor spans thousands (worst-of-4 at KL 1: β ≈ 2.4e-5, S ≈ 15 000 at K = 8).
# Past ~30 nats the targets have exploded: the lowest sample's weight softmax(Φ/β) is below e^-30 ≈ 1e-13 of the
# top one's, under float32's resolution of a sum (≈ e^-16), so weighted SFT and listwise see fewer than K
# samples, and the squared losses start from residuals of S nats (S² ≈ 2e8 in the example), which no fit of K
# samples per prompt follows. 30 sits between the two regimes with a margin on both sides.
TARGET_SPREAD_MAX_NATS = 30.0
# The finite-K ceiling is "far below" the prediction when more than this below (3 win-rate points).
CEILING_GAP = 0.03
LARGER_K = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Guidance:
    """What prepare prints and records about (transform, β) served with (procedure, n) from K samples.

    predicted_*: the exact tilt's KL and win rate (core.tradeoff.predict); ceiling_*: the finite-K ceiling
    (core.finite_k.finite_k_tilt) at this K; target_spread: (Φ(c_K) − Φ(c_1))/β in nats; beta_floor: the β at
    which that spread is TARGET_SPREAD_MAX_NATS; k_needed: None when the ceiling is within CEILING_GAP of the
    prediction, else the first K of LARGER_K (above this K) whose ceiling is, or "more than 256".
    """

    beta: float
    num_samples: int
    procedure: str
    n: int
    predicted_kl: float
    predicted_win_rate: float
    ceiling_win_rate: float
    ceiling_stderr: float
    target_spread: float
    beta_floor: float
    k_needed: int | str | None
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "warnings": list(self.warnings)}


def guidance(transform: Transform, beta: float, k: int, procedure: str, n: int) -> Guidance:
    """Predicted win rate at β, the finite-K ceiling at K, and warnings when β is below the floor for this K or
    the ceiling is more than CEILING_GAP below the prediction (see the constants above)."""
    pred = predict(transform, beta, procedure, n)
    ceiling = finite_k_tilt(transform, beta, k, procedure, n)
    ranks = (np.arange(1, k + 1) - 0.5) / k
    phi = np.asarray(transform(ranks), dtype=np.float64)
    spread_phi = float(phi.max() - phi.min())
    spread = spread_phi / beta
    floor = spread_phi / TARGET_SPREAD_MAX_NATS
    served = get_procedure(procedure).label.replace("N", str(n))
    warnings = []
    if spread > TARGET_SPREAD_MAX_NATS:
        warnings.append(
            f"beta={beta:.3g} is below the floor {floor:.3g} for K={k}: the targets Phi/beta of the K calibrated "
            f"ranks span {spread:.4g} nats (more than {TARGET_SPREAD_MAX_NATS:g}), so all but the top-weighted "
            "samples get weight ~0 and the losses ask for log-ratio gaps no fit of K samples follows; use a "
            "smaller KL budget or a larger beta (docs/math.md §7)")
    k_needed: int | str | None = None
    if pred.win_rate - ceiling.win_rate > CEILING_GAP:
        k_needed = next((kk for kk in LARGER_K if kk > k and pred.win_rate
                         - finite_k_tilt(transform, beta, kk, procedure, n).win_rate <= CEILING_GAP),
                        f"more than {LARGER_K[-1]}")
        more = f"K = {k_needed}" if isinstance(k_needed, int) else k_needed
        warnings.append(
            f"with K={k} samples per prompt the finite-K ceiling of this tilt is a {served} win rate of "
            f"{ceiling.win_rate:.3f}, {pred.win_rate - ceiling.win_rate:.3f} below the predicted "
            f"{pred.win_rate:.3f}: a learner that fits the samples gets at most that; {more} samples per prompt "
            f"would come within {CEILING_GAP:g} (core/finite_k.py, docs/math.md §7)")
    return Guidance(float(beta), int(k), procedure, int(n), float(pred.kl), float(pred.win_rate),
                    float(ceiling.win_rate), float(ceiling.stderr), spread, float(floor), k_needed, tuple(warnings))
