"""The paper's effect on a real pretrained model: a learned reward, a held-out judge, arms at matched KL.

One sampling run (review requests × K base samples, scored by the training reward) feeds every arm:
  dpo       DPO on (best, worst) raw-reward pairs (prepare's `pairs: best_worst`), β = 0.1, KL matched by steps
  identity  calibrated RLHF, Φ(u) = u — the baseline
  log       Φ(u) = log u
  exp_bon   the exp tilt `infalign tradeoff --choose` picks for best-of-N (t > 0)
  exp_won   the same for worst-of-N (t < 0)
KL is matched by design (effect_arms.py, core/kl_match.py): identity to the budget, every other arm to the KL
identity measured — the finite-K β first, then secant corrections in log β on the measured KL. Every try is
evaluated for best-of-N and worst-of-N on the same held-out prompts against ONE set of base samples, so the
differences arm − identity are paired by prompt (report.compare), by the training reward AND by a held-out judge.

Profiles (--profile; auto: gemma-gpu with a GPU, smollm2-cpu without):
  gemma-gpu    Gemma 3 270M (base; gemma.py), "Customer review of the <place>:" continued, every arm, K = 32,
               300 prompts, vLLM when importable (in a subprocess, so its GPU memory is returned)
  smollm2-cpu  SmolLM2-135M-Instruct (smollm2.py), asked in a chat turn for a one-sentence review, identity and
               exp_bon, sized for about an hour on a 2-core CPU from measured per-token costs (cost.py,
               benchmarks/README.md "Real model on a CPU")
  toy (--toy)  the demo's base model and reward, a dozen prompts, K = 8, a few steps: plumbing, not the effect
Both real profiles: reward benchmarks.real.rewards:minilm_sentiment (all-MiniLM-L6-v2 + a logistic head on the
demo's labelled sentences, stored as JSON), judge benchmarks.real.rewards:tfidf_judge (character n-gram TF-IDF +
logistic regression); training prompts from the demo's 960 openings minus its 64 test ones, evaluation on those.
The model conversion (first use) is not counted in the run time.

    make real-effect     # = .venv/bin/python benchmarks/real/effect.py --out runs/real_effect
    .venv/bin/python benchmarks/real/effect.py --toy --out runs/real_effect_toy

Writes OUT/results.json (every try, setting and timing), OUT/results.md (the table, the comparisons and the
median samples before/after) and OUT/effect.png (best-of-N and worst-of-N panels: measured points on the predicted
curves, the judge's win rate as hollow markers). Finished trainings and evaluations are reused on a rerun with the
same --out; a rerun with other settings into it is refused.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(HERE), str(ROOT / "benchmarks"), str(ROOT)):  # gemma, reproduce_tradeoff, benchmarks.real.rewards
    if _p not in sys.path:
        sys.path.insert(0, _p)

import models  # noqa: E402
from effect_arms import Effect, run_budget  # noqa: E402
from effect_report import JUDGE, goals, report  # noqa: E402

REAL_REWARD = "benchmarks.real.rewards:minilm_sentiment"
ARMS = ["dpo", "identity", "log", "exp_bon", "exp_won"]
# How a demo opening ("review of the cozy cafe in town:") becomes a prompt: a base model continues a review, an
# instruct model is asked for one (a chat turn rendered by its template).
PROMPT_STYLES = {
    "continue": lambda p: f"Customer {p}\n",
    "toy": lambda p: p,
    "chat": models.review_request,
}
_MATCH = dict(kl_corrections=2, kl_tolerance=0.02, kl_match=0.03)  # core.kl_match's defaults, the demo's
PROFILES = {
    # One H100/H200: Gemma 3 270M, 300 prompts × 32 samples, every arm (≤ 3 tries each) and its evaluations.
    "gemma-gpu": dict(base="gemma", prompt_style="continue", arms=ARMS, budgets=[0.3], n=4, num_prompts=300,
                      num_samples=32, max_new_tokens=48, eval_prompts=64, eval_samples=24, steps=120,
                      learning_rate=1e-3, warmup_steps=10, batch_size=4, lora_r=16, dpo_beta=0.1, dpo_steps=8,
                      dpo_tries=2, **_MATCH, sample_batch_size=32, eval_batch_size=16,
                      stop_token_ids=[106, 108], model_train_steps=None),  # <end_of_turn>, "\n\n": one paragraph
    # This 2-core CPU, about an hour: SmolLM2-135M-Instruct asked for one-sentence reviews in a chat turn,
    # identity and the best-of-4 tilt, one KL correction each; each training one epoch over the 16 prompts. Sizes
    # from the per-token costs cost.py measured (benchmarks/README.md, "Real model on a CPU"); lr 5e-3 diverged
    # (KL 27 nats in 16 steps). The stop set is the model's own.
    "smollm2-cpu": dict(base="smollm2", prompt_style="chat", arms=["identity", "exp_bon"], budgets=[0.2], n=4,
                        num_prompts=16, num_samples=16, max_new_tokens=40, eval_prompts=32, eval_samples=8,
                        steps=16, learning_rate=5e-4, warmup_steps=2, batch_size=1, lora_r=16, dpo_beta=0.1,
                        dpo_steps=4, dpo_tries=2, **{**_MATCH, "kl_corrections": 1}, sample_batch_size=8,
                        eval_batch_size=8, stop_token_ids=[], model_train_steps=None),
    # CPU, seconds: checks the plumbing and the report, not the effect.
    "toy": dict(base="toy", prompt_style="toy", arms=ARMS, budgets=[0.3], n=4, num_prompts=12, num_samples=8,
                max_new_tokens=12, eval_prompts=6, eval_samples=6, steps=4, learning_rate=5e-3, warmup_steps=0,
                batch_size=2, lora_r=8, dpo_beta=0.1, dpo_steps=2, dpo_tries=2, **_MATCH, sample_batch_size=12,
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
                 "warmup_steps", "batch_size", "lora_r", "dpo_steps", "dpo_tries", "kl_corrections",
                 "sample_batch_size", "eval_batch_size"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    p.add_argument("--kl-tolerance", type=float, help="nats: a try this close to its target KL ends the matching")
    p.add_argument("--kl-match", type=float, help="nats: two arms' KLs this close are reported as matched")
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
        results["comparisons"] = {}
        for budget in a.budgets:
            per_arm, comparisons = run_budget(effect, budget, eval_file, log)
            results["budgets"][str(budget)], results["comparisons"][str(budget)] = per_arm, comparisons
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
