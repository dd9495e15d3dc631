"""Config of `infalign eval` (stages/evaluate.py): adapters' measured win rates and KL, and their paired comparison."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ..core.checks import check_beta
from ..core.errors import InfalignError
from ..core.procedures import PROCEDURE_NAMES, PROCEDURES
from ..models.scorers import quoted_names
from .base import ALLOW_PICKLE_HELP, DTYPES, LONG_PROMPT_POLICIES, VERIFY_HELP, field, positive_int, spell

__all__ = ["EvalConfig", "KL_MATCH_TOLERANCE"]

# Two policies whose measured KLs differ by at most this many nats are compared "at matched KL" (docs/math.md §10).
KL_MATCH_TOLERANCE = 0.03
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclasses.dataclass
class EvalConfig:
    """`infalign eval`: measure adapters' best-/worst-of-N win rate against their base model and their KL (docs/math.md
    §8); with several, their paired differences against a baseline (§10).

    Sampling is always at temperature 1 with no top-p/top-k: the win rates and the KL refer to the policy itself,
    which is what the tradeoff tool predicts.
    """

    policy: list[str] = field(help="adapter folder written by `infalign train` (PEFT adapter); several policies: "
                              "--policy A --policy B ..., each FOLDER or NAME=FOLDER (default name: the folder's "
                              "name), all judged on the same prompts against one set of base samples")
    baseline: str | None = field(None, help="with several policies: the NAME the others are compared with "
                                 "(default: the first policy)")
    kl_tolerance: float = field(KL_MATCH_TOLERANCE, help="two policies' measured KLs within this many nats count as "
                                "matched; a comparison at unmatched KL is flagged (more KL buys win rate)")
    model: str | None = field(None, help="base model path or hub id (default: the model the adapter was trained on)")
    reward_model: str | None = field(None, help="judge: HF sequence-classification path, 'module:function' or "
                                     f"{quoted_names()} (default: the adapter's training reward model)")
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
    seed: int = field(0, help="seed: policy draws use it (every policy the same), base draws seed + 1, the bootstrap "
                      "seed")
    batch_size: int = field(8, help="prompts per generation batch (x samples rows); pairs per log-prob batch")
    score_batch_size: int = field(16, help="pairs per reward-model batch")
    num_bootstrap: int = field(1000, help="bootstrap resamples over prompts")
    confidence: float = field(0.95, help="confidence level of the intervals")
    transform: str | None = field(None, help="transform for the prediction, e.g. 'exp:tilt=10' "
                                  "(default: the adapter's)")
    beta: float | None = field(None, help="beta for the prediction (default: the adapter's)")
    out: str = field("eval_out", help="output folder (report.json, plots; the drawn samples, reused by a later eval "
                     "into it with the same base model, prompts, samples, max_new_tokens, stop set, dtype and seed)")
    samples_cache: str | None = field(None, help="folder that keeps the drawn samples for reuse — the base side's "
                                      "(base_samples.jsonl) and each policy's (policy_samples/, by the adapter's "
                                      "content) — e.g. one shared by evaluations in several folders (default: --out)")
    device: str | None = field(None, help="torch device, e.g. cuda or cpu (default: cuda if available)")
    dtype: str = field("auto", help="model dtype", choices=DTYPES)
    plots: bool = field(True, help="write the PNG plots")
    trust_remote_code: bool = field(False, help="allow custom model code from the hub (off by default)")
    allow_pickle_weights: bool = field(False, help=ALLOW_PICKLE_HELP)
    verify: bool | None = field(None, help="when the prompts come from the adapter's prepared dataset: "
                                + VERIFY_HELP)

    def __post_init__(self):
        self.policy = [self.policy] if isinstance(self.policy, str) else list(self.policy or [])
        if not self.policy or any(not str(p).strip() for p in self.policy):
            raise InfalignError(f"eval: policy must be an adapter folder, got {self.policy!r}")
        names = [name for name, _ in self.policies()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InfalignError(f"eval: two policies named {twice[0]!r}; name them: --policy NAME=FOLDER")
        if self.baseline is not None and self.baseline not in names:
            raise InfalignError(f"eval: baseline {self.baseline!r} is not one of the policies ({', '.join(names)})")
        if len(self.policy) > 1 and (self.transform is not None or self.beta is not None):
            raise InfalignError("eval: --transform and --beta set one policy's prediction; with several policies "
                                "each takes its own from its training record")
        if not (isinstance(self.kl_tolerance, (int, float)) and 0 <= float(self.kl_tolerance) < float("inf")):
            raise InfalignError(f"eval: kl_tolerance must be a number >= 0, got {self.kl_tolerance!r}")
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
        if self.beta is not None:
            check_beta(self.beta, "eval")
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

    def policies(self) -> list[tuple[str, str]]:
        """[(name, folder)] in the order given: NAME=FOLDER, or FOLDER named by its last path part."""
        out = []
        for text in self.policy:
            text = str(text)
            name, sep, folder = text.partition("=")
            if not (sep and folder and _NAME.fullmatch(name)):
                folder = text
                name = Path(text).resolve().name or "policy"
            if not _NAME.fullmatch(name):
                raise InfalignError(f"eval: policy name {name!r} (from {text!r}) must be letters, digits, '_', '.' "
                                    "or '-'; name it: --policy NAME=FOLDER")
            out.append((name, folder))
        return out

    def baseline_name(self) -> str:
        return self.baseline if self.baseline is not None else self.policies()[0][0]
