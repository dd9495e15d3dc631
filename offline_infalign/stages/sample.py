"""`sample` stage: K completions per prompt from the base model, recorded as token ids with their ref_logps
(docs/math.md §9), into a samples/ artifact.

Where `ref_logps` come from (`--ref-logps-from`, `resolve_ref_logps`): the sampler's own numbers (the hf
sampler's logits, or vLLM's scoring pass), in the dtype the sampler ran in; or a teacher-forced transformers
pass over the sampled ids in `--ref-dtype` (float32 by default), the forward the trainer itself runs on the base
weights. `auto` takes the sampler's numbers only when they already are that: the hf backend running in
`--ref-dtype`. So an hf float32 build pays no second pass, and a vLLM build (whose default dtype downcasts a
float32 checkpoint to bfloat16, and whose kernels are not the trainer's) stores float32 teacher-forced sums.

When the pass runs: after sampling, over the written chunks, with the sampler released. On a GPU the vLLM engine
reserves most of the memory for its KV cache, and an hf sampler in bf16 plus a float32 copy of the model may not
fit either, so the two models never coexist: sampling writes its chunks (without ref_logps), the sampler's
engine closes (its workers end, or this process drops the model), then the float32 model loads once per worker
(`ForwardJob`, on the same engine: `--engine ray` spreads it too) and scores chunk after chunk, each written as
it finishes under `_work/forward/`. A kill resumes in either phase; a kill in the forward pass resumes it without
starting the sampler again (its facts are recorded with the first scored chunk). The one case with no second
model: an hf sampler already in `--ref-dtype` with `--ref-logps-from forward` computes the pass chunk by chunk
with its own model.

The manifest records what was resolved, never "auto": `ref_logps_from` ("sampler" | "forward"), `ref_dtype`
(the precision of ref_logps), `ref_backend` (hf | vllm: whose forward computed them), `sampler_dtype`, `backend`.
A resume, and a merge of shards, must resolve the same way (they are in the run's config under `resolved`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from data_builders import get_prompt_source

from ..artifacts.fingerprint import fingerprint_model, fingerprint_tokenizer
from ..artifacts.storage import (
    WORK,
    ChunkStore,
    base_manifest,
    fault_point,
    output_lock,
    read_manifest,
    save_artifact,
)
from ..config import SampleConfig, config_to_dict, parse_shard
from ..core.errors import InfalignError
from ..engines import ENGINE_FIELDS, open_engine
from ..models.load_checks import check_device
from ..models.modeling import base_weights_dtype, free_memory, load_causal_lm, load_tokenizer, stop_token_ids
from ..models.preflight import check_model
from ..models.sampling import context_length, fit_prompts, forward_ref_logps, sample_completions
from ..models.tokenization import check_tokenizer
from ..models.vllm_sampling import load_vllm, release_vllm, sample_completions_vllm, vllm_dtype
from .common import chunk_slices, progress_bar, shard_slice

# Config fields that cannot change the result, so a resume may change them (allow_pickle_weights only lets a
# folder load; the weights it loads are the same; the engine only says where chunks are computed). `resolved` is
# checked after the sampler loads (`_pin_resolved`).
RESOLVED = "resolved"
_SAMPLE_FREE = ("batch_size", "device", "allow_pickle_weights", "vllm_memory_fraction", *ENGINE_FIELDS, RESOLVED)
# What the manifests downstream (scored, prepared) repeat about ref_logps, for `train --reference auto`.
REF_FACTS = ("ref_logps_from", "ref_dtype", "ref_backend", "sampler_dtype")
# The sampler's record per prompt row (docs/design.md columns), after prompt_id and prompt.
COLUMNS = ("prompt_ids", "completions", "completion_ids", "finish_reasons", "ref_logps")


def _prompt_rows(cfg: SampleConfig) -> list[dict[str, Any]]:
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
    """(sampling function, model, tokenizer, context length or None, model ids for the manifest, stop set,
    the dtype the sampler runs in)."""
    # Without --pad-token-as-eos a tokenizer lacking a pad token is refused below (check_tokenizer).
    if cfg.backend == "vllm":
        tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code, pad_token_as_eos=cfg.pad_token_as_eos)
        model = load_vllm(cfg.model, cfg.tensor_parallel_size, cfg.dtype, cfg.seed, cfg.trust_remote_code,
                          allow_pickle_weights=cfg.allow_pickle_weights, memory_fraction=cfg.vllm_memory_fraction)
        ctx = getattr(getattr(getattr(model, "llm_engine", None), "model_config", None), "max_model_len", None)
        sampler, ids, dtype = sample_completions_vllm, {"model_revision": None, "model_type": None}, vllm_dtype(model)
    else:
        model, tokenizer = load_causal_lm(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code,
                                          pad_token_as_eos=cfg.pad_token_as_eos,
                                          allow_pickle_weights=cfg.allow_pickle_weights)
        ctx, sampler, ids = context_length(model), sample_completions, _model_id(model)
        dtype = base_weights_dtype(model)
    check_tokenizer(tokenizer)
    # vLLM's engine is not a transformers model: its stop ids come from the folder's generation config.
    stop = stop_token_ids(cfg.model if cfg.backend == "vllm" else model, tokenizer, cfg.stop_token_ids or ())
    return sampler, model, tokenizer, ctx, ids, stop, dtype


def resolve_ref_logps(cfg: SampleConfig, sampler_dtype: str) -> dict[str, str]:
    """Where this run's ref_logps come from, resolved: ref_logps_from, ref_dtype, ref_backend, sampler_dtype.

    auto → the sampler's own numbers only for the hf backend running in `ref_dtype` (they equal the teacher-forced
    pass to float rounding, so a second pass would be redundant); otherwise the forward pass in `ref_dtype`."""
    use_sampler = cfg.ref_logps_from == "sampler" or (
        cfg.ref_logps_from == "auto" and cfg.backend == "hf" and sampler_dtype == cfg.ref_dtype)
    if use_sampler:
        return {"ref_logps_from": "sampler", "ref_dtype": sampler_dtype, "ref_backend": cfg.backend,
                "sampler_dtype": sampler_dtype}
    return {"ref_logps_from": "forward", "ref_dtype": cfg.ref_dtype, "ref_backend": "hf",
            "sampler_dtype": sampler_dtype}


class SampleJob:
    """The sampling on one worker (engines/): the sampler loaded once, then chunks of prompt rows. It resolves
    where ref_logps come from by its own sampler's dtype; with the forward pass in that very dtype on an hf
    sampler (`--ref-logps-from forward`), it runs the pass per chunk with its own model."""

    def __init__(self, cfg: SampleConfig):
        self.cfg = cfg

    def load(self) -> dict[str, Any]:
        check_device(self.cfg.device)  # where the model runs (with --engine ray: on the worker, not the driver)
        self.sampler, self.model, self.tokenizer, ctx, ids, self.stop, dtype = _load_sampler(self.cfg)
        self.resolved = resolve_ref_logps(self.cfg, dtype)
        self.forward = self.resolved["ref_logps_from"] == "forward"
        self.inline = self.forward and self.cfg.backend == "hf" and dtype == self.resolved["ref_dtype"]
        return {"tokenizer": self.tokenizer, "context_length": ctx, "model_ids": ids, "stop": self.stop,
                "resolved": self.resolved, "inline": self.inline}

    def count(self, part) -> int:
        return len(part)

    def run(self, part, bar=None) -> list[dict[str, list]]:
        out = _sample_chunk(self.sampler, self.model, self.tokenizer, part, self.cfg, bar, self.stop,
                            sampler_logps=not self.forward)
        if self.inline:
            refs = forward_ref_logps(self.model, [r["prompt_ids"] for r in out], [r["completion_ids"] for r in out],
                                     self.tokenizer.pad_token_id, self.cfg.batch_size)
            for r, x in zip(out, refs):
                r["ref_logps"] = x
        elif self.forward:  # the pass after sampling computes them
            for r in out:
                r.pop("ref_logps", None)
        return out

    def release(self) -> None:
        """Free the sampler this process loaded (none with --engine ray: the workers end with the engine); a
        vLLM engine is shut down, its KV cache with it."""
        model = self.__dict__.pop("model", None)
        self.__dict__.pop("sampler", None)
        if model is not None and self.cfg.backend == "vllm":
            release_vllm(model)
        del model
        free_memory()


class ForwardJob:
    """The forward pass on one worker: the model in `dtype` loaded once, then the ref_logps of a written chunk
    (its prompt_ids and completion_ids)."""

    def __init__(self, cfg: SampleConfig, dtype: str):
        self.cfg, self.dtype = cfg, dtype

    def load(self) -> dict[str, Any]:
        check_device(self.cfg.device)
        self.model, tokenizer = load_causal_lm(self.cfg.model, self.cfg.device, self.dtype,
                                               self.cfg.trust_remote_code, pad_token_as_eos=True,
                                               allow_pickle_weights=self.cfg.allow_pickle_weights)
        self.pad = tokenizer.pad_token_id
        return {}

    def count(self, part) -> int:
        return len(part["prompt_ids"])

    def run(self, part, bar=None) -> list[list[float]]:
        out = forward_ref_logps(self.model, part["prompt_ids"], part["completion_ids"], self.pad,
                                self.cfg.batch_size)
        if bar is not None:
            bar.update(len(out))
        return out


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
    check_model(cfg.model, "model", cfg.trust_remote_code)  # a bad path is one line, before anything is read
    with output_lock(cfg.out):
        return _run_sample(cfg, progress)


def _run_sample(cfg: SampleConfig, progress: bool) -> dict[str, Any]:
    import datasets

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
    # The forward pass's chunks: a store of their own inside the run's work folder (removed with it at the end).
    forward = ChunkStore(Path(cfg.out) / WORK / "forward")
    facts = _recorded_facts(forward)
    if facts is None:  # sampling not known to be finished: start the sampler (finished chunks are skipped)
        job = SampleJob(cfg)
        try:
            with open_engine(cfg, job) as engine:
                facts = _sample_all(cfg, rows, store, config, engine, progress)
        finally:
            job.release()  # before the forward pass's model loads
    config[RESOLVED] = facts["resolved"]
    chunks = facts["num_chunks"]
    final = datasets.concatenate_datasets([store.load(i) for i in range(chunks)])
    if facts["resolved"]["ref_logps_from"] == "forward" and not facts["inline"]:
        refs = _forward_all(cfg, store, forward, facts, progress)
        final = final.add_column("ref_logps", refs)  # the last column, as the sampler writes it
    manifest = base_manifest("samples", config)
    # The tokenizer's fingerprint travels with the ids: train refuses a model whose tokenizer reads them otherwise.
    manifest.update(model=cfg.model, model_fingerprint=config["model_fingerprint"], tokenizer=facts["tokenizer"],
                    tokenizer_fingerprint=facts["tokenizer_fingerprint"], **facts["model_ids"], **whole,
                    prompts=cfg.prompts, split=cfg.split, seed=cfg.seed,
                    num_samples=cfg.num_samples, shard=list(shard) if shard else None,
                    num_prompts=facts["num_prompts"], num_truncated=facts["num_truncated"],
                    num_skipped_long=facts["num_skipped_long"], backend=cfg.backend, input_hash=prompts_hash,
                    **facts["resolved"], stop_token_ids=facts["stop_token_ids"],
                    cut_fraction=cut_fraction(final["finish_reasons"]), temperature=cfg.temperature,
                    top_p=cfg.top_p, top_k=cfg.top_k, tempered=is_tempered(cfg.temperature, cfg.top_p, cfg.top_k))
    return save_artifact(final, cfg.out, manifest)


def _recorded_facts(forward: ChunkStore) -> dict[str, Any] | None:
    """What the sampling phase recorded with the forward pass's first chunk (None before that chunk)."""
    import json

    return json.loads(forward.config_path.read_text()) if forward.config_path.is_file() else None


