"""Dataset kinds, one file each: how prepare lays out rows, which columns training needs, the collator, and how
a batch becomes a loss call (see `base.DatasetKind`).

Add a kind: write kinds/<name>.py with a `DatasetKind` subclass and add it to `KINDS` below; a loss trains on it
by naming it as its `LossSpec.kind` (core/losses.py).
"""

from __future__ import annotations

from ..core.errors import InfalignError
from .base import DatasetKind, ScoredMatrices
from .bon import BonKind
from .listwise import ListwiseKind
from .pairs import PairsKind

__all__ = ["DatasetKind", "ScoredMatrices", "KINDS", "KIND_NAMES", "get_kind"]

KINDS: dict[str, DatasetKind] = {kind.name: kind for kind in (PairsKind(), ListwiseKind(), BonKind())}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def get_kind(name: str) -> DatasetKind:
    """The kind registered as `name`; InfalignError naming the allowed kinds otherwise."""
    if name not in KINDS:
        raise InfalignError(f"kind {name!r} is not allowed; allowed: {', '.join(KINDS)}")
    return KINDS[name]
