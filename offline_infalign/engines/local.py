"""`--engine local`: the job runs in this process, chunks one after another in index order (the default)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..models.modeling import free_memory


class LocalEngine:
    def __init__(self, cfg, job, workers: int | None = None):
        self.job = job

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        if self.job is not None and getattr(self, "_loaded", False):
            self.job = None  # the model goes with the job: free its memory for what loads next (build's score)

            free_memory()

    def start(self) -> dict[str, Any]:
        facts = self.job.load()
        self._loaded = True
        return facts

    def map(self, indices, payload: Callable[[int], Any], bar=None) -> Iterator[tuple[int, Any]]:
        for index in indices:
            yield index, self.job.run(payload(index), bar)
