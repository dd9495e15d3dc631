"""Trainer throughput and peak memory at realistic shapes: this trainer's group forward vs TRL's DPOTrainer with
precomputed reference log-probs (`precompute_ref_log_probs=True`, the fair anchor: our stored reference is paid
at build time), side by side in one invocation.

Shapes: a 32k-token vocabulary (word-level tokenizer "w0".."w31999"), prompts 250–350 tokens (300 on average),
completions 40–120 tokens ending with EOS, K completions per prompt. Model: a narrow Llama (hidden 128, 4 layers,
4 heads, 2 KV heads; LoRA r=16, alpha=32, dropout 0, all-linear), float32. Every configuration runs in its own
subprocess (so its peak RSS is its own), one torch thread; rates are per second of the process's CPU time
(wall-clock time on a shared machine mostly measures the neighbours), over the steps after `--warmup`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trainer.py            # CPU, about 8 minutes

Rows (README "Trainer" has a measured table):
- pairs (the recipes' shape: 48 pairs per prompt drawn from K = 32): TRL on batches of 8 pairs vs ours on
  group batches (a prompt's 48 pairs together, its distinct completions computed once), the DPO loss on both.
  Its precompute pass (a no-grad forward over the whole dataset before training) is reported apart, per pair.
- listwise K = 8 and K = 32: ours, one prompt group per step (the listwise loss); TRL has no listwise loss, so
  the ratio is against TRL's pairs rate in tokens/s. K = 32 also on a GPT-2 of the same shape (a second
  architecture: learned absolute positions; its ratios are against TRL on the Llama).
- memory: listwise K = 8 and K = 64 with completions_per_forward = 8 (the two-pass step), and K = 64 in one pass.

`--prompt-lengths` runs only what a long prompt costs: listwise K = 32, 16-token completions, prompts of ~10 vs
~550 tokens, on Llama, GPT-2, Mistral, Phi-3 and GPT-NeoX of the same shape packed, and on Llama and GPT-2 per
row; seconds of CPU per step and the long / short ratio:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trainer.py --prompt-lengths   # about 10 minutes
tokens/s counts real tokens only: each trained sequence's prompt + completion tokens, no padding, as the
per-row formulation defines the work (a pair is 2 sequences, a group K). Peak memory is the process's max RSS
and, apart, its growth during training (max RSS − RSS just before `train()`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB, HIDDEN, LAYERS = 32_000, 128, 4
LORA = dict(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
BETA = 0.1
PAIRS_PER_PROMPT = 48


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mb(key: str) -> float | None:
    """VmRSS (now) or VmHWM (peak since the last reset) from /proc/self/status, in MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM (Linux ≥ 4.0: writing 5 to clear_refs), so the peak read after training is training's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---- data and model ------------------------------------------------------------------------------------------


ARCHS = ("llama", "gpt2", "mistral", "phi3", "gpt_neox")


def build_model(root: Path, arch: str = "llama") -> Path:
    """The narrow model of `arch` (hidden 128, 4 layers, 4 heads; 2 KV heads where the architecture has them,
    MLP 512, 32k vocabulary) and the word-level tokenizer, saved in root/model (root/model_ARCH for others)."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    special = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(special + [f"w{i}" for i in range(VOCAB - len(special))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                      pad_token="<pad>")
    ids = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=False)
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=4, max_position_embeddings=1024, **ids)
    config = {
        "llama": lambda: tf.LlamaConfig(**common, num_key_value_heads=2),
        "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_inner=4 * HIDDEN,
                                      n_positions=1024, **ids),
        "mistral": lambda: tf.MistralConfig(**common, num_key_value_heads=2, sliding_window=4096),
        "phi3": lambda: tf.Phi3Config(**common, num_key_value_heads=2, sliding_window=2047, partial_rotary_factor=0.75),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common, rotary_pct=0.25),
    }[arch]()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config)
    out = root / ("model" if arch == "llama" else f"model_{arch}")
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def _groups(num_prompts: int, k: int, seed: int, prompt=(250, 350), completion=(40, 120)):
    """(prompt ids, [k completion ids]) with prompts of 250–350 tokens, completions of 40–120 ending with EOS
    (or the given inclusive ranges)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.arange(4, VOCAB)
    return [(rng.choice(words, int(rng.integers(prompt[0], prompt[1] + 1))).tolist(),
             [rng.choice(words, int(rng.integers(completion[0] - 1, completion[1]))).tolist() + [3] for _ in range(k)])
            for _ in range(num_prompts)]


