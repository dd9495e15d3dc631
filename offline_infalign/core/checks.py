"""Input checks shared by the whole package: each raises InfalignError naming the bad value and where it is."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import InfalignError

__all__ = ["check_finite", "check_positive", "check_beta", "decode_utf8"]


def check_finite(values, what: str, ids: Sequence | None = None, hint: str = "") -> np.ndarray:
    """`values` as a float64 array; InfalignError naming the first non-finite value and where it sits.

    With `ids` (one per row of a (prompts, samples) array) the position is named as "prompt_id X (completion j)",
    so a caller can map it back to its data; otherwise as the array index. `hint` says how to fix it.
    """
    arr = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = (f"for prompt_id {ids[idx[0]]}" + (f" (completion {idx[1]})" if len(idx) > 1 else "")
                 if ids is not None and idx else f"at index {idx}")
        raise InfalignError(f"non-finite {what} {float(arr[idx])!r} {where}" + (f"; {hint}" if hint else ""))
    return arr


def check_positive(value, what: str, name: str | None = None) -> float:
    """`value` as a finite float > 0 (beta, a KL budget, ...); InfalignError naming it otherwise.

    With `name` the bad value is shown as `name=value` ("KL budget ... got kl=0"), so a message can name the
    argument as the caller spells it beside what it means.
    """
    got = f"{name}={value!r}" if name else repr(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InfalignError(f"{what} must be a finite number > 0, got {got}") from None
    if not (math.isfinite(v) and v > 0):
        raise InfalignError(f"{what} must be a finite number > 0, got {got}")
    return v


def check_beta(beta) -> float:
    """β as a finite float > 0 (the KL coefficient), checked once where it enters a computation."""
    return check_positive(beta, "beta", name="beta")


def decode_utf8(data: bytes, what: str, fix: str = "save it as UTF-8") -> str:
    """`data` as text; InfalignError naming the first byte that is not UTF-8, its offset and line, otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InfalignError(f"{what} is not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                            f"(line {line}) cannot be decoded; {fix}") from None
