"""The embedded demo: sample → score → prepare → train → eval on a tiny base model and reward, no download.

The base model is a small review-writing LM shipped with the package (demo.assets); the reward is a sentiment
classifier, so "better" is something a reader sees in the samples. Two policies are trained from ONE sampling
run, at matched KL:
  identity — calibrated RLHF, the paper's strong baseline;
  exp      — the exp tilt that `infalign tradeoff --choose` picks for the served procedure and N.
KL is matched by design (docs/math.md §10, core/kl_match.py): each policy is first trained at the β where the
tilt restricted to K samples pays the KL (the finite-K model), then retrained at most `kl_corrections` times with
a secant step in log β on its measured KL, until within `kl_tolerance` nats of its target. Identity's target is
the budget; exp's is the KL identity measured nearest it; of all the pairs of tries, the one whose KLs are
matched (within `kl_match`) and nearest the budget is compared. The two policies are then evaluated together (one
`infalign eval`, identity as baseline): the same held-out prompts, the same base samples, and the paired
difference exp − identity with its interval over prompts — the demo's first line.

Every stage writes under `out/` and is skipped when its output is complete, so a killed demo rerun with the
same command resumes; a rerun with other settings into the same folder is refused.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..artifacts.storage import output_lock, write_json_atomic
from ..artifacts.training_record import TRAIN_INFO
from ..config import (
    DemoConfig,
    EvalConfig,
    PrepareConfig,
    SampleConfig,
    ScoreConfig,
    TrainConfig,
    config_diff,
    config_to_dict,
    load_config,
)
from ..core import tradeoff
from ..core.errors import InfalignError
from ..core.kl_match import Try, matched_pair, nearest, next_beta
from ..core.losses import get_loss
from ..core.transforms import Transform
from ..plots import plot_demo
from ..stages import train as trainer
from ..stages.evaluate import evaluate
from ..stages.prepare import run_prepare
from ..stages.sample import run_sample
from ..stages.score import run_score
from .assets import demo_model_dir

__all__ = ["run_demo", "arms", "showcase"]


def arms(cfg: DemoConfig) -> list[dict[str, Any]]:
    """The two transforms: identity (the baseline) and the chosen exp tilt at the budget (docs/math.md §7)."""
    return [{"name": "identity", "transform": Transform("identity")},
            {"name": "exp", "transform": tradeoff.choose(cfg.procedure, cfg.n, cfg.kl, with_optimum=False).transform}]


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
    path, now = out / "demo_config.json", config_to_dict(cfg)
    if path.is_file():
        diff = config_diff(json.loads(path.read_text()), now, ignore=("out",))
        if diff:
            raise InfalignError(f"{str(out)!r} holds a demo run with other settings ({'; '.join(diff)}); rerun "
                                "with those settings to resume it, or pass a new --out")
    else:
        write_json_atomic(path, now)


def _train(cfg: DemoConfig, model: str, kind: str, name: str, transform, beta: float, round_: int) -> Path:
    """Prepare and train one try (each step skipped when its output is already complete); its adapter folder."""
    data, tag = Path(cfg.out) / "data", f"{name}_r{round_}"
    prepared, adapter = data / f"prepared_{tag}", Path(cfg.out) / f"adapter_{tag}"
    run_prepare(load_config(PrepareConfig, None, dict(
        input=str(data / "scored"), out=str(prepared), kind=kind, transform=transform.name,
        tilt=transform.tilt, beta=beta, procedure=cfg.procedure, n=cfg.n, seed=cfg.seed)))
    if not (adapter / TRAIN_INFO).is_file():
        # A training killed after a checkpoint resumes from the newest complete one by itself (checkpoints.py).
        trainer.train(load_config(TrainConfig, None, dict(
            dataset=str(prepared), model=model, loss=cfg.loss, out=str(adapter), max_steps=cfg.max_steps,
            learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.per_device_train_batch_size,
            num_train_epochs=1000.0, logging_steps=max(1, cfg.max_steps // 5), seed=cfg.seed)))
    return adapter


def _eval_config(cfg: DemoConfig, model: str, policies: list[str], out: Path) -> EvalConfig:
    # The samples are kept in out/eval: the base side's, drawn by the first evaluation and reused by every later
    # one, and each try's, which the comparison reuses for the two it compares.
    return load_config(EvalConfig, None, dict(
        policy=policies, model=model, reward_model="demo", prompts="demo", split="test", limit=cfg.eval_prompts,
        procedure=[cfg.procedure], n=sorted({1, cfg.n}), samples=cfg.eval_samples,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, out=str(out), samples_cache=str(Path(cfg.out) / "eval"),
        plots=False, kl_tolerance=cfg.kl_match, batch_size=32))  # a tiny model: big batches, fewer calls


def _measure(cfg: DemoConfig, model: str, adapter: Path, name: str, round_: int) -> dict[str, Any]:
    """Evaluate one try (skipped when done): its report."""
    ev = Path(cfg.out) / "tries" / f"{name}_r{round_}"
    if (ev / "report.json").is_file():
        return json.loads((ev / "report.json").read_text())
    return evaluate(_eval_config(cfg, model, [str(adapter)], ev))


def _match(cfg: DemoConfig, model: str, kind: str, arm: dict[str, Any], target: float,
           log: Callable[[str], None], step: str) -> list[dict[str, Any]]:
    """Train and measure until the measured KL is within kl_tolerance of `target` (core/kl_match.py)."""
    name, transform, tries = arm["name"], arm["transform"], []
    while (beta := next_beta(transform, target, cfg.num_samples, [Try(t["beta"], t["kl"]) for t in tries],
                             cfg.kl_tolerance, cfg.kl_corrections)) is not None:
        why = (f"where the tilt restricted to K={cfg.num_samples} samples pays KL {target:.3f}" if not tries else
               f"a secant step from the measured KL {tries[-1]['kl']:.3f}")
        log(f"[{step}] {name}: {transform}, beta={beta:.4f} ({why}) → prepare, train {cfg.max_steps} steps "
            f"({cfg.loss}), measure")
        adapter = _train(cfg, model, kind, name, transform, beta, len(tries))
        report = _measure(cfg, model, adapter, name, len(tries))
        served = report["results"][cfg.procedure][str(cfg.n)]
        tries.append({"beta": beta, "kl": report["kl"], "kl_stderr": report["kl_stderr"],
                      "win_rate": served["win_rate"], "adapter": str(adapter)})
        log(f"       measured KL {report['kl']:.3f} ± {report['kl_stderr']:.3f} (target {target:.3f}), "
            f"{cfg.procedure}-{cfg.n} win rate {served['win_rate']:.3f}")
    return tries


def _arm_summary(cfg: DemoConfig, name: str, transform, report: dict[str, Any], tries, folder: Path) -> dict:
    """One policy's row of the demo report, from the comparison's evaluation."""
    served = report["results"][cfg.procedure][str(cfg.n)]
    try:  # where the measured point would sit on its transform's predicted curve (docs/math.md §4)
        at_kl = tradeoff.predict(transform, tradeoff.beta_for_kl(transform, max(report["kl"], 1e-4)),
                                 cfg.procedure, cfg.n).win_rate
    except InfalignError:
        at_kl = None
    return {
        "name": name, "transform": str(transform), "tilt": transform.tilt, "beta": report["beta"],
        "kl": report["kl"], "kl_stderr": report["kl_stderr"], "predicted_kl": report["predicted_kl"],
        "win_rate": served["win_rate"], "ci_low": served["ci_low"], "ci_high": served["ci_high"],
        "predicted_win_rate": served["predicted"], "predicted_at_measured_kl": at_kl,
        "standard_win_rate": report["standard_win_rate"]["win_rate"],
        "mean_reward": report["mean_reward"]["policy"], "base_mean_reward": report["mean_reward"]["base"],
        "examples": showcase(folder / "samples.jsonl"), "adapter": report["policy"],
        "tries": [{k: t[k] for k in ("beta", "kl", "kl_stderr", "win_rate")} for t in tries],
    }


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the demo; write `out/demo_report.json` and `out/demo_tradeoff.png`; return the report.

    The folder is locked for the run (storage.output_lock): a second run into it is refused at once. Each
    stage also locks its own subfolder (different files: no stage waits on the demo's lock); the demo's
    folder holds its stages' folders by design (own_subfolders).
    """
    with output_lock(cfg.out, own_subfolders=True):
        return _run_demo(cfg, log)


