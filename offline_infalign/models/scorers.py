"""Built-in reward scorers, registered by name: `--reward-model NAME` scores with the registered function.

Add one: write the function `fn(prompts, completions) -> floats (n,)` in your module and add one line to
`SCORERS` below. Its entry names the function as "module:function" (imported on first use, so configs and every
`--help` read only the names here) and, when the function reads a data file, that file (relative to the
module's folder): the scorer's fingerprint (artifacts/fingerprint.py) covers the package version, the module's
source and that file, so a resume or a stored reference notices an edit to either.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BuiltinScorer", "SCORERS", "registered_function", "quoted_names"]


@dataclass(frozen=True)
class BuiltinScorer:
    function: str  # "module:function"
    data: str | None = None  # a data file the function reads, relative to its module's folder


SCORERS: dict[str, BuiltinScorer] = {
    "demo": BuiltinScorer("offline_infalign.demo.assets:demo_reward", data="data/sentiment.tsv"),
}


def registered_function(name: str) -> Callable:
    """The function registered as `name` (its module is imported here)."""
    module, _, attr = SCORERS[name].function.partition(":")
    return getattr(importlib.import_module(module), attr)


def quoted_names(last: str = "or") -> str:
    """"'demo'" (or "'a', 'b' or 'c'"): the registered names inside help texts."""
    names = [f"'{n}'" for n in SCORERS]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"
