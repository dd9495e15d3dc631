"""Per-token costs of the effect benchmark's stages on a real model, measured through the stages themselves.

What sizes the CPU profile of effect.py (benchmarks/README.md, "Real model on a CPU"): on a few prompts
in the profile's form and shapes (chat prompts, K samples, max_new_tokens, LoRA rank, batch of prompts),
  sample  base completions with the hf sampler (shared prefill): generated tokens/s;
  score   the MiniLM reward: completions/s;
  train   listwise LoRA steps (the group forward, stored reference): s/step and real tokens/s of forward+backward,
          from two trainings of S1 and S2 steps (the difference, so model loading is not counted);
  eval    `infalign eval` of that adapter on E prompts × M samples per side: policy and base sampling, reward,
          teacher-forced log-probs for the KL: s per policy sample and per sampled token.
Real tokens only (no padding). The load average is recorded beside: on a shared 2-core machine it matters.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real/cost.py --out runs/real_cost
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parents[1])):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import effect  # noqa: E402
import models  # noqa: E402


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/real_cost")
    p.add_argument("--profile", default="smollm2-cpu", choices=[k for k in effect.PROFILES if k != "toy"])
    p.add_argument("--prompts", type=int, default=4, help="training prompts sampled")
    p.add_argument("--steps", type=int, nargs=2, default=[1, 3], help="S1 S2: the two trainings' step counts")
    p.add_argument("--eval-prompts", type=int, default=2)
    p.add_argument("--eval-samples", type=int, default=8)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _args(argv)
    import numpy as np
    import torch

    from offline_infalign.config import (
        EvalConfig,
        PrepareConfig,
        SampleConfig,
        ScoreConfig,
        TrainConfig,
        load_config,
    )
    from offline_infalign.stages.evaluate import evaluate
    from offline_infalign.stages.prepare import run_prepare
    from offline_infalign.stages.sample import run_sample
    from offline_infalign.stages.score import run_score
    from offline_infalign.stages.train import train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = effect._args(["--profile", args.profile, "--num-prompts", str(args.prompts), "--eval-prompts",
                      str(args.eval_prompts)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = str(models.get(a.base).folder())
    train_file, eval_file = effect._prompt_files(a, out / "data")
    result: dict = {"profile": args.profile, "model": model, "threads": torch.get_num_threads(),
                    "load_before": os.getloadavg()}

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    samples = out / "samples"
    sample_s = timed(lambda: run_sample(load_config(SampleConfig, None, dict(
        prompts=str(train_file), model=model, out=str(samples), num_samples=a.num_samples,
        max_new_tokens=a.max_new_tokens, seed=0, batch_size=a.sample_batch_size,
        stop_token_ids=a.stop_token_ids or None, backend="hf"))))
    tokens = effect._token_counts(samples)
    result["sample"] = {**tokens, "s": sample_s, "tokens_per_s": tokens["sample_completion_tokens"] / sample_s}
    score_s = timed(lambda: run_score(load_config(ScoreConfig, None, dict(
        input=str(samples), reward_model=effect.REAL_REWARD, out=str(out / "scored"), batch_size=256))))
    result["score"] = {"s": score_s, "completions_per_s": tokens["sample_completions"] / score_s,
                       "note": "includes loading the encoder (and fitting its head when not cached)"}
    run_prepare(load_config(PrepareConfig, None, dict(input=str(out / "scored"), out=str(out / "prepared"),
                                                      kind="listwise", transform="identity", beta=0.3,
                                                      test_fraction=0.0)))
    train_s = []
    for steps in args.steps:
        train_s.append(timed(lambda steps=steps: train(load_config(TrainConfig, None, dict(
            dataset=str(out / "prepared"), model=model, loss="listwise", beta=0.3, out=str(out / f"adapter_{steps}"),
            max_steps=steps, learning_rate=a.learning_rate, warmup_steps=0, lora_r=a.lora_r,
            per_device_train_batch_size=a.batch_size, num_train_epochs=1000.0, logging_steps=1, save_steps=None)))))
    step_s = (train_s[1] - train_s[0]) / (args.steps[1] - args.steps[0])
    step_tokens = a.batch_size * tokens["row_tokens"]
    result["train"] = {"runs_s": train_s, "steps": args.steps, "s_per_step": step_s,
                       "tokens_per_step": step_tokens, "tokens_per_s": step_tokens / step_s,
                       "overhead_s": train_s[0] - args.steps[0] * step_s}
    ev = out / "eval"
    eval_s = timed(lambda: evaluate(load_config(EvalConfig, None, dict(
        policy=str(out / f"adapter_{args.steps[0]}"), model=model, reward_model=effect.REAL_REWARD,
        prompts=str(eval_file), limit=args.eval_prompts, procedure=["bon"], n=[1, a.n], samples=args.eval_samples,
        max_new_tokens=a.max_new_tokens, seed=0, out=str(ev), plots=False, batch_size=a.eval_batch_size))))
    rep = json.loads((ev / "report.json").read_text())
    lengths = rep.get("mean_length") or {}
    sampled = args.eval_prompts * args.eval_samples * sum(float(lengths.get(s, 0)) for s in ("policy", "base"))
    result["eval"] = {"s": eval_s, "prompts": args.eval_prompts, "samples": args.eval_samples,
                      "mean_length": lengths, "sampled_tokens": sampled,
                      "s_per_policy_sample": eval_s / (args.eval_prompts * args.eval_samples),
                      "s_per_sampled_token": eval_s / max(sampled, 1)}
    result["load_after"] = os.getloadavg()
    (out / "cost.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1, default=lambda x: float(np.asarray(x))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
