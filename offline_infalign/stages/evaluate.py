"""Measure a trained adapter: inference-time win rates against its base model, and the KL it cost (SPEC §8).

For each held-out prompt, M completions are drawn from the aligned policy (base + adapter) and M from the base,
at temperature 1, and every completion is scored by the judge reward. From these two empirical distributions the
best-of-N / worst-of-N win rate is computed exactly (core.estimators), with a bootstrap interval over prompts;
the KL is the mean of log π(y|x) − log π_ref(y|x) over the policy's own samples. Next to each measurement goes
what the tradeoff tool (core.tradeoff, SPEC §4) predicts for the adapter's transform, tilt and β.

Two layers, so the arithmetic is testable without models:
- `summarize(policy_rewards, base_rewards, log_ratios, ...)` — pure: arrays in, report dict out.
- `evaluate(cfg)` — loads models, samples, scores, calls `summarize`, writes `report.json`, samples and plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InfalignError
from ..tokenization import encode_completion, encode_prompt

__all__ = [
    "summarize",
    "evaluate",
    "read_training_info",
    "resolve_settings",
    "default_ns",
    "plot_win_rate_vs_n",
    "plot_tradeoff",
    "PREDICTION_NOTE",
]

TRAIN_INFO = "infalign_train.json"
PREDICTION_NOTE = (
    "'predicted' values come from the calibrated-space analysis (SPEC section 4) and assume the policy is exactly "
    "the tilted policy pi_ref * exp(Phi(C)/beta) / Z for the adapter's transform, tilt and beta; a finite-data, "
    "LoRA-trained adapter only approximates it, so read the gap as how well training reached the target."
)
# Losses that do not target a tilt of the calibrated reward: no prediction applies to them.
_UNTILTED_LOSSES = ("dpo", "ipo")

PredictFn = Callable[[str, int], Any]  # (procedure, n) -> object with .win_rate, .kl, .standard_win_rate, or None


def _as_2d(name: str, a) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InfalignError(f"{name} must have shape (prompts, samples) with both >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InfalignError(f"{name} holds non-finite values; the judge or the log-probs produced NaN/inf")
    return arr


def _float(x) -> float | None:
    return None if x is None else float(x)


def summarize(
    policy_rewards,
    base_rewards,
    log_ratios,
    procedures: Sequence[str],
    ns: Sequence[int],
    predict_fn: PredictFn | None = None,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The numbers of a report from scored samples (SPEC §8).

    policy_rewards (P, M): judge rewards of M policy samples per prompt; base_rewards (P, M'): of M' base samples;
    log_ratios (P, M) or flat: log π(y|x) − log π_ref(y|x) for the policy samples.
    predict_fn(procedure, n) returns a core.tradeoff.Prediction (or None when no prediction applies).
    Returns {"kl", "kl_stderr", "predicted_kl", "standard_win_rate": {...}, "results": {proc: {str(n): {...}}},
    "mean_reward": {"policy", "base"}, "num_prompts", "samples"}; each win-rate entry has win_rate, ci_low,
    ci_high and predicted (None without a prediction).
    """
    from ..core.estimators import estimate_kl, estimate_win_rate

    pol = _as_2d("policy_rewards", policy_rewards)  # (P, M)
    base = _as_2d("base_rewards", base_rewards)  # (P, M')
    if pol.shape[0] != base.shape[0]:
        raise InfalignError(f"policy_rewards has {pol.shape[0]} prompts but base_rewards has {base.shape[0]}")
    ratios = np.asarray(log_ratios, dtype=np.float64)
    if ratios.size != pol.size:
        raise InfalignError(f"log_ratios has {ratios.size} values but there are {pol.size} policy samples")
    for procedure in procedures:
        if procedure not in ("bon", "won"):
            raise InfalignError(f"procedure {procedure!r} not allowed; allowed: bon, won")

    def entry(procedure: str, n: int, predicted: float | None) -> dict[str, Any]:
        est = estimate_win_rate(pol, base, n, procedure, num_bootstrap=num_bootstrap, confidence=confidence,
                                seed=seed)
        return {"win_rate": float(est.win_rate), "ci_low": float(est.ci_low), "ci_high": float(est.ci_high),
                "predicted": _float(predicted)}

    def prediction(procedure: str, n: int):
        return predict_fn(procedure, n) if predict_fn is not None else None

    kl = estimate_kl(ratios)
    first = prediction(procedures[0] if procedures else "bon", 1)  # KL and N=1 do not depend on the procedure
    results: dict[str, dict[str, Any]] = {}
    for procedure in procedures:
        results[procedure] = {}
        for n in ns:
            pred = prediction(procedure, int(n))
            results[procedure][str(int(n))] = entry(procedure, int(n), None if pred is None else pred.win_rate)
    return {
        "kl": float(kl.kl),
        "kl_stderr": float(kl.stderr),
        "predicted_kl": None if first is None else _float(first.kl),
        "standard_win_rate": entry("bon", 1, None if first is None else first.standard_win_rate),
        "results": results,
        "mean_reward": {"policy": float(pol.mean()), "base": float(base.mean())},
        "num_prompts": int(pol.shape[0]),
        "samples": int(pol.shape[1]),
    }