def _ref_logps(model_dir: Path, prompts, completions) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    from offline_infalign.models.groups import pack_sequences
    from offline_infalign.models.logprobs import packed_logps

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(prompts), 64):
            packed = pack_sequences(prompts[lo: lo + 64], completions[lo: lo + 64], 0, completions_per_forward=16)
            lp = packed_logps(model, packed["group_units"], packed["group_num_seqs"])
            out += lp[packed["group_seq_index"]].tolist()
    return out


def build_data(root: Path, model_dir: Path, kind: str, num_prompts: int, k: int, seed: int,
               name: str | None = None, **shape) -> Path:
    """A prepared artifact (with the id columns and stored reference log-probs) and, for pairs, the same pairs
    as text for TRL."""
    import numpy as np
    from datasets import Dataset, DatasetDict

    from offline_infalign.artifacts.storage import save_artifact

    groups = _groups(num_prompts, k, seed, **shape)
    text = lambda ids: " ".join("</s>" if i == 3 else f"w{i - 4}" for i in ids)  # noqa: E731
    rng = np.random.default_rng(seed + 1)
    if kind == "listwise":
        ref = _ref_logps(model_dir, [p for p, cs in groups for _ in cs], [c for _, cs in groups for c in cs])
        rows = [{"prompt_id": f"p{g}", "prompt": text(p), "prompt_ids": p, "completions": [text(c) for c in cs],
                 "completion_ids": cs, "targets": rng.uniform(size=k).tolist(), "ref_logps": ref[g * k:(g + 1) * k]}
                for g, (p, cs) in enumerate(groups)]
    else:
        rows = []
        ii, jj = np.triu_indices(k, 1)
        for g, (p, cs) in enumerate(groups):
            for a in rng.choice(len(ii), PAIRS_PER_PROMPT, replace=False):
                c, r = cs[ii[a]], cs[jj[a]]
                rows.append({"prompt_id": f"p{g}", "prompt": text(p), "chosen": " " + text(c),
                             "rejected": " " + text(r), "prompt_ids": p, "chosen_ids": c, "rejected_ids": r,
                             "target_margin": float(rng.uniform()), "weight": 1.0})
        ref_c = _ref_logps(model_dir, [r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows])
        ref_r = _ref_logps(model_dir, [r["prompt_ids"] for r in rows], [r["rejected_ids"] for r in rows])
        for r, a, b in zip(rows, ref_c, ref_r):
            r["ref_chosen_logps"], r["ref_rejected_logps"] = a, b
    out = root / (name or f"{kind}_k{k}")
    save_artifact(DatasetDict(train=Dataset.from_list(rows)), out,
                  {"stage": "prepared", "kind": kind, "transform": "exp", "tilt": 3.0, "beta": BETA,
                   "procedure": "bon", "n": 4, "num_samples": k, "model": str(model_dir), "ref_dtype": "float32"})
    return out


# ---- one configuration per process ------------------------------------------------------------------------


