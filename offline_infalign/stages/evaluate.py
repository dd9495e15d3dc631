"""`eval` stage: measure a trained adapter — inference-time win rates against its base model, and the KL it cost.

For each held-out prompt, M completions are drawn from the aligned policy (base + adapter) and M from the base,
at temperature 1, with the same stop set (the model's, and the one its training samples used) and
max_new_tokens, and every completion is scored by the judge reward. From these two empirical distributions
`report.summarize` computes the best-of-N / worst-of-N win rates and the KL (docs/math.md §8), next to what the tradeoff
tool predicts for the adapter's transform, tilt and β (docs/math.md §4). Settings the command line leaves out come from
the adapter's training record (training_record.py). Writes `report.json`, `samples.jsonl` and the plots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InfalignError

__all__ = ["evaluate", "load_eval_prompts"]


def load_eval_prompts(settings: dict[str, Any], split: str, limit: int | None,
                      verify: bool | None = None) -> list[dict[str, Any]]:
    """[{prompt_id, prompt}] from a prompt source, or from the held-out split of the adapter's prepared dataset."""
    if settings["prompts"] is not None:
        from data_builders import get_prompt_source

        # Hub datasets repeat some prompts (HH does); evaluate each once.
        rows = list(get_prompt_source(settings["prompts"], split=split, limit=limit, on_duplicate="skip"))
    else:
        from ..storage import load_artifact

        dataset, _ = load_artifact(settings["dataset"], verify=verify)
        if not hasattr(dataset, "keys") or split not in dataset:
            raise InfalignError(f"prepared dataset {settings['dataset']!r} has no split {split!r}; pass --prompts")
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
        raise InfalignError(f"no evaluation prompts from {settings['prompts'] or settings['dataset']!r} (split {split!r})")
    return [{"prompt_id": str(r["prompt_id"]), "prompt": r["prompt"]} for r in rows]


def _draw(model, tokenizer, rows: list[dict], cfg, stop_ids: list[int]) -> dict[str, Any]:
    """M policy and M base samples per prompt, and log π − log π_ref of the policy samples (docs/math.md §8, §9).

    Both sides stop on the same stop set and max_new_tokens. The log-probs are of the ids exactly as sampled
    (stop token included iff it ended the completion; a cut completion has no stop term), never of re-encoded
    text. log π and log π_ref are both teacher-forced on those ids, by the same code in the same batches with
    the adapter on and off: their rounding is then the same, and a KL of a few tenths of a nat is not measured
    as the difference of two differently computed sums of hundreds of terms.
    Returns prompt_ids (P lists), policy_samples / base_samples (P dicts from sample_completions), and for the
    policy samples policy_logps, ref_logps and log_ratios, each (P, M).
    """
    from ..logprobs import ids_logps
    from ..sampling import sample_completions
    from ..tokenization import encode_prompt

    prompts = [r["prompt"] for r in rows]
    ids_of_prompts = [r["prompt_id"] for r in rows]
    gen = dict(num_samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
               batch_size=cfg.batch_size, stop_token_ids=stop_ids)
    policy_samples = sample_completions(model, tokenizer, prompts, ids_of_prompts, seed=cfg.seed, **gen)
    # The base draws use another seed: with the same random stream a policy close to the base would produce
    # the same completions, coupling the two sides that the estimator treats as independent.
    with model.disable_adapter():
        base_samples = sample_completions(model, tokenizer, prompts, ids_of_prompts, seed=cfg.seed + 1, **gen)

    # The prompt exactly as the sampler encoded it (its record, else the same encoding).
    prompt_ids = [list(s.get("prompt_ids") or encode_prompt(tokenizer, p)) for s, p in zip(policy_samples, prompts)]
    flat_prompts = [p for p in prompt_ids for _ in range(cfg.samples)]
    ids = [list(c) for s in policy_samples for c in s["completion_ids"]]
    policy_logps = ids_logps(model, flat_prompts, ids, tokenizer.pad_token_id, cfg.batch_size, "log pi (policy)")
    with model.disable_adapter():
        ref_logps = ids_logps(model, flat_prompts, ids, tokenizer.pad_token_id, cfg.batch_size, "log pi_ref")
    shape = (len(rows), cfg.samples)
    policy_logps = policy_logps.astype(np.float64).reshape(shape)  # float32 sums
    ref_logps = ref_logps.astype(np.float64).reshape(shape)
    return {"prompt_ids": prompt_ids, "policy_samples": policy_samples, "base_samples": base_samples,
            "policy_logps": policy_logps, "ref_logps": ref_logps, "log_ratios": policy_logps - ref_logps}