def _run_demo(cfg: DemoConfig, log: Callable[[str], None]) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = get_loss(cfg.loss).kind
    _claim(out, cfg)
    clock, timings = time.perf_counter(), {}

    def lap(what: str) -> None:  # wall seconds per part (a resumed run counts only what it redid)
        nonlocal clock
        now = time.perf_counter()
        timings[what], clock = round(now - clock, 2), now

    model = str(demo_model_dir(cache_dir=cfg.cache_dir, train_steps=cfg.model_train_steps))
    log(f"[1/4] sample K={cfg.num_samples} completions for {cfg.num_prompts} prompts from the demo base model "
        "and score them")
    data = out / "data"
    run_sample(load_config(SampleConfig, None, dict(
        prompts="demo", model=model, out=str(data / "samples"), num_samples=cfg.num_samples,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, limit=cfg.num_prompts, batch_size=16)))
    run_score(load_config(ScoreConfig, None, dict(
        input=str(data / "samples"), reward_model="demo", out=str(data / "scored"))))
    lap("sample_and_score_s")

    identity, tilted = arms(cfg)
    identity_tries = _match(cfg, model, kind, identity, cfg.kl, log, "2/4")
    lap("identity_s")
    # The exp policy is matched to the KL identity measured nearest the budget; then, of all the pairs of tries,
    # the matched one nearest the budget is compared (core.kl_match.matched_pair: KLs only, never win rates).
    exp_tries = _match(cfg, model, kind, tilted, nearest([_as_try(t) for t in identity_tries], cfg.kl).kl, log,
                       "3/4")
    lap("exp_s")
    pair = matched_pair([_as_try(t) for t in identity_tries], [_as_try(t) for t in exp_tries], cfg.kl,
                        cfg.kl_match)
    adapters = {name: next(t["adapter"] for t in tries if t["beta"] == chosen.beta)
                for name, tries, chosen in (("identity", identity_tries, pair[0]), ("exp", exp_tries, pair[1]))}

    log("[4/4] evaluate both together: the same prompts, the same base samples, the paired difference")
    ev = out / "eval"
    if (ev / "report.json").is_file() and "comparisons" in json.loads((ev / "report.json").read_text()):
        report = json.loads((ev / "report.json").read_text())
    else:
        for leftover in ("identity", "exp"):  # a comparison killed midway starts over
            shutil.rmtree(ev / leftover, ignore_errors=True)
        report = evaluate(_eval_config(cfg, model, [f"identity={adapters['identity']}",
                                                    f"exp={adapters['exp']}"], ev))
    lap("comparison_s")
    c = report["comparisons"]["exp"]
    served, standard = c["results"][cfg.procedure][str(cfg.n)], c["standard"]
    comparison = {
        "policy": "exp", "baseline": "identity", "procedure": cfg.procedure, "n": cfg.n,
        "num_prompts": report["num_prompts"], "difference": served["difference"],
        "ci": [served["ci_low"], served["ci_high"]], "kl": c["kl"], "kl_stderr": c["kl_stderr"],
        "kl_matched": c["kl_matched"], "kl_tolerance": c["kl_tolerance"], "confidence": report["confidence"],
        "standard": {"difference": standard["difference"], "ci": [standard["ci_low"], standard["ci_high"]]},
    }
    results = [_arm_summary(cfg, name, arm["transform"], report["policies"][name], tries, ev / name)
               for name, arm, tries in (("identity", identity, identity_tries), ("exp", tilted, exp_tries))]
    summary = {"comparison": comparison, "procedure": cfg.procedure, "n": cfg.n, "kl_budget": cfg.kl,
               "loss": cfg.loss, "model": model, "arms": results,
               "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    summary["plot"] = str(plot_demo(results, cfg.procedure, cfg.n, cfg.kl, out / "demo_tradeoff.png", comparison))
    lap("plot_s")
    summary["timings"] = timings
    (out / "demo_report.json").write_text(json.dumps(summary, indent=2))
    return summary


def _as_try(t: dict[str, Any]):
    return Try(t["beta"], t["kl"])
