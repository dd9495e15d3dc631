"""`import` stage: another system's reference dataset (K completions per prompt, raw rewards) → a scored artifact,
the one `sample` then `score` would have written, so that `prepare` takes it unchanged.

What the artifact holds, and where it differs from sampled data (the manifest records each):
- prompts as given (text or chat messages) with their `prompt_id` (the source's, else `data_builders.prompt_id`);
  `prompt_ids` = `tokenization.encode_prompt` with --model's tokenizer, as `sample` encodes prompts;
- `completion_ids`: each completion's text encoded with that tokenizer (no special tokens added), then the stop
  token (--stop-token-id, default the tokenizer's eos) with finish reason "stop" — unless --max-new-tokens is given
  and the encoded text has at least that many tokens: then it counts as cut at the cap ("length", no stop token,
  docs/math.md §9). Text does not record how a completion ended, so this is a rule, not a record; and re-encoded
  text need not be the ids the sampler drew. So the manifest says `completion_ids_source: "re-encoded text"` and
  carries a warning, which prepare copies to the prepared manifest (and so to train's model card and record and to
  eval's report) and which prepare and train print;
- `ref_logps`: teacher-forced by --model on exactly those ids (`logprobs.ids_logps`), in --dtype (`ref_dtype`);
- `rewards`: the source's raw rewards; temperature / top_p / top_k as the producer declares them (default 1/1/0).
The contract of `sample` and `score` holds: the whole input is checked (every row, K, duplicates, lengths against
the context) before the model loads; the work is chunked (`storage.ChunkStore`) and a rerun of the same command
resumes; the config with the input's hash and the model's fingerprint guards the folder; the folder is locked.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from data_builders import load_rows

from ..artifacts.fingerprint import fingerprint_model, fingerprint_tokenizer
from ..artifacts.storage import ChunkStore, base_manifest, output_lock, read_manifest, save_artifact
from ..config import config_to_dict
from ..core.checks import check_num_samples
from ..core.errors import InfalignError
from ..integrations import get_format
from ..models.logprobs import ids_logps
from ..models.modeling import base_weights_dtype, load_causal_lm, load_tokenizer, stop_token_ids
from ..models.preflight import check_model
from ..models.sampling import context_length
from ..models.tokenization import check_tokenizer, encode_prompt
from .common import chunk_slices, progress_bar
from .sample import COLUMNS, cut_fraction, is_tempered

__all__ = ["run_import", "read_source", "IDS_REENCODED"]

logger = logging.getLogger(__name__)

# Settings that cannot change the artifact (a resume may change them).
_IMPORT_FREE = ("batch_size", "device", "allow_pickle_weights")
IDS_REENCODED = "re-encoded text"
_SCAN_BATCH = 1000


def run_import(cfg, progress: bool = True) -> dict[str, Any]:
    """Import `cfg.input` into the scored artifact `cfg.out`; returns its manifest (the folder is locked)."""
    check_model(cfg.model, "model", cfg.trust_remote_code)  # a bad path is one line, before anything is read
    with output_lock(cfg.out):
        return _run_import(cfg, progress)


def read_source(path: str, split: str = "train"):
    """A `datasets.Dataset` from a local .jsonl/.json/.parquet file, a `save_to_disk` folder (a DatasetDict: its
    `split`), or a hub dataset id; anything else is one error."""
    import datasets


    local = Path(path)
    if local.is_dir():
        try:
            data = datasets.load_from_disk(str(local))
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise InfalignError(f"{path!r} is a folder but not a `datasets` save_to_disk folder "
                                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise InfalignError(f"{path!r} has no split {split!r}; it has {', '.join(data)}")
            data = data[split]
    elif local.suffix in (".jsonl", ".json", ".parquet"):
        if not local.is_file():
            raise InfalignError(f"input file {path!r} does not exist")
        data = load_rows(path, data_files=path, what="rows")
    else:
        data = load_rows(path, split=split, what="rows")
    if len(data) == 0:
        raise InfalignError(f"{path!r} holds no rows")
    return data


def _rows(dataset, columns, indices=None):
    """The rows of `dataset` (or of `indices`, in memory: nothing is written next to the input), as dicts."""
    part = dataset.select(indices, keep_in_memory=True) if indices is not None else dataset
    part = part.select_columns([c for c in columns if c in dataset.column_names])
    for batch in part.iter(batch_size=_SCAN_BATCH):
        names = list(batch)
        yield from (dict(zip(names, values)) for values in zip(*(batch[n] for n in names)))


def _context_length(cfg) -> int | None:
    from types import SimpleNamespace

    from transformers import AutoConfig


    return context_length(SimpleNamespace(config=AutoConfig.from_pretrained(cfg.model,
                                                                           trust_remote_code=cfg.trust_remote_code)))


def _encode(tokenizer, item, stop_id: int, max_new_tokens: int | None) -> dict[str, Any]:
    """prompt_ids, completion_ids and finish_reasons of one imported prompt (the rule in the module docstring)."""
    ids, finish = [], []
    for text in item.completions:
        body = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        cut = max_new_tokens is not None and len(body) >= max_new_tokens
        ids.append(body if cut else body + [stop_id])
        finish.append("length" if cut else "stop")
    return {"prompt_ids": encode_prompt(tokenizer, item.prompt), "completion_ids": ids, "finish_reasons": finish}


def _scan(fmt, dataset, layout: str, cfg, tokenizer, stop_id: int, context: int | None, progress: bool):
    """Every row checked before any work: its layout, K (equal for all, >= 2), duplicates, and prompt plus longest
    completion against the context. Returns (row indices to import, K, hash of what is imported, counts)."""
    keep, seen, k = [], set(), None
    counts = {"num_rows_read": 0, "num_skipped_duplicates": 0, "num_skipped_long": 0}
    digest = hashlib.sha256(layout.encode())
    bar = progress_bar(len(dataset), "check", "row", progress)
    try:
        for i, row in enumerate(_rows(dataset, fmt.READS[layout])):
            bar.update(1)
            if cfg.limit is not None and len(keep) >= cfg.limit:
                break
            counts["num_rows_read"] += 1
            (item,) = fmt.read([row], layout, first_row=i)
            where = f"row {i} (prompt_id {item.prompt_id})"
            if k is None:
                k = check_num_samples(len(item.completions), where)
            elif len(item.completions) != k:
                raise InfalignError(f"{where} has {len(item.completions)} completions but the first row has {k}; "
                                    "every prompt needs the same number K")
            if item.prompt_id in seen:
                if cfg.on_duplicate_prompt == "fail":
                    raise InfalignError(f"{where}: prompt_id seen twice; pass --on-duplicate-prompt skip to keep the "
                                        "first")
                counts["num_skipped_duplicates"] += 1
                continue
            if context is not None:
                enc = _encode(tokenizer, item, stop_id, cfg.max_new_tokens)
                longest = len(enc["prompt_ids"]) + max(len(c) for c in enc["completion_ids"])
                if longest > context:
                    if cfg.on_too_long == "fail":
                        raise InfalignError(f"{where}: its prompt plus longest completion are {longest} tokens, more "
                                            f"than the model's context of {context}; pass --on-too-long skip")
                    counts["num_skipped_long"] += 1
                    continue
            seen.add(item.prompt_id)
            keep.append(i)
            digest.update(json.dumps([item.prompt_id, item.prompt, item.completions, item.rewards],
                                     ensure_ascii=False).encode())
    finally:
        bar.close()
    if not keep:
        raise InfalignError(f"nothing to import from {cfg.input!r}: {counts['num_skipped_long']} prompt(s) too long, "
                            f"{counts['num_skipped_duplicates']} duplicate(s)")
    return keep, k, digest.hexdigest(), counts


def _run_import(cfg, progress: bool) -> dict[str, Any]:
    import datasets


    fmt = get_format(cfg.format)
    dataset = read_source(cfg.input, cfg.split)
    layout = fmt.detect_layout(dataset.column_names) if cfg.layout == "auto" else cfg.layout
    fmt.check_columns(dataset.column_names, layout)
    # The tokenizer (padding with eos, always masked) and the context are cheap: every row is checked with them
    # before the model loads.
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code, pad_token_as_eos=True)
    check_tokenizer(tokenizer)
    stop_id = tokenizer.eos_token_id if cfg.stop_token_id is None else cfg.stop_token_id
    if stop_id >= len(tokenizer):
        raise InfalignError(f"stop_token_id {stop_id} is outside tokenizer {cfg.model!r} (vocabulary size "
                            f"{len(tokenizer)})")
    keep, k, input_hash, counts = _scan(fmt, dataset, layout, cfg, tokenizer, stop_id, _context_length(cfg),
                                        progress)
    config = {**config_to_dict(cfg), "input_hash": input_hash, "model_fingerprint": fingerprint_model(cfg.model)}
    store = ChunkStore(cfg.out, stage="scored")
    if store.start(config, ignore=_IMPORT_FREE):
        return read_manifest(cfg.out)
    model, _ = load_causal_lm(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code, pad_token_as_eos=True,
                              allow_pickle_weights=cfg.allow_pickle_weights)
    stop = stop_token_ids(model, tokenizer, [stop_id])
    chunks = chunk_slices(len(keep), cfg.chunk_size)
    bar = progress_bar(len(keep), "import", "prompt", progress)
    try:
        for index, sl in enumerate(chunks):
            if not store.done(index):
                items = fmt.read(_rows(dataset, fmt.READS[layout], keep[sl]), layout)
                enc = [_encode(tokenizer, item, stop_id, cfg.max_new_tokens) for item in items]
                logps = _reference(model, tokenizer, enc, cfg.batch_size, ids_logps)
                record = {"prompt_ids": [e["prompt_ids"] for e in enc],
                          "completions": [list(it.completions) for it in items],
                          "completion_ids": [e["completion_ids"] for e in enc],
                          "finish_reasons": [e["finish_reasons"] for e in enc],
                          "ref_logps": [logps[i * k:(i + 1) * k] for i in range(len(items))]}
                # The columns `score` writes: prompt_id, prompt, the sampler's record, then the rewards.
                store.write(index, datasets.Dataset.from_dict({
                    "prompt_id": [it.prompt_id for it in items], "prompt": [it.prompt for it in items],
                    **{col: record[col] for col in COLUMNS}, "rewards": [list(it.rewards) for it in items]}))
            bar.update(sl.stop - sl.start)
    finally:
        bar.close()
    final = datasets.concatenate_datasets([store.load(i) for i in range(len(chunks))])
    cut = cut_fraction(final["finish_reasons"])
    ending = (f"those of at least {cfg.max_new_tokens} tokens count as cut, the others end with stop token {stop_id}"
              if cfg.max_new_tokens else f"each ends with stop token {stop_id}")
    warning = (f"imported from {cfg.format} ({layout}): completion_ids are the completion texts encoded again by "
               f"the tokenizer of {cfg.model!r}, not ids a sampler drew (docs/math.md §9); {ending} ({cut:.1%} "
               "cut); ref_logps and training log-probs are of those sequences")
    manifest = base_manifest("scored", config)
    manifest.update(
        model=cfg.model, model_fingerprint=config["model_fingerprint"],
        tokenizer=getattr(tokenizer, "name_or_path", cfg.model),
        tokenizer_fingerprint=fingerprint_tokenizer(tokenizer),  # train refuses a model that reads the ids otherwise
        model_revision=getattr(model.config, "_commit_hash", None), model_type=getattr(model.config, "model_type", None),
        prompts=cfg.input, split=cfg.split, seed=None, num_samples=k, shard=None, num_prompts=len(final),
        backend="import", ref_dtype=base_weights_dtype(model), stop_token_ids=stop, cut_fraction=cut,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        tempered=is_tempered(cfg.temperature, cfg.top_p, cfg.top_k), reward_model=cfg.reward_model,
        reward_fingerprint=None, reward_label=None, input_hash=input_hash,
        imported={"format": cfg.format, "layout": layout, "input": cfg.input, **counts},
        completion_ids_source=IDS_REENCODED, warnings=[warning])
    return save_artifact(final, cfg.out, manifest)


def _reference(model, tokenizer, enc, batch_size: int, ids_logps) -> list[float]:
    """ref_logps of every (prompt, completion) of `enc`, flat in prompt-major order; computed in order of length
    (less padding per batch) and put back."""
    prompts = [e["prompt_ids"] for e in enc for _ in e["completion_ids"]]
    completions = [c for e in enc for c in e["completion_ids"]]
    order = np.argsort([len(p) + len(c) for p, c in zip(prompts, completions)], kind="stable")
    values = ids_logps(model, [prompts[i] for i in order], [completions[i] for i in order], tokenizer.pad_token_id,
                       batch_size)
    out = np.empty(len(order), dtype=np.float64)
    out[order] = values
    return out.tolist()