def worker(args) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    data_dir, out = Path(args.data), Path(args.out)
    kind = "listwise" if "listwise" in data_dir.name else "pairs"
    # in memory: TRL's dataset.map would otherwise write cache files into the artifact (its content hash)
    rows = load_from_disk(str(data_dir), keep_in_memory=True)["train"]
    stamps: list[tuple[float, float, int]] = []  # (process time, wall time, tokens so far)
    seen = {"tokens": 0, "pairs": 0}

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps.append((time.process_time(), time.perf_counter(), seen["tokens"], seen["pairs"]))

    precompute = {}
    if args.which in ("trl", "trl_compact"):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        from offline_infalign.models.modeling import lora_config

        original = DPOTrainer._precompute_ref_logps

        def timed(self, dataset, *a, **kw):
            t0, w0 = time.process_time(), time.perf_counter()
            result = original(self, dataset, *a, **kw)
            precompute.update(cpu=time.process_time() - t0, wall=time.perf_counter() - w0, pairs=len(dataset))
            return result

        DPOTrainer._precompute_ref_logps = timed
        if args.which == "trl_compact":
            # TRL's fused LM head scores only completion positions on CUDA/XPU ("compact"), every position
            # elsewhere; this row forces its GPU behaviour on the CPU (same kernel fallback, fewer positions).
            import trl.trainer.utils as trl_utils

            trl_utils._use_triton = lambda device: True
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        cfg = DPOConfig(output_dir=str(out), beta=BETA, max_steps=args.steps, learning_rate=1e-4,
                        per_device_train_batch_size=args.batch, logging_steps=10_000, save_strategy="no",
                        use_cpu=True, report_to="none", gradient_checkpointing=False, max_length=None, seed=0,
                        precompute_ref_log_probs=True, precompute_ref_batch_size=args.batch, bf16=False)
        trainer = DPOTrainer(model=model, args=cfg, processing_class=tok,
                             train_dataset=rows.select_columns(["prompt", "chosen", "rejected"]),
                             peft_config=lora_config(LORA["r"], LORA["alpha"], LORA["dropout"],
                                                     LORA["target_modules"]))
    else:
        from offline_infalign.config import TrainConfig
        from offline_infalign.stages.train import make_trainer

        cfg = TrainConfig(dataset=str(data_dir), model=args.model, loss="listwise" if kind == "listwise" else "dpo",
                          out=str(out), beta=BETA, max_steps=args.steps, learning_rate=1e-4, lora_r=LORA["r"],
                          lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules=[LORA["target_modules"]], per_device_train_batch_size=args.batch,
                          logging_steps=10_000, save_steps=None, reference="stored", bf16=False,
                          completions_per_forward=args.completions_per_forward, group_forward=args.which != "ours_rows")
        trainer, _ = make_trainer(cfg)
    step = trainer.training_step

    def counting(model, inputs, *a, **kw):  # the real tokens of the batch this step trains on
        seen["tokens"] += int(inputs["attention_mask"].sum())  # per-row layout: prompt + completion per sequence
        if args.which.startswith("trl"):
            seen["pairs"] += inputs["attention_mask"].shape[0] // 2
        else:
            seen["pairs"] += len(inputs["target_margin" if kind == "pairs" else "mask"])
        return step(model, inputs, *a, **kw)

    trainer.training_step = counting
    trainer.add_callback(Clock())
    reset = _reset_peak()
    rss_start = _status_mb("VmRSS")
    trainer.train()
    (c0, w0, t0, p0), (c1, w1, t1, p1) = stamps[args.warmup - 1], stamps[-1]
    return {"which": args.which, "data": data_dir.name, "tokens_per_s": (t1 - t0) / (c1 - c0),
            "wall_tokens_per_s": (t1 - t0) / (w1 - w0), "pairs_per_s": (p1 - p0) / (c1 - c0),
            "steps": len(stamps) - args.warmup, "rss_start_mb": rss_start, "peak_rss_mb": _rss_mb(),
            "train_peak_mb": _status_mb("VmHWM") if reset else None, "precompute": precompute}


# ---- the side-by-side run ---------------------------------------------------------------------------------


def run(which, model, data, out, steps, warmup, batch, completions_per_forward=None, env=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", which, "--model", str(model), "--data", str(data), "--out",
           str(out), "--steps", str(steps), "--warmup", str(warmup), "--batch", str(batch)]
    if completions_per_forward:
        cmd += ["--completions-per-forward", str(completions_per_forward)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {})))
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"{which} on {data} failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[0][7:])


NAMES = {"trl": "TRL DPOTrainer, precomputed ref (head at every position: its CPU path)",
         "trl_compact": "TRL DPOTrainer, precomputed ref, head at completion positions (its GPU path)",
         "ours_pairs": "ours, pairs, group batches (a prompt's 48 pairs per step)",
         "lw8": "ours, listwise K = 8", "lw32": "ours, listwise K = 32",
         "lw32_gpt2": "ours, listwise K = 32, GPT-2 of the same shape (learned positions)",
         "lw32_chunked": "ours, listwise K = 32, completions_per_forward 8 (two passes)",
         "mem8": "memory: ours, listwise K = 8, completions_per_forward 8", "mem64": "memory: ours, listwise K = 64, completions_per_forward 8",
         "mem64_one_pass": "memory: ours, listwise K = 64, one pass"}