def _judge(settings: dict[str, Any], rows: list[dict], draws: dict[str, Any], device: str,
           cfg) -> tuple[np.ndarray, np.ndarray]:
    """Judge rewards of the policy and base samples, each (P, M); the judge reads the decoded text."""
    from ..scoring import load_scorer, score_in_chunks

    # settings["reward_model"] names code only when the user gave it (training_record.resolve_settings).
    scorer = load_scorer(settings["reward_model"], device=device, dtype=cfg.dtype, batch_size=cfg.score_batch_size,
                         trust_remote_code=cfg.trust_remote_code, reward_label=settings["reward_label"],
                         allow_pickle_weights=cfg.allow_pickle_weights)
    flat_prompts = [r["prompt"] for r in rows for _ in range(cfg.samples)]
    chunk = 8 * cfg.score_batch_size
    out = []
    for side in ("policy", "base"):
        completions = [c for s in draws[f"{side}_samples"] for c in s["completions"]]
        rewards = score_in_chunks(scorer, flat_prompts, completions, chunk, f"judge ({side})")
        out.append(rewards.reshape(len(rows), -1))
    return out[0], out[1]


def _write_samples(path: Path, rows, draws, policy_rewards, base_rewards) -> None:
    """One line per prompt: both sides' text, ids and finish reasons, the judge's rewards, the log-ratios."""
    with open(path, "w") as fh:
        for i, r in enumerate(rows):
            row = {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "prompt_ids": draws["prompt_ids"][i]}
            for side, rewards in (("policy", policy_rewards), ("base", base_rewards)):
                s = draws[f"{side}_samples"][i]
                row.update({f"{side}_completions": s["completions"],
                            f"{side}_completion_ids": [list(c) for c in s["completion_ids"]],
                            f"{side}_finish_reasons": list(s["finish_reasons"]),
                            f"{side}_rewards": rewards[i].tolist()})
            for key in ("policy_logps", "ref_logps", "log_ratios"):  # of the policy samples
                row[key] = draws[key][i].tolist()
            fh.write(json.dumps(row) + "\n")


def evaluate(cfg) -> dict[str, Any]:
    """Run the evaluation of `cfg` (config.EvalConfig); write `out/report.json`, `out/samples.jsonl`, plots.

    Returns the report dict (see `report.summarize` for the measured keys). The folder is locked for the run
    (storage.output_lock): a second run into it is refused at once.
    """
    from ..storage import output_lock

    with output_lock(cfg.out):
        return _evaluate(cfg)


