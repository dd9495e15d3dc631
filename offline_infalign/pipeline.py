"""sample → score → prepare, each stage chunked, resumable and guarded by its config (DESIGN: pipeline).

Resume: a stage records its config in `out/_work/config.json` and writes each chunk of prompts atomically
(storage.ChunkStore). Rerunning the same command skips finished chunks; since a prompt's completions depend only
on (seed, prompt_id) and a chunk's rewards only on its rows, the result equals an uninterrupted run. A rerun
with a different config is refused with the `config_diff`. Batch sizes and the device may change between runs
(say after running out of memory); the draws are still those of (seed, prompt_id), but other batch shapes
round the model's floats differently, so completions then match an uninterrupted run only up to the rare
token that rounding flips (see sampling.py; in bf16 on a GPU such flips are far more frequent than in
float32). The same command resumes exactly.

Sharding: `--shard I/N` takes the I-th of N contiguous, nearly equal parts of the prompt list (numpy
array_split), so `merge` of all N shards in order is row for row the unsharded artifact.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .config import (
    BuildConfig,
    MergeConfig,
    PrepareConfig,
    SampleConfig,
    ScoreConfig,
    config_diff,
    config_to_dict,
    parse_shard,
)
from .core.errors import InfalignError
from .prepare import prepare_dataset
from .storage import ChunkStore, base_manifest, load_artifact, read_manifest, save_artifact

__all__ = ["run_sample", "run_score", "run_prepare", "run_build", "run_merge", "prepare_dataset",
           "resolve_transform", "load_causal_lm"]

log = logging.getLogger("offline_infalign")
# Config fields that cannot change a stage's result, so a resume may change them.
_SAMPLE_FREE = ("batch_size", "device")
_SCORE_FREE = ("batch_size", "device")


def _shard_slice(n: int, shard: tuple[int, int] | None) -> slice:
    if shard is None:
        return slice(0, n)
    bounds = np.array_split(np.arange(n), shard[1])[shard[0]]
    return slice(int(bounds[0]), int(bounds[-1]) + 1) if len(bounds) else slice(0, 0)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]


def _bar(total: int, desc: str, unit: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)


def load_causal_lm(path: str, device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False):
    """(model in eval mode on `device`, tokenizer) from a local folder or hub id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .modeling import resolve_dtype  # 'auto': bf16 on a bf16-capable GPU, float32 otherwise

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, device),
                                                 trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer


def _prompt_rows(cfg: SampleConfig) -> list[dict[str, Any]]:
    from data_builders import get_prompt_source

    rows = list(get_prompt_source(cfg.prompts, split=cfg.split, limit=cfg.limit, data_files=cfg.prompts_data_files,
                                  on_duplicate=cfg.on_duplicate_prompt))
    kinds = {isinstance(r["prompt"], str) for r in rows}
    if len(kinds) > 1:
        raise InfalignError(f"prompt source {cfg.prompts!r} mixes plain-text and chat-message prompts; "
                            "one artifact holds one kind")
    return rows


def _model_id(model) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {"model_revision": getattr(cfg, "_commit_hash", None),
            "model_type": getattr(cfg, "model_type", None)}


