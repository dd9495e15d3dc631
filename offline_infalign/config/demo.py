"""Config of `infalign demo` (demo/run.py): the whole pipeline on a tiny built-in model and reward."""

from __future__ import annotations

import dataclasses

from ..core.checks import check_num_samples
from ..core.errors import InfalignError
from ..core.procedures import PROCEDURE_NAMES, PROCEDURES
from .base import field, positive_int, spell

__all__ = ["DemoConfig"]


@dataclasses.dataclass
class DemoConfig:
    """`infalign demo`: the whole pipeline on a tiny built-in base model and reward, no download."""

    out: str = field("demo_out", help="output folder (data, adapters, reports)")
    procedure: str = field("bon", help=f"served procedure: {spell(PROCEDURE_NAMES)}", choices=PROCEDURE_NAMES)
    n: int = field(4, help="N of best-of-N / worst-of-N served")
    kl: float = field(0.3, help="KL budget: identity's beta is matched to it, exp's to the KL identity measured")
    num_prompts: int = field(160, help="training prompts")
    num_samples: int = field(32, help="K: base completions per training prompt (>= 32: README, \"Choosing K\")")
    max_new_tokens: int = field(40, help="completion length limit")
    loss: str = field("listwise", help="tilted loss the two policies train with")
    max_steps: int = field(100, help="optimizer steps per policy")
    learning_rate: float = field(5e-3, help="LoRA learning rate")
    per_device_train_batch_size: int = field(2, help="prompts (or rows) per step")
    kl_corrections: int = field(2, help="at most this many retrainings per policy, beta corrected by a secant step "
                                "in log beta on the measured KL (docs/math.md §10; 0: keep the finite-K beta)")
    kl_tolerance: float = field(0.02, help="a policy whose measured KL is within this many nats of its target "
                                "needs no correction (targets: the budget for identity, identity's KL for exp)")
    kl_match: float = field(0.03, help="the two policies' KLs within this many nats are reported as matched")
    eval_prompts: int = field(128, help="held-out prompts evaluated (the demo's test split has 128)")
    eval_samples: int = field(16, help="M: samples per prompt and side at eval")
    seed: int = field(0, help="seed of every stage")
    cache_dir: str | None = field(None, help="where the demo base model is cached (default $INFALIGN_CACHE or "
                                  "~/.cache/offline_infalign)")
    model_train_steps: int | None = field(None, help="training steps of the demo base model (default: the "
                                          "shipped recipe)")

    def __post_init__(self):
        if self.procedure not in list(PROCEDURES):
            raise InfalignError(f"demo: procedure must be {spell(PROCEDURES)}, got {self.procedure!r}")
        for name in ("n", "num_prompts", "max_new_tokens", "max_steps", "per_device_train_batch_size",
                     "eval_prompts", "eval_samples"):
            positive_int("demo", name, getattr(self, name))
        positive_int("demo", "kl_corrections", self.kl_corrections, 0)
        for name in ("kl_tolerance", "kl_match"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise InfalignError(f"demo: {name} must be a number > 0, got {value!r}")
        check_num_samples(self.num_samples, "demo")
        if self.n > self.eval_samples:
            raise InfalignError(f"demo: n={self.n} must be <= eval_samples={self.eval_samples} (docs/math.md §8)")
        if not float(self.kl) > 0:
            raise InfalignError(f"demo: kl must be > 0, got {self.kl!r}")
        if not float(self.learning_rate) > 0:
            raise InfalignError(f"demo: learning_rate must be > 0, got {self.learning_rate!r}")
