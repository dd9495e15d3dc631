"""hf sampling backend: batched prompts vs one prompt at a time, and ref_logps from the sampler's logits vs a
second teacher-forced pass, in one run.

Both batching modes call `sampling.sample_completions` (generation, with `ref_logps` summed from the logits
the sampler reads) on the same prompts with the same seed; only `batch_size` (prompts per `generate` call)
differs. Because draws are seeded per prompt, both modes must produce the same completions, which the script
checks and reports. The second table times, at the batched setting, `sample_completions` alone against
`sample_completions` followed by the teacher-forced pass over the same ids (`sampling.compute_ref_logps`,
batch_size x K rows per forward as the sampler used to run it) — what the sampler cost before it read log-probs
from its own logits — and checks that both give the same ref_logps.

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

from offline_infalign.sampling import compute_ref_logps, sample_completions  # noqa: E402
from tests.tiny_models import WORDS, tiny_causal_lm, tiny_tokenizer  # noqa: E402


def _prompts(n: int) -> list[str]:
    return [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(4 + i % 9)) for i in range(n)]


def _once(model, tok, prompts, ids, args, batch_size, teacher=False):
    """One timed sample_completions (+ the teacher-forced pass over its ids when `teacher`): (result, teacher
    log-probs, wall seconds, CPU seconds). CPU time of this single-threaded process is what the comparison uses:
    on a shared machine wall-clock time mostly measures the neighbours."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = sample_completions(model, tok, prompts, ids, num_samples=args.num_samples,
                                max_new_tokens=args.max_new_tokens, seed=0, batch_size=batch_size, progress=False)
    teacher_logps = None
    if teacher:
        flat = [p for p in prompts for _ in range(args.num_samples)]
        teacher_logps = compute_ref_logps(model, tok, flat, [c for r in result for c in r["completion_ids"]],
                                          batch_size=batch_size * args.num_samples)
    return result, teacher_logps, time.perf_counter() - w0, time.process_time() - c0


def _stats(result, batch_size, wall, cpu):
    completions = sum(len(r["completion_ids"]) for r in result)
    tokens = sum(len(c) for r in result for c in r["completion_ids"])
    return {"batch_size": batch_size, "seconds": min(wall), "cpu_seconds": min(cpu),
            "completions_per_s": completions / min(wall), "tokens_per_s": tokens / min(wall), "tokens": tokens}


def _run(model, tok, prompts, ids, args, batch_size):
    runs = [_once(model, tok, prompts, ids, args, batch_size) for _ in range(args.repeats)]
    return runs[-1][0], _stats(runs[-1][0], batch_size, [r[2] for r in runs], [r[3] for r in runs])


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
    # Sampler's logits vs + a teacher-forced pass: interleaved, so both see the same machine load.
    pairs = [(_once(model, tok, prompts, ids, args, args.batch_size),
              _once(model, tok, prompts, ids, args, args.batch_size, teacher=True)) for _ in range(args.repeats)]
    new = _stats(pairs[-1][0][0], args.batch_size, [a[2] for a, _ in pairs], [a[3] for a, _ in pairs])
    two = _stats(pairs[-1][1][0], args.batch_size, [b[2] for _, b in pairs], [b[3] for _, b in pairs])
    teacher_logps = pairs[-1][1][1]
    same = [a["completion_ids"] for a in one_res] == [b["completion_ids"] for b in bat_res]
    ratio = bat["completions_per_s"] / one["completions_per_s"]
    stored = [x for r in pairs[-1][1][0] for x in r["ref_logps"]]
    max_diff = max(abs(a - b) for a, b in zip(stored, teacher_logps))
    saved = 1 - new["cpu_seconds"] / two["cpu_seconds"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread, no GPU")
    print(f"model: Llama hidden {args.hidden_size}, {args.layers} layers, random init; P={args.prompts} prompts x "
          f"K={args.num_samples}, max_new_tokens={args.max_new_tokens}, best of {args.repeats}")
    print("| mode | batch_size (prompts) | seconds | completions/s | tokens/s |")
    print("|---|---|---|---|---|")
    for name, r in (("one prompt at a time", one), ("batched", bat)):
        print(f"| {name} | {r['batch_size']} | {r['seconds']:.2f} | {r['completions_per_s']:.1f} | "
              f"{r['tokens_per_s']:.0f} |")
    print(f"speed-up batched / one-at-a-time: {ratio:.1f}x (goal >= 5x); identical completions: {same}")
    print()
    print("| ref_logps | CPU seconds | wall seconds |")
    print("|---|---|---|")
    for name, r in (("from the sampler's logits", new), ("+ a teacher-forced pass (before)", two)):
        print(f"| {name} | {r['cpu_seconds']:.2f} | {r['seconds']:.2f} |")
    print(f"CPU time saved by the sampler's logits: {saved:.0%} (before / now: "
          f"{two['cpu_seconds'] / new['cpu_seconds']:.2f}x); max |difference| of ref_logps: {max_diff:.1e} nats")
    print(json.dumps({"one_at_a_time": one, "batched": bat, "sampler_logits": new, "plus_teacher_pass": two,
                      "ratio": ratio, "identical": same, "cpu_time_saved": saved, "max_ref_logp_diff": max_diff}))


if __name__ == "__main__":
    main()
