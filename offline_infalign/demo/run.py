"""The embedded demo: sample → score → prepare → train → eval on a tiny base model and reward, no download.

The base model is a small review-writing LM trained at first use (demo.assets); the reward is a sentiment
classifier, so "better" is something a reader sees in the samples. Two policies are trained from ONE sampling
run, at the same KL budget:
  identity — calibrated RLHF, the paper's strong baseline;
  exp      — the exp tilt that `infalign tradeoff --choose` picks for the served procedure and N.
Both are evaluated against the base with the served procedure (best-of-N by default) on held-out prompts.
β starts at the tradeoff tool's value for the budget (exact for the exact tilted policy, docs/math.md §7); a trained
policy lands elsewhere (finite K, finite optimization), so each policy is retrained `kl_match_rounds` times with
β scaled by sqrt(measured KL / budget), and the try whose measured KL is nearest the budget is reported.

Every stage writes under `out/` and is skipped when its output is complete, so a killed demo rerun with the
same command resumes; a rerun with other settings into the same folder is refused by the stages themselves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import (
    DemoConfig,
    EvalConfig,
    PrepareConfig,
    SampleConfig,
    ScoreConfig,
    TrainConfig,
    load_config,
)
from ..core.errors import InfalignError

__all__ = ["run_demo", "arms", "showcase"]


def arms(cfg: DemoConfig) -> list[dict[str, Any]]:
    """The two transforms and their β at the KL budget: identity and the chosen exp tilt (docs/math.md §7)."""
    from ..core import tradeoff
    from ..core.transforms import Transform

    identity = Transform("identity")
    choice = tradeoff.choose(cfg.procedure, cfg.n, cfg.kl)
    return [
        {"name": "identity", "transform": identity, "beta": tradeoff.beta_for_kl(identity, cfg.kl)},
        {"name": "exp", "transform": choice.transform, "beta": choice.beta},
    ]


def showcase(samples_path: Path, k: int = 3) -> list[dict[str, Any]]:
    """A few held-out prompts with one base and one policy completion each (the median-reward one of each side,
    so the examples are typical, not cherry-picked), from an evaluation's samples.jsonl."""
    import numpy as np

    out = []
    with open(samples_path) as fh:
        for line in fh:
            row = json.loads(line)
            pick = {}
            for side in ("base", "policy"):
                r = np.asarray(row[f"{side}_rewards"])
                i = int(np.argsort(r)[len(r) // 2])
                pick[side] = {"completion": row[f"{side}_completions"][i], "reward": float(r[i])}
            out.append({"prompt": row["prompt"], **pick})
            if len(out) == k:
                break
    return out


def _claim(out: Path, cfg: DemoConfig) -> None:
    """Record the settings in `out/demo_config.json`; refuse a folder holding a demo run with other settings.

    The stages skip finished outputs, so without this a rerun with, say, more steps would silently reuse the
    old adapters; the sampling stages refuse on their own, training and evaluation would not.
    """
    from ..config import config_diff, config_to_dict
    from ..storage import write_json_atomic

    path, now = out / "demo_config.json", config_to_dict(cfg)
    if path.is_file():
        diff = config_diff(json.loads(path.read_text()), now, ignore=("out",))
        if diff:
            raise InfalignError(f"{str(out)!r} holds a demo run with other settings ({'; '.join(diff)}); rerun "
                                "with those settings to resume it, or pass a new --out")
    else:
        write_json_atomic(path, now)


def _train_and_eval(cfg: DemoConfig, model: str, kind: str, name: str, transform, beta: float, round_: int):
    """Prepare, train and evaluate one policy (each step skipped when its output is already complete)."""
    from ..core import tradeoff
    from ..stages import train as trainer
    from ..stages.evaluate import evaluate
    from ..stages.prepare import run_prepare
    from ..training_record import TRAIN_INFO

    data, suffix = Path(cfg.out) / "data", f"_r{round_}" if round_ else ""
    prepared, adapter, ev = data / f"prepared_{name}{suffix}", Path(cfg.out) / f"adapter_{name}{suffix}", \
        Path(cfg.out) / f"eval_{name}{suffix}"
    run_prepare(load_config(PrepareConfig, None, dict(
        input=str(data / "scored"), out=str(prepared), kind=kind, transform=transform.name,
        tilt=transform.tilt, beta=beta, procedure=cfg.procedure, n=cfg.n, seed=cfg.seed)))
    if not (adapter / TRAIN_INFO).is_file():
        # A training killed after a checkpoint resumes from the newest complete one by itself (checkpoints.py).
        trainer.train(load_config(TrainConfig, None, dict(
            dataset=str(prepared), model=model, loss=cfg.loss, out=str(adapter), max_steps=cfg.max_steps,
            learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.per_device_train_batch_size,
            num_train_epochs=1000.0, logging_steps=max(1, cfg.max_steps // 5), seed=cfg.seed)))
    if (ev / "report.json").is_file():
        report = json.loads((ev / "report.json").read_text())
    else:
        report = evaluate(load_config(EvalConfig, None, dict(
            policy=str(adapter), model=model, reward_model="demo", prompts="demo", split="test",
            limit=cfg.eval_prompts, procedure=[cfg.procedure], n=sorted({1, cfg.n}),
            samples=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, out=str(ev))))
    served = report["results"][cfg.procedure][str(cfg.n)]
    try:  # where the measured point would sit on its transform's predicted curve (docs/math.md §4)
        at_kl = tradeoff.predict(transform, tradeoff.beta_for_kl(transform, max(report["kl"], 1e-4)),
                                 cfg.procedure, cfg.n).win_rate
    except InfalignError:
        at_kl = None
    return {
        "name": name, "transform": str(transform), "tilt": transform.tilt, "beta": beta,
        "kl": report["kl"], "kl_stderr": report["kl_stderr"], "predicted_kl": report["predicted_kl"],
        "win_rate": served["win_rate"], "ci_low": served["ci_low"], "ci_high": served["ci_high"],
        "predicted_win_rate": served["predicted"], "predicted_at_measured_kl": at_kl,
        "standard_win_rate": report["standard_win_rate"]["win_rate"],
        "mean_reward": report["mean_reward"]["policy"], "base_mean_reward": report["mean_reward"]["base"],
        "examples": showcase(ev / "samples.jsonl"), "adapter": str(adapter),
    }


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the demo; write `out/demo_report.json` and `out/demo_tradeoff.png`; return the report.

    The folder is locked for the run (storage.output_lock): a second run into it is refused at once. Each
    stage also locks its own subfolder (different files: no stage waits on the demo's lock); the demo's
    folder holds its stages' folders by design (own_subfolders).
    """
    from ..storage import output_lock

    with output_lock(cfg.out, own_subfolders=True):
        return _run_demo(cfg, log)


def _run_demo(cfg: DemoConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from ..core.losses import get_loss
    from ..plots import plot_demo
    from ..stages.sample import run_sample
    from ..stages.score import run_score
    from .assets import demo_model_dir

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = get_loss(cfg.loss).kind
    _claim(out, cfg)

    log("[1/5] base model (trained and cached at first use, about a minute)")
    model = str(demo_model_dir(cache_dir=cfg.cache_dir, train_steps=cfg.model_train_steps))

    log(f"[2/5] sample K={cfg.num_samples} completions for {cfg.num_prompts} prompts and score them")
    data = out / "data"
    run_sample(load_config(SampleConfig, None, dict(
        prompts="demo", model=model, out=str(data / "samples"), num_samples=cfg.num_samples,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, limit=cfg.num_prompts, batch_size=16)))
    run_score(load_config(ScoreConfig, None, dict(
        input=str(data / "samples"), reward_model="demo", out=str(data / "scored"))))

    results = []
    for i, arm in enumerate(arms(cfg)):
        name, transform, beta = arm["name"], arm["transform"], arm["beta"]
        tries = []
        for round_ in range(1 + cfg.kl_match_rounds):
            if round_:  # KL ∝ β⁻² for small tilts: one multiplicative step toward the measured budget
                beta = beta * math.sqrt(max(tries[-1]["kl"], 1e-3) / cfg.kl)
            log(f"[{3 + i}/5] {name}: {transform}, beta={beta:.4f} "
                + ("(the tradeoff tool's beta for KL " + f"{cfg.kl})" if not round_ else
                   f"(corrected: measured KL was {tries[-1]['kl']:.3f})")
                + f" → prepare, train {cfg.max_steps} steps ({cfg.loss}), evaluate")
            tries.append(_train_and_eval(cfg, model, kind, name, transform, beta, round_))
        best = min(tries, key=lambda r: abs(math.log(max(r["kl"], 1e-3) / cfg.kl)))
        best["tries"] = [{"beta": t["beta"], "kl": t["kl"], "win_rate": t["win_rate"]} for t in tries]
        results.append(best)

    log("[5/5] report and plot")
    summary = {"procedure": cfg.procedure, "n": cfg.n, "kl_budget": cfg.kl, "loss": cfg.loss, "model": model,
               "arms": results, "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    summary["plot"] = str(plot_demo(results, cfg.procedure, cfg.n, cfg.kl, out / "demo_tradeoff.png"))
    (out / "demo_report.json").write_text(json.dumps(summary, indent=2))
    return summary

