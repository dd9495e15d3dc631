"""Dataset kinds, one file each (pairs, listwise, bon). SKELETON: filled in by the redesign."""

from __future__ import annotations

KIND_NAMES: tuple[str, ...] = ("pairs", "listwise", "bon")
