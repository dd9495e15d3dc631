"""Transforms Φ of the calibrated reward (docs/math.md §5), in one registry.

Every transform maps u ∈ (0, 1) to Φ(u) and is strictly increasing. β always refers to the transform exactly
as written here (docs/math.md §5), so a (transform, tilt, β) triple names one tilted policy everywhere in the package.

Adding a transform: write a function `(u, tilt) -> Φ(u)`, then one `register(...)` line below (with, for a
transform that takes a tilt, `tilt_error`: the message for a tilt outside its domain); the parser, `--help` and the
error messages all read the registry, so nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import InfalignError

__all__ = ["Transform", "TRANSFORMS", "TRANSFORM_NAMES", "TILTED_NAMES", "register", "get_transform",
           "parse_transform"]

# log(u) is -inf at 0; calibrated rewards never reach 0 (c ≥ 1/(2K)), but quadrature grids and user input can
# come arbitrarily close, so log is evaluated on u clipped to this floor.
LOG_FLOOR = 1e-12
# Below this |t| the normalized exp (e^{tu} − 1)/(e^t − 1) loses precision to cancellation and is, to 1e-8,
# the identity; we still reject t = 0 exactly because it is not a member of the family as parameterized.
_EXP_SMALL = 1e-8


@dataclass(frozen=True)
class _Spec:
    fn: Callable[[np.ndarray, float | None], np.ndarray]
    needs_tilt: bool
    doc: str
    tilt_error: Callable[[float], str | None] | None = None  # the message for a finite tilt outside the domain


TRANSFORMS: dict[str, _Spec] = {}


def register(name: str, fn, *, needs_tilt: bool, doc: str,
             tilt_error: Callable[[float], str | None] | None = None) -> None:
    TRANSFORMS[name] = _Spec(fn, needs_tilt, doc, tilt_error)


def _identity(u, tilt):
    return np.asarray(u, dtype=np.float64)


def _log(u, tilt):
    return np.log(np.clip(np.asarray(u, dtype=np.float64), LOG_FLOOR, None))


def _exp(u, tilt):
    u = np.asarray(u, dtype=np.float64)
    t = float(tilt)
    if abs(t) < _EXP_SMALL:
        return u
    # (e^{tu} − 1)/(e^t − 1) written with expm1 for accuracy at small t. For large positive t, divide through by
    # e^t first so neither numerator nor denominator overflows: = (e^{t(u−1)} − e^{−t}) / (1 − e^{−t}).
    if t > 30.0:
        return (np.exp(t * (u - 1.0)) - np.exp(-t)) / (-np.expm1(-t))
    return np.expm1(t * u) / np.expm1(t)


def _power(u, tilt):
    # Φ(u) = u^p, p > 0: a milder alternative to log (p → 0 behaves like log after rescaling).
    return np.power(np.clip(np.asarray(u, dtype=np.float64), 0.0, None), float(tilt))


register("identity", _identity, needs_tilt=False, doc="Φ(u) = u (calibrated RLHF)")
register("log", _log, needs_tilt=False, doc="Φ(u) = log u (best-of-N distillation at β = 1/(N−1))")
register("exp", _exp, needs_tilt=True, doc="Φ(u) = (exp(t·u) − 1)/(exp(t) − 1), t ≠ 0 (t > 0 BoN, t < 0 WoN)",
         tilt_error=lambda t: "exp transform needs tilt t != 0 (t > 0 for best-of-N, t < 0 for worst-of-N), got t=0"
         if t == 0.0 else None)
register("power", _power, needs_tilt=True, doc="Φ(u) = u^t, t > 0",
         tilt_error=lambda t: f"power transform needs tilt t > 0, got t={t}" if t <= 0.0 else None)

TRANSFORM_NAMES: tuple[str, ...] = tuple(TRANSFORMS)
TILTED_NAMES: tuple[str, ...] = tuple(name for name, spec in TRANSFORMS.items() if spec.needs_tilt)


@dataclass(frozen=True)
class Transform:
    """A named, parameterized Φ. Call it on calibrated rewards: `Transform("exp", 2.5)(u)`."""

    name: str
    tilt: float | None = None

    def __post_init__(self):
        spec = TRANSFORMS.get(self.name)
        if spec is None:
            raise InfalignError(f"unknown transform {self.name!r}; allowed: {', '.join(TRANSFORM_NAMES)}")
        if spec.needs_tilt:
            if self.tilt is None:
                raise InfalignError(f"transform {self.name!r} needs a tilt (e.g. '{self.name}:tilt=2.5')")
            t = float(self.tilt)
            if not np.isfinite(t):
                raise InfalignError(f"tilt must be finite, got {self.tilt!r}")
            error = spec.tilt_error(t) if spec.tilt_error is not None else None
            if error:
                raise InfalignError(error)
            object.__setattr__(self, "tilt", t)
        elif self.tilt is not None:
            raise InfalignError(f"transform {self.name!r} takes no tilt, got tilt={self.tilt!r}")

    def __call__(self, u) -> np.ndarray:
        return TRANSFORMS[self.name].fn(u, self.tilt)

    def __str__(self) -> str:
        return self.name if self.tilt is None else f"{self.name}:tilt={self.tilt:g}"


def get_transform(name: str, tilt: float | None = None) -> Transform:
    """The registered transform `name` with parameter `tilt` (None for parameterless transforms)."""
    return Transform(name, tilt)


def parse_transform(text: str) -> Transform:
    """Parse 'identity', 'log', 'exp:tilt=2.5' (also 'exp:2.5') into a Transform."""
    name, sep, rest = str(text).strip().partition(":")
    if not sep:
        return Transform(name)
    value = rest.strip()
    if "=" in value:
        key, _, value = value.partition("=")
        if key.strip() != "tilt":
            raise InfalignError(f"cannot parse transform {text!r}: the only parameter is 'tilt', got {key.strip()!r}")
    try:
        tilt = float(value)
    except ValueError:
        raise InfalignError(f"cannot parse transform {text!r}: tilt {value!r} is not a number") from None
    return Transform(name, tilt)
