"""`build` stage: sample → score → prepare below one folder, each stage resumable.

The reward is loaded and tried on one (prompt, completion) pair before anything is sampled: sampling takes
hours, and a reward that does not load, raises or returns something other than one finite float per completion
would otherwise be found only after it. With `--engine ray` it is tried on a worker (where the reward will run,
e.g. on a GPU the driver lacks), and the probe and both chunked stages share one Ray session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_builders import get_prompt_source

from ..config import BuildConfig
from ..core.errors import InfalignError
from ..engines import engine_session, open_engine
from ..models.preflight import check_model
from ..models.scoring import check_reward
from .prepare import run_prepare
from .sample import run_sample
from .score import ScoreJob, run_score

# What the reward is tried on before sampling; any text does: only the reward's loading and output are checked.
PROBE_COMPLETION = "Thank you, that was helpful."


def check_reward_before_sampling(cfg: BuildConfig) -> None:
    """Load the reward of `cfg` and score one pair: the first prompt of the source and PROBE_COMPLETION.

    Refused in one line (naming the reward): a reward that does not load, raises, or does not return one finite
    float. The scorer is dropped afterwards (the score stage loads it again), so sampling has the memory.
    """
    import dataclasses


    score = dataclasses.replace(cfg.score_config(), batch_size=1)
    row = next(iter(get_prompt_source(cfg.prompts, split=cfg.split, limit=1, data_files=cfg.prompts_data_files,
                                      on_duplicate=cfg.on_duplicate_prompt)))
    probe = {"prompt": [row["prompt"]], "completions": [[PROBE_COMPLETION]], "prompt_id": [row["prompt_id"]]}
    # The engine drops the scorer at the end (local: its memory freed; ray: its worker ended).
    with open_engine(score, ScoreJob(score), workers=1) as engine:
        engine.start()  # a reward that does not load says so in its own words
        try:
            next(engine.map([0], lambda i: probe))
        except InfalignError as exc:
            raise InfalignError(f"the reward was tried on one completion before sampling and failed: {exc}") \
                from None


def run_build(cfg: BuildConfig, progress: bool = True) -> dict[str, dict[str, Any]]:
    """sample → score → prepare below `cfg.out` (prepare only without --shard); manifests by stage."""
    check_model(cfg.model, "model", cfg.trust_remote_code)  # the cheap checks of both models first
    check_reward(cfg.reward_model, cfg.trust_remote_code)
    paths = cfg.paths()
    with engine_session(cfg):  # --engine ray: one Ray session for the reward check and both chunked stages
        if not (Path(paths["scored"]) / "manifest.json").is_file():  # once scored, the reward is not needed
            check_reward_before_sampling(cfg)
        out = {"samples": run_sample(cfg.sample_config(), progress=progress)}
        out["scored"] = run_score(cfg.score_config(), progress=progress)
    if cfg.shard is None:
        out["prepared"] = run_prepare(cfg.prepare_config())
    return out