def _growth(r) -> float:
    """Peak RSS during training above the RSS just before it (VmHWM reset), or max RSS − start elsewhere."""
    return (r["train_peak_mb"] if r["train_peak_mb"] is not None else r["peak_rss_mb"]) - r["rss_start_mb"]


def report(res: dict) -> None:
    trl, compact = res["trl"], res["trl_compact"]
    print("\n| configuration | tokens/s | pairs (or groups) /s | peak RSS (MB) | training's own peak (MB) | "
          "vs TRL | vs TRL (completion-only head) |")
    print("|---|---|---|---|---|---|---|")
    for key, r in res.items():
        # the memory rows allocate through mmap (see main): their speed is not comparable
        ratios = ("–", "–") if key.startswith("mem") else (f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f}x",
                                                           f"{r['tokens_per_s'] / compact['tokens_per_s']:.2f}x")
        speed = ("–", "–") if key.startswith("mem") else (f"{r['tokens_per_s']:.0f}", f"{r['pairs_per_s']:.3g}")
        print(f"| {NAMES[key]} | {speed[0]} | {speed[1]} | {r['peak_rss_mb']:.0f} | {_growth(r):.0f} | "
              f"{ratios[0]} | {ratios[1]} |")
    for key in ("trl", "trl_compact"):
        pre = res[key]["precompute"]
        print(f"\n{key} precompute pass: {pre['pairs'] / pre['cpu']:.2f} pairs/s of CPU time ({pre['pairs']} pairs, "
              f"{pre['cpu']:.1f} s); its training {res[key]['pairs_per_s']:.2f} pairs/s")
    ours = res["ours_pairs"]["pairs_per_s"]
    for key in ("trl", "trl_compact"):
        r, pre = res[key], res[key]["precompute"]
        epoch = 1 / r["pairs_per_s"] + pre["cpu"] / pre["pairs"]  # CPU seconds per pair, precompute included
        print(f"pairs per epoch, ours vs {key}: {ours / r['pairs_per_s']:.1f}x training only, "
              f"{ours * epoch:.1f}x with its precompute pass (goal >= 5x)")
    for key in ("trl", "trl_compact"):
        print(f"listwise K = 32 vs {key} tokens/s: {res['lw32']['tokens_per_s'] / res[key]['tokens_per_s']:.1f}x "
              "(goal >= 3x)")
    if "lw32_gpt2" in res:
        print(f"listwise K = 32, GPT-2 vs Llama tokens/s: "
              f"{res['lw32_gpt2']['tokens_per_s'] / res['lw32']['tokens_per_s']:.2f}x")
    if "mem64" in res:
        print(f"memory, listwise K = 64 vs K = 8 with completions_per_forward 8: training's own peak "
              f"{_growth(res['mem64']):.0f} vs {_growth(res['mem8']):.0f} MB = "
              f"{_growth(res['mem64']) / _growth(res['mem8']):.2f}x, process peak RSS "
              f"{res['mem64']['peak_rss_mb'] / res['mem8']['peak_rss_mb']:.2f}x (goal <= 1.2x); one pass: "
              f"{_growth(res['mem64_one_pass']):.0f} MB")


