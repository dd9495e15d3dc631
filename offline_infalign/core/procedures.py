"""Inference-time procedures (docs/math.md §3): best-of-N, worst-of-N, ... — one registry entry each.

Everything that depends on which procedure serves the model asks this registry; no other module branches on
a procedure's name. SKELETON: the functionals are filled in by the redesign (see the Procedure fields).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InfalignError

__all__ = ["Procedure", "PROCEDURES", "PROCEDURE_NAMES", "get_procedure", "register_procedure"]


@dataclass(frozen=True)
class Procedure:
    name: str  # the name in configs, columns and reports: "bon"
    label: str  # for people: "best-of-N" ("best-of-4" with label.replace("N", str(n)))
    tilt_sign: float  # the sign of a good exp tilt t: +1 favours high rewards, -1 low ones


PROCEDURES: dict[str, Procedure] = {}


def register_procedure(procedure: Procedure) -> Procedure:
    PROCEDURES[procedure.name] = procedure
    return procedure


register_procedure(Procedure("bon", "best-of-N", +1.0))
register_procedure(Procedure("won", "worst-of-N", -1.0))
PROCEDURE_NAMES: tuple[str, ...] = tuple(PROCEDURES)


def get_procedure(name: str) -> Procedure:
    if name not in PROCEDURES:
        raise InfalignError(f"unknown procedure {name!r}; allowed: {', '.join(PROCEDURES)}")
    return PROCEDURES[name]
