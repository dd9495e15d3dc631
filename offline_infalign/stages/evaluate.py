"""`eval` stage: measure trained adapters — inference-time win rates against their base model, the KL each cost,
and with several policies their paired differences against a baseline.

For each held-out prompt, M completions are drawn from each aligned policy (base + adapter) and M from the base,
at temperature 1, with the same stop set (the model's, and the ones the training samples used) and
max_new_tokens, and every completion is scored by the judge reward. The base samples are drawn once for all
policies and kept in the folder (stages/eval_cache.py): every policy is judged against the same base samples
on the same prompts, which is what makes the paired comparison of docs/math.md §10 valid, and a later eval into
the folder reuses them. `report.summarize` computes each policy's best-of-N / worst-of-N win rates and KL
(docs/math.md §8) next to what the tradeoff tool predicts for its transform, tilt and β (§4);
`report.compare` the paired differences. Settings the command line leaves out come from each adapter's
training record (training_record.py). Writes `report.json`, the samples and the plots.
"""

from __future__ import annotations

import dataclasses
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from data_builders import get_prompt_source

from ..artifacts.fingerprint import fingerprint_model, fingerprint_reward
from ..artifacts.storage import load_artifact, output_lock
from ..artifacts.training_record import EvalSettings, read_training_info, resolve_settings
from ..core.errors import InfalignError
from ..models.logprobs import ids_logps_and_kl
from ..models.modeling import default_device, free_memory, load_adapted, resolve_dtype, stop_token_ids
from ..models.preflight import check_model
from ..models.sampling import context_length, fit_prompts, sample_completions
from ..models.scoring import check_reward, load_scorer, score_in_chunks
from ..models.tokenization import encode_prompt
from . import eval_cache as cache
from .eval_report import union, write_reports

__all__ = ["evaluate", "load_eval_prompts"]


def load_eval_prompts(settings: EvalSettings, split: str, limit: int | None,
                      verify: bool | None = None) -> list[dict[str, Any]]:
    """[{prompt_id, prompt}] from a prompt source, or from the held-out split of the adapter's prepared dataset."""
    if settings.prompts is not None:
        # Hub datasets repeat some prompts (HH does); evaluate each once.
        rows = list(get_prompt_source(settings.prompts, split=split, limit=limit, on_duplicate="skip"))
    else:
        dataset, _ = load_artifact(settings.dataset, verify=verify)
        if not hasattr(dataset, "keys") or split not in dataset:
            raise InfalignError(f"prepared dataset {settings.dataset!r} has no split {split!r}; pass --prompts")
        part = dataset[split]
        rows, seen = [], set()
        # pairs/bon datasets hold several rows per prompt: keep each prompt once, in order.
        for pid, prompt in zip(part["prompt_id"], part["prompt"]):
            if pid not in seen:
                seen.add(pid)
                rows.append({"prompt_id": pid, "prompt": prompt})
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise InfalignError(f"no evaluation prompts from {settings.prompts or settings.dataset!r} (split {split!r})")
    return [{"prompt_id": str(r["prompt_id"]), "prompt": r["prompt"]} for r in rows]


# ------------------------------------------------------------------------------------------ the policies
@dataclasses.dataclass
class _Policy:
    name: str
    folder: str
    info: dict[str, Any]
    settings: EvalSettings
    draws: dict[str, Any] | None = None
    samples_note: str = ""  # whether its samples were drawn now or reused (eval_cache)
    rewards: np.ndarray | None = None


