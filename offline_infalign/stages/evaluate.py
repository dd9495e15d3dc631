"""`eval` stage: measure a trained adapter — inference-time win rates against its base model, and the KL it cost.

For each held-out prompt, M completions are drawn from the aligned policy (base + adapter) and M from the base,
at temperature 1, and every completion is scored by the judge reward. From these two empirical distributions
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
from ..tokenization import encode_completion

__all__ = ["evaluate", "completion_ids", "load_eval_prompts"]


def load_eval_prompts(settings: dict[str, Any], split: str, limit: int | None) -> list[dict[str, Any]]:
    """[{prompt_id, prompt}] from a prompt source, or from the held-out split of the adapter's prepared dataset."""
    if settings["prompts"] is not None:
        from data_builders import get_prompt_source

        # Hub datasets repeat some prompts (HH does); evaluate each once.
        rows = list(get_prompt_source(settings["prompts"], split=split, limit=limit, on_duplicate="skip"))
    else:
        from ..storage import load_artifact

        dataset, _ = load_artifact(settings["dataset"])
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


def completion_ids(tokenizer, completion: str, max_new_tokens: int) -> tuple[list[int], bool]:
    """Ids whose log-prob is log π(y|x) for a sampled completion, and whether generation was cut off.

    The package scores a completion as its tokens + EOS (tokenization.encode_completion). A completion that hit
    `max_new_tokens` was never allowed to draw EOS, so the distribution actually sampled (and served) is the
    length-truncated policy; its log-prob is the sum over the generated tokens only. Keeping the EOS term there
    biases the KL estimate (seen below zero on a tiny model whose policy never stopped within the limit).
    """
    ids = encode_completion(tokenizer, completion)
    truncated = len(ids) - 1 >= max_new_tokens
    return (ids[:-1] if truncated else ids), truncated


def _draw(model, tokenizer, rows: list[dict], cfg) -> dict[str, Any]:
    """M policy and M base samples per prompt, and log π − log π_ref of the policy samples (docs/math.md §8).

    Returns policy_samples / base_samples (P dicts from sample_completions), log_ratios (P, M) and the fraction of
    policy samples cut off at max_new_tokens.
    """
    from ..logprobs import sequence_logps
    from ..sampling import sample_completions

    prompts = [r["prompt"] for r in rows]
    prompt_ids = [r["prompt_id"] for r in rows]

    gen = dict(num_samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
               batch_size=cfg.batch_size)
    policy_samples = sample_completions(model, tokenizer, prompts, prompt_ids, seed=cfg.seed, **gen)
    # The base draws use another seed: with the same random stream a policy close to the base would produce
    # the same completions, coupling the two sides that the estimator treats as independent.
    with model.disable_adapter():
        base_samples = sample_completions(model, tokenizer, prompts, prompt_ids, seed=cfg.seed + 1, **gen)

    flat_prompts = [p for p in prompts for _ in range(cfg.samples)]
    encoded = [completion_ids(tokenizer, c, cfg.max_new_tokens) for s in policy_samples for c in s["completions"]]
    ids = [e[0] for e in encoded]
    policy_logps = sequence_logps(model, tokenizer, flat_prompts, ids, cfg.batch_size, "log pi (policy)")
    with model.disable_adapter():
        ref_logps = sequence_logps(model, tokenizer, flat_prompts, ids, cfg.batch_size, "log pi_ref")
    policy_logps, ref_logps = policy_logps.astype(np.float64), ref_logps.astype(np.float64)  # float32 sums
    return {
        "policy_samples": policy_samples,
        "base_samples": base_samples,
        "log_ratios": (policy_logps - ref_logps).reshape(len(rows), cfg.samples),  # (P, M)
        "truncated_fraction": float(np.mean([e[1] for e in encoded])),
    }


