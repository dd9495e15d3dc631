"""`build` stage: sample → score → prepare below one folder, each stage resumable."""

from __future__ import annotations

from typing import Any

from ..config import BuildConfig
from .prepare import run_prepare
from .sample import run_sample
from .score import run_score


def run_build(cfg: BuildConfig, progress: bool = True) -> dict[str, dict[str, Any]]:
    """sample → score → prepare below `cfg.out` (prepare only without --shard); manifests by stage."""
    out = {"samples": run_sample(cfg.sample_config(), progress=progress)}
    out["scored"] = run_score(cfg.score_config(), progress=progress)
    if cfg.shard is None:
        out["prepared"] = run_prepare(cfg.prepare_config())
    return out
