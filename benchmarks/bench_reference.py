"""One precision for the reference (docs/math.md §9): how far apart the log-probs of the same sampled ids are when
computed by different code or in another precision, and what the trainer's self-check costs.

On one model and one set of completions drawn by the hf sampler in float32 (the ids fixed, every number below is
about the same sequences), side by side in one run:
  - the hf sampler's own float32 numbers (KV-cache decode) vs a float32 teacher-forced pass (batched);
  - float32 teacher forcing: one sequence per batch vs batched (float32's own rounding with the batch shape);
  - bfloat16 teacher forcing: one sequence per batch vs batched (bf16's own rounding with the batch shape);
  - bfloat16 vs float32 teacher forcing (what a bf16 reference read by float32 training is off by);
  - the self-check's cost (`reference.check_stored_reference`, 32 sequences through the group forward, float32
    and bf16 weights) beside one per-row no-grad forward of all the sequences.
Gaps are |a - b| in nats: mean and max per sequence, and per token (Σ|gap| / Σ tokens; max of |gap| / tokens).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reference.py              # Gemma 3 270M (cached)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reference.py --tiny       # a tiny random Llama
vLLM's own numbers (its scoring pass at float32 and at its default dtype) are measured by the vLLM lane:
`make vllm-check` (tests/test_vllm_lane.py on a tiny Llama; benchmarks/real/check_fidelity.py on Gemma 3 270M).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "real"))
sys.path.insert(0, str(ROOT.parent / "tests"))

PROMPTS = ["review of the old cafe by the river:", "Tell me about dogs.", "The weather today is", "Once upon a time",
           "Write a short poem about the sea.", "The best way to learn a language is", "My favourite film is",
           "Explain why the sky is blue."]


def _gaps(a, b, tokens) -> dict:
    g = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    n = np.asarray(tokens, np.float64)
    return {"seq_mean": float(g.mean()), "seq_max": float(g.max()), "tok_mean": float(g.sum() / n.sum()),
            "tok_max": float((g / n).max())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of Gemma 3 270M")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offline_infalign.kinds import get_kind
    from offline_infalign.models.logprobs import ids_logps
    from offline_infalign.models.sampling import sample_completions
    from offline_infalign.training.reference import check_stored_reference

    if args.tiny:
        from tiny_models import save_tiny_lm

        path = str(save_tiny_lm(Path(tempfile.mkdtemp()) / "lm", tokenizer="bpe"))
    else:
        from gemma import gemma_dir

        path = str(gemma_dir())
    tok = AutoTokenizer.from_pretrained(path)
    m32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    m16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    prompts = PROMPTS
    res = sample_completions(m32, tok, prompts, [f"p{i}" for i in range(len(prompts))], args.num_samples,
                             args.max_new_tokens, seed=0, batch_size=len(prompts), progress=False)
    P = [r["prompt_ids"] for r in res for _ in r["completion_ids"]]
    C = [c for r in res for c in r["completion_ids"]]
    n = [len(c) for c in C]
    sampler = [x for r in res for x in r["ref_logps"]]

    def tf(model, batch):
        return ids_logps(model, P, C, tok.pad_token_id, batch).astype(np.float64)

    f32_b, f32_1, b16_b, b16_1 = tf(m32, len(C)), tf(m32, 1), tf(m16, len(C)), tf(m16, 1)
    rows = {
        "hf sampler float32 vs float32 teacher forcing": _gaps(sampler, f32_b, n),
        "float32 teacher forcing: 1 per batch vs batched": _gaps(f32_1, f32_b, n),
        "bfloat16 teacher forcing: 1 per batch vs batched": _gaps(b16_1, b16_b, n),
        "bfloat16 vs float32 teacher forcing": _gaps(b16_b, f32_b, n),
    }
    # The self-check on a listwise dataset of these rows (stored = the sampler's numbers), against one per-row
    # no-grad forward of all the sequences.
    data = Dataset.from_list([{"prompt_ids": r["prompt_ids"], "completion_ids": r["completion_ids"],
                               "ref_logps": r["ref_logps"], "targets": [0.0] * len(r["completion_ids"]),
                               "weight": 1.0} for r in res])
    kind, cost = get_kind("listwise"), {}
    for name, model in (("float32", m32), ("bfloat16", m16)):
        check = check_stored_reference(model, data, kind, tok.pad_token_id, num_sequences=32, seed=0)
        t0 = time.perf_counter()
        with torch.no_grad():
            tf(model, len(C))
        cost[name] = {"check_s": check["seconds"], "check_sequences": check["sequences"],
                      "one_forward_of_the_batch_s": round(time.perf_counter() - t0, 3),
                      "check_gap_tok_mean": check["gap_per_token"]["mean"]}
    result = {"model": path, "sequences": len(C), "mean_tokens": float(np.mean(n)), "gaps": rows, "self_check": cost}
    print(f"{path}: {len(C)} completions, {np.mean(n):.1f} tokens on average")
    print(f"{'':50s} {'seq mean':>9s} {'seq max':>9s} {'tok mean':>9s} {'tok max':>9s}")
    for name, g in rows.items():
        print(f"{name:50s} {g['seq_mean']:9.2e} {g['seq_max']:9.2e} {g['tok_mean']:9.2e} {g['tok_max']:9.2e}")
    for name, c in cost.items():
        print(f"self-check, {name} weights: {c['check_s']:.2f} s for {c['check_sequences']} sequences "
              f"(one no-grad forward of all {len(C)}: {c['one_forward_of_the_batch_s']:.2f} s); "
              f"gap {c['check_gap_tok_mean']:.2e} nats/token")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
