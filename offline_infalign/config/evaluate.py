"""Config of `infalign eval` (stages/evaluate.py): an adapter's measured win rates and KL."""

from __future__ import annotations

import dataclasses

from ..core.errors import InfalignError
from ..core.procedures import PROCEDURE_NAMES, PROCEDURES
from .base import ALLOW_PICKLE_HELP, DTYPES, LONG_PROMPT_POLICIES, VERIFY_HELP, field, positive_int, spell

__all__ = ["EvalConfig"]


@dataclasses.dataclass
class EvalConfig:
    """`infalign eval`: measure an adapter's best-/worst-of-N win rate against its base model and its KL (docs/math.md §8).

    Sampling is always at temperature 1 with no top-p/top-k: the win rates and the KL refer to the policy itself,
    which is what the tradeoff tool predicts.
    """

    policy: str = field(help="adapter folder written by `infalign train` (PEFT adapter)")
    model: str | None = field(None, help="base model path or hub id (default: the model the adapter was trained on)")
    reward_model: str | None = field(None, help="judge: HF sequence-classification path, 'module:function' or "
                                     "'demo' (default: the adapter's training reward model)")
    reward_label: str | None = field(None, help="a judge with several outputs: the one whose raw logit is the "
                                     "reward, an index or a label name from its id2label (default: the training "
                                     "reward's, when the judge is the training reward model)")
    prompts: str | None = field(None, help="prompt source: a registered builder name or a .jsonl/.parquet path "
                                "(default: the test split of the adapter's prepared dataset)")
    split: str = field("test", help="split of the prompt source")
    limit: int | None = field(100, help="number of evaluation prompts (P)")
    procedure: list[str] | None = field(None, help="inference-time procedures to measure, "
                                        f"{spell(PROCEDURE_NAMES, 'and/or')} "
                                        "(default: the one the adapter was trained for)")
    n: list[int] | None = field(None, help="values of N (best_of_n / worst_of_n), each in [1, samples] "
                                "(default: 1, 2, 4, ... and samples itself, and the trained N)")
    samples: int = field(16, help="M: completions per prompt drawn from the policy and M from the base")
    max_new_tokens: int = field(128, help="generation length limit")
    stop_token_ids: list[int] | None = field(None, help="token ids that end a completion, besides the model's "
                                             "generation-config eos ids, the tokenizer's eos and the stop ids the "
                                             "adapter's training samples used")
    on_long_prompt: str = field("fail", help="a prompt longer than the context minus max_new_tokens: truncate "
                                "(from the left), skip, or fail", choices=LONG_PROMPT_POLICIES)
    seed: int = field(0, help="seed: policy draws use it, base draws seed + 1, the bootstrap seed")
    batch_size: int = field(8, help="prompts per generation batch (x samples rows); pairs per log-prob batch")
    score_batch_size: int = field(16, help="pairs per reward-model batch")
    num_bootstrap: int = field(1000, help="bootstrap resamples over prompts")
    confidence: float = field(0.95, help="confidence level of the intervals")
    transform: str | None = field(None, help="transform for the prediction, e.g. 'exp:tilt=10' "
                                  "(default: the adapter's)")
    beta: float | None = field(None, help="beta for the prediction (default: the adapter's)")
    out: str = field("eval_out", help="output folder (report.json, plots)")
    device: str | None = field(None, help="torch device, e.g. cuda or cpu (default: cuda if available)")
    dtype: str = field("auto", help="model dtype", choices=DTYPES)
    plots: bool = field(True, help="write the PNG plots")
    trust_remote_code: bool = field(False, help="allow custom model code from the hub (off by default)")
    allow_pickle_weights: bool = field(False, help=ALLOW_PICKLE_HELP)
    verify: bool | None = field(None, help="when the prompts come from the adapter's prepared dataset: "
                                + VERIFY_HELP)

    def __post_init__(self):
        if not self.policy:
            raise InfalignError("eval: policy must be an adapter folder, got an empty value")
        for name in ("samples", "max_new_tokens", "batch_size", "score_batch_size", "num_bootstrap"):
            positive_int("eval", name, getattr(self, name))
        positive_int("eval", "limit", self.limit, optional=True)
        if self.reward_label is not None:  # YAML may give an int; the scorer reads the string either way
            if isinstance(self.reward_label, bool) or not str(self.reward_label).strip():
                raise InfalignError(f"eval: reward_label must be an index or a label name, got "
                                    f"{self.reward_label!r}")
            self.reward_label = str(self.reward_label).strip()
        if self.stop_token_ids is not None:
            self.stop_token_ids = ([self.stop_token_ids] if isinstance(self.stop_token_ids, int)
                                   else list(self.stop_token_ids))
            for i in self.stop_token_ids:
                positive_int("eval", "stop_token_ids", i, 0)
        if not 0.0 < float(self.confidence) < 1.0:
            raise InfalignError(f"eval: confidence must be in (0, 1), got {self.confidence!r}")
        if self.beta is not None and not float(self.beta) > 0.0:
            raise InfalignError(f"eval: beta must be > 0, got {self.beta!r}")
        if self.on_long_prompt not in LONG_PROMPT_POLICIES:
            raise InfalignError(f"eval: on_long_prompt {self.on_long_prompt!r} not allowed; allowed: "
                                f"{', '.join(LONG_PROMPT_POLICIES)}")
        if self.dtype not in DTYPES:
            raise InfalignError(f"eval: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.procedure is not None:
            self.procedure = [self.procedure] if isinstance(self.procedure, str) else list(self.procedure)
            bad = [p for p in self.procedure if p not in list(PROCEDURES)]
            if bad or not self.procedure:
                raise InfalignError(f"eval: procedure {bad or self.procedure!r} not allowed; allowed: "
                                    f"{', '.join(PROCEDURES)}")
        if self.n is not None:
            self.n = [self.n] if isinstance(self.n, int) else list(self.n)
            bad = [v for v in self.n if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= self.samples]
            if bad or not self.n:
                # docs/math.md §8: the win rate for N is computed from M samples per side, meaningful only for N <= M.
                raise InfalignError(
                    f"eval: n {bad or self.n!r} not allowed; each N must be an integer in [1, samples={self.samples}]"
                )
