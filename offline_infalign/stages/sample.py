"""`sample` stage: K completions per prompt from the base model, recorded as token ids with their ref_logps
(docs/math.md §9), into a samples/ artifact."""

from __future__ import annotations

import hashlib
from typing import Any

from ..config import SampleConfig, config_to_dict, parse_shard
from ..core.errors import InfalignError
from ..engines import ENGINE_FIELDS, open_engine
from ..fingerprint import fingerprint_model, fingerprint_tokenizer
from ..storage import ChunkStore, base_manifest, output_lock, read_manifest, save_artifact
from .common import chunk_slices, progress_bar, shard_slice

# Config fields that cannot change the result, so a resume may change them (allow_pickle_weights only lets a
# folder load; the weights it loads are the same; the engine only says where chunks are computed).
_SAMPLE_FREE = ("batch_size", "device", "allow_pickle_weights", *ENGINE_FIELDS)
# The sampler's record per prompt row (docs/design.md columns), after prompt_id and prompt.
COLUMNS = ("prompt_ids", "completions", "completion_ids", "finish_reasons", "ref_logps")


def _prompt_rows(cfg: SampleConfig) -> list[dict[str, Any]]:
    from data_builders import get_prompt_source

    rows = list(get_prompt_source(cfg.prompts, split=cfg.split, limit=cfg.limit, data_files=cfg.prompts_data_files,
                                  on_duplicate=cfg.on_duplicate_prompt))
    kinds = {isinstance(r["prompt"], str) for r in rows}
    if len(kinds) > 1:
        raise InfalignError(f"prompt source {cfg.prompts!r} mixes plain-text and chat-message prompts; "
                            "one artifact holds one kind")
    return rows


def prompt_list_hash(prompt_ids) -> str:
    """sha256 of a list of prompt ids in order: the list every shard of one run must be cut from."""
    return hashlib.sha256("\n".join(prompt_ids).encode()).hexdigest()


def _model_id(model) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {"model_revision": getattr(cfg, "_commit_hash", None),
            "model_type": getattr(cfg, "model_type", None)}


def _load_sampler(cfg: SampleConfig):
    """(sampling function, model, tokenizer, context length or None, model ids for the manifest, stop set)."""
    from ..modeling import load_causal_lm, load_tokenizer, stop_token_ids
    from ..sampling import context_length, load_vllm, sample_completions, sample_completions_vllm
    from ..tokenization import check_tokenizer

    # Without --pad-token-as-eos a tokenizer lacking a pad token is refused below (check_tokenizer).
    if cfg.backend == "vllm":
        tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code, pad_token_as_eos=cfg.pad_token_as_eos)
        model = load_vllm(cfg.model, cfg.tensor_parallel_size, cfg.dtype, cfg.seed, cfg.trust_remote_code,
                          allow_pickle_weights=cfg.allow_pickle_weights)
        ctx = getattr(getattr(getattr(model, "llm_engine", None), "model_config", None), "max_model_len", None)
        sampler, ids = sample_completions_vllm, {"model_revision": None, "model_type": None}
    else:
        model, tokenizer = load_causal_lm(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code,
                                          pad_token_as_eos=cfg.pad_token_as_eos,
                                          allow_pickle_weights=cfg.allow_pickle_weights)
        ctx, sampler, ids = context_length(model), sample_completions, _model_id(model)
    check_tokenizer(tokenizer)
    # vLLM's engine is not a transformers model: its stop ids come from the folder's generation config.
    stop = stop_token_ids(cfg.model if cfg.backend == "vllm" else model, tokenizer, cfg.stop_token_ids or ())
    return sampler, model, tokenizer, ctx, ids, stop


def cut_fraction(finish_reasons) -> float:
    """The fraction of completions cut at max_new_tokens ("length"), over a column of K-lists."""
    flat = [f for row in finish_reasons for f in row]
    return sum(f == "length" for f in flat) / max(len(flat), 1)


def is_tempered(temperature: float, top_p: float, top_k: int) -> bool:
    """Samples from a policy other than π_ref (docs/math.md §9): any of T != 1, top_p < 1, top_k > 0."""
    return float(temperature) != 1.0 or float(top_p) < 1.0 or int(top_k) > 0


def run_sample(cfg: SampleConfig, progress: bool = True) -> dict[str, Any]:
    """Sample K completions per prompt into the artifact folder `cfg.out`; returns its manifest.

    The folder is locked for the run (storage.output_lock): a second run into it is refused at once.
    """
    from ..preflight import check_model

    check_model(cfg.model, "model", cfg.trust_remote_code)  # a bad path is one line, before anything is read
    with output_lock(cfg.out), open_engine(cfg, SampleJob(cfg)) as engine:
        return _run_sample(cfg, engine, progress)


class SampleJob:
    """The stage's work on one worker (engines/): the model loaded once, then chunks of prompt rows."""

    def __init__(self, cfg: SampleConfig):
        self.cfg = cfg

    def load(self) -> dict[str, Any]:
        from ..load_checks import check_device

        check_device(self.cfg.device)  # where the model runs (with --engine ray: on the worker, not the driver)
        self.sampler, self.model, self.tokenizer, ctx, ids, self.stop = _load_sampler(self.cfg)
        return {"tokenizer": self.tokenizer, "context_length": ctx, "model_ids": ids, "stop": self.stop,
                "ref_dtype": _ref_dtype(self.model, self.cfg)}

    def count(self, part) -> int:
        return len(part)

    def run(self, part, bar=None) -> list[dict[str, list]]:
        return _sample_chunk(self.sampler, self.model, self.tokenizer, part, self.cfg, bar, self.stop)


