"""Trainer throughput and peak memory: offline-infalign (stored reference log-probs) vs TRL's DPOTrainer.

Both train the DPO loss on the same pairs, the same base model, the same LoRA (r=16, alpha=32, dropout 0,
all-linear) and the same batch, in one invocation; each configuration runs in its own subprocess so that its
peak RSS is its own. TRL computes the reference by a forward pass of the adapter-disabled policy every step
(its default with a peft_config); ours reads the dataset's stored `ref_*_logps` columns and skips that pass.
"ours (live ref)" is our trainer forced to reference='live', the like-for-like control.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trainer.py                 # CPU, ~2-3 minutes
    .venv/bin/python benchmarks/bench_trainer.py --device-model PATH --bf16        # GPU, a real ~0.5B model

tokens/s counts prompt + completion tokens of both sequences of each pair (our tokenization, the same pairs
for both), over the timed steps (after `--warmup` steps). On CPU the rate is per second of the process's CPU
time (one torch thread), because wall-clock time on a shared machine mostly measures the neighbours; the
wall-clock rate is printed too. On GPU it is wall-clock (synchronized). Peak memory is the process's max RSS on CPU (it
includes the Python/torch baseline, shown as "RSS at start") and torch.cuda.max_memory_allocated on GPU.
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
sys.path.insert(0, str(ROOT / "tests"))

LORA = dict(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
BETA = 0.1


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(root: Path, num_pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """A 4-layer, 256-wide Llama (word-level tiny tokenizer) and a prepared pairs dataset with stored ref log-probs."""
    import numpy as np
    from datasets import Dataset, DatasetDict
    from tiny_models import WORDS, tiny_causal_lm, tiny_tokenizer
    from train_fixtures import ref_logps

    from offline_infalign.storage import save_artifact

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=seed, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                           num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rng = np.random.default_rng(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))))

    rows = [{"prompt_id": f"p{i}", "prompt": text(16, 33), "chosen": text(32, 97), "rejected": text(32, 97),
             "target_margin": float(rng.uniform(0, 1)), "weight": 1.0} for i in range(num_pairs)]
    for col, ref in (("chosen", "ref_chosen_logps"), ("rejected", "ref_rejected_logps")):
        values = []
        for lo in range(0, num_pairs, 64):
            part = rows[lo: lo + 64]
            values += ref_logps(model_dir, [r["prompt"] for r in part], [r[col] for r in part])
        for r, v in zip(rows, values):
            r[ref] = v
    for r in rows:
        r["soft_label"] = float(1 / (1 + np.exp(-r["target_margin"])))
    ds = Dataset.from_list(rows)
    data_dir = root / "pairs"
    save_artifact(DatasetDict(train=ds, test=ds.select(range(8))), data_dir,
                  {"stage": "prepared", "kind": "pairs", "transform": "exp", "tilt": 3.0, "beta": BETA,
                   "procedure": "bon", "n": 4, "num_samples": 4, "model": str(model_dir), "ref_dtype": "float32"})
    return model_dir, data_dir


def _tokens_per_pair(data_dir: Path, model_dir: Path) -> float:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from offline_infalign.tokenization import encode_completion, encode_prompt

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ds = load_from_disk(str(data_dir))["train"]
    total = 0
    for r in ds:
        p = len(encode_prompt(tok, r["prompt"]))
        total += 2 * p + len(encode_completion(tok, r["chosen"])) + len(encode_completion(tok, r["rejected"]))
    return total / len(ds)


def worker(args) -> dict:
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model_dir, data_dir, out = Path(args.model), Path(args.data), Path(args.out)
    on_gpu = torch.cuda.is_available()
    stamps: list[float] = []
    cpu_stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if on_gpu:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())

    if args.which in ("ours", "ours_live"):
        from offline_infalign.config import TrainConfig
        from offline_infalign.stages.train import make_trainer

        cfg = TrainConfig(dataset=str(data_dir), model=str(model_dir), loss="dpo", out=str(out), beta=BETA,
                          max_steps=args.steps, learning_rate=1e-4, lora_r=LORA["r"], lora_alpha=LORA["alpha"],
                          lora_dropout=LORA["dropout"], target_modules=[LORA["target_modules"]],
                          per_device_train_batch_size=args.batch, logging_steps=10_000, save_steps=None,
                          reference="stored" if args.which == "ours" else "live", bf16=args.bf16)
        trainer, info = make_trainer(cfg)
        assert info["reference"] == ("stored" if args.which == "ours" else "live"), info
    else:
        from datasets import load_from_disk
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        from offline_infalign.modeling import lora_config

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir),
                                                     dtype=torch.bfloat16 if args.bf16 else torch.float32)
        ds = load_from_disk(str(data_dir))["train"].select_columns(["prompt", "chosen", "rejected"])
        dcfg = DPOConfig(output_dir=str(out), beta=BETA, max_steps=args.steps, learning_rate=1e-4,
                         per_device_train_batch_size=args.batch, logging_steps=10_000, save_strategy="no",
                         bf16=bool(args.bf16), use_cpu=not on_gpu, report_to="none",
                         gradient_checkpointing=False,  # TRL's default is True; ours is False: compare like with like
                         max_length=None, seed=0)
        trainer = DPOTrainer(model=model, args=dcfg, train_dataset=ds, processing_class=tok,
                             peft_config=lora_config(LORA["r"], LORA["alpha"], LORA["dropout"], LORA["target_modules"]))
    trainer.add_callback(Clock())
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    rss_start = _rss_mb()
    trainer.train()
    timed = stamps[-1] - stamps[args.warmup - 1]
    cpu = cpu_stamps[-1] - cpu_stamps[args.warmup - 1]
    pairs = (len(stamps) - args.warmup) * args.batch
    return {"which": args.which, "seconds": timed, "wall_pairs_per_s": pairs / timed,
            "pairs_per_s": pairs / (timed if on_gpu else cpu), "cpu_seconds": cpu,
            "rss_start_mb": rss_start, "peak_rss_mb": _rss_mb(),
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved; best is kept")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--device-model", help="a real model folder instead of the built one (pairs are rebuilt for it)")
    ap.add_argument("--worker", dest="which", choices=["ours", "ours_live", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.which:
        print("RESULT " + json.dumps(worker(args)))
        return

    root = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    t0 = time.time()
    model_dir, data_dir = build(root, args.pairs)
    if args.device_model:
        raise SystemExit("--device-model: build pairs for a real model with `infalign build` and pass them here "
                         "(not implemented in this CPU run)")
    tokens = _tokens_per_pair(data_dir, model_dir)
    print(f"built model + {args.pairs} pairs in {time.time() - t0:.1f} s; {tokens:.1f} tokens per pair")
    results: dict[str, list[dict]] = {"trl": [], "ours": [], "ours_live": []}
    for rep in range(args.repeats):
        for which in ("trl", "ours", "ours_live"):
            cmd = [sys.executable, __file__, "--worker", which, "--model", str(model_dir), "--data", str(data_dir),
                   "--out", str(root / f"out_{which}_{rep}"), "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--batch", str(args.batch)] + (["--bf16"] if args.bf16 else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                raise SystemExit(f"{which} failed:\n{proc.stderr[-4000:]}")
            r = json.loads(line[0][7:])
            r["tokens_per_s"] = r["pairs_per_s"] * tokens
            r["wall_tokens_per_s"] = r["wall_pairs_per_s"] * tokens
            results[which].append(r)
            print(f"  run {rep} {which:9s} {r['pairs_per_s']:7.2f} pairs/s {r['tokens_per_s']:9.0f} tokens/s "
                  f"(wall clock: {r['wall_tokens_per_s']:7.0f} tokens/s) "
                  f"peak RSS {r['peak_rss_mb']:7.0f} MB (start {r['rss_start_mb']:.0f})")
    best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in results.items()}
    print("\n| trainer | tokens/s | pairs/s | wall-clock tokens/s | peak RSS (MB) | RSS at start (MB) | speed vs TRL |")
    print("|---|---|---|---|---|---|---|")
    names = {"trl": "TRL DPOTrainer (live ref)", "ours": "offline-infalign, stored ref",
             "ours_live": "offline-infalign, live ref"}
    for k in ("trl", "ours", "ours_live"):
        r = best[k]
        print(f"| {names[k]} | {r['tokens_per_s']:.0f} | {r['pairs_per_s']:.2f} | {r['wall_tokens_per_s']:.0f} | "
              f"{r['peak_rss_mb']:.0f} | "
              f"{r['rss_start_mb']:.0f} | {r['tokens_per_s'] / best['trl']['tokens_per_s']:.2f}x |")
    print(f"\nratio (stored ref / TRL): {best['ours']['tokens_per_s'] / best['trl']['tokens_per_s']:.2f}x "
          f"(goal >= 1.3x); total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
