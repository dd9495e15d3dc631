"""hf sampling backend, in one run: shared prefill vs `generate` over K copies at realistic shapes; batched vs one
prompt at a time; ref_logps from the sampler's logits vs a second teacher-forced pass.

Section `prefill` (default). `sampling.sample_completions` with decoder="shared_prefill" (each prompt's forward
once, its KV cache repeated for the K draws, ended rows dropped: decoding.py) against decoder="generate" (the
backend before it: transformers' generate over K copies of each prompt, finished rows computed to the end), the
same prompts, seed and prompts per batch, interleaved, best of --repeats by CPU time; plus shared prefill one
prompt at a time (K rows per batch). Model: a randomly initialized Llama of tiny width (hidden 128, 2 layers,
4 heads) with a 32k-word vocabulary, so that every decode step pays a realistic LM head and softmax; prompts of
~200 tokens (190–210, left-padded together); K = 8 and 32. Two completion regimes: "fixed" (random weights
almost never draw EOS: every completion runs to --max-new-tokens 40, nothing to drop) and "varied" (a stop set of
1/40 of the vocabulary, at most 2 x 40 tokens: lengths geometric, mean ~35 — the row dropping at work).
With the same prompts per batch both decoders return the same completion ids (checked and reported) and
ref_logps to float rounding. One prompt per batch changes the padding and matrix shapes, hence the logits' last
bits, and at a 32k vocabulary that moves some draws (the share of identical completions is reported): each prompt's
uniforms are fixed, but a token flips when its uniform lies within the rounding change of a CDF boundary, a
chance that grows with the vocabulary (sampling.py's module doc).

Sections `batching` and `ref_logps` (the small word-level model of the tests, hidden 128, 2 layers):
batched prompts vs one prompt at a time, and the sampler's own log-probs vs + a teacher-forced pass over the
same ids (`sampling.compute_ref_logps`), with the default decoder.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sampling.py [--section prefill|batching|ref_logps|all]
        [--repeats 3] [--prompts 8] [--prompt-tokens 200] [--max-new-tokens 40] [--vocab 32000] [--k 8 32]
        [--hidden-size 128] [--layers 2]

CPU time of this single-threaded process is what the ratios use: on a shared machine wall-clock time mostly
measures the neighbours (wall seconds are printed too).
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

from offline_infalign.models.sampling import compute_ref_logps, sample_completions  # noqa: E402
from tests.tiny_models import SPECIAL, WORDS, tiny_causal_lm, tiny_tokenizer  # noqa: E402


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of `vocab_size` words (the tests' words, then w0, w1, ...): a real vocabulary size
    without a download; no BOS is added, so a prompt of n words is n tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL + WORDS
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def _ids(result):
    return [r["completion_ids"] for r in result]


def section_prefill(args) -> dict:
    tok = word_tokenizer(args.vocab)
    model = tiny_causal_lm(tok, hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
                           num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                           max_position_embeddings=1024)
    print(f"model: Llama hidden {args.hidden_size}, {args.layers} layers, vocabulary {args.vocab}, random init; "
          f"{args.prompts} prompts of {args.prompt_tokens} +- 10 tokens")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.prompt_tokens - 10, args.prompt_tokens + 11, (args.prompts,), generator=g)
    prompts = [" ".join(f"w{int(i)}" for i in torch.randint(0, args.vocab - 100, (int(n),), generator=g))
               for n in lengths]
    ids = [f"bench-{i}" for i in range(len(prompts))]
    varied_stop = [tok.eos_token_id] + list(range(len(SPECIAL) + len(WORDS), args.vocab, 40))  # 1/40 of it
    out = {}
    print("| K | completions | mean length | prompts per batch | generate (CPU s) | shared prefill (CPU s) | "
          "speed-up | shared prefill, 1 prompt per batch (CPU s) | speed-up | same ids as generate | max ref_logps "
          "diff | completions identical, 1 prompt per batch vs batched |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in args.k:
        per_batch = max(1, args.rows // k)
        for regime, stop, steps in (("fixed", None, args.max_new_tokens),
                                    ("varied", varied_stop, 2 * args.max_new_tokens)):
            kw = dict(num_samples=k, max_new_tokens=steps, seed=0, progress=False, stop_token_ids=stop)
            configs = {"generate": dict(batch_size=per_batch, decoder="generate"),
                       "shared": dict(batch_size=per_batch), "shared_one": dict(batch_size=1)}
            runs = {name: [] for name in configs}
            for _ in range(args.repeats):  # interleaved: every configuration sees the same machine load
                for name, c in configs.items():
                    runs[name].append(_timed(lambda c={**kw, **c}: sample_completions(model, tok, prompts, ids, **c)))
            cpu = {name: min(r[2] for r in rs) for name, rs in runs.items()}
            wall = {name: min(r[1] for r in rs) for name, rs in runs.items()}
            ref, new, one = (runs[n][-1][0] for n in ("generate", "shared", "shared_one"))
            same = _ids(ref) == _ids(new)  # the same prompts per batch: the same padding and shapes
            flat = [(a, b) for r, s in zip(new, one) for a, b in zip(r["completion_ids"], s["completion_ids"])]
            one_same = sum(a == b for a, b in flat) / len(flat)
            diff = max(abs(a - b) for r, s in zip(ref, new) for a, b in zip(r["ref_logps"], s["ref_logps"]))
            mean_len = sum(len(c) for r in new for c in r["completion_ids"]) / (len(prompts) * k)
            row = {"k": k, "regime": regime, "max_new_tokens": steps, "mean_length": mean_len,
                   "prompts_per_batch": per_batch, "cpu_seconds": cpu, "wall_seconds": wall,
                   "speedup": cpu["generate"] / cpu["shared"], "speedup_one": cpu["generate"] / cpu["shared_one"],
                   "identical_ids": same, "one_per_batch_identical_fraction": one_same,
                   "max_ref_logp_diff": diff}
            out[f"k{k}_{regime}"] = row
            print(f"| {k} | {regime} (max {steps}) | {mean_len:.1f} | {per_batch} | {cpu['generate']:.2f} | "
                  f"{cpu['shared']:.2f} | **{row['speedup']:.2f}x** | {cpu['shared_one']:.2f} | "
                  f"{row['speedup_one']:.2f}x | {same} | {diff:.1e} | {one_same:.0%} |", flush=True)
    return out


def _small_model():
    tok = tiny_tokenizer()
    return tok, tiny_causal_lm(tok, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=4)


def _small_prompts(n: int) -> list[str]:
    return [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(4 + i % 9)) for i in range(n)]


def section_batching(args) -> dict:
    tok, model = _small_model()
    prompts, k = _small_prompts(32), 4
    ids = [f"bench-{i}" for i in range(len(prompts))]
    kw = dict(num_samples=k, max_new_tokens=32, seed=0, progress=False)
    runs = {1: [], 16: []}
    for _ in range(args.repeats):
        for bs in runs:
            runs[bs].append(_timed(lambda bs=bs: sample_completions(model, tok, prompts, ids, batch_size=bs, **kw)))
    cpu = {bs: min(r[2] for r in rs) for bs, rs in runs.items()}
    n = len(prompts) * k
    same = _ids(runs[1][-1][0]) == _ids(runs[16][-1][0])
    print("| mode | prompts per batch | CPU seconds | completions/s (CPU) |")
    print("|---|---|---|---|")
    for name, bs in (("one prompt at a time", 1), ("batched", 16)):
        print(f"| {name} | {bs} | {cpu[bs]:.2f} | {n / cpu[bs]:.1f} |")
    print(f"speed-up batched / one at a time: {cpu[1] / cpu[16]:.1f}x; identical completions: {same}")
    return {"cpu_seconds": cpu, "ratio": cpu[1] / cpu[16], "identical": same}


def section_ref_logps(args) -> dict:
    tok, model = _small_model()
    prompts, k = _small_prompts(32), 4
    ids = [f"bench-{i}" for i in range(len(prompts))]

    def both(teacher: bool):
        res = sample_completions(model, tok, prompts, ids, num_samples=k, max_new_tokens=32, seed=0,
                                 batch_size=16, progress=False)
        if not teacher:
            return res, None
        flat = [p for p in prompts for _ in range(k)]
        return res, compute_ref_logps(model, tok, flat, [c for r in res for c in r["completion_ids"]],
                                      batch_size=16 * k)

    runs = {False: [], True: []}
    for _ in range(args.repeats):
        for teacher in runs:
            runs[teacher].append(_timed(lambda t=teacher: both(t)))
    cpu = {t: min(r[2] for r in rs) for t, rs in runs.items()}
    (res, teacher_logps) = runs[True][-1][0]
    diff = max(abs(a - b) for a, b in zip([x for r in res for x in r["ref_logps"]], teacher_logps))
    print("| ref_logps | CPU seconds |")
    print("|---|---|")
    print(f"| from the sampler's logits | {cpu[False]:.2f} |")
    print(f"| + a teacher-forced pass | {cpu[True]:.2f} |")
    print(f"CPU time saved by the sampler's logits: {1 - cpu[False] / cpu[True]:.0%}; max |difference| of "
          f"ref_logps: {diff:.1e} nats")
    return {"cpu_seconds": {"sampler": cpu[False], "plus_teacher": cpu[True]}, "max_ref_logp_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", default="prefill", choices=["prefill", "batching", "ref_logps", "all"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--k", type=int, nargs="+", default=[8, 32])
    p.add_argument("--rows", type=int, default=32, help="decoding rows per batch: prompts per batch = rows // K")
    p.add_argument("--hidden-size", type=int, default=128, help="prefill section's model width")
    p.add_argument("--layers", type=int, default=2, help="prefill section's model depth")
    args = p.parse_args()
    torch.set_num_threads(1)
    import transformers

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, 1 thread, no GPU; best of {args.repeats} by CPU time")
    results = {}
    for name, fn in (("prefill", section_prefill), ("batching", section_batching), ("ref_logps", section_ref_logps)):
        if args.section in (name, "all"):
            print(f"\n## {name}")
            results[name] = fn(args)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