# ---------------------------------------------------------------------------------------------------------
# Settings: what the adapter was trained with, and the defaults derived from it.
# ---------------------------------------------------------------------------------------------------------


def read_training_info(policy_dir) -> dict[str, Any]:
    """The adapter's `infalign_train.json` (written by `infalign train`), or {} for a foreign PEFT adapter."""
    path = Path(policy_dir)
    if not path.is_dir():
        raise InfalignError(f"policy {str(path)!r} is not a folder; pass the adapter folder written by `infalign train`")
    info_path = path / TRAIN_INFO
    if not info_path.is_file():
        return {}
    try:
        return json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise InfalignError(f"{str(info_path)!r} is not valid JSON: {exc}") from None


def _dataset_manifest(info: dict[str, Any]) -> dict[str, Any]:
    for key in ("dataset_manifest", "manifest"):
        if isinstance(info.get(key), dict):
            return info[key]
    return {}


def _first(*values):
    for v in values:
        if v is not None:
            return v
    return None


def default_ns(samples: int, trained_n: int | None = None) -> list[int]:
    """1, 2, 4, ... up to `samples`, plus the N the adapter was trained for (if it fits)."""
    ns = {1}
    n = 2
    while n <= samples:
        ns.add(n)
        n *= 2
    if trained_n is not None and 1 <= int(trained_n) <= samples:
        ns.add(int(trained_n))
    return sorted(ns)


def resolve_settings(cfg, info: dict[str, Any]) -> dict[str, Any]:
    """Fill what the command line left out from the adapter's training info; say what is still missing.

    Returns model, reward_model, prompts (None → the prepared dataset's test split), dataset (path or None),
    procedures, ns, transform (Transform or None), beta, loss.
    """
    from ..core.transforms import Transform, parse_transform

    train_cfg = info.get("config") if isinstance(info.get("config"), dict) else {}
    manifest = _dataset_manifest(info)
    model = _first(cfg.model, info.get("model"), train_cfg.get("model"), manifest.get("model"))
    if model is None:
        adapter_cfg = Path(cfg.policy) / "adapter_config.json"
        if adapter_cfg.is_file():
            model = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
    if not model:
        raise InfalignError(f"no base model for policy {cfg.policy!r}: pass --model (the adapter has no {TRAIN_INFO})")
    reward_model = _first(cfg.reward_model, info.get("reward_model"), manifest.get("reward_model"))
    if not reward_model:
        raise InfalignError(f"no judge reward for policy {cfg.policy!r}: pass --reward-model (path, module:function "
                            "or demo)")
    # The absolute manifest path survives a change of working directory; config.dataset may be relative.
    dataset = (str(Path(info["dataset_manifest_path"]).parent) if info.get("dataset_manifest_path")
               else train_cfg.get("dataset"))
    if cfg.prompts is None and not dataset:
        raise InfalignError(f"no prompts for policy {cfg.policy!r}: pass --prompts (builder name or .jsonl path)")

    trained_procedure = _first(info.get("procedure"), manifest.get("procedure"))
    trained_n = _first(info.get("n"), manifest.get("n"))
    procedures = cfg.procedure or [trained_procedure if trained_procedure in ("bon", "won") else "bon"]
    ns = cfg.n or default_ns(cfg.samples, trained_n)

    loss = info.get("loss", train_cfg.get("loss"))
    if cfg.transform is not None:
        transform = parse_transform(cfg.transform)
    else:
        name = _first(info.get("transform"), manifest.get("transform"))
        tilt = _first(info.get("tilt"), manifest.get("tilt"))
        if isinstance(name, dict):  # a serialized Transform
            name, tilt = name.get("name"), name.get("tilt", tilt)
        transform = None
        if name is not None:
            transform = parse_transform(name) if ":" in str(name) else Transform(str(name), tilt)
    beta = _first(cfg.beta, info.get("beta"), train_cfg.get("beta"), manifest.get("beta"))
    return {
        "model": str(model),
        "reward_model": str(reward_model),
        "prompts": cfg.prompts,
        "dataset": dataset,
        "procedures": list(procedures),
        "ns": sorted({int(n) for n in ns}),
        "transform": transform,
        "beta": None if beta is None else float(beta),
        "loss": loss,
    }


