"""Where a chunked stage's chunks are computed: in this process (`local`) or on a Ray cluster (`ray`).

The stages `sample` and `score` cut their prompts into resumable chunks (docs/design.md, "Chunks and resume").
They hand "compute chunk i" to an engine through a *job*, and write each finished chunk into their ChunkStore
as it arrives, in any order; the artifact is put together in chunk order at the end, so it does not depend on
which engine computed it or in which order the chunks came back.

A job is the stage's work on one worker, picklable (an `--engine ray` worker unpickles it on another node):

    job.load() -> facts       load the model or the reward once per worker; returns what the driver needs
                              (the tokenizer, the stop set, ...: small and picklable)
    job.count(payload) -> n   prompts in a chunk (the progress bar counts prompts)
    job.run(payload, bar)     one chunk's result; advances `bar` (None on a remote worker) by count(payload)

An engine (`open_engine`) is a context manager with `start() -> facts` (loads the job on its workers: nothing
starts before, so a finished artifact's rerun loads no model and starts no cluster) and
`map(indices, payload, bar)`, which yields `(index, result)` as chunks finish; `payload(i)` builds chunk i's
input when it is sent, so at most one chunk per worker is held in memory.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

__all__ = ["ENGINES", "ENGINE_NAMES", "ENGINE_FIELDS", "open_engine", "engine_session"]

# name -> "module:class"; the ray module imports Ray only when an engine of it is opened.
ENGINES = {"local": "offline_infalign.engines.local:LocalEngine",
           "ray": "offline_infalign.engines.ray_pool:RayEngine"}
ENGINE_NAMES = tuple(ENGINES)
# The config fields that choose an engine: they cannot change a stage's result, so a resume may change them.
ENGINE_FIELDS = ("engine", "workers", "ray_address", "cpus_per_worker", "gpus_per_worker")


def _engine_class(name: str):
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def open_engine(cfg, job, workers: int | None = None):
    """The engine `cfg.engine` (a stage config with the ENGINE_FIELDS) for `job`; `workers` overrides
    `cfg.workers` (build's reward check uses one)."""
    return _engine_class(cfg.engine)(cfg, job, workers=workers)


def engine_session(cfg) -> contextlib.AbstractContextManager[Any]:
    """One connection to the engine's cluster for several stages (`build`): with `--engine ray` the first engine
    started inside opens the Ray session and the others reuse it, instead of starting one each (none started:
    Ray is not started at all); a no-op for `local`."""
    if cfg.engine == "local":
        return contextlib.nullcontext()
    from .ray_pool import shared_session

    return shared_session()