def _pin_resolved(store: ChunkStore, config: dict[str, Any], resolved: dict[str, str]) -> None:
    """Refuse a resume whose precisions resolve otherwise than the run it continues (e.g. dtype auto on another
    device); otherwise record them in the run's config (the store writes that dict with the first chunk)."""
    import json

    if store.config_path.is_file():
        recorded = json.loads(store.config_path.read_text()).get(RESOLVED)
        if recorded is not None and recorded != resolved:
            diff = "; ".join(f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in resolved.items()
                             if recorded.get(k) != v)
            raise InfalignError(f"output folder {str(store.out)!r} holds an unfinished run whose precisions resolved "
                                f"otherwise ({diff}); rerun where they resolve as recorded (e.g. pass --dtype "
                                f"{recorded.get('sampler_dtype')}) or use a new --out")
    config[RESOLVED] = resolved  # the same dict the store holds: recorded with the first chunk


def _sample_all(cfg: SampleConfig, rows, store: ChunkStore, config: dict[str, Any], engine, progress: bool):
    """Sample every chunk not yet written on `engine`. Returns the facts for the manifest and the forward pass."""
    import datasets


    started = engine.start()  # the sampler loads here (in each worker with --engine ray)
    tokenizer, ctx, stop, resolved = started["tokenizer"], started["context_length"], started["stop"], \
        started["resolved"]
    _pin_resolved(store, config, resolved)
    truncated = skipped = 0
    if ctx is not None:
        rows, truncated, skipped = fit_prompts(tokenizer, rows, ctx - cfg.max_new_tokens, cfg.on_long_prompt)
    if not rows:
        raise InfalignError(f"no prompts left to sample (shard {cfg.shard}, {skipped} skipped as too long)")
    chunks = chunk_slices(len(rows), cfg.chunk_size)
    after = resolved["ref_logps_from"] == "forward" and not started["inline"]  # the pass after sampling
    columns = [c for c in COLUMNS if not (after and c == "ref_logps")]
    bar = progress_bar(len(rows), "sample", "prompt", progress)
    try:
        todo = [i for i in range(len(chunks)) if not store.done(i)]
        bar.update(len(rows) - sum(chunks[i].stop - chunks[i].start for i in todo))  # written by an earlier run
        # Chunks come back as they finish (in any order with several workers), each written at once.
        for index, results in engine.map(todo, lambda i: rows[chunks[i]], bar):
            part = rows[chunks[index]]
            store.write(index, datasets.Dataset.from_dict({
                "prompt_id": [r["prompt_id"] for r in part], "prompt": [r["prompt"] for r in part],
                **{col: [r[col] for r in results] for col in columns}}))
    finally:
        bar.close()
    return {"resolved": resolved, "inline": started["inline"], "num_chunks": len(chunks), "num_prompts": len(rows),
            "num_truncated": truncated, "num_skipped_long": skipped, "stop_token_ids": stop,
            "model_ids": started["model_ids"], "tokenizer": getattr(tokenizer, "name_or_path", cfg.model),
            "tokenizer_fingerprint": fingerprint_tokenizer(tokenizer)}