def make_predict_fn(transform, beta: float | None, loss: str | None) -> PredictFn | None:
    """predict(procedure, n) from core.tradeoff for the adapter's tilt, or None when no tilt applies."""
    if transform is None or beta is None or (loss in _UNTILTED_LOSSES):
        return None
    from ..core.tradeoff import predict

    cache: dict[tuple[str, int], Any] = {}

    def fn(procedure: str, n: int):
        if (procedure, n) not in cache:
            cache[(procedure, n)] = predict(transform, beta, procedure=procedure, n=n)
        return cache[(procedure, n)]

    return fn


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------

_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]


def plot_win_rate_vs_n(report: dict[str, Any], path, predict_fn: PredictFn | None = None) -> Path:
    """Measured win rate vs N with its interval as error bars, the predicted curve as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (procedure, by_n) in enumerate(report["results"].items()):
        color = _COLORS[k % len(_COLORS)]
        ns = sorted(int(n) for n in by_n)
        wr = np.array([by_n[str(n)]["win_rate"] for n in ns])
        lo = np.array([by_n[str(n)]["ci_low"] for n in ns])
        hi = np.array([by_n[str(n)]["ci_high"] for n in ns])
        ax.errorbar(ns, wr, yerr=[wr - lo, hi - wr], fmt="o", color=color, capsize=3,
                    label=f"{procedure}: measured ({report.get('confidence', 0.95):.0%} CI)")
        if predict_fn is not None:
            grid = np.arange(1, max(ns) + 1)
            ax.plot(grid, [predict_fn(procedure, int(n)).win_rate for n in grid], "-", color=color,
                    label=f"{procedure}: predicted")
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (best-of-N / worst-of-N)")
    ax.set_ylabel("win rate vs base")
    ax.set_title(f"{report.get('transform') or 'policy'}, beta={report.get('beta')}, KL={report['kl']:.3f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tradeoff(report: dict[str, Any], out_dir, transform=None) -> list[Path]:
    """Measured (KL, win rate) on the predicted win-rate-vs-KL curves (SPEC §4/§8), one PNG per procedure and N.

    Curves: the adapter's transform swept over β (when it has one) and the optimum, the yardstick. Points: the
    measurement with its interval, and the prediction for the adapter's exact β. Files `tradeoff_<proc>_n<N>.png`.
    """
    from ..core.tradeoff import tradeoff_curves
    from ..plots import plot_tradeoff_curves

    kl, pred_kl = report["kl"], report.get("predicted_kl")
    reach = max(kl + 2 * (report["kl_stderr"] if np.isfinite(report["kl_stderr"]) else 0.0), pred_kl or 0.0)
    kl_max = max(1.5 * reach, 0.05)  # the curves extend past both points
    paths = []
    for procedure, by_n in report["results"].items():
        for n_text, e in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            n = int(n_text)
            curves = tradeoff_curves(procedure, n, [] if transform is None else [(str(transform), transform)],
                                     kl_max=kl_max, num_points=25)
            points = [(kl, e["win_rate"], f"measured ({report.get('confidence', 0.95):.0%} CI)",
                       (e["ci_low"], e["ci_high"]))]
            if e.get("predicted") is not None and pred_kl is not None:
                points.append((pred_kl, e["predicted"], f"predicted, beta={report.get('beta'):g}", None))
            paths.append(plot_tradeoff_curves(
                curves, Path(out_dir) / f"tradeoff_{procedure}_n{n}.png", points=points,
                title=f"{'best' if procedure == 'bon' else 'worst'}-of-{n}: {report.get('transform') or 'policy'}",
                ylabel=f"{procedure} win rate vs base (N={n})"))
    return paths


# ---------------------------------------------------------------------------------------------------------
# The glue: models, sampling, scoring.
# ---------------------------------------------------------------------------------------------------------


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


def _log_probs(model, tokenizer, prompts: list, completion_ids: list[list[int]], batch_size: int,
               desc: str) -> np.ndarray:
    """Teacher-forced log π(y|x) (flat, one per pair) with the shared tokenization and log-prob code."""
    import torch
    from tqdm.auto import tqdm

    from ..logprobs import completion_logps, pad_pairs

    device = next(model.parameters()).device
    out = np.empty(len(prompts), dtype=np.float64)
    with torch.no_grad():
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
            p = [encode_prompt(tokenizer, x) for x in prompts[start : start + batch_size]]
            c = completion_ids[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pad_pairs(p, c, tokenizer.pad_token_id).items()}
            out[start : start + len(p)] = completion_logps(model, **batch).double().cpu().numpy()
    return out


def _score(scorer, prompts: list, completions: list[str], chunk: int, desc: str) -> np.ndarray:
    """The judge's rewards (flat), in chunks so that a progress bar shows the rate."""
    from tqdm.auto import tqdm

    parts = [np.asarray(scorer(prompts[i : i + chunk], completions[i : i + chunk]), dtype=np.float64)
             for i in tqdm(range(0, len(prompts), chunk), desc=desc, unit="chunk")]
    return np.concatenate(parts) if parts else np.zeros(0)