def _evaluate(cfg) -> dict[str, Any]:
    from .. import __version__
    from ..config import config_to_dict
    from ..modeling import default_device, free_memory, load_adapted, resolve_dtype, stop_token_ids
    from ..plots import plot_tradeoff, plot_win_rate_vs_n
    from ..report import PREDICTION_NOTE, cut_note, length_summary, make_predict_fn, summarize
    from ..sampling import context_length, fit_prompts
    from ..training_record import read_training_info, resolve_settings

    t0 = time.perf_counter()
    info = read_training_info(cfg.policy)
    settings = resolve_settings(cfg, info)
    # A bad base model or judge is one line now, not after minutes of sampling (the tokenizer is the adapter's).
    from ..preflight import check_model
    from ..scoring import check_reward

    check_model(settings["model"], "base model", cfg.trust_remote_code, tokenizer=False)
    check_reward(settings["reward_model"], cfg.trust_remote_code)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_eval_prompts(settings, cfg.split, cfg.limit, cfg.verify)
    timings: dict[str, float] = {}

    device = default_device(cfg.device)
    model, tokenizer = load_adapted(settings["model"], cfg.policy, dtype=resolve_dtype(cfg.dtype, device),
                                    trust_remote_code=cfg.trust_remote_code,
                                    allow_pickle_weights=cfg.allow_pickle_weights)
    model = model.to(device).eval()
    context = context_length(model)
    if context is not None:
        rows, _, skipped = fit_prompts(tokenizer, rows, context - cfg.max_new_tokens, cfg.on_long_prompt)
        if not rows:
            raise InfalignError(f"all {skipped} evaluation prompts are longer than the context allows; "
                                "use --on-long-prompt truncate or lower --max-new-tokens")
    stop_ids = stop_token_ids(model, tokenizer, extra=settings["stop_token_ids"])
    t = time.perf_counter()
    draws = _draw(model, tokenizer, rows, cfg, stop_ids)
    timings["sample_and_kl_s"] = time.perf_counter() - t
    del model
    free_memory()  # the judge may need the memory the policy held

    t = time.perf_counter()
    policy_rewards, base_rewards = _judge(settings, rows, draws, device, cfg)
    timings["score_s"] = time.perf_counter() - t
    free_memory()
    _write_samples(out / "samples.jsonl", rows, draws, policy_rewards, base_rewards)

    transform, beta = settings["transform"], settings["beta"]
    predict_fn = make_predict_fn(transform, beta, settings["loss"])
    report = summarize(policy_rewards, base_rewards, draws["log_ratios"], settings["procedures"], settings["ns"],
                       predict_fn=predict_fn, num_bootstrap=cfg.num_bootstrap, confidence=cfg.confidence,
                       seed=cfg.seed)
    lengths = length_summary({"policy": draws["policy_samples"], "base": draws["base_samples"]})
    # Warnings training passed on (e.g. samples drawn tempered: docs/math.md §9) come first: they qualify
    # every number below.
    notes = list(settings["warnings"])
    notes.append(PREDICTION_NOTE if predict_fn is not None else
                 "no prediction: the adapter has no transform/beta (or was trained with a DPO/IPO baseline loss); "
                 "pass --transform and --beta to compare with a tilt")
    cut = cut_note(lengths["cut_fraction"], cfg.max_new_tokens)
    if cut:
        notes.append(cut)
    report.update({
        "policy": str(cfg.policy),
        "model": settings["model"],
        "reward_model": settings["reward_model"],
        "reward_label": settings["reward_label"],
        "prompts": settings["prompts"] or f"{settings['dataset']} [{cfg.split}]",
        "transform": None if transform is None else str(transform),
        "tilt": None if transform is None else transform.tilt,
        "beta": beta,
        "loss": settings["loss"],
        "trained_for": {"procedure": info.get("procedure"), "n": info.get("n")},
        **lengths,  # cut_fraction and mean_length, each {"policy", "base"}
        "max_new_tokens": cfg.max_new_tokens,
        "stop_token_ids": stop_ids,
        "confidence": cfg.confidence,
        "num_bootstrap": cfg.num_bootstrap,
        "notes": notes,
        "package_version": __version__,
        "config": config_to_dict(cfg),
        "timings": timings,
    })
    # Written before plotting, so a plotting problem never costs the measurement; rewritten with the plot list.
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if cfg.plots:
        t = time.perf_counter()
        report["plots"] = [
            str(plot_win_rate_vs_n(report, out / "win_rate_vs_n.png", predict_fn)),
            *(str(p) for p in plot_tradeoff(report, out, transform if predict_fn else None)),
        ]
        timings["plot_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
