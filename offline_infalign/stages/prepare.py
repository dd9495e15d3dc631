"""`prepare` stage: calibrated rewards, targets Φ(u) and a pairs / listwise / bon dataset from a scored artifact.

Before anything is written it checks how the samples were drawn (docs/math.md §9): samples not drawn at
temperature 1, top_p 1, top_k 0 are refused unless `allow_tempered_samples`, and then carry a warning. With the
procedure and N known it records and prints the guidance of docs/math.md §7 (`preparation.guidance`). The
manifest's `warnings` travel to the model card, the training record and the evaluation report.
"""

from __future__ import annotations

import logging
from typing import Any

from ..artifacts.integrity import check_finite_rows
from ..artifacts.storage import (
    ChunkStore,
    base_manifest,
    load_artifact,
    output_lock,
    read_manifest,
    save_artifact,
)
from ..config import PrepareConfig, config_to_dict
from ..core.errors import InfalignError
from ..core.tradeoff import choose
from ..core.transforms import get_transform, parse_transform
from ..kinds import get_kind
from ..kinds.preparation import guidance, prepare
from .sample import REF_FACTS

__all__ = ["run_prepare", "resolve_transform", "sampling_settings", "tempered_settings"]

logger = logging.getLogger(__name__)

# What samples of the base model itself are drawn with (docs/math.md §9); anything else samples another policy.
UNTEMPERED = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
# The sampling facts the samples manifest records and scored/prepared manifests copy (docs/design.md).
SAMPLING_FACTS = ("stop_token_ids", "cut_fraction", "tempered", "temperature", "top_p", "top_k")


def sampling_settings(manifest: dict) -> dict[str, Any]:
    """temperature, top_p, top_k of the samples behind an artifact (None where nothing says): the manifest's
    own keys (samples and imports write them; scored and prepared manifests copy them)."""
    return {key: manifest.get(key) for key in UNTEMPERED}


def tempered_settings(manifest: dict) -> list[str]:
    """The settings that make the samples another policy than the base model, e.g. ['temperature=0.7'];
    ['tempered'] when the manifest says so without the values."""
    settings = sampling_settings(manifest)
    bad = [f"{k}={v:g}" for k, v in settings.items()
           if v is not None and (float(v) > 0 if k == "top_k" else float(v) != UNTEMPERED[k])]
    if not bad and manifest.get("tempered"):
        bad = ["tempered (the manifest says so; settings not recorded)"]
    return bad


def resolve_transform(cfg: PrepareConfig) -> dict[str, Any]:
    """{transform: Transform, beta, and for auto the tradeoff tool's predictions} (docs/math.md §7)."""
    if cfg.transform == "auto":
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


def _check_sampling(cfg: PrepareConfig, upstream: dict) -> list[str]:
    """Refuse tempered samples (docs/math.md §9) unless allowed; with the opt-in, the warning to record."""
    bad = tempered_settings(upstream)
    if not bad:
        return []
    why = (f"{cfg.input!r} was sampled at {', '.join(bad)}: samples drawn at temperature != 1, top_p < 1 or "
           "top_k > 0 come from another policy than the base model, so calibration and every target would "
           "describe that policy and the predictions would not hold (docs/math.md §9)")
    if not cfg.allow_tempered_samples:
        raise InfalignError(f"{why}. Sample again at temperature 1, top_p 1, top_k 0, or pass "
                            "--allow-tempered-samples (allow_tempered_samples: true) to use them anyway; the dataset, "
                            "model card and eval report then carry a warning")
    return [f"tempered samples (allow_tempered_samples): {why}"]


def run_prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Calibrate, transform and write the prepared DatasetDict; returns its manifest.

    The folder is locked for the run (storage.output_lock): a second run into it is refused at once.
    """
    with output_lock(cfg.out):
        return _run_prepare(cfg)


def _run_prepare(cfg: PrepareConfig) -> dict[str, Any]:
    scored, upstream = load_artifact(cfg.input, stage="scored", verify=cfg.verify)
    if upstream.get("shard"):
        raise InfalignError(f"{cfg.input!r} is shard {upstream['shard']} of a sharded run; "
                            "`infalign merge` all shards first, then prepare the merged artifact")
    # The scored artifact's own warnings (an import's re-encoded ids) travel on, as the sampling checks' do.
    warnings = _check_sampling(cfg, upstream) + [str(w) for w in upstream.get("warnings") or []]
    config = {**config_to_dict(cfg), "input_hash": upstream["content_hash"]}
    store = ChunkStore(cfg.out, stage="prepared")
    if store.start(config, ignore=("verify",)):  # how much of the input was checked cannot change the output
        return read_manifest(cfg.out)
    chosen = resolve_transform(cfg)
    transform, beta = chosen["transform"], chosen["beta"]
    # The kind's own options, from the config fields of the same names (pairs: pairs, pairs_per_prompt, seed).
    options = {name: getattr(cfg, name) for name in get_kind(cfg.kind).options}
    prepared = prepare(scored, cfg.kind, transform, beta, test_fraction=cfg.test_fraction, **options)
    data = prepared.data
    for split, part in data.items():  # e.g. weights softmax(Φ/β) at a β so small that Φ/β overflows
        check_finite_rows(part, "the prepared dataset", f"beta={beta:g} with transform {transform} gives numbers "
                          "that do not fit a float: choose a larger beta", split)
    warnings += list(prepared.warnings)
    advice = None
    if cfg.procedure is not None and cfg.n is not None:
        k = len(scored[0]["rewards"])
        advice = guidance(transform, beta, k, cfg.procedure, cfg.n).to_dict()
        warnings += advice["warnings"]
    for w in warnings:
        logger.warning("%s", w)
    settings = sampling_settings(upstream)
    facts = {key: upstream.get(key) for key in SAMPLING_FACTS}
    facts.update({k: v for k, v in settings.items() if v is not None})
    if facts.get("tempered") is None and all(v is not None for v in settings.values()):
        facts["tempered"] = bool(tempered_settings(upstream))
    manifest = base_manifest("prepared", config)
    manifest.update(kind=cfg.kind, transform=transform.name, tilt=transform.tilt, beta=beta,
                    procedure=cfg.procedure, n=cfg.n, kl=chosen["kl"], predicted=chosen["predicted"],
                    guidance=advice, warnings=warnings, pairs=options.get("pairs"),
                    **prepared.counts, **facts,
                    num_samples=upstream.get("num_samples"), model=upstream.get("model"),
                    model_fingerprint=upstream.get("model_fingerprint"),
                    tokenizer_fingerprint=upstream.get("tokenizer_fingerprint"),
                    reward_fingerprint=upstream.get("reward_fingerprint"),
                    tokenizer=upstream.get("tokenizer"), model_revision=upstream.get("model_revision"),
                    reward_model=upstream.get("reward_model"), reward_label=upstream.get("reward_label"),
                    seed=upstream.get("seed"), prepare_seed=cfg.seed, **{k: upstream.get(k) for k in REF_FACTS},
                    prompts=upstream.get("prompts"), input_hash=upstream["content_hash"],
                    num_prompts={s: len(set(d["prompt_id"])) for s, d in data.items()})
    return save_artifact(data, cfg.out, manifest)