def _resolve(cfg) -> list[_Policy]:
    """Each policy's settings from the command line and its training record; they must share one base model and
    one judge (a comparison against one base, by one judge)."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    policies = []
    for name, folder in cfg.policies():
        view = types.SimpleNamespace(**{**values, "policy": folder})  # resolve_settings reads one policy
        info = read_training_info(folder)
        policies.append(_Policy(name, folder, info, resolve_settings(view, info)))
    first = policies[0]
    for p in policies[1:]:
        for what, key in (("judge", "reward_model"), ("judge label", "reward_label")):
            if getattr(p.settings, key) != getattr(first.settings, key):
                raise InfalignError(f"policies {first.name!r} and {p.name!r} name different {what}s "
                                    f"({getattr(first.settings, key)!r}, {getattr(p.settings, key)!r}); pass --reward-model (and "
                                    "--reward-label) to judge every policy with one")
        if p.settings.model != first.settings.model and (
                fingerprint_model(p.settings.model) != fingerprint_model(first.settings.model)):
            raise InfalignError(f"policies {first.name!r} and {p.name!r} were trained on different base models "
                                f"({first.settings.model!r}, {p.settings.model!r}); a comparison needs one "
                                "base model (pass --model to name it)")
    return policies


def _prompts(cfg, policies: list[_Policy]) -> list[dict[str, Any]]:
    """The evaluation prompts: --prompts, else the held-out split of the policies' prepared datasets, which must
    hold out the same prompts (every policy is judged on the same prompts)."""
    first = policies[0]
    rows = load_eval_prompts(first.settings, cfg.split, cfg.limit, cfg.verify)
    if cfg.prompts is None:
        for p in policies[1:]:
            if p.settings.dataset == first.settings.dataset:
                continue
            other = load_eval_prompts(p.settings, cfg.split, cfg.limit, cfg.verify)
            if [r["prompt_id"] for r in other] != [r["prompt_id"] for r in rows]:
                raise InfalignError(f"policies {first.name!r} and {p.name!r} hold out different prompts (the "
                                    f"{cfg.split!r} splits of {first.settings.dataset!r} and "
                                    f"{p.settings.dataset!r}); pass --prompts to judge them on one set")
    return rows


# ------------------------------------------------------------------------------------------ the draws
def _gen(cfg, stop_ids: list[int]) -> dict[str, Any]:
    return dict(num_samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                batch_size=cfg.batch_size, stop_token_ids=stop_ids)


def _draw_base(model, tokenizer, rows: list[dict], cfg, stop_ids: list[int]) -> list[dict[str, Any]]:
    """M base samples per prompt: the policy model with its adapter off, seed + 1."""
    # Another seed than the policies': with the same random stream a policy close to the base would produce the
    # same completions, coupling the two sides that the estimator treats as independent.
    with model.disable_adapter():
        return sample_completions(model, tokenizer, [r["prompt"] for r in rows], [r["prompt_id"] for r in rows],
                                  seed=cfg.seed + 1, **_gen(cfg, stop_ids))


def _draw_policy(model, tokenizer, rows: list[dict], cfg, stop_ids: list[int]) -> dict[str, Any]:
    """M policy samples per prompt, log π − log π_ref of each, and its token-level KL (docs/math.md §8, §9).

    The log-probs are of the ids exactly as sampled (stop token included iff it ended the completion; a cut
    completion has no stop term), never of re-encoded text. log π and log π_ref are both teacher-forced on those
    ids, by the same code in the same batches with the adapter on and off: their rounding is then the same, and a
    KL of a few tenths of a nat is not measured as the difference of two differently computed sums of hundreds
    of terms. The token-level KL of a sample sums the exact KL of the two next-token distributions over its
    positions (logprobs.ids_logps_and_kl). Every policy uses the same seed (common random numbers: the policies'
    samples are coupled, which the paired comparison allows — prompts are its independent units). Returns
    prompt_ids (P lists), policy_samples (P dicts from sample_completions), and policy_logps, ref_logps,
    log_ratios and token_kls, each (P, M).
    """
    prompts = [r["prompt"] for r in rows]
    policy_samples = sample_completions(model, tokenizer, prompts, [r["prompt_id"] for r in rows], seed=cfg.seed,
                                        **_gen(cfg, stop_ids))
    # The prompt exactly as the sampler encoded it (its record, else the same encoding).
    prompt_ids = [list(s.get("prompt_ids") or encode_prompt(tokenizer, p)) for s, p in zip(policy_samples, prompts)]
    flat_prompts = [p for p in prompt_ids for _ in range(cfg.samples)]
    ids = [list(c) for s in policy_samples for c in s["completion_ids"]]
    policy_logps, ref_logps, token_kls = ids_logps_and_kl(model, flat_prompts, ids, tokenizer.pad_token_id,
                                                          cfg.batch_size, "log pi, log pi_ref, KL")
    shape = (len(rows), cfg.samples)
    policy_logps = policy_logps.astype(np.float64).reshape(shape)  # float32 sums
    ref_logps = ref_logps.astype(np.float64).reshape(shape)
    return {"prompt_ids": prompt_ids, "policy_samples": policy_samples, "policy_logps": policy_logps,
            "ref_logps": ref_logps, "log_ratios": policy_logps - ref_logps, "token_kls": token_kls.reshape(shape)}


def _judge(scorer, rows: list[dict], samples: list[dict[str, Any]], cfg, side: str) -> np.ndarray:
    """Judge rewards (P, M) of one side's samples; the judge reads the decoded text."""
    flat_prompts = [r["prompt"] for r in rows for _ in range(cfg.samples)]
    completions = [c for s in samples for c in s["completions"]]
    rewards = score_in_chunks(scorer, flat_prompts, completions, 8 * cfg.score_batch_size, f"judge ({side})")
    return rewards.reshape(len(rows), -1)