def _load_sampler(cfg: SampleConfig):
    """(sampling function, model, tokenizer, context length or None, model ids for the manifest)."""
    from .sampling import context_length, load_vllm, sample_completions, sample_completions_vllm
    from .tokenization import check_tokenizer

    if cfg.backend == "vllm":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        model = load_vllm(cfg.model, cfg.tensor_parallel_size, cfg.dtype, cfg.seed, cfg.trust_remote_code)
        ctx = getattr(getattr(getattr(model, "llm_engine", None), "model_config", None), "max_model_len", None)
        sampler, ids = sample_completions_vllm, {"model_revision": None, "model_type": None}
    else:
        model, tokenizer = load_causal_lm(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
        ctx, sampler, ids = context_length(model), sample_completions, _model_id(model)
    if cfg.pad_token_as_eos and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # left padding is masked, so reusing eos is safe
    check_tokenizer(tokenizer)
    return sampler, model, tokenizer, ctx, ids


def run_sample(cfg: SampleConfig, progress: bool = True) -> dict[str, Any]:
    """Sample K completions per prompt into the artifact folder `cfg.out`; returns its manifest."""
    import datasets

    from .sampling import fit_prompts

    shard = parse_shard(cfg.shard)
    rows = _prompt_rows(cfg)
    rows = rows[_shard_slice(len(rows), shard)]
    # The prompts' hash is part of the recorded config: if the source changed between a crash and the resume,
    # finished chunks would no longer line up with the prompt list, so that resume is refused.
    prompts_hash = hashlib.sha256("\n".join(r["prompt_id"] for r in rows).encode()).hexdigest()
    config = {**config_to_dict(cfg), "input_hash": prompts_hash}
    store = ChunkStore(cfg.out)
    if store.start(config, ignore=_SAMPLE_FREE):
        return read_manifest(cfg.out)
    sampler, model, tokenizer, ctx, ids = _load_sampler(cfg)
    truncated = skipped = 0
    if ctx is not None:
        rows, truncated, skipped = fit_prompts(tokenizer, rows, ctx - cfg.max_new_tokens, cfg.on_long_prompt)
    if not rows:
        raise InfalignError(f"no prompts left to sample (shard {cfg.shard}, {skipped} skipped as too long)")
    chunks = _chunks(len(rows), cfg.chunk_size)
    bar = _bar(len(rows), "sample", "prompt", progress)
    try:
        for index, sl in enumerate(chunks):
            if store.done(index):
                bar.update(sl.stop - sl.start)
                continue
            part = rows[sl]
            results = _sample_chunk(sampler, model, tokenizer, part, cfg, bar)  # advances the bar per batch
            store.write(index, datasets.Dataset.from_dict({
                "prompt_id": [r["prompt_id"] for r in part], "prompt": [r["prompt"] for r in part],
                "completions": [r["completions"] for r in results],
                "ref_logps": [r["ref_logps"] for r in results]}))
    finally:
        bar.close()
    final = datasets.concatenate_datasets([store.load(i) for i in range(len(chunks))])
    manifest = base_manifest("samples", config)
    manifest.update(model=cfg.model, tokenizer=getattr(tokenizer, "name_or_path", cfg.model), **ids,
                    prompts=cfg.prompts, split=cfg.split, seed=cfg.seed, num_samples=cfg.num_samples,
                    shard=list(shard) if shard else None, num_prompts=len(rows), num_truncated=truncated,
                    num_skipped_long=skipped, backend=cfg.backend, input_hash=prompts_hash,
                    ref_dtype=_ref_dtype(model, cfg))
    return save_artifact(final, cfg.out, manifest)


def _ref_dtype(model, cfg: SampleConfig) -> str:
    """The dtype `ref_logps` were computed in: the trainer reuses the stored columns only for base weights in the
    same dtype (bf16 and float32 log-probs of one sequence differ by far more than the losses can tolerate)."""
    if cfg.backend == "vllm":
        return str(cfg.dtype)
    from .modeling import base_weights_dtype

    return base_weights_dtype(model)


def _sample_chunk(sampler, model, tokenizer, part, cfg: SampleConfig, bar=None) -> list[dict[str, list]]:
    """One chunk's completions (a seam the resume test interrupts); advances `bar` as prompts finish."""
    vllm = cfg.backend == "vllm"  # vLLM draws its own bar per call, so ours advances once per chunk
    out = sampler(model, tokenizer, [r["prompt"] for r in part], [r["prompt_id"] for r in part],
                  num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                  top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed, batch_size=cfg.batch_size,
                  progress=False if vllm or bar is None else bar)
    if vllm and bar is not None:
        bar.update(len(part))
    return out


def run_score(cfg: ScoreConfig, progress: bool = True) -> dict[str, Any]:
    """Add `rewards` to a samples artifact; returns the scored manifest."""
    import datasets

    from .scoring import load_scorer, score_texts

    samples, upstream = load_artifact(cfg.input, stage="samples")
    shard = parse_shard(cfg.shard)
    if shard and upstream.get("shard"):
        raise InfalignError(f"{cfg.input!r} is already shard {upstream['shard']}; score it without --shard")
    # The input's content hash is part of the config: scoring a changed samples artifact into the same folder
    # is refused like any other config change.
    config = {**config_to_dict(cfg), "input_hash": upstream["content_hash"]}
    store = ChunkStore(cfg.out)
    if store.start(config, ignore=_SCORE_FREE):
        return read_manifest(cfg.out)
    samples = samples.select(range(*_shard_slice(len(samples), shard).indices(len(samples))))
    scorer = load_scorer(cfg.reward_model, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                         trust_remote_code=cfg.trust_remote_code)
    chunks = _chunks(len(samples), cfg.chunk_size)
    k = upstream["num_samples"]
    bar = _bar(len(samples), "score", "prompt", progress)
    try:
        for index, sl in enumerate(chunks):
            if not store.done(index):
                part = samples.select(range(sl.start, sl.stop))
                rewards = score_texts(scorer, list(part["prompt"]), list(part["completions"]),
                                      list(part["prompt_id"]))
                store.write(index, part.add_column("rewards", rewards.tolist()))
            bar.update(sl.stop - sl.start)
            bar.set_postfix(completions_per_s=f"{bar.n * k / max(bar.format_dict['elapsed'], 1e-9):.1f}")
    finally:
        bar.close()
    final = datasets.concatenate_datasets([store.load(i) for i in range(len(chunks))])
    manifest = base_manifest("scored", config)
    for key in ("model", "tokenizer", "model_revision", "prompts", "split", "seed", "num_samples", "backend",
                "ref_dtype"):
        manifest[key] = upstream.get(key)
    manifest.update(reward_model=scorer.name, input_hash=upstream["content_hash"], sample_config=upstream["config"],
                    shard=list(shard) if shard else upstream.get("shard"), num_prompts=len(final))
    return save_artifact(final, cfg.out, manifest)


def resolve_transform(cfg: PrepareConfig) -> dict[str, Any]:
    """{transform: Transform, beta, and for auto the tradeoff tool's predictions} (SPEC §7)."""
    from .core.transforms import get_transform, parse_transform

    if cfg.transform == "auto":
        from .core.tradeoff import choose

        choice = choose(cfg.procedure, cfg.n, cfg.kl)
        return {"transform": choice.transform, "beta": float(choice.beta), "kl": float(cfg.kl),
                "predicted": {"kl": float(choice.kl), "win_rate": float(choice.win_rate),
                              "standard_win_rate": float(choice.standard_win_rate),
                              "optimal_win_rate": _maybe_float(getattr(choice, "optimal_win_rate", None))}}
    if ":" in cfg.transform:
        if cfg.tilt is not None:
            raise InfalignError(f"give the tilt once: in --transform {cfg.transform!r} or --tilt, not both")
        transform = parse_transform(cfg.transform)
    else:
        transform = get_transform(cfg.transform, cfg.tilt)
    return {"transform": transform, "beta": float(cfg.beta), "kl": None, "predicted": None}


def _maybe_float(x):
    return None if x is None else float(x)


def run_prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Calibrate, transform and write the prepared DatasetDict; returns its manifest."""
    scored, upstream = load_artifact(cfg.input, stage="scored")
    if upstream.get("shard"):
        raise InfalignError(f"{cfg.input!r} is shard {upstream['shard']} of a sharded run; "
                            "`infalign merge` all shards first, then prepare the merged artifact")
    config = {**config_to_dict(cfg), "input_hash": upstream["content_hash"]}
    store = ChunkStore(cfg.out)
    if store.start(config):
        return read_manifest(cfg.out)
    chosen = resolve_transform(cfg)
    transform, beta = chosen["transform"], chosen["beta"]
    data = prepare_dataset(scored, cfg.kind, transform, beta, pairs_per_prompt=cfg.pairs_per_prompt,
                           seed=cfg.seed, test_fraction=cfg.test_fraction)
    manifest = base_manifest("prepared", config)
    manifest.update(kind=cfg.kind, transform=transform.name, tilt=transform.tilt, beta=beta,
                    procedure=cfg.procedure, n=cfg.n, kl=chosen["kl"], predicted=chosen["predicted"],
                    num_samples=upstream.get("num_samples"), model=upstream.get("model"),
                    tokenizer=upstream.get("tokenizer"), model_revision=upstream.get("model_revision"),
                    reward_model=upstream.get("reward_model"), seed=upstream.get("seed"), prepare_seed=cfg.seed,
                    ref_dtype=upstream.get("ref_dtype"),
                    prompts=upstream.get("prompts"), input_hash=upstream["content_hash"],
                    num_prompts={s: len(set(d["prompt_id"])) for s, d in data.items()})
    return save_artifact(data, cfg.out, manifest)


def run_build(cfg: BuildConfig, progress: bool = True) -> dict[str, dict[str, Any]]:
    """sample → score → prepare below `cfg.out` (prepare only without --shard); manifests by stage."""
    out = {"samples": run_sample(cfg.sample_config(), progress=progress)}
    out["scored"] = run_score(cfg.score_config(), progress=progress)
    if cfg.shard is None:
        out["prepared"] = run_prepare(cfg.prepare_config())
    return out


# Config keys that legitimately differ between the shards of one run.
_SHARD_FREE = ("shard", "out", "input", "input_hash", "batch_size", "chunk_size", "device")


def run_merge(cfg: MergeConfig) -> dict[str, Any]:
    """Join shard artifacts (samples or scored) of one run, checking every shard is there exactly once."""
    import datasets

    manifests = [read_manifest(p) for p in cfg.inputs]
    stages = {m.get("stage") for m in manifests}
    if len(stages) != 1 or not stages <= {"samples", "scored"}:
        raise InfalignError(f"merge needs shards of one stage (samples or scored), got stages {sorted(map(str, stages))}")
    for path, m in zip(cfg.inputs, manifests):
        if not m.get("shard"):
            raise InfalignError(f"{path!r} is not a shard (its manifest has no shard)")
    totals = {m["shard"][1] for m in manifests}
    if len(totals) != 1:
        raise InfalignError(f"shards come from runs split into different N: {sorted(totals)}")
    n = totals.pop()
    by_index: dict[int, str] = {}
    for path, m in zip(cfg.inputs, manifests):
        i = m["shard"][0]
        if i in by_index:
            raise InfalignError(f"shard {i}/{n} given twice: {by_index[i]!r} and {path!r}")
        by_index[i] = path
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        raise InfalignError(f"missing shard(s) {', '.join(f'{i}/{n}' for i in missing)}: merge needs all {n}")
    first = manifests[0]
    for path, m in zip(cfg.inputs, manifests):
        for key in ("config", "sample_config"):
            diff = config_diff(first.get(key) or {}, m.get(key) or {}, ignore=_SHARD_FREE)
            if diff:
                raise InfalignError(f"shard {path!r} was made with a different {key} than {cfg.inputs[0]!r}: "
                                    + "; ".join(diff))
    order = [cfg.inputs.index(by_index[i]) for i in range(n)]
    parts = [load_artifact(cfg.inputs[j])[0] for j in order]
    seen: dict[str, int] = {}
    for i, part in zip(range(n), parts):
        for pid in part["prompt_id"]:
            if pid in seen:
                raise InfalignError(f"prompt_id {pid} is in shard {seen[pid]} and shard {i}")
            seen[pid] = i
    hashes = [manifests[j]["content_hash"] for j in order]
    if (Path(cfg.out) / "manifest.json").is_file():  # a rerun: the same shards are a no-op, others are refused
        done = read_manifest(cfg.out)
        if [m.get("content_hash") for m in done.get("merged_from", [])] == hashes:
            return done
        raise InfalignError(f"output folder {cfg.out!r} already holds another artifact; choose a new --out")
    ChunkStore(cfg.out).start({})  # refuses a folder holding anything else
    manifest = {k: v for k, v in first.items() if k not in ("content_hash", "num_rows")}
    manifest.update(shard=None, config={**first["config"], "shard": None, "out": cfg.out, "input_hash": None},
                    merged_from=[{"path": cfg.inputs[j], "content_hash": manifests[j]["content_hash"]} for j in order],
                    num_prompts=len(seen))
    for key in ("num_truncated", "num_skipped_long"):
        if key in first:
            manifest[key] = sum(int(m.get(key) or 0) for m in manifests)
    if first.get("sample_config"):
        manifest["sample_config"] = {**first["sample_config"], "shard": None, "input_hash": None}
    if manifest.get("stage") == "samples":  # each shard's prompt hash is in merged_from's manifests
        manifest["input_hash"] = None
    return save_artifact(datasets.concatenate_datasets(parts), cfg.out, manifest)