def _forward_all(cfg: SampleConfig, store: ChunkStore, forward: ChunkStore, facts: dict[str, Any],
                 progress: bool) -> list[list[float]]:
    """ref_logps of every written chunk by the teacher-forced pass in `ref_dtype` (`ForwardJob` on the run's
    engine), each chunk written as it comes back (resumable)."""
    import datasets

    forward.start(facts)  # the same facts as the run that wrote its first chunk (read from there on a resume)
    dtype = facts["resolved"]["ref_dtype"]
    todo = [i for i in range(facts["num_chunks"]) if not forward.done(i)]
    bar = progress_bar(facts["num_prompts"], f"ref_logps ({dtype} forward)", "prompt", progress)
    try:
        bar.update(sum(len(forward.load(i)) for i in range(facts["num_chunks"]) if i not in todo))
        if todo:
            with open_engine(cfg, ForwardJob(cfg, dtype)) as engine:
                engine.start()

                def payload(i):
                    part = store.load(i)
                    return {"prompt_ids": part["prompt_ids"], "completion_ids": part["completion_ids"]}

                for index, refs in engine.map(todo, payload, bar):
                    fault_point(f"forward:{index}")
                    forward.write(index, datasets.Dataset.from_dict({"ref_logps": refs}))
    finally:
        bar.close()
    return [r for i in range(facts["num_chunks"]) for r in forward.load(i)["ref_logps"]]


def _sample_chunk(sampler, model, tokenizer, part, cfg: SampleConfig, bar=None, stop=None,
                  sampler_logps: bool = True) -> list[dict[str, list]]:
    """One chunk's completions (a seam the resume test interrupts); advances `bar` as prompts finish.
    sampler_logps: whether the sampler's own ref_logps are stored (else vLLM skips its scoring pass)."""
    vllm = cfg.backend == "vllm"  # vLLM draws its own bar per call, so ours advances once per chunk
    kwargs = {"ref_logps": sampler_logps} if vllm else {}  # the hf sampler's come free with its logits
    out = sampler(model, tokenizer, [r["prompt"] for r in part], [r["prompt_id"] for r in part],
                  num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                  top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed, batch_size=cfg.batch_size,
                  progress=False if vllm or bar is None else bar, stop_token_ids=stop, **kwargs)
    if vllm and bar is not None:
        bar.update(len(part))
    return out
