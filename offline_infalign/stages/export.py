"""`export` stage: a scored artifact → another system's layout (`integrations.FORMATS`), with raw rewards.

The output folder is a `datasets` DatasetDict with one split (`datasets.load_from_disk(OUT)[split]`, as QRPO's
scripts load their datasets) plus `manifest.json` (stage `export`), written like every artifact: atomically, its
config (with the input's content hash) guarding the folder, the same command on a finished folder doing nothing.
What the layout has no place for stays behind: the token ids and `ref_logps` (the other system computes its
own reference), finish reasons and the sampling facts (kept in the manifest).
"""

from __future__ import annotations

from typing import Any

from ..artifacts.storage import (
    ChunkStore,
    base_manifest,
    load_artifact,
    output_lock,
    read_manifest,
    save_artifact,
)
from ..config import config_to_dict
from ..core.errors import InfalignError
from ..integrations import Imported, get_format
from .common import progress_bar

__all__ = ["run_export"]

_BATCH = 1000  # rows converted at a time


def run_export(cfg, progress: bool = True) -> dict[str, Any]:
    """Write `cfg.input` (a scored artifact) in `cfg.format`'s `cfg.layout` into `cfg.out`; returns the manifest."""
    with output_lock(cfg.out):
        return _run_export(cfg, progress)


def _run_export(cfg, progress: bool) -> dict[str, Any]:
    import datasets

    scored, upstream = load_artifact(cfg.input, stage="scored", verify=cfg.verify)
    if upstream.get("shard"):
        raise InfalignError(f"{cfg.input!r} is shard {upstream['shard']} of a sharded run; `infalign merge` all "
                            "shards first, then export the merged artifact")
    config = {**config_to_dict(cfg), "input_hash": upstream["content_hash"]}
    store = ChunkStore(cfg.out, stage="export")
    if store.start(config, ignore=("verify",)):  # how much of the input was checked cannot change the output
        return read_manifest(cfg.out)
    fmt = get_format(cfg.format)
    parts = []
    bar = progress_bar(len(scored), "export", "prompt", progress)
    try:
        for lo in range(0, len(scored), _BATCH):
            batch = scored[lo: lo + _BATCH]
            prompts = [Imported(*row) for row in zip(batch["prompt_id"], batch["prompt"], batch["completions"],
                                                         batch["rewards"])]
            parts.append(datasets.Dataset.from_dict(fmt.write(prompts, cfg.layout)))
            bar.update(len(prompts))
    finally:
        bar.close()
    data = datasets.DatasetDict({cfg.split: datasets.concatenate_datasets(parts)})
    warnings = []
    if isinstance(scored[0]["prompt"], str):
        warnings.append("the prompts are plain text, written as one user message each; the samples were drawn "
                        "from the plain prompt, and a trainer that applies the chat template conditions on another "
                        "context than the one they were sampled from (docs/math.md §9)")
    manifest = base_manifest("export", config)
    manifest.update(format=cfg.format, layout=cfg.layout, split=cfg.split, num_prompts=len(scored),
                    num_samples=upstream.get("num_samples"), input_hash=upstream["content_hash"],
                    warnings=warnings + list(upstream.get("warnings") or []),
                    **{key: upstream.get(key) for key in ("model", "tokenizer", "reward_model", "reward_label",
                                                          "stop_token_ids", "cut_fraction", "temperature", "top_p",
                                                          "top_k", "tempered")})
    return save_artifact(data, cfg.out, manifest)
