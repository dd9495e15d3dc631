"""`infalign sample` in one process (`--engine local`) against `--engine ray --workers 2`, side by side in one run.

The same command both ways (`stages.sample.run_sample`, the same chunks, batch size and seed), interleaved,
--repeats times; wall-clock seconds, since the point is parallel work (a worker per core), and the runs are
interleaved so that each configuration sees the same neighbours on a shared machine. Configurations:
- local, 1 thread: the default here (OMP_NUM_THREADS=1);
- local, 2 threads (--two-threads): one process using both cores through torch's intra-op threads, the
  strongest one-process setting on an idle 2-core machine; on a shared one it is the weakest (measured here at
  load average 10: 6x slower than one thread, as the Makefile says), so it is left out by default;
- ray, 2 workers x 1 CPU: a local Ray started by the run; reported end to end (Ray's start, each worker's load,
  sampling, shut down) and in steady state (from the first chunk written to the last, per prompt: what a long run
  pays once the start is amortized; the one-process runs are measured the same way).
Every configuration must write the same artifact (content hash compared): the ids are identical by construction
(the same chunks and batches; each prompt's draws depend only on (seed, prompt_id)).

Model: a randomly initialized Llama with a 32k-word vocabulary (bench_sampling.word_tokenizer), hidden --hidden-size,
--layers layers; prompts of --prompt-tokens +- 10 tokens; K completions of --max-new-tokens tokens (random weights
almost never draw EOS: every completion runs to the cap, so generated tokens = prompts x K x max_new_tokens).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_engines.py [--prompts 48] [--chunk-size 4] [--repeats 2]
        [--two-threads]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench_sampling import word_tokenizer  # noqa: E402
from offline_infalign.artifacts import storage  # noqa: E402
from offline_infalign.config import SampleConfig, load_config  # noqa: E402
from offline_infalign.stages.sample import run_sample  # noqa: E402
from tests.tiny_models import tiny_causal_lm  # noqa: E402


def make_inputs(root: Path, args) -> tuple[Path, Path]:
    tok = word_tokenizer(args.vocab)
    model = tiny_causal_lm(tok, hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
                           num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                           max_position_embeddings=1024)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.prompt_tokens - 10, args.prompt_tokens + 11, (args.prompts,), generator=g)
    with open(root / "prompts.jsonl", "w") as f:
        for n in lengths:
            words = torch.randint(0, args.vocab - 100, (int(n),), generator=g)
            f.write(json.dumps({"prompt": " ".join(f"w{int(i)}" for i in words)}) + "\n")
    return root / "model", root / "prompts.jsonl"


class ChunkClock:
    """When each chunk was written (ChunkStore.write wrapped): the steady-state window."""

    def __init__(self):
        self.times: list[float] = []
        self._real = storage.ChunkStore.write

    def __enter__(self):
        clock = self

        def write(store, index, dataset):
            clock._real(store, index, dataset)
            clock.times.append(time.perf_counter())
        storage.ChunkStore.write = write
        return self

    def __exit__(self, *exc):
        storage.ChunkStore.write = self._real


def run(name: str, model: Path, prompts: Path, out: Path, args, threads: int, **engine) -> dict:
    cfg = load_config(SampleConfig, None, dict(prompts=str(prompts), model=str(model), out=str(out),
                                               num_samples=args.k, max_new_tokens=args.max_new_tokens,
                                               chunk_size=args.chunk_size, batch_size=args.batch_size,
                                               device="cpu", **engine))
    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(threads)
    try:
        with ChunkClock() as clock:
            t0 = time.perf_counter()
            manifest = run_sample(cfg, progress=False)
            wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(1)
    import datasets

    data = datasets.load_from_disk(str(out))
    tokens = sum(len(c) for row in data["completion_ids"] for c in row)
    chunks = len(clock.times)
    # steady state: chunks 2..n, timed from the first chunk's arrival (the start and the first chunk excluded)
    steady = (clock.times[-1] - clock.times[0]) / max(chunks - 1, 1)
    return {"name": name, "wall_s": wall, "first_chunk_s": clock.times[0] - t0, "chunks": chunks,
            "steady_s_per_chunk": steady, "tokens": tokens, "prompts": len(data),
            "content_hash": manifest["content_hash"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--two-threads", action="store_true", help="also one process with 2 torch threads")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"model: Llama hidden {args.hidden_size}, {args.layers} layers, vocabulary {args.vocab}, random init; "
          f"{args.prompts} prompts of {args.prompt_tokens} +- 10 tokens, K = {args.k}, {args.max_new_tokens} new "
          f"tokens, chunks of {args.chunk_size} prompts, batches of {args.batch_size}")
    configs = [("local, 1 thread", 1, {}), ("ray, 2 workers x 1 CPU", 1, {"engine": "ray", "workers": 2})]
    if args.two_threads:
        configs.insert(1, ("local, 2 threads", 2, {}))
    with tempfile.TemporaryDirectory(prefix="bench_engines_") as tmp:
        root = Path(tmp)
        model, prompts = make_inputs(root, args)
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
        for _ in range(args.repeats):  # interleaved: each configuration sees the same machine load
            for name, threads, engine in configs:
                runs[name].append(run(name, model, prompts, root / "out", args, threads, **engine))
                print(f"  {name}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
    best = {name: min(rs, key=lambda r: r["wall_s"]) for name, rs in runs.items()}
    steady = {name: min(r["steady_s_per_chunk"] for r in rs) for name, rs in runs.items()}
    base = best["local, 1 thread"]
    print("\n| configuration | end to end (s) | first chunk after (s) | steady state (s per chunk) | generated "
          "tokens/s, steady | speed-up, steady | speed-up, end to end | same artifact |")
    print("|---|---|---|---|---|---|---|---|")
    per_chunk_tokens = base["tokens"] / base["chunks"]
    for name, r in best.items():
        print(f"| {name} | {r['wall_s']:.1f} | {r['first_chunk_s']:.1f} | {steady[name]:.2f} | "
              f"{per_chunk_tokens / steady[name]:.0f} | {steady['local, 1 thread'] / steady[name]:.2f}x | "
              f"{base['wall_s'] / r['wall_s']:.2f}x | {r['content_hash'] == base['content_hash']} |")
    print(json.dumps({"args": vars(args), "runs": runs}, default=str))


if __name__ == "__main__":
    main()
