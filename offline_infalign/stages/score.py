"""`score` stage: add `rewards` (K per prompt) to a samples artifact, chunked and resumable."""

from __future__ import annotations

from typing import Any

from ..artifacts.fingerprint import fingerprint_reward
from ..artifacts.storage import (
    ChunkStore,
    base_manifest,
    load_artifact,
    output_lock,
    read_manifest,
    save_artifact,
)
from ..config import ScoreConfig, config_to_dict, parse_shard
from ..core.errors import InfalignError
from ..engines import ENGINE_FIELDS, open_engine
from ..models.load_checks import check_device
from ..models.scoring import check_reward, load_scorer, score_texts
from .common import chunk_slices, progress_bar, shard_slice
from .sample import REF_FACTS, prompt_list_hash

# Config fields that cannot change the rewards (the engine only says where chunks are computed).
_SCORE_FREE = ("batch_size", "device", "allow_pickle_weights", "verify", *ENGINE_FIELDS)


def run_score(cfg: ScoreConfig, progress: bool = True) -> dict[str, Any]:
    """Add `rewards` to a samples artifact; returns the scored manifest.

    The folder is locked for the run (storage.output_lock): a second run into it is refused at once.
    """
    check_reward(cfg.reward_model, cfg.trust_remote_code)  # a bad reward is one line, before anything is read
    with output_lock(cfg.out), open_engine(cfg, ScoreJob(cfg)) as engine:
        return _run_score(cfg, engine, progress)


class ScoreJob:
    """The stage's work on one worker (engines/): the reward loaded once, then chunks of
    {"prompt", "completions", "prompt_id"} lists (plain lists: they travel to other machines)."""

    def __init__(self, cfg: ScoreConfig):
        self.cfg = cfg

    def load(self) -> dict[str, Any]:
        c = self.cfg
        check_device(c.device)  # where the reward runs (with --engine ray: on the worker, not the driver)
        self.scorer = load_scorer(c.reward_model, device=c.device, dtype=c.dtype, batch_size=c.batch_size,
                                  trust_remote_code=c.trust_remote_code, reward_label=c.reward_label,
                                  allow_pickle_weights=c.allow_pickle_weights)
        return {"reward_model": self.scorer.name}

    def count(self, chunk) -> int:
        return len(chunk["prompt_id"])

    def run(self, chunk, bar=None) -> list[list[float]]:
        rewards = score_texts(self.scorer, chunk["prompt"], chunk["completions"], chunk["prompt_id"])
        if bar is not None:
            bar.update(self.count(chunk))
        return rewards.tolist()


def _chunk_lists(part) -> dict[str, list]:
    return {"prompt": list(part["prompt"]), "completions": list(part["completions"]),
            "prompt_id": list(part["prompt_id"])}


def _run_score(cfg: ScoreConfig, engine, progress: bool) -> dict[str, Any]:
    import datasets

    samples, upstream = load_artifact(cfg.input, stage="samples", verify=cfg.verify)
    shard = parse_shard(cfg.shard)
    if shard and upstream.get("shard"):
        raise InfalignError(f"{cfg.input!r} is already shard {upstream['shard']}; score it without --shard")
    # The input's content hash is part of the config: scoring a changed samples artifact into the same folder
    # is refused like any other config change.
    # The reward's fingerprint too (fingerprint.py): a reward function edited or a reward-model folder replaced
    # between a kill and the rerun must not mix two rewards in one artifact.
    config = {**config_to_dict(cfg), "input_hash": upstream["content_hash"],
              "reward_fingerprint": fingerprint_reward(cfg.reward_model)}
    store = ChunkStore(cfg.out, stage="scored")
    if store.start(config, ignore=_SCORE_FREE):
        return read_manifest(cfg.out)
    # The list this run's part is cut from: the whole input when sharding here, else the samples run's list.
    if shard:
        whole = {"prompt_list_hash": prompt_list_hash(samples["prompt_id"]), "prompt_list_size": len(samples)}
    else:
        whole = {key: upstream.get(key) for key in ("prompt_list_hash", "prompt_list_size")}
    samples = samples.select(range(*shard_slice(len(samples), shard).indices(len(samples))))
    facts = engine.start()  # the reward loads here (in each worker with --engine ray)
    chunks = chunk_slices(len(samples), cfg.chunk_size)
    k = upstream["num_samples"]
    bar = progress_bar(len(samples), "score", "prompt", progress)

    def part(i):
        return samples.select(range(chunks[i].start, chunks[i].stop))

    try:
        todo = [i for i in range(len(chunks)) if not store.done(i)]
        bar.update(len(samples) - sum(chunks[i].stop - chunks[i].start for i in todo))  # written by an earlier run
        # Chunks come back as they finish (in any order with several workers), each written at once.
        for index, rewards in engine.map(todo, lambda i: _chunk_lists(part(i)), bar):
            store.write(index, part(index).add_column("rewards", rewards))
            bar.set_postfix(completions_per_s=f"{bar.n * k / max(bar.format_dict['elapsed'], 1e-9):.1f}")
    finally:
        bar.close()
    final = datasets.concatenate_datasets([store.load(i) for i in range(len(chunks))])
    manifest = base_manifest("scored", config)
    # The sampling facts travel downstream (docs/math.md §9): prepare refuses tempered samples, eval reuses the
    # stop set, reports carry the cut fraction.
    for key in ("model", "model_fingerprint", "tokenizer", "tokenizer_fingerprint", "model_revision", "prompts",
                "split", "seed", "num_samples", "backend", *REF_FACTS, "stop_token_ids", "cut_fraction", "tempered",
                "temperature", "top_p", "top_k"):
        manifest[key] = upstream.get(key)
    manifest.update(whole)
    # reward_label as given (None for a one-output model): what `eval` passes again to judge with the same column.
    manifest.update(reward_model=facts["reward_model"], reward_fingerprint=config["reward_fingerprint"],
                    reward_label=cfg.reward_label, input_hash=upstream["content_hash"],
                    sample_config=upstream["config"], shard=list(shard) if shard else upstream.get("shard"),
                    num_prompts=len(final))
    return save_artifact(final, cfg.out, manifest)
