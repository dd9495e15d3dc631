"""Input checks shared by the whole package: each raises InfalignError naming the bad value and where it is."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from .errors import InfalignError

__all__ = ["check_finite", "check_positive", "check_beta", "check_num_samples", "decode_utf8"]


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


def _prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def check_beta(beta, owner: str | None = None) -> float:
    """β, the KL coefficient, as a float: a finite real number > 0; InfalignError otherwise.

    The package's one check of β (docs/design.md, "β and K are checked where they enter"): every place β
    enters — a config, a core function, `prepare`, `InfalignTrainer`, a β read from a manifest — calls it, so
    the message has one wording, "OWNER: beta must be a finite number > 0, got X". A bool, a string (even "0.5":
    a config's text is made a number before it gets here), NaN, ±inf, 0 and negatives are refused.
    """
    if isinstance(beta, numbers.Real) and not isinstance(beta, bool):
        value = float(beta)
        if math.isfinite(value) and value > 0:
            return value
    raise InfalignError(f"{_prefix(owner)}beta must be a finite number > 0, got {beta!r}")


def check_num_samples(k, owner: str | None = None, what: str = "completions per prompt") -> int:
    """K, the number of base samples per prompt, as an int >= 2 (calibration ranks a completion among the
    others: one sample has no rank); InfalignError otherwise.

    The package's one check of K: "OWNER: num_samples K must be an integer >= 2 (WHAT), got X", where `what`
    says what K counts at that place (completions per prompt, rewards per prompt, completions in a listwise group).
    A bool or a float (2.0 too) is not an integer; numpy integers are.
    """
    if isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 2:
        return int(k)
    raise InfalignError(f"{_prefix(owner)}num_samples K must be an integer >= 2 ({what}), got {k!r}")


def decode_utf8(data: bytes, what: str, fix: str = "save it as UTF-8") -> str:
    """`data` as text; InfalignError naming the first byte that is not UTF-8, its offset and line, otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InfalignError(f"{what} is not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                            f"(line {line}) cannot be decoded; {fix}") from None