def prompt_lengths(args) -> None:
    """Listwise K = 32, 16-token completions, ~10- vs ~550-token prompts, one group per step: seconds per step of
    each architecture packed (the group forward), and per row (`group_forward: false`) for two of them; the
    long / short ratio is what the prompt costs."""
    t0 = time.time()
    root = Path(tempfile.mkdtemp(prefix="bench_prompts_"))
    steps = 2 if args.quick else 3
    shapes = {"short": (8, 12), "long": (500, 600)}
    rows = []
    for arch in ARCHS:
        model = build_model(root, arch)
        data = {name: build_data(root, model, "listwise", steps + 1, 32, seed=7, prompt=span, completion=(16, 16),
                                 name=f"listwise_{arch}_{name}") for name, span in shapes.items()}
        modes = ("ours", "ours_rows") if arch in ("llama", "gpt2") else ("ours",)
        for which in modes:
            r = {name: run(which, model, data[name], root / f"o_{arch}_{which}_{name}", steps, 1, 1)
                 for name in shapes}
            rows.append((arch, which, 1 / r["short"]["pairs_per_s"], 1 / r["long"]["pairs_per_s"]))
            print(f"  {arch} {which}: {rows[-1][2]:.3f} / {rows[-1][3]:.3f} s per step ({time.time() - t0:.0f} s)",
                  flush=True)
    print("\n| architecture | forward | CPU s per step, ~10-token prompts | ~550-token prompts | long / short |")
    print("|---|---|---|---|---|")
    for arch, which, short, long in rows:
        mode = "packed (group forward)" if which == "ours" else "per row"
        print(f"| {arch} | {mode} | {short:.3f} | {long:.3f} | **{long / short:.1f}x** |")
    print(f"total {time.time() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="steps per configuration (TRL: batches of --batch pairs)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="TRL's pairs per step; our rows per batch")
    ap.add_argument("--quick", action="store_true", help="fewer steps and no memory rows (a smoke run)")
    ap.add_argument("--prompt-lengths", action="store_true",
                    help="only the prompt-length section: listwise K = 32, 16-token completions, ~10 vs ~550-token "
                         f"prompts, on {', '.join(ARCHS)} packed and on llama and gpt2 per row (~10 minutes)")
    ap.add_argument("--worker", dest="which", choices=["trl", "trl_compact", "ours", "ours_rows"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--completions-per-forward", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.which:
        print("RESULT " + json.dumps(worker(args)))
        return
    if args.prompt_lengths:
        prompt_lengths(args)
        return

    t0 = time.time()
    root = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    model = build_model(root)
    steps = 3 if args.quick else args.steps
    # TRL precomputes its whole dataset before training: one prompt's 48 pairs, 2 + 1 steps of 8 pairs
    trl_pairs = build_data(root, model, "pairs", 1, 32, seed=0, name="pairs_trl")
    pairs = build_data(root, model, "pairs", steps + 1, 32, seed=1)  # ours: one prompt (48 pairs) per step
    lw = {k: build_data(root, model, "listwise", max(steps, 3) + 1, k, seed=k)
          for k in ((8, 32) if args.quick else (8, 32, 64))}
    gpt2 = build_model(root, "gpt2")  # a second architecture: learned absolute positions, packed since checked
    lw_gpt2 = build_data(root, gpt2, "listwise", max(steps, 3) + 1, 32, seed=32, name="listwise_k32_gpt2")
    print(f"built models and data in {time.time() - t0:.0f} s ({root})")
    res = {}
    res["trl"] = run("trl", model, trl_pairs, root / "o_trl", min(steps, 3) + 1, 1, args.batch)
    res["trl_compact"] = run("trl_compact", model, trl_pairs, root / "o_trlc", min(steps, 3) + 1, 1, args.batch)
    res["ours_pairs"] = run("ours", model, pairs, root / "o_pairs", steps, 1, args.batch)
    for k in (8, 32):
        res[f"lw{k}"] = run("ours", model, lw[k], root / f"o_lw{k}", steps, 1, 1)
    res["lw32_gpt2"] = run("ours", gpt2, lw_gpt2, root / "o_lw32_gpt2", steps, 1, 1)
    res["lw32_chunked"] = run("ours", model, lw[32], root / "o_lw32c", steps, 1, 1, completions_per_forward=8)
    if not args.quick:
        # glibc keeps freed blocks below its (growing) mmap threshold cached, so RSS would measure its caching
        # as much as the tensors alive; a fixed threshold returns every block of 64 kB or more when freed
        exact = {"MALLOC_MMAP_THRESHOLD_": "65536"}
        for k in (8, 64):
            res[f"mem{k}"] = run("ours", model, lw[k], root / f"o_mem{k}", 3, 1, 1, completions_per_forward=8, env=exact)
        res["mem64_one_pass"] = run("ours", model, lw[64], root / "o_mem64_1", 3, 1, 1, env=exact)
    report(res)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
