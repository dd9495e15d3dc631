"""Command configs: one dataclass per command, strict YAML loading, command-line overrides.

Follows TRL's convention: every field carries `metadata={"help": ...}` and checks live in `__post_init__`,
naming the bad value and what is allowed. The same field names are YAML keys and `--kebab-case` flags, so a
config file and a command line are interchangeable. Unknown keys are an error, never ignored.

Each command's dataclass lives below its section header; `load_config` and `add_config_arguments` serve all.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..core.errors import InfalignError

T = TypeVar("T")

__all__ = ["load_config", "add_config_arguments", "overrides_from_args", "config_to_dict", "config_diff"]


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_keys(cls, keys, where: str) -> None:
    allowed = _field_names(cls)
    unknown = [k for k in keys if k not in allowed]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InfalignError(
            f"unknown config key(s) in {where}: {', '.join(hints)}; allowed keys for {cls.__name__}: "
            + ", ".join(allowed)
        )


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build `cls` from a YAML file (optional) updated by `overrides` (keys with value None are skipped)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InfalignError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InfalignError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise InfalignError(f"config file {str(p)!r} must hold a mapping of keys, got {type(loaded).__name__}")
        _check_keys(cls, loaded, f"config file {str(p)!r}")
        values.update(loaded)
    if overrides:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        _check_keys(cls, overrides, "command-line overrides")
        values.update(overrides)
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise InfalignError(f"{cls.__name__}: {exc}") from None


def config_to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_diff(old: dict[str, Any], new: dict[str, Any], ignore: typing.Iterable[str] = ()) -> list[str]:
    """Lines 'key: old -> new' for every key whose value differs (used to refuse a mismatched resume)."""
    skip = set(ignore)
    keys = sorted((set(old) | set(new)) - skip)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _scalar_type(tp):
    """The argparse `type` for a field annotation like `int`, `float | None`, `str`, `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else str
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return ("list", _scalar_type(inner))
    return tp if tp in (int, float, str, bool) else str


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip: typing.Iterable[str] = ()) -> None:
    """Add one `--kebab-name` flag per dataclass field, help from its metadata, default None (= not given)."""
    hints = typing.get_type_hints(cls)
    skipped = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING and f.default is not None:
            helptext += f" (default: {f.default})"
        kind = _scalar_type(hints[f.name])
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": helptext}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(kind, tuple):
            parser.add_argument(flag, type=kind[1], nargs="+", **kw)
        else:
            parser.add_argument(flag, type=kind, **kw)


def overrides_from_args(args: argparse.Namespace, cls) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _field_names(cls) if getattr(args, name, None) is not None}


# ---------------------------------------------------------------------------------------------------------
# Command configs. Each command's dataclass goes in its own section below (edit with small insertions).
# ---------------------------------------------------------------------------------------------------------

# ---- data builder: sample / score / prepare / build / merge (pipeline.py) ------------------------------------
_BACKENDS = ("hf", "vllm")
_LONG_PROMPT = ("truncate", "skip", "fail")
_DUPLICATES = ("fail", "skip")
_KINDS = ("pairs", "listwise", "bon")
_PROCEDURES = ("bon", "won")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _positive_int(owner: str, name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InfalignError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")


def _one_of(owner: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise InfalignError(f"{owner}: {name} {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """'I/N' → (I, N) with 0 <= I < N (shards are numbered from 0, like Slurm array task ids)."""
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in str(shard).split("/"))
    except ValueError:
        raise InfalignError(f"shard must look like 'I/N' (e.g. 0/4), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InfalignError(f"shard {shard!r} needs 0 <= I < N (shards are numbered 0..N-1)")
    return i, n


def _field(default=dataclasses.MISSING, help: str = "", **meta):
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass
class SampleConfig:
    """`infalign sample`: K completions per prompt from the base model, with ref_logps (DESIGN: samples/)."""

    prompts: str = _field(help="prompt source: a registered builder name (hh_helpful, hh_harmless, tldr, "
                          "ultrafeedback, demo) or a local .jsonl/.json/.parquet file with a 'prompt' field")
    model: str = _field(help="base (reference) causal LM: local folder or hub id")
    out: str = _field(help="output artifact folder")
    num_samples: int = _field(8, help="K: completions per prompt (>= 2: calibration ranks them)")
    max_new_tokens: int = _field(128, help="maximum completion length in tokens")
    temperature: float = _field(1.0, help="sampling temperature (ref_logps are always at temperature 1)")
    top_p: float = _field(1.0, help="nucleus sampling mass (1 = off)")
    top_k: int = _field(0, help="top-k sampling (0 = off)")
    seed: int = _field(0, help="seed; each prompt's draws depend only on (seed, prompt_id)")
    batch_size: int = _field(8, help="prompts per generation batch (batch_size x K rows)")
    chunk_size: int = _field(256, help="prompts per resumable chunk written to disk")
    shard: str | None = _field(None, help="'I/N': process only the I-th of N contiguous parts of the prompts "
                               "(I from 0); join the parts with `infalign merge`")
    split: str = _field("train", help="split of the prompt source")
    limit: int | None = _field(None, help="use at most this many prompts")
    prompts_data_files: str | None = _field(None, help="local file in the prompt source's raw format, "
                                            "read instead of the hub (e.g. an HH-RLHF jsonl)")
    on_duplicate_prompt: str = _field("fail", help="a prompt seen twice: fail, or skip the repeat",
                                      choices=list(_DUPLICATES))
    on_long_prompt: str = _field("fail", help="a prompt longer than the context minus max_new_tokens: "
                                 "truncate (from the left, with a warning), skip (counted), or fail",
                                 choices=list(_LONG_PROMPT))
    backend: str = _field("hf", help="generation backend: hf (transformers) or vllm (optional extra, GPU)",
                          choices=list(_BACKENDS))
    tensor_parallel_size: int = _field(1, help="vllm backend: GPUs per model")
    device: str | None = _field(None, help="torch device (default: cuda if available, else cpu)")
    dtype: str = _field("auto", help="model dtype", choices=list(_DTYPES))
    trust_remote_code: bool = _field(False, help="allow custom model code from the hub (off by default)")
    pad_token_as_eos: bool = _field(False, help="a tokenizer without a pad token pads with its eos token "
                                    "(otherwise such a tokenizer is an error)")

    def __post_init__(self):
        owner = "sample"
        for name in ("prompts", "model", "out"):
            if not getattr(self, name):
                raise InfalignError(f"{owner}: {name} must be given")
        _positive_int(owner, "num_samples", self.num_samples, 2)
        for name in ("max_new_tokens", "batch_size", "chunk_size", "tensor_parallel_size"):
            _positive_int(owner, name, getattr(self, name))
        if self.limit is not None:
            _positive_int(owner, "limit", self.limit)
        _positive_int(owner, "top_k", self.top_k, 0)
        if not float(self.temperature) > 0:
            raise InfalignError(f"{owner}: temperature must be > 0, got {self.temperature!r}")
        if not 0 < float(self.top_p) <= 1:
            raise InfalignError(f"{owner}: top_p must be in (0, 1], got {self.top_p!r}")
        _one_of(owner, "backend", self.backend, _BACKENDS)
        _one_of(owner, "on_long_prompt", self.on_long_prompt, _LONG_PROMPT)
        _one_of(owner, "on_duplicate_prompt", self.on_duplicate_prompt, _DUPLICATES)
        _one_of(owner, "dtype", self.dtype, _DTYPES)
        parse_shard(self.shard)


@dataclasses.dataclass
class ScoreConfig:
    """`infalign score`: add `rewards` (K per prompt) to a samples artifact (DESIGN: scored/)."""

    input: str = _field(help="samples artifact folder (from `infalign sample`)")
    reward_model: str = _field(help="reward: HF sequence-classification folder/hub id, 'module:function', "
                               "or 'demo'")
    out: str = _field(help="output artifact folder")
    batch_size: int = _field(16, help="(prompt, completion) pairs per reward-model batch")
    chunk_size: int = _field(256, help="prompts per resumable chunk written to disk")
    shard: str | None = _field(None, help="'I/N': score only the I-th of N contiguous parts (I from 0)")
    device: str | None = _field(None, help="torch device (default: cuda if available, else cpu)")
    dtype: str = _field("auto", help="reward model dtype", choices=list(_DTYPES))
    trust_remote_code: bool = _field(False, help="allow custom model code from the hub (off by default)")

    def __post_init__(self):
        for name in ("input", "reward_model", "out"):
            if not getattr(self, name):
                raise InfalignError(f"score: {name} must be given")
        _positive_int("score", "batch_size", self.batch_size)
        _positive_int("score", "chunk_size", self.chunk_size)
        _one_of("score", "dtype", self.dtype, _DTYPES)
        parse_shard(self.shard)


@dataclasses.dataclass
class PrepareConfig:
    """`infalign prepare`: calibrated rewards, targets Φ(u) and a training dataset (SPEC §2, §5-§7)."""

    input: str = _field(help="scored artifact folder (from `infalign score` or `infalign merge`)")
    out: str = _field(help="output artifact folder (a DatasetDict with train and test splits)")
    kind: str = _field("pairs", help="dataset kind: pairs, listwise or bon", choices=list(_KINDS))
    transform: str | None = _field(None, help="transform Φ: identity, log, exp, power (or 'exp:tilt=3'), or "
                                   "'auto' to take Φ and beta from the tradeoff tool for --procedure/--n/--kl")
    tilt: float | None = _field(None, help="the transform's parameter t (exp, power)")
    beta: float | None = _field(None, help="KL coefficient beta (not with --transform auto)")
    procedure: str | None = _field(None, help="inference-time procedure served: bon or won (recorded; "
                                   "needed for auto)", choices=list(_PROCEDURES))
    n: int | None = _field(None, help="best_of_n / worst_of_n N (recorded; needed for auto)")
    kl: float | None = _field(None, help="KL budget for --transform auto")
    pairs_per_prompt: int | None = _field(None, help="pairs: sample this many pairs per prompt (default: all "
                                          "K(K-1)/2)")
    test_fraction: float = _field(0.1, help="fraction of prompts held out in the test split (by prompt_id hash)")
    seed: int = _field(0, help="seed for sampling pairs")

    def __post_init__(self):
        owner = "prepare"
        for name in ("input", "out"):
            if not getattr(self, name):
                raise InfalignError(f"{owner}: {name} must be given")
        _one_of(owner, "kind", self.kind, _KINDS)
        if self.procedure is not None:
            _one_of(owner, "procedure", self.procedure, _PROCEDURES)
        if self.n is not None:
            _positive_int(owner, "n", self.n)
        if self.pairs_per_prompt is not None:
            _positive_int(owner, "pairs_per_prompt", self.pairs_per_prompt)
            if self.kind != "pairs":
                raise InfalignError(f"{owner}: pairs_per_prompt applies to kind 'pairs' only, got kind "
                                    f"{self.kind!r} (listwise and bon rows use all K completions)")
        if not 0 <= float(self.test_fraction) < 1:
            raise InfalignError(f"{owner}: test_fraction must be in [0, 1), got {self.test_fraction!r}")
        if self.transform is None:
            raise InfalignError(f"{owner}: transform must be given (identity, log, exp, power, or auto)")
        if self.transform == "auto":
            missing = [k for k in ("procedure", "n", "kl") if getattr(self, k) is None]
            if missing:
                raise InfalignError(f"{owner}: --transform auto needs {', '.join('--' + m for m in missing)} "
                                    "(e.g. --procedure bon --n 4 --kl 0.3)")
            if self.beta is not None or self.tilt is not None:
                raise InfalignError(f"{owner}: --transform auto chooses tilt and beta itself; drop --tilt/--beta "
                                    f"(got tilt={self.tilt!r}, beta={self.beta!r})")
            if not float(self.kl) > 0:
                raise InfalignError(f"{owner}: kl must be > 0, got {self.kl!r}")
        else:
            if self.beta is None:
                raise InfalignError(f"{owner}: beta must be given with --transform {self.transform} "
                                    "(or use --transform auto with --procedure/--n/--kl)")
            if not float(self.beta) > 0:
                raise InfalignError(f"{owner}: beta must be > 0, got {self.beta!r}")


def _reuse(cls, skip=(), rename=None, defaults=None):
    """(name, type, field) triples of `cls` for a combined config; help text is written once, in `cls`."""
    rename, defaults = rename or {}, defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        name = rename.get(f.name, f.name)
        default = defaults.get(name, f.default)
        yield name, f.type, dataclasses.field(default=default, metadata=f.metadata)


def _build_post_init(self):
    self.sample_config(), self.score_config(), self.prepare_config()  # each checks its own fields


def _build_paths(self) -> dict[str, str]:
    """Where build writes: out/{samples,scored,prepared}, or out/shard-I-of-N/{samples,scored} for a shard."""
    shard = parse_shard(self.shard)
    base = Path(self.out) / (f"shard-{shard[0]}-of-{shard[1]}" if shard else "")
    return {"samples": str(base / "samples"), "scored": str(base / "scored"), "prepared": str(base / "prepared")}


def _sub(self, cls, **fixed):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
    return cls(**{**values, **fixed})


_score_fields = {f.name: f for f in dataclasses.fields(ScoreConfig)}
_build_fields = [
    *_reuse(SampleConfig, skip=("out",)),
    *_reuse(ScoreConfig, skip=("input", "reward_model", "out", "chunk_size", "shard", "device", "dtype",
                               "trust_remote_code"), rename={"batch_size": "score_batch_size"}),
    *_reuse(PrepareConfig, skip=("input", "out", "seed"),
            defaults={"transform": "auto", "procedure": "bon", "n": 4, "kl": 0.3}),
]
# Required fields first (dataclass rule). `out` changes meaning: build writes three artifacts below it.
_build_fields[2:2] = [
    ("out", "str", _field(help="build folder: samples/, scored/ and prepared/ are written inside")),
    ("reward_model", "str", dataclasses.field(metadata=_score_fields["reward_model"].metadata)),
]
BuildConfig = dataclasses.make_dataclass(
    "BuildConfig", _build_fields,
    namespace={"__post_init__": _build_post_init, "paths": _build_paths,
               "sample_config": lambda self: _sub(self, SampleConfig, out=self.paths()["samples"]),
               "score_config": lambda self: _sub(self, ScoreConfig, input=self.paths()["samples"], shard=None,
                                                 out=self.paths()["scored"], batch_size=self.score_batch_size),
               "prepare_config": lambda self: _sub(self, PrepareConfig, input=self.paths()["scored"],
                                                   out=self.paths()["prepared"])},
)
BuildConfig.__module__ = __name__
BuildConfig.__doc__ = ("`infalign build`: sample → score → prepare in one command, each stage resumable; with "
                       "--shard only sample and score run (merge the shards, then prepare).")


@dataclasses.dataclass
class MergeConfig:
    """`infalign merge`: join the shard artifacts of one sharded run, each shard exactly once."""

    inputs: list[str] = _field(help="shard artifact folders (samples or scored), in any order")
    out: str = _field(help="output artifact folder")

    def __post_init__(self):
        if not self.inputs or not self.out:
            raise InfalignError("merge: inputs and out must be given")
        self.inputs = [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)

# ---- tradeoff (core/tradeoff.py, `infalign tradeoff`) -----------------------------------------------------
_TRADEOFF_PROCEDURES = ("bon", "won")


@dataclasses.dataclass
class TradeoffConfig:
    """`infalign tradeoff`: predicted KL and win rates of a tilt (SPEC §4), the optimum, or the best exp tilt (§7).

    Modes: a transform with --beta or --kl; --optimal --kl; --choose --kl.
    """

    procedure: str = dataclasses.field(
        default="bon", metadata={"help": "inference-time procedure: bon (best-of-N) or won (worst-of-N)"}
    )
    n: int = dataclasses.field(default=4, metadata={"help": "N of best-of-N / worst-of-N (>= 1)"})
    transform: str | None = dataclasses.field(
        default=None,
        metadata={"help": "transform name (identity, log, exp, power) or 'exp:tilt=2.5' (default: identity)"},
    )
    tilt: float | None = dataclasses.field(default=None, metadata={"help": "tilt t of the transform (exp, power)"})
    beta: float | None = dataclasses.field(default=None, metadata={"help": "KL coefficient beta (> 0)"})
    kl: float | None = dataclasses.field(default=None, metadata={"help": "KL budget in nats (> 0); beta is matched"})
    optimal: bool = dataclasses.field(default=False, metadata={"help": "the optimal transform at --kl"})
    choose: bool = dataclasses.field(
        default=False, metadata={"help": "best exp tilt and its beta at --kl, beside identity, log and the optimum"}
    )
    kl_max: float | None = dataclasses.field(
        default=None, metadata={"help": "right end of the --plot KL axis (default: twice the KL shown)"}
    )

    def __post_init__(self):
        if self.procedure not in _TRADEOFF_PROCEDURES:
            raise InfalignError(f"tradeoff: procedure must be one of bon, won, got {self.procedure!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise InfalignError(f"tradeoff: n (best_of_n / worst_of_n) must be an integer >= 1, got {self.n!r}")
        for name in ("beta", "kl", "kl_max"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
                raise InfalignError(f"tradeoff: {name} must be a finite number > 0, got {value!r}")
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


# ---- eval (evaluation.py, `infalign eval`) ---------------------------------------------------------------
_EVAL_PROCEDURES = ("bon", "won")
_EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclasses.dataclass
class EvalConfig:
    """`infalign eval`: measure an adapter's best-/worst-of-N win rate against its base model and its KL (SPEC §8).

    Sampling is always at temperature 1 with no top-p/top-k: the win rates and the KL refer to the policy itself,
    which is what the tradeoff tool predicts.
    """

    policy: str = dataclasses.field(metadata={"help": "adapter folder written by `infalign train` (PEFT adapter)"})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "base model path or hub id (default: the model the adapter was trained on)"}
    )
    reward_model: str | None = dataclasses.field(
        default=None,
        metadata={"help": "judge: HF sequence-classification path, 'module:function' or 'demo' "
                  "(default: the adapter's training reward model)"},
    )
    prompts: str | None = dataclasses.field(
        default=None,
        metadata={"help": "prompt source: a registered builder name or a .jsonl/.parquet path "
                  "(default: the test split of the adapter's prepared dataset)"},
    )
    split: str = dataclasses.field(default="test", metadata={"help": "split of the prompt source"})
    limit: int | None = dataclasses.field(default=100, metadata={"help": "number of evaluation prompts (P)"})
    procedure: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "inference-time procedures to measure, bon and/or won "
                  "(default: the one the adapter was trained for)"},
    )
    n: list[int] | None = dataclasses.field(
        default=None,
        metadata={"help": "values of N (best_of_n / worst_of_n), each <= samples "
                  "(default: 1, 2, 4, ... up to samples, and the trained N)"},
    )
    samples: int = dataclasses.field(
        default=16, metadata={"help": "M: completions per prompt drawn from the policy and M from the base"}
    )
    max_new_tokens: int = dataclasses.field(default=128, metadata={"help": "generation length limit"})
    on_long_prompt: str = dataclasses.field(
        default="fail",
        metadata={"help": "a prompt longer than the context minus max_new_tokens: truncate (from the left), "
                  "skip, or fail", "choices": ["truncate", "skip", "fail"]},
    )
    seed: int = dataclasses.field(
        default=0, metadata={"help": "seed: policy draws use it, base draws seed + 1, the bootstrap seed"}
    )
    batch_size: int = dataclasses.field(
        default=8, metadata={"help": "prompts per generation batch (x samples rows); pairs per log-prob batch"}
    )
    score_batch_size: int = dataclasses.field(default=16, metadata={"help": "pairs per reward-model batch"})
    num_bootstrap: int = dataclasses.field(default=1000, metadata={"help": "bootstrap resamples over prompts"})
    confidence: float = dataclasses.field(default=0.95, metadata={"help": "confidence level of the intervals"})
    transform: str | None = dataclasses.field(
        default=None,
        metadata={"help": "transform for the prediction, e.g. 'exp:tilt=10' (default: the adapter's)"},
    )
    beta: float | None = dataclasses.field(
        default=None, metadata={"help": "beta for the prediction (default: the adapter's)"}
    )
    out: str = dataclasses.field(default="eval_out", metadata={"help": "output folder (report.json, plots)"})
    device: str | None = dataclasses.field(
        default=None, metadata={"help": "torch device, e.g. cuda or cpu (default: cuda if available)"}
    )
    dtype: str = dataclasses.field(
        default="auto", metadata={"help": "model dtype", "choices": list(_EVAL_DTYPES)}
    )
    plots: bool = dataclasses.field(default=True, metadata={"help": "write the PNG plots"})
    trust_remote_code: bool = dataclasses.field(
        default=False, metadata={"help": "allow custom model code from the hub (off by default)"}
    )

    def __post_init__(self):
        if not self.policy:
            raise InfalignError("eval: policy must be an adapter folder, got an empty value")
        for name in ("samples", "max_new_tokens", "batch_size", "score_batch_size", "num_bootstrap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InfalignError(f"eval: {name} must be an integer >= 1, got {value!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise InfalignError(f"eval: limit must be an integer >= 1 or null, got {self.limit!r}")
        if not 0.0 < float(self.confidence) < 1.0:
            raise InfalignError(f"eval: confidence must be in (0, 1), got {self.confidence!r}")
        if self.beta is not None and not float(self.beta) > 0.0:
            raise InfalignError(f"eval: beta must be > 0, got {self.beta!r}")
        if self.on_long_prompt not in ("truncate", "skip", "fail"):
            raise InfalignError(f"eval: on_long_prompt {self.on_long_prompt!r} not allowed; allowed: truncate, skip, fail")
        if self.dtype not in _EVAL_DTYPES:
            raise InfalignError(f"eval: dtype {self.dtype!r} is not one of {', '.join(_EVAL_DTYPES)}")
        if self.procedure is not None:
            self.procedure = [self.procedure] if isinstance(self.procedure, str) else list(self.procedure)
            bad = [p for p in self.procedure if p not in _EVAL_PROCEDURES]
            if bad or not self.procedure:
                raise InfalignError(f"eval: procedure {bad or self.procedure!r} not allowed; allowed: bon, won")
        if self.n is not None:
            self.n = [self.n] if isinstance(self.n, int) else list(self.n)
            bad = [v for v in self.n if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= self.samples]
            if bad or not self.n:
                # SPEC §8: the win rate for N is computed from M samples per side, meaningful only for N <= M.
                raise InfalignError(
                    f"eval: n {bad or self.n!r} not allowed; each N must be an integer in [1, samples={self.samples}]"
                )


# ---- train (trainer.py, `infalign train`) -------------------------------------------------------------------
_TRAIN_REFERENCES = ("auto", "stored", "live")
_TRAIN_LOSSES = ("tilted_pairwise", "tilted_sigmoid", "listwise", "pointwise", "weighted_sft", "dpo", "ipo")


@dataclasses.dataclass
class TrainConfig:
    """`infalign train`: fit the tilted policy (SPEC §6) on a prepared dataset with LoRA or QLoRA."""

    dataset: str = dataclasses.field(metadata={"help": "prepared dataset folder (`infalign prepare` output)"})
    model: str = dataclasses.field(metadata={"help": "base model: local path or hub id (the reference policy)"})
    loss: str = dataclasses.field(
        metadata={"help": "loss (SPEC §6); its dataset kind must match the dataset's: tilted_pairwise, "
                  "tilted_sigmoid, dpo, ipo <- pairs; listwise, pointwise <- listwise; weighted_sft <- bon",
                  "choices": list(_TRAIN_LOSSES)}
    )
    out: str = dataclasses.field(metadata={"help": "output folder: adapter, tokenizer, model card, infalign_train.json"})
    beta: float | None = dataclasses.field(
        default=None, metadata={"help": "KL coefficient beta (default: the dataset manifest's beta)"}
    )
    split: str = dataclasses.field(default="train", metadata={"help": "dataset split to train on"})
    max_steps: int | None = dataclasses.field(
        default=None, metadata={"help": "optimizer steps (overrides num_train_epochs when set)"}
    )
    num_train_epochs: float = dataclasses.field(default=1.0, metadata={"help": "passes over the dataset"})
    learning_rate: float = dataclasses.field(default=5e-5, metadata={"help": "peak learning rate (AdamW)"})
    lr_scheduler_type: str = dataclasses.field(
        default="linear", metadata={"help": "transformers scheduler name: linear, cosine, constant, ..."}
    )
    warmup_steps: int = dataclasses.field(default=0, metadata={"help": "linear warmup steps"})
    lora_r: int = dataclasses.field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int | None = dataclasses.field(default=None, metadata={"help": "LoRA alpha (default: 2 * lora_r)"})
    lora_dropout: float = dataclasses.field(
        default=0.0,
        metadata={"help": "LoRA dropout (default 0: dropout makes the log-ratios h noisy, and TRL disables it too)"},
    )
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "modules that get LoRA: 'all-linear' or module names such as q_proj v_proj"},
    )
    qlora: bool = dataclasses.field(
        default=False, metadata={"help": "4-bit nf4 base weights (bitsandbytes), double quantization"}
    )
    per_device_train_batch_size: int = dataclasses.field(
        default=8, metadata={"help": "rows per device per step (a pairs row is 2 sequences, a listwise row K)"}
    )
    gradient_accumulation_steps: int = dataclasses.field(default=1, metadata={"help": "micro-batches per step"})
    reference: str = dataclasses.field(
        default="auto",
        metadata={"help": "reference log-probs: stored (dataset columns, no reference forward), live (policy with "
                  "the adapter disabled), auto (stored when present and the base weights are in the dtype they "
                  "were computed in)", "choices": list(_TRAIN_REFERENCES)},
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed for LoRA init and data order"})
    logging_steps: int = dataclasses.field(default=10, metadata={"help": "log metrics every this many steps"})
    save_steps: int | None = dataclasses.field(
        default=500, metadata={"help": "checkpoint every this many steps into OUT/checkpoints (null: never)"}
    )
    save_total_limit: int | None = dataclasses.field(default=2, metadata={"help": "checkpoints kept"})
    resume_from_checkpoint: str | None = dataclasses.field(
        default=None, metadata={"help": "checkpoint folder to resume from, or 'latest' (newest in OUT/checkpoints)"}
    )
    gradient_checkpointing: bool = dataclasses.field(
        default=False, metadata={"help": "recompute activations in backward (less memory, ~30% slower)"}
    )
    bf16: bool | None = dataclasses.field(
        default=None, metadata={"help": "bf16 weights and autocast (default: on for a bf16-capable GPU, off on CPU)"}
    )
    max_length: int | None = dataclasses.field(
        default=None,
        metadata={"help": "drop rows whose prompt + completion is longer (never truncated: the stored reference "
                  "log-probs are of the whole completion)"},
    )
    report_to: str = dataclasses.field(default="none", metadata={"help": "none, tensorboard, wandb, ..."})
    trust_remote_code: bool = dataclasses.field(
        default=False, metadata={"help": "allow custom model code from the hub (off by default)"}
    )

    def __post_init__(self):
        for name in ("dataset", "model", "out"):
            if not getattr(self, name):
                raise InfalignError(f"train: {name} is required, got {getattr(self, name)!r}")
        if self.loss not in _TRAIN_LOSSES:
            raise InfalignError(f"train: unknown loss {self.loss!r}; allowed: {', '.join(_TRAIN_LOSSES)}")
        if self.reference not in _TRAIN_REFERENCES:
            raise InfalignError(
                f"train: reference {self.reference!r} not allowed; allowed: {', '.join(_TRAIN_REFERENCES)}"
            )
        if self.beta is not None and not (float(self.beta) > 0.0 and float(self.beta) < float("inf")):
            raise InfalignError(f"train: beta must be a finite number > 0, got beta={self.beta!r}")
        positive = ("lora_r", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InfalignError(f"train: {name} must be an integer >= 1, got {value!r}")
        for name in ("max_steps", "save_steps", "max_length", "lora_alpha", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InfalignError(f"train: {name} must be an integer >= 1 or null, got {value!r}")
        if not float(self.learning_rate) > 0.0:
            raise InfalignError(f"train: learning_rate must be > 0, got {self.learning_rate!r}")
        if not float(self.num_train_epochs) > 0.0:
            raise InfalignError(f"train: num_train_epochs must be > 0, got {self.num_train_epochs!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise InfalignError(f"train: lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not self.target_modules:
            raise InfalignError("train: target_modules must name at least one module (or 'all-linear')")


# ---------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DemoConfig:
    """`infalign demo`: the whole pipeline on a tiny built-in base model and reward, no download."""

    out: str = dataclasses.field(default="demo_out", metadata={"help": "output folder (data, adapters, reports)"})
    procedure: str = dataclasses.field(default="bon", metadata={"help": "served procedure: bon or won",
                                                                "choices": ["bon", "won"]})
    n: int = dataclasses.field(default=4, metadata={"help": "N of best-of-N / worst-of-N served"})
    kl: float = dataclasses.field(default=0.3, metadata={"help": "KL budget; each transform's beta is matched to it"})
    num_prompts: int = dataclasses.field(default=160, metadata={"help": "training prompts"})
    num_samples: int = dataclasses.field(default=32, metadata={"help": "K: base completions per training prompt "
                                                               "(>= 32: README, \"Choosing K\")"})
    max_new_tokens: int = dataclasses.field(default=40, metadata={"help": "completion length limit"})
    loss: str = dataclasses.field(default="listwise", metadata={"help": "tilted loss the two policies train with"})
    max_steps: int = dataclasses.field(default=250, metadata={"help": "optimizer steps per policy"})
    learning_rate: float = dataclasses.field(default=5e-3, metadata={"help": "LoRA learning rate"})
    per_device_train_batch_size: int = dataclasses.field(default=4, metadata={"help": "prompts (or rows) per step"})
    kl_match_rounds: int = dataclasses.field(
        default=1, metadata={"help": "retrainings per policy with beta corrected toward the KL budget from the "
                                     "measured KL (0: keep the tradeoff tool's beta)"})
    eval_prompts: int = dataclasses.field(default=64, metadata={"help": "held-out prompts evaluated"})
    eval_samples: int = dataclasses.field(default=16, metadata={"help": "M: samples per prompt and side at eval"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of every stage"})
    cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "where the demo base model is cached (default $INFALIGN_CACHE or "
                                        "~/.cache/offline_infalign)"})
    model_train_steps: int | None = dataclasses.field(
        default=None, metadata={"help": "training steps of the demo base model (default: the shipped recipe)"})

    def __post_init__(self):
        if self.procedure not in ("bon", "won"):
            raise InfalignError(f"demo: procedure must be bon or won, got {self.procedure!r}")
        for name in ("n", "num_prompts", "max_new_tokens", "max_steps", "per_device_train_batch_size",
                     "eval_prompts", "eval_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InfalignError(f"demo: {name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.kl_match_rounds, int) or isinstance(self.kl_match_rounds, bool) \
                or self.kl_match_rounds < 0:
            raise InfalignError(f"demo: kl_match_rounds must be an integer >= 0, got {self.kl_match_rounds!r}")
        if not isinstance(self.num_samples, int) or self.num_samples < 2:
            raise InfalignError(f"demo: num_samples (K) must be an integer >= 2, got {self.num_samples!r}")
        if self.n > self.eval_samples:
            raise InfalignError(f"demo: n={self.n} must be <= eval_samples={self.eval_samples} (SPEC §8)")
        if not float(self.kl) > 0:
            raise InfalignError(f"demo: kl must be > 0, got {self.kl!r}")
        if not float(self.learning_rate) > 0:
            raise InfalignError(f"demo: learning_rate must be > 0, got {self.learning_rate!r}")
