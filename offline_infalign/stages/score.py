"""`score` stage: add `rewards` (K per prompt) to a samples artifact, chunked and resumable."""

from __future__ import annotations

from typing import Any

from ..config import ScoreConfig, config_to_dict, parse_shard
from ..core.errors import InfalignError
from ..fingerprint import fingerprint_reward
from ..storage import ChunkStore, base_manifest, load_artifact, output_lock, read_manifest, save_artifact
from .common import chunk_slices, progress_bar, shard_slice

_SCORE_FREE = ("batch_size", "device", "allow_pickle_weights", "verify")  # cannot change the rewards


def run_score(cfg: ScoreConfig, progress: bool = True) -> dict[str, Any]:
    """Add `rewards` to a samples artifact; returns the scored manifest.

    The folder is locked for the run (storage.output_lock): a second run into it is refused at once.
    """
    from ..scoring import check_reward

    check_reward(cfg.reward_model, cfg.trust_remote_code)  # a bad reward is one line, before anything is read
    with output_lock(cfg.out):
        return _run_score(cfg, progress)


def _run_score(cfg: ScoreConfig, progress: bool) -> dict[str, Any]:
    import datasets

    from ..scoring import load_scorer, score_texts

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
        from .sample import prompt_list_hash

        whole = {"prompt_list_hash": prompt_list_hash(samples["prompt_id"]), "prompt_list_size": len(samples)}
    else:
        whole = {key: upstream.get(key) for key in ("prompt_list_hash", "prompt_list_size")}
    samples = samples.select(range(*shard_slice(len(samples), shard).indices(len(samples))))
    scorer = load_scorer(cfg.reward_model, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                         trust_remote_code=cfg.trust_remote_code, reward_label=cfg.reward_label,
                         allow_pickle_weights=cfg.allow_pickle_weights)
    chunks = chunk_slices(len(samples), cfg.chunk_size)
    k = upstream["num_samples"]
    bar = progress_bar(len(samples), "score", "prompt", progress)
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
    # The sampling facts travel downstream (docs/math.md §9): prepare refuses tempered samples, eval reuses the
    # stop set, reports carry the cut fraction.
    for key in ("model", "model_fingerprint", "tokenizer", "tokenizer_fingerprint", "model_revision", "prompts",
                "split", "seed", "num_samples", "backend", "ref_dtype", "stop_token_ids", "cut_fraction", "tempered",
                "temperature", "top_p", "top_k"):
        manifest[key] = upstream.get(key)
    manifest.update(whole)
    # reward_label as given (None for a one-output model): what `eval` passes again to judge with the same column.
    manifest.update(reward_model=scorer.name, reward_fingerprint=config["reward_fingerprint"],
                    reward_label=cfg.reward_label, input_hash=upstream["content_hash"],
                    sample_config=upstream["config"], shard=list(shard) if shard else upstream.get("shard"),
                    num_prompts=len(final))
    return save_artifact(final, cfg.out, manifest)
