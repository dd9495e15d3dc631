"""The effect benchmark's runs: base data, one try per (arm, β), KL matching, the paired comparison, the judge.

Split from effect.py (settings and the command line) and effect_report.py (table and plot).

KL is matched by design as the demo does (docs/math.md §10, core/kl_match.py): identity, the baseline, first trains
at the β where the tilt restricted to K samples pays the budget (finite_k.finite_k_beta), then at most
`kl_corrections` secant corrections in log β on its measured KL, until within `kl_tolerance` nats; every other
listwise arm is matched the same way to the KL identity measured, so the comparison is at matched KL. DPO keeps its
β and is matched by its step count (its KL does not follow β on deterministic pairs). Every try is evaluated on
the same held-out prompts against ONE set of base samples (kept in OUT/evals/cache and reused by every
evaluation), so the chosen tries' samples give the paired comparison directly (report.compare) without drawing
them again.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from effect_report import JUDGE
from reproduce_tradeoff import _next_steps, _theory_at_kl

__all__ = ["Effect", "run_budget", "token_counts"]


def _backend(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"


def _cli(command: str, settings: dict) -> list[str]:
    """The `infalign COMMAND` command line (python -m offline_infalign) that runs `settings`."""
    cmd = [sys.executable, "-m", "offline_infalign", command]
    for key, value in settings.items():
        if value is not None:
            flag = "--" + key.replace("_", "-")
            cmd += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return cmd


def token_counts(samples: Path) -> dict:
    """Real tokens of the base samples (no padding): what the per-token costs are measured against."""
    from offline_infalign.artifacts.storage import load_artifact

    rows, _ = load_artifact(samples)
    comp = [len(ids) for r in rows for ids in r["completion_ids"]]
    prompt = [len(r["prompt_ids"]) for r in rows]
    return {"sample_completion_tokens": int(sum(comp)), "sample_completions": len(comp),
            "mean_prompt_tokens": float(np.mean(prompt)), "mean_completion_tokens": float(np.mean(comp)),
            # One listwise row (a prompt and its K completions) in the group forward: the prompt once.
            "row_tokens": float(np.mean(prompt) + sum(comp) / len(rows))}


def _load_rows(ev: Path) -> list[dict]:
    with open(ev / "samples.jsonl") as fh:
        return [json.loads(line) for line in fh]


class Effect:
    """The runs of one benchmark folder: data, arms and their tries, judge scores."""

    def __init__(self, a, out: Path, model: str, reward: str):
        self.a, self.out, self.model, self.reward = a, out, model, reward
        self.data, self.timings = out / "data", {}

    def build_data(self, train_file: Path) -> None:
        from offline_infalign.config import SampleConfig, ScoreConfig, load_config
        from offline_infalign.stages.sample import run_sample
        from offline_infalign.stages.score import run_score

        a, samples = self.a, self.data / "samples"
        settings = dict(prompts=str(train_file), model=self.model, out=str(samples), num_samples=a.num_samples,
                        max_new_tokens=a.max_new_tokens, seed=0, batch_size=a.sample_batch_size,
                        stop_token_ids=a.stop_token_ids or None, backend=_backend(a.backend))
        t = time.perf_counter()
        if settings["backend"] == "vllm" and not (samples / "manifest.json").is_file():
            # vLLM holds most of the GPU until its process ends: sample in a child process.
            subprocess.run(_cli("sample", settings), check=True)
        else:
            run_sample(load_config(SampleConfig, None, settings))
        self.timings["sample_s"] = time.perf_counter() - t
        self.timings.update(token_counts(samples))
        t = time.perf_counter()
        run_score(load_config(ScoreConfig, None, dict(input=str(samples), reward_model=self.reward,
                                                      out=str(self.data / "scored"), batch_size=256)))
        self.timings["score_s"] = time.perf_counter() - t
        self.timings["backend"] = settings["backend"]

    def run(self, name: str, transform, beta: float, steps: int, eval_file: Path) -> dict:
        """Prepare, train and evaluate one try (each skipped when already complete); judge its samples."""
        from offline_infalign.config import EvalConfig, PrepareConfig, TrainConfig, load_config
        from offline_infalign.core.losses import get_loss
        from offline_infalign.stages import train as trainer
        from offline_infalign.stages.evaluate import evaluate
        from offline_infalign.stages.prepare import run_prepare

        a, dpo = self.a, name == "dpo"
        loss = "dpo" if dpo else "listwise"
        kind = get_loss(loss).kind
        tag = f"{name}_{beta:.5f}_s{steps}"
        prepared, adapter, ev = (self.data / f"prepared_{name}_{beta:.5f}", self.out / "adapters" / tag,
                                 self.out / "evals" / tag)
        t0 = time.perf_counter()
        if not (adapter / "infalign_train.json").is_file():
            run_prepare(load_config(PrepareConfig, None, dict(
                input=str(self.data / "scored"), out=str(prepared), kind=kind, transform=transform.name,
                tilt=transform.tilt, beta=beta, test_fraction=0.0, pairs="best_worst" if dpo else "all")))
            trainer.train(load_config(TrainConfig, None, dict(
                dataset=str(prepared), model=self.model, loss=loss, beta=beta, out=str(adapter), max_steps=steps,
                learning_rate=a.learning_rate, warmup_steps=min(a.warmup_steps, steps // 4), lora_r=a.lora_r,
                # The same sequences per step for every arm: a listwise row holds K completions, a pair 2.
                per_device_train_batch_size=a.batch_size * (a.num_samples // 2 if dpo else 1),
                num_train_epochs=1000.0, logging_steps=max(1, steps // 5), save_steps=None)))
        t1 = time.perf_counter()
        if not (ev / "report.json").is_file():
            evaluate(load_config(EvalConfig, None, dict(
                policy=str(adapter), model=self.model, reward_model=self.reward, prompts=str(eval_file),
                limit=a.eval_prompts, procedure=["bon", "won"], n=sorted({1, a.n}), samples=a.eval_samples,
                max_new_tokens=a.max_new_tokens, seed=0, out=str(ev), plots=False, batch_size=a.eval_batch_size,
                samples_cache=str(self.out / "evals" / "cache"),  # one set of base samples for every try
                transform=None if dpo else str(transform), beta=None if dpo else beta)))
        t2 = time.perf_counter()
        rep = json.loads((ev / "report.json").read_text())
        rows = _load_rows(ev)
        judged = self.judge(ev, rows)
        return {"name": name, "loss": loss, "transform": str(transform), "beta": beta, "steps": steps,
                "kl": rep["kl"], "kl_stderr": rep["kl_stderr"], "standard": rep["standard_win_rate"],
                "results": rep["results"], "cut_fraction": rep.get("cut_fraction"),
                "mean_length": rep.get("mean_length"), "mean_reward": rep.get("mean_reward"), "judge": judged,
                "per_prompt": {p: self._per_prompt(np.array([r["policy_rewards"] for r in rows]),
                                                   np.array([r["base_rewards"] for r in rows]), p)
                               for p in ("bon", "won")},
                "train_s": t1 - t0, "eval_s": t2 - t1, "eval": str(ev), "samples": str(ev / "samples.jsonl")}

    def _per_prompt(self, pol, base, proc: str) -> list[float]:
        from offline_infalign.core.estimators import per_prompt_win_rates

        return per_prompt_win_rates(pol, base, self.a.n, proc).tolist()

    def judge(self, ev: Path, rows: list[dict]) -> dict:
        """The held-out judge's scores and win rates of one evaluation's samples (cached in judge.json)."""
        from offline_infalign.core.estimators import estimate_win_rate
        from offline_infalign.models.scoring import load_scorer

        path = ev / "judge.json"
        if path.is_file():
            return json.loads(path.read_text())
        scorer = load_scorer(JUDGE)
        scores = {}
        for side in ("policy", "base"):
            flat_p = [r["prompt"] for r in rows for _ in r[f"{side}_completions"]]
            flat_c = [c for r in rows for c in r[f"{side}_completions"]]
            scores[side] = scorer(flat_p, flat_c).reshape(len(rows), -1)
        out = {"judge": JUDGE, "mean": {s: float(v.mean()) for s, v in scores.items()},
               "scores": {s: v.tolist() for s, v in scores.items()}}
        for proc in ("bon", "won"):
            for n in sorted({1, self.a.n}):
                e = estimate_win_rate(scores["policy"], scores["base"], n, proc)
                out.setdefault(proc, {})[str(n)] = {"win_rate": e.win_rate, "ci_low": e.ci_low, "ci_high": e.ci_high}
            out.setdefault("per_prompt", {})[proc] = self._per_prompt(scores["policy"], scores["base"], proc)
        base_reward = np.array([r["base_rewards"] for r in rows]).ravel()
        from scipy.stats import spearmanr

        out["spearman_base"] = float(spearmanr(base_reward, scores["base"].ravel()).statistic)
        path.write_text(json.dumps(out))
        return out


def _transform_of(name: str, budget: float, n: int):
    from offline_infalign.core import tradeoff
    from offline_infalign.core.transforms import Transform

    if name in ("identity", "log", "dpo"):  # dpo: only names the pair set's (unused) targets
        return Transform("identity" if name == "dpo" else name)
    return tradeoff.choose(name.split("_")[1], n, budget, with_optimum=False).transform


def _match(effect: Effect, name: str, transform, target: float, eval_file: Path, log) -> list[dict]:
    """Tries of one listwise arm until its measured KL is within kl_tolerance of `target` (core/kl_match.py)."""
    from offline_infalign.core.kl_match import Try, next_beta

    a, tries = effect.a, []
    while (beta := next_beta(transform, target, a.num_samples, [Try(t["beta"], t["kl"]) for t in tries],
                             a.kl_tolerance, a.kl_corrections)) is not None:
        tries.append(effect.run(name, transform, beta, a.steps, eval_file))
        t = tries[-1]
        log(f"  {name}: beta={beta:.4f} -> KL {t['kl']:.3f} ± {t['kl_stderr']:.3f} (target {target:.3f}); "
            f"train {t['train_s']:.0f} s, eval {t['eval_s']:.0f} s")
    return tries


def run_budget(effect: Effect, budget: float, eval_file: Path, log) -> tuple[dict, dict]:
    """Every arm at one KL budget: identity matched to the budget, the others to identity's measured KL. Returns
    ({arm: its chosen try, with theory and finite-K ceiling at the KL it paid}, the paired comparisons against
    identity, compare_arms; empty without identity)."""
    from offline_infalign.core.finite_k import finite_k_at_kl

    a, per_arm, target = effect.a, {}, budget
    for name in sorted(a.arms, key=lambda x: x != "identity"):  # identity first: it sets the others' target
        transform = _transform_of(name, budget, a.n)
        if name == "dpo":  # β fixed, KL matched by early stopping (reproduce_tradeoff: DPO's KL ignores β)
            tries = [effect.run(name, transform, a.dpo_beta, a.dpo_steps, eval_file)]
            while len(tries) < a.dpo_tries:
                tries.append(effect.run(name, transform, a.dpo_beta, _next_steps(tries, target), eval_file))
        else:
            tries = _match(effect, name, transform, target, eval_file, log)
        best = dict(min(tries, key=lambda r: abs(r["kl"] - target)))
        best["target_kl"] = target
        if name == "identity":
            target = best["kl"]
        for proc in ("bon", "won"):
            if name != "dpo":  # theory and finite-K ceiling of this transform at the KL it paid
                best.setdefault("predicted", {})[proc] = _theory_at_kl(transform, best["kl"], proc, a.n)
                fk = finite_k_at_kl(transform, max(best["kl"], 1e-3), a.num_samples, proc, a.n)
                best.setdefault("finite_k", {})[proc] = None if fk is None else fk.win_rate
        best["tries"] = [{k: t[k] for k in ("beta", "steps", "kl", "kl_stderr", "train_s", "eval_s")} for t in tries]
        per_arm[name] = best
        log(f"KL {budget}: {name:8s} beta={best['beta']:.4f} steps={best['steps']} KL={best['kl']:.3f} "
            f"bon{a.n}={best['results']['bon'][str(a.n)]['win_rate']:.3f} "
            f"won{a.n}={best['results']['won'][str(a.n)]['win_rate']:.3f} "
            f"judge bon{a.n}={best['judge']['bon'][str(a.n)]['win_rate']:.3f}")
    return per_arm, compare_arms(effect, per_arm) if "identity" in per_arm and len(per_arm) > 1 else {}


def compare_arms(effect: Effect, per_arm: dict) -> dict:
    """Each arm − identity, paired by prompt (report.compare), by the training reward and by the judge, from the
    chosen tries' own samples: all were judged against the same base samples on the same prompts (checked)."""
    from offline_infalign.artifacts.report import compare
    from offline_infalign.core.errors import InfalignError

    a, rows = effect.a, {name: _load_rows(Path(r["eval"])) for name, r in per_arm.items()}
    base = {name: np.array([r["base_rewards"] for r in rs]) for name, rs in rows.items()}
    ids = {name: [r["prompt_id"] for r in rs] for name, rs in rows.items()}
    for name in per_arm:
        if ids[name] != ids["identity"] or not np.array_equal(base[name], base["identity"]):
            raise InfalignError(f"arm {name!r} was evaluated on other prompts or base samples than identity: "
                                "its difference would not be paired")
    kls = {name: (r["kl"], r["kl_stderr"]) for name, r in per_arm.items()}
    common = dict(kls=kls, baseline="identity", procedures=["bon", "won"], ns=sorted({1, a.n}),
                  kl_tolerance=a.kl_match)
    policy = {name: np.array([r["policy_rewards"] for r in rs]) for name, rs in rows.items()}
    judge_policy = {name: np.array(r["judge"]["scores"]["policy"]) for name, r in per_arm.items()}
    judge_base = np.array(per_arm["identity"]["judge"]["scores"]["base"])
    return {"reward": compare(policy, base["identity"], **common),
            "judge": compare(judge_policy, judge_base, **common)}
