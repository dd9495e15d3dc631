"""hf sampling backend: batched prompts vs one prompt at a time, in one run.

Both modes call `sampling.sample_completions` (generation + teacher-forced ref_logps) on the same prompts with
the same seed; only `batch_size` (prompts per `generate` call) differs. Because draws are seeded per prompt,
both modes must produce the same completions, which the script checks and reports.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sampling.py [--prompts 32] [--num-samples 4]
        [--max-new-tokens 32] [--batch-size 16] [--repeats 2]

Model: a randomly initialized Llama with the architecture of the package's demo model (hidden 128, 2 layers,
4 heads; `--hidden-size`/`--layers` change it) over the test word-level tokenizer, built from a config (no
download). Random weights rarely emit EOS, so nearly every completion runs to max_new_tokens: the batch never
finishes early, the least favourable case for batching. On CPU a larger model makes batched decoding
compute-bound and the ratio shrinks (hidden 256 / 4 layers measured 5.1x); on a GPU it grows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from offline_infalign.sampling import sample_completions  # noqa: E402
from offline_infalign.tokenization import encode_completion  # noqa: E402
from tests.tiny_models import WORDS, tiny_causal_lm, tiny_tokenizer  # noqa: E402


def _prompts(n: int) -> list[str]:
    return [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(4 + i % 9)) for i in range(n)]


def _run(model, tok, prompts, ids, args, batch_size):
    times, result = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = sample_completions(model, tok, prompts, ids, num_samples=args.num_samples,
                                    max_new_tokens=args.max_new_tokens, seed=0, batch_size=batch_size,
                                    progress=False)
        times.append(time.perf_counter() - t0)
    best = min(times)
    completions = len(prompts) * args.num_samples
    tokens = sum(min(len(encode_completion(tok, c)), args.max_new_tokens) for r in result for c in r["completions"])
    return result, {"batch_size": batch_size, "seconds": best, "completions_per_s": completions / best,
                    "tokens_per_s": tokens / best, "tokens": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
                           num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4)
    prompts = _prompts(args.prompts)
    ids = [f"bench-{i}" for i in range(len(prompts))]
    _run(model, tok, prompts[:2], ids[:2], argparse.Namespace(**{**vars(args), "repeats": 1}), 2)  # warm-up
    one_res, one = _run(model, tok, prompts, ids, args, 1)
    bat_res, bat = _run(model, tok, prompts, ids, args, args.batch_size)
    same = [a["completions"] for a in one_res] == [b["completions"] for b in bat_res]
    ratio = bat["completions_per_s"] / one["completions_per_s"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread, no GPU")
    print(f"model: Llama hidden {args.hidden_size}, {args.layers} layers, random init; P={args.prompts} prompts x "
          f"K={args.num_samples}, max_new_tokens={args.max_new_tokens}, best of {args.repeats}")
    print("| mode | batch_size (prompts) | seconds | completions/s | tokens/s |")
    print("|---|---|---|---|---|")
    for name, r in (("one prompt at a time", one), ("batched", bat)):
        print(f"| {name} | {r['batch_size']} | {r['seconds']:.2f} | {r['completions_per_s']:.1f} | "
              f"{r['tokens_per_s']:.0f} |")
    print(f"speed-up batched / one-at-a-time: {ratio:.1f}x (goal >= 5x); identical completions: {same}")
    print(json.dumps({"one_at_a_time": one, "batched": bat, "ratio": ratio, "identical": same}))


if __name__ == "__main__":
    main()
