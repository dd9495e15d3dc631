"""Config of `infalign tradeoff` (core/tradeoff.py): predictions before any training."""

from __future__ import annotations

import dataclasses

from ..core.checks import check_beta, check_num_samples
from ..core.errors import InfalignError
from ..core.procedures import PROCEDURES, get_procedure
from ..core.transforms import TILTED_NAMES, TRANSFORM_NAMES
from .base import field, positive_int, spell

__all__ = ["TradeoffConfig"]


def _procedure_help() -> str:
    return "inference-time procedure: " + spell(f"{name} ({get_procedure(name).label})" for name in PROCEDURES)


@dataclasses.dataclass
class TradeoffConfig:
    """`infalign tradeoff`: predicted KL and win rates of a tilt (docs/math.md §4), the optimum, or the best exp tilt (§7).

    Modes: a transform with --beta or --kl; --optimal --kl; --choose --kl.
    """

    # No argparse `choices` here (the flag shows as PROCEDURE); the check below reads the live registry.
    procedure: str = field("bon", help=_procedure_help())
    n: int = field(4, help="N of best-of-N / worst-of-N (>= 1)")
    transform: str | None = field(None, help=f"transform name ({', '.join(TRANSFORM_NAMES)}) or 'exp:tilt=2.5' "
                                  "(default: identity)")
    tilt: float | None = field(None, help=f"tilt t of the transform ({', '.join(TILTED_NAMES)})")
    beta: float | None = field(None, help="KL coefficient beta (> 0)")
    kl: float | None = field(None, help="KL budget in nats (> 0); beta is matched")
    optimal: bool = field(False, help="the optimal transform at --kl")
    choose: bool = field(False, help="best exp tilt and its beta at --kl, beside identity, log and the optimum")
    kl_max: float | None = field(None, help="right end of the --plot KL axis (default: twice the KL shown)")
    num_samples: int | None = field(None, help="K, base samples per prompt of the training data: also show the "
                                    "beta at which a learner on K samples pays the KL (the tilt restricted to K "
                                    "samples, docs/math.md §10) and the win rate that restricted tilt reaches; "
                                    "with a transform or --choose")

    def __post_init__(self):
        if self.procedure not in list(PROCEDURES):
            raise InfalignError(f"tradeoff: procedure must be one of {', '.join(PROCEDURES)}, got {self.procedure!r}")
        positive_int("tradeoff", "n (best_of_n / worst_of_n)", self.n)
        if self.beta is not None:
            check_beta(self.beta, "tradeoff")
        for name in ("kl", "kl_max"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
                raise InfalignError(f"tradeoff: {name} must be a finite number > 0, got {value!r}")
        if self.num_samples is not None:
            check_num_samples(self.num_samples, "tradeoff")
            if self.optimal:
                raise InfalignError("tradeoff: --num-samples applies to a transform or --choose, not --optimal")
        if self.optimal and self.choose:
            raise InfalignError("tradeoff: give one of --optimal and --choose, not both")
        if self.optimal or self.choose:
            mode = "--optimal" if self.optimal else "--choose"
            if self.kl is None or self.beta is not None:
                raise InfalignError(f"tradeoff: {mode} needs --kl K (a KL budget) and no --beta")
            if self.transform is not None or self.tilt is not None:
                raise InfalignError(f"tradeoff: {mode} picks the transform itself; drop --transform/--tilt")
        elif (self.beta is None) == (self.kl is None):
            raise InfalignError("tradeoff: give exactly one of --beta B and --kl K (or --optimal/--choose with --kl)")
