"""Dataset kinds, one file each: how prepare lays out rows, which columns training needs, the collator, and how
a batch becomes a loss call (see `base.DatasetKind`).

Add a kind: write kinds/<name>.py with a `DatasetKind` subclass and add one line to `KIND_CLASSES` below; a loss
trains on it by naming it as its `LossSpec.kind` (core/losses.py).

The kind classes import torch, so they are imported on first use (`get_kind`, `KINDS`, `DatasetKind`): the
configs and every `--help` read only the names here (`KIND_NAMES`, `PAIR_CHOICES`), and `infalign prepare
--help` should not wait a second and a half for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..core.errors import InfalignError

if TYPE_CHECKING:
    from .base import DatasetKind, ScoredMatrices

__all__ = ["DatasetKind", "ScoredMatrices", "KINDS", "KIND_CLASSES", "KIND_NAMES", "PAIR_CHOICES", "get_kind"]

# name -> "module:Class" in this package, one line per kind.
KIND_CLASSES: dict[str, str] = {
    "pairs": "pairs:PairsKind",
    "listwise": "listwise:ListwiseKind",
    "bon": "bon:BonKind",
}
KIND_NAMES: tuple[str, ...] = tuple(KIND_CLASSES)
# The pairs kind's `pairs` option (kinds/pairs.py: every untied pair, or the best against the worst), written here
# for the same reason as the names.
PAIR_CHOICES: tuple[str, ...] = ("all", "best_worst")


def _load_kinds() -> dict[str, DatasetKind]:
    kinds = {}
    for name, where in KIND_CLASSES.items():
        module, cls = where.split(":")
        kinds[name] = getattr(importlib.import_module(f".{module}", __name__), cls)()
    return kinds


def __getattr__(name: str):
    """`KINDS` (name -> kind instance), `DatasetKind` and `ScoredMatrices`, imported on first use."""
    if name == "KINDS":
        value = _load_kinds()
    elif name in ("DatasetKind", "ScoredMatrices"):
        value = getattr(importlib.import_module(".base", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def get_kind(name: str) -> DatasetKind:
    """The kind registered as `name`; InfalignError naming the allowed kinds otherwise."""
    kinds = globals().get("KINDS") or __getattr__("KINDS")
    if name not in kinds:
        raise InfalignError(f"kind {name!r} is not allowed; allowed: {', '.join(kinds)}")
    return kinds[name]
