"""`merge` stage: join the shard artifacts (samples or scored) of one `--shard I/N` run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..config import MergeConfig, config_diff
from ..core.errors import InfalignError
from ..storage import ChunkStore, load_artifact, output_lock, read_manifest, save_artifact

# Config keys that legitimately differ between the shards of one run.
_SHARD_FREE = ("shard", "out", "input", "input_hash", "batch_size", "chunk_size", "device")


def run_merge(cfg: MergeConfig) -> dict[str, Any]:
    """Join shard artifacts (samples or scored) of one run, checking every shard is there exactly once.

    The folder is locked for the run (storage.output_lock): a second run into it is refused at once.
    """
    with output_lock(cfg.out):
        return _run_merge(cfg)


def _run_merge(cfg: MergeConfig) -> dict[str, Any]:
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
    parts = [load_artifact(cfg.inputs[j], verify=cfg.verify)[0] for j in order]
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
            shutil.rmtree(Path(cfg.out) / "_work", ignore_errors=True)  # left by a kill after the manifest
            return done
        raise InfalignError(f"output folder {cfg.out!r} already holds another artifact ({done.get('stage')!r}); "
                            "choose a new --out")
    config = {**first["config"], "shard": None, "out": cfg.out, "input_hash": None}
    # Refuses a folder holding anything else; the config (written before any data) lets a killed merge resume.
    ChunkStore(cfg.out, stage=first.get("stage")).start(config)
    manifest = {k: v for k, v in first.items() if k not in ("content_hash", "num_rows")}
    manifest.update(shard=None, config=config,
                    merged_from=[{"path": cfg.inputs[j], "content_hash": manifests[j]["content_hash"]} for j in order],
                    num_prompts=len(seen))
    for key in ("num_truncated", "num_skipped_long"):
        if key in first:
            manifest[key] = sum(int(m.get(key) or 0) for m in manifests)
    if first.get("sample_config"):
        manifest["sample_config"] = {**first["sample_config"], "shard": None, "input_hash": None}
    if manifest.get("stage") == "samples":  # each shard's prompt hash is in merged_from's manifests
        manifest["input_hash"] = None
    merged = datasets.concatenate_datasets(parts)
    if "finish_reasons" in merged.column_names:  # the whole run's, not the first shard's
        from .sample import cut_fraction

        manifest["cut_fraction"] = cut_fraction(merged["finish_reasons"])
    return save_artifact(merged, cfg.out, manifest)