def _judge(spec: str, rows: list[dict], draws: dict[str, Any], device: str, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Judge rewards of the policy and base samples, each (P, M)."""
    from ..scoring import load_scorer, score_in_chunks

    scorer = load_scorer(spec, device=device, dtype=cfg.dtype, batch_size=cfg.score_batch_size,
                         trust_remote_code=cfg.trust_remote_code)
    flat_prompts = [r["prompt"] for r in rows for _ in range(cfg.samples)]
    chunk = 8 * cfg.score_batch_size
    out = []
    for side in ("policy", "base"):
        completions = [c for s in draws[f"{side}_samples"] for c in s["completions"]]
        rewards = score_in_chunks(scorer, flat_prompts, completions, chunk, f"judge ({side})")
        out.append(rewards.reshape(len(rows), -1))
    return out[0], out[1]


def _write_samples(path: Path, rows, draws, policy_rewards, base_rewards) -> None:
    with open(path, "w") as fh:
        for i, r in enumerate(rows):
            fh.write(json.dumps({
                "prompt_id": r["prompt_id"], "prompt": r["prompt"],
                "policy_completions": draws["policy_samples"][i]["completions"],
                "policy_rewards": policy_rewards[i].tolist(), "log_ratios": draws["log_ratios"][i].tolist(),
                "base_completions": draws["base_samples"][i]["completions"], "base_rewards": base_rewards[i].tolist(),
            }) + "\n")


def evaluate(cfg) -> dict[str, Any]:
    """Run the evaluation of `cfg` (config.EvalConfig); write `out/report.json`, `out/samples.jsonl`, plots.

    Returns the report dict (see `report.summarize` for the measured keys).
    """
    from .. import __version__
    from ..config import config_to_dict
    from ..modeling import default_device, free_memory, load_adapted, resolve_dtype
    from ..plots import plot_tradeoff, plot_win_rate_vs_n
    from ..report import PREDICTION_NOTE, make_predict_fn, summarize
    from ..sampling import context_length, fit_prompts
    from ..training_record import read_training_info, resolve_settings

    t0 = time.perf_counter()
    info = read_training_info(cfg.policy)
    settings = resolve_settings(cfg, info)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_eval_prompts(settings, cfg.split, cfg.limit)
    timings: dict[str, float] = {}

    device = default_device(cfg.device)
    model, tokenizer = load_adapted(settings["model"], cfg.policy, dtype=resolve_dtype(cfg.dtype, device),
                                    trust_remote_code=cfg.trust_remote_code)
    model = model.to(device).eval()
    context = context_length(model)
    if context is not None:
        rows, _, skipped = fit_prompts(tokenizer, rows, context - cfg.max_new_tokens, cfg.on_long_prompt)
        if not rows:
            raise InfalignError(f"all {skipped} evaluation prompts are longer than the context allows; "
                                "use --on-long-prompt truncate or lower --max-new-tokens")
    t = time.perf_counter()
    draws = _draw(model, tokenizer, rows, cfg)
    timings["sample_and_kl_s"] = time.perf_counter() - t
    del model
    free_memory()  # the judge may need the memory the policy held

    t = time.perf_counter()
    policy_rewards, base_rewards = _judge(settings["reward_model"], rows, draws, device, cfg)
    timings["score_s"] = time.perf_counter() - t
    free_memory()
    _write_samples(out / "samples.jsonl", rows, draws, policy_rewards, base_rewards)

    transform, beta = settings["transform"], settings["beta"]
    predict_fn = make_predict_fn(transform, beta, settings["loss"])
    report = summarize(policy_rewards, base_rewards, draws["log_ratios"], settings["procedures"], settings["ns"],
                       predict_fn=predict_fn, num_bootstrap=cfg.num_bootstrap, confidence=cfg.confidence,
                       seed=cfg.seed)
    notes = [PREDICTION_NOTE] if predict_fn is not None else [
        "no prediction: the adapter has no transform/beta (or was trained with a DPO/IPO baseline loss); "
        "pass --transform and --beta to compare with a tilt"]
    truncated_fraction = draws["truncated_fraction"]
    if truncated_fraction > 0.05:
        notes.append(f"{truncated_fraction:.0%} of the policy samples hit max_new_tokens={cfg.max_new_tokens}: "
                     "win rates and KL refer to the length-truncated policy; raise --max-new-tokens to measure "
                     "the policy the adapter was trained as")
    report.update({
        "policy": str(cfg.policy),
        "model": settings["model"],
        "reward_model": settings["reward_model"],
        "prompts": settings["prompts"] or f"{settings['dataset']} [{cfg.split}]",
        "transform": None if transform is None else str(transform),
        "tilt": None if transform is None else transform.tilt,
        "beta": beta,
        "loss": settings["loss"],
        "trained_for": {"procedure": info.get("procedure"), "n": info.get("n")},
        "truncated_fraction": truncated_fraction,
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
