"""`prepare` stage: calibrated rewards, targets Φ(u) and a pairs / listwise / bon dataset from a scored artifact."""

from __future__ import annotations

from typing import Any

from ..config import PrepareConfig, config_to_dict
from ..core.errors import InfalignError
from ..preparation import prepare_dataset
from ..storage import ChunkStore, base_manifest, load_artifact, read_manifest, save_artifact


def resolve_transform(cfg: PrepareConfig) -> dict[str, Any]:
    """{transform: Transform, beta, and for auto the tradeoff tool's predictions} (docs/math.md §7)."""
    from ..core.transforms import get_transform, parse_transform

    if cfg.transform == "auto":
        from ..core.tradeoff import choose

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