def _run_sample(cfg: SampleConfig, engine, progress: bool) -> dict[str, Any]:
    import datasets

    from ..sampling import fit_prompts

    shard = parse_shard(cfg.shard)
    rows = _prompt_rows(cfg)
    # The whole list (after --limit and the duplicate rule), before this shard's part is cut from it: merge
    # refuses shards cut from different lists (a prompt file changed between shard runs loses prompts). Which
    # prompts the long-prompt rule then truncates or skips depends only on the prompt, the model's tokenizer and
    # the config, which merge compares too.
    whole = {"prompt_list_hash": prompt_list_hash([r["prompt_id"] for r in rows]), "prompt_list_size": len(rows)}
    rows = rows[shard_slice(len(rows), shard)]
    # The prompts' hash is part of the recorded config: if the source changed between a crash and the resume,
    # finished chunks would no longer line up with the prompt list, so that resume is refused.
    prompts_hash = prompt_list_hash([r["prompt_id"] for r in rows])
    # The model's fingerprint too: a folder overwritten (or a hub revision moved) between a kill and the rerun
    # must not finish the artifact with another model's samples (fingerprint.py says what it covers).
    config = {**config_to_dict(cfg), "input_hash": prompts_hash, "model_fingerprint": fingerprint_model(cfg.model)}
    store = ChunkStore(cfg.out, stage="samples")
    if store.start(config, ignore=_SAMPLE_FREE):
        return read_manifest(cfg.out)
    facts = engine.start()  # the model loads here (in each worker with --engine ray)
    tokenizer, ctx, ids, stop = facts["tokenizer"], facts["context_length"], facts["model_ids"], facts["stop"]
    truncated = skipped = 0
    if ctx is not None:
        rows, truncated, skipped = fit_prompts(tokenizer, rows, ctx - cfg.max_new_tokens, cfg.on_long_prompt)
    if not rows:
        raise InfalignError(f"no prompts left to sample (shard {cfg.shard}, {skipped} skipped as too long)")
    chunks = chunk_slices(len(rows), cfg.chunk_size)
    bar = progress_bar(len(rows), "sample", "prompt", progress)
    try:
        todo = [i for i in range(len(chunks)) if not store.done(i)]
        bar.update(len(rows) - sum(chunks[i].stop - chunks[i].start for i in todo))  # written by an earlier run
        # Chunks come back as they finish (in any order with several workers), each written at once.
        for index, results in engine.map(todo, lambda i: rows[chunks[i]], bar):
            part = rows[chunks[index]]
            store.write(index, datasets.Dataset.from_dict({
                "prompt_id": [r["prompt_id"] for r in part], "prompt": [r["prompt"] for r in part],
                **{col: [r[col] for r in results] for col in COLUMNS}}))
    finally:
        bar.close()
    final = datasets.concatenate_datasets([store.load(i) for i in range(len(chunks))])
    manifest = base_manifest("samples", config)
    # The tokenizer's fingerprint travels with the ids: train refuses a model whose tokenizer reads them otherwise.
    manifest.update(model=cfg.model, model_fingerprint=config["model_fingerprint"],
                    tokenizer=getattr(tokenizer, "name_or_path", cfg.model),
                    tokenizer_fingerprint=fingerprint_tokenizer(tokenizer), **ids, **whole,
                    prompts=cfg.prompts, split=cfg.split, seed=cfg.seed, num_samples=cfg.num_samples,
                    shard=list(shard) if shard else None, num_prompts=len(rows), num_truncated=truncated,
                    num_skipped_long=skipped, backend=cfg.backend, input_hash=prompts_hash,
                    ref_dtype=facts["ref_dtype"], stop_token_ids=stop,
                    cut_fraction=cut_fraction(final["finish_reasons"]), temperature=cfg.temperature,
                    top_p=cfg.top_p, top_k=cfg.top_k, tempered=is_tempered(cfg.temperature, cfg.top_p, cfg.top_k))
    return save_artifact(final, cfg.out, manifest)


def _ref_dtype(model, cfg: SampleConfig) -> str:
    """The dtype `ref_logps` were computed in: the trainer reuses the stored columns only for base weights in the
    same dtype (bf16 and float32 log-probs of one sequence differ by far more than the losses can tolerate)."""
    if cfg.backend == "vllm":
        return str(cfg.dtype)
    from ..modeling import base_weights_dtype

    return base_weights_dtype(model)


def _sample_chunk(sampler, model, tokenizer, part, cfg: SampleConfig, bar=None,
                  stop=None) -> list[dict[str, list]]:
    """One chunk's completions (a seam the resume test interrupts); advances `bar` as prompts finish."""
    vllm = cfg.backend == "vllm"  # vLLM draws its own bar per call, so ours advances once per chunk
    out = sampler(model, tokenizer, [r["prompt"] for r in part], [r["prompt_id"] for r in part],
                  num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                  top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed, batch_size=cfg.batch_size,
                  progress=False if vllm or bar is None else bar, stop_token_ids=stop)
    if vllm and bar is not None:
        bar.update(len(part))
    return out