# ------------------------------------------------------------------------------------------ the stage
def evaluate(cfg) -> dict[str, Any]:
    """Run the evaluation of `cfg` (config.EvalConfig); write `out/report.json`, the samples and the plots.

    One policy: the report of `report.summarize` plus the run's facts. Several: {"policies": {name: that
    report}, "baseline", "comparisons": report.compare(...), ...}. The folder is locked for the run
    (storage.output_lock): a second run into it is refused at once.
    """
    with output_lock(cfg.out):
        return _evaluate(cfg)


def _evaluate(cfg) -> dict[str, Any]:
    t0 = time.perf_counter()
    policies = _resolve(cfg)
    first = policies[0].settings
    # A bad base model or judge is one line now, not after minutes of sampling (the tokenizer is the adapter's).
    check_model(first.model, "base model", cfg.trust_remote_code, tokenizer=False)
    check_reward(first.reward_model, cfg.trust_remote_code)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    kept = Path(cfg.samples_cache) if cfg.samples_cache else out  # where the drawn samples are kept
    kept.mkdir(parents=True, exist_ok=True)
    rows = _prompts(cfg, policies)
    timings: dict[str, float] = {}

    device = default_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)

    def load(p: _Policy):
        model, tokenizer = load_adapted(first.model, p.folder, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                        allow_pickle_weights=cfg.allow_pickle_weights)
        return model.to(device).eval(), tokenizer

    t = time.perf_counter()
    # The first policy's model fits the prompts to the context, gives the stop set and draws the base side.
    model, tokenizer = load(policies[0])
    context = context_length(model)
    if context is not None:
        rows, _, skipped = fit_prompts(tokenizer, rows, context - cfg.max_new_tokens, cfg.on_long_prompt)
        if not rows:
            raise InfalignError(f"all {skipped} evaluation prompts are longer than the context allows; "
                                "use --on-long-prompt truncate or lower --max-new-tokens")
    stop_ids = stop_token_ids(model, tokenizer, extra=union(q.settings.stop_token_ids for q in policies))
    key = cache.cache_key(fingerprint_model(first.model), rows, cfg.samples, cfg.max_new_tokens, stop_ids,
                          str(dtype).removeprefix("torch."), cfg.seed)
    base, base_note = cache.load_base(kept, key)
    if base is None:
        base = _draw_base(model, tokenizer, rows, cfg, stop_ids)
        cache.save_base(kept, key, rows, base)
    for p in policies:
        fingerprint = cache.policy_fingerprint(p.folder)
        p.draws, p.samples_note = cache.load_policy(kept, key, fingerprint)
        if p.draws is None:
            if model is None:  # the first policy's model is loaded already (above)
                model, tokenizer = load(p)
            p.draws = _draw_policy(model, tokenizer, rows, cfg, stop_ids)
            cache.save_policy(kept, key, fingerprint, rows, p.draws)
        if p.draws["prompt_ids"] != [list(s["prompt_ids"]) for s in base]:
            raise InfalignError(f"policy {p.name!r} encodes the prompts differently from the base samples (another "
                                "tokenizer or chat template); evaluate it in another folder")
        model = None
        free_memory()  # the next policy, or the judge, may need the memory
    timings["sample_and_kl_s"] = time.perf_counter() - t

    t = time.perf_counter()
    scorer = load_scorer(first.reward_model, device=device, dtype=cfg.dtype, batch_size=cfg.score_batch_size,
                         trust_remote_code=cfg.trust_remote_code, reward_label=first.reward_label,
                         allow_pickle_weights=cfg.allow_pickle_weights)
    judge = cache.judge_key(fingerprint_reward(first.reward_model), first.reward_label)
    cached = cache.cached_rewards(kept, judge)
    if cached is not None and np.asarray(cached).shape == (len(rows), cfg.samples):
        base_rewards = np.asarray(cached, dtype=np.float64)
    else:
        base_rewards = _judge(scorer, rows, base, cfg, "base")
        cache.save_rewards(kept, judge, base_rewards.tolist())
    for p in policies:
        p.rewards = _judge(scorer, rows, p.draws["policy_samples"], cfg, f"policy {p.name}" if len(policies) > 1
                           else "policy")
    del scorer
    free_memory()
    timings["score_s"] = time.perf_counter() - t

    return write_reports(cfg, out, policies, rows, base, base_rewards, {"folder": str(kept), "note": base_note},
                         stop_ids, timings, t0)
