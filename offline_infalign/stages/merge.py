"""`merge` stage: join the shard artifacts (samples or scored) of one `--shard I/N` run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..artifacts.integrity import check_manifest
from ..artifacts.storage import ChunkStore, load_artifact, output_lock, read_manifest, save_artifact
from ..config import MergeConfig, config_diff
from ..core.errors import InfalignError
from ..engines import ENGINE_FIELDS
from .sample import cut_fraction

# Config keys that legitimately differ between the shards of one run (where chunks were computed among them).
_SHARD_FREE = ("shard", "out", "input", "input_hash", "batch_size", "chunk_size", "device", *ENGINE_FIELDS)
# A path may differ between shards (machines mount things elsewhere) when what it names is the same: the model
# and the reward by their fingerprints (fingerprint.py), the prompt source by the prompt list (compared first).
_PATH_FINGERPRINTS = {"model": "model_fingerprint", "reward_model": "reward_fingerprint"}
_PROMPT_PATHS = ("prompts", "prompts_data_files")


def run_merge(cfg: MergeConfig) -> dict[str, Any]:
    """Join shard artifacts (samples or scored) of one run, checking every shard is there exactly once.

    The folder is locked for the run (storage.output_lock): a second run into it is refused at once.
    """
    with output_lock(cfg.out):
        return _run_merge(cfg)


def _run_merge(cfg: MergeConfig) -> dict[str, Any]:
    import datasets

    manifests = [check_manifest(read_manifest(p), p) for p in cfg.inputs]
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
    _check_prompt_lists(cfg.inputs, manifests, n)
    # One prompt list, recorded: where the prompt file lies no longer matters.
    free = _SHARD_FREE + (_PROMPT_PATHS if first.get("prompt_list_hash") else ())
    for path, m in zip(cfg.inputs, manifests):
        for key in ("config", "sample_config"):
            a, b = first.get(key) or {}, m.get(key) or {}
            diff = config_diff(a, b, ignore=free + _same_by_fingerprint(a, b))
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

        manifest["cut_fraction"] = cut_fraction(merged["finish_reasons"])
    return save_artifact(merged, cfg.out, manifest)


def _same_by_fingerprint(a: dict, b: dict) -> tuple[str, ...]:
    """The path keys of two shard configs that name the same thing: equal, resolved fingerprints."""
    return tuple(key for key, fp in _PATH_FINGERPRINTS.items()
                 if a.get(fp) and a.get(fp) == b.get(fp) and not str(a[fp]).endswith("?"))


def _check_prompt_lists(paths: list[str], manifests: list[dict], n: int) -> None:
    """Every shard was cut from one prompt list (its hash is in each shard's manifest): shards cut from lists
    that differ (the prompt file changed between shard runs, another --limit) would lose or repeat prompts."""
    lists = {(m.get("prompt_list_hash"), m.get("prompt_list_size")) for m in manifests}
    if len(lists) == 1:  # one list (or none recorded by any: shards made before they were)
        return
    shown = "; ".join(f"shard {m['shard'][0]}/{n} ({p!r}): " + (
        f"{m.get('prompt_list_size')} prompts, list {str(m.get('prompt_list_hash'))[:12]}"
        if m.get("prompt_list_hash") else "no prompt list recorded") for p, m in zip(paths, manifests))
    raise InfalignError(f"the shards were cut from different prompt lists ({shown}): the prompt source changed "
                        "between shard runs (or --limit / the duplicate rule differ), so merging would lose or "
                        "repeat prompts; run every shard again from one prompt list")