def _free_memory() -> None:
    """Return freed model memory to the device before the next model loads (callers drop their reference)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _draw(model, tokenizer, rows: list[dict], cfg) -> dict[str, Any]:
    """M policy and M base samples per prompt, and log π − log π_ref of the policy samples (SPEC §8).

    Returns policy_samples / base_samples (P dicts from sample_completions), log_ratios (P, M) and the fraction of
    policy samples cut off at max_new_tokens.
    """
    prompts = [r["prompt"] for r in rows]
    prompt_ids = [r["prompt_id"] for r in rows]
    from ..sampling import sample_completions

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
    policy_logps = _log_probs(model, tokenizer, flat_prompts, ids, cfg.batch_size, "log pi (policy)")
    with model.disable_adapter():
        ref_logps = _log_probs(model, tokenizer, flat_prompts, ids, cfg.batch_size, "log pi_ref")
    return {
        "policy_samples": policy_samples,
        "base_samples": base_samples,
        "log_ratios": (policy_logps - ref_logps).reshape(len(rows), cfg.samples),  # (P, M)
        "truncated_fraction": float(np.mean([e[1] for e in encoded])),
    }


def _judge(spec: str, rows: list[dict], draws: dict[str, Any], device: str, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Judge rewards of the policy and base samples, each (P, M)."""
    from ..scoring import load_scorer

    scorer = load_scorer(spec, device=device, dtype=cfg.dtype, batch_size=cfg.score_batch_size,
                         trust_remote_code=cfg.trust_remote_code)
    flat_prompts = [r["prompt"] for r in rows for _ in range(cfg.samples)]
    chunk = 8 * cfg.score_batch_size
    out = []
    for side in ("policy", "base"):
        completions = [c for s in draws[f"{side}_samples"] for c in s["completions"]]
        out.append(_score(scorer, flat_prompts, completions, chunk, f"judge ({side})").reshape(len(rows), -1))
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

    Returns the report dict (see `summarize` for the measured keys).
    """
    import torch

    from .. import __version__
    from ..config import config_to_dict
    from ..modeling import load_adapted, resolve_dtype
    from ..sampling import context_length, fit_prompts

    t0 = time.perf_counter()
    info = read_training_info(cfg.policy)
    settings = resolve_settings(cfg, info)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_eval_prompts(settings, cfg.split, cfg.limit)
    timings: dict[str, float] = {}

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
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
    _free_memory()  # the judge may need the memory the policy held

    t = time.perf_counter()
    policy_rewards, base_rewards = _judge(settings["reward_model"], rows, draws, device, cfg)
    timings["score_s"] = time.perf_counter() - t
    _free_memory()
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
