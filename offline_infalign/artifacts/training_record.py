"""The training record `infalign_train.json` that `infalign train` writes into the adapter folder, read back, and
the model card (README.md) written beside it.

The writer (stages/train.py) imports `TRAIN_INFO` from here, so the file name lives in one place. Evaluation
reads the record to fill what its command line left out: base model, judge (and its reward label), prompts,
procedure and N, the transform, tilt and β (for the prediction), the loss, the stop ids the training samples
were drawn with, and the warnings training passed on (tempered samples, ...) for the report's notes. A foreign
PEFT adapter has no record; then every missing setting must come from the command line, and the error says
which flag.

The record names the base model by its resolved folder (a relative path given to `train` names another folder
from another directory) with its fingerprint (fingerprint.py): a base model taken from the record that no longer
matches it is refused; one named on the command line that does not match gets a warning in the notes.

The record is read, never executed: an adapter folder is often downloaded, so a judge it names as
`module:function` (importing it runs code) is refused unless the user names it on the command line or in the
config; a judge that is a model folder or hub id loads, as weights (safetensors, no remote code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.checks import check_beta
from ..core.errors import InfalignError
from ..core.procedures import PROCEDURE_NAMES
from ..core.transforms import Transform, parse_transform
from ..models.scorers import SCORERS
from .fingerprint import fingerprint_model
from .report import default_ns

__all__ = ["TRAIN_INFO", "EvalSettings", "read_training_info", "resolve_settings", "names_code", "model_card",
           "dataset_warnings"]

TRAIN_INFO = "infalign_train.json"


def read_training_info(policy_dir) -> dict[str, Any]:
    """The adapter's `infalign_train.json` (written by `infalign train`), or {} for a foreign PEFT adapter."""
    path = Path(policy_dir)
    if not path.is_dir():
        raise InfalignError(f"policy {str(path)!r} is not a folder; pass the adapter folder written by `infalign train`")
    info_path = path / TRAIN_INFO
    if not info_path.is_file():
        return {}
    try:
        return json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise InfalignError(f"{str(info_path)!r} is not valid JSON: {exc}") from None


def names_code(spec) -> bool:
    """True when `spec` is a name that scoring.load_scorer would import ('module:function'), rather than a
    registered scorer (`models.scorers.SCORERS`) or a reward-model folder / hub id (weights)."""
    text = str(spec)
    return text not in SCORERS and ":" in text and not Path(text).exists()


def _dataset_manifest(info: dict[str, Any]) -> dict[str, Any]:
    return info["dataset_manifest"] if isinstance(info.get("dataset_manifest"), dict) else {}


def _first(*values):
    for v in values:
        if v is not None:
            return v
    return None


def _policy_folder(cfg) -> str:
    """The one adapter folder `cfg` names: an EvalConfig with several policies is resolved one policy at a time
    (stages/evaluate.py passes each policy's own view)."""
    if hasattr(cfg, "policies"):
        folders = [folder for _, folder in cfg.policies()]
        if len(folders) != 1:
            raise InfalignError(f"the training record is read for one policy at a time, got {len(folders)}")
        return folders[0]
    return str(cfg.policy)


def _check_base_model(cfg, info: dict[str, Any], model: str, warnings: list[str]) -> None:
    """The base model must be the one the adapter was trained on: the record's `model_fingerprint` (train
    records the resolved folder and its fingerprint) against the model's now. Taken from the record, a mismatch
    is an error; named on the command line, a warning in the report's notes."""
    recorded = info.get("model_fingerprint")
    if not recorded:
        return
    now = fingerprint_model(model)
    if now == recorded:
        return
    what = (f"base model {model!r} is not the model policy {_policy_folder(cfg)!r} was trained on (fingerprint "
            f"{recorded} when trained, {now} now)")
    if cfg.model is None and not now.endswith("?"):  # "?": a hub id not resolvable now; loading will tell
        raise InfalignError(f"{what}; pass --model with the base model it was trained on")
    warnings.append(what)


@dataclass(frozen=True)
class EvalSettings:
    """What one policy is evaluated with: the command line's values, else its training record's."""

    model: str  # the base model
    reward_model: str  # the judge
    reward_label: str | None  # its output, for a judge with several
    prompts: str | None  # a prompt source; None: the prepared dataset's test split
    dataset: str | None  # the prepared dataset the policy was trained on (path)
    procedures: list[str]
    ns: list[int]
    transform: Transform | None  # for the prediction
    beta: float | None
    loss: str | None
    stop_token_ids: list[int]  # extra stop ids: the command line's and the training samples'
    warnings: list[str]  # training's and the dataset's, each once


def resolve_settings(cfg, info: dict[str, Any]) -> EvalSettings:
    """Fill what the command line left out from the adapter's training info; say what is still missing."""
    policy = _policy_folder(cfg)
    train_cfg = info.get("config") if isinstance(info.get("config"), dict) else {}
    manifest = _dataset_manifest(info)
    model = _base_model(cfg, info, train_cfg, manifest, policy)
    reward_model, reward_label = _judge(cfg, info, manifest, policy)
    # docs/math.md §8: evaluation samples stop where the training samples stopped.
    recorded_stops = _first(info.get("stop_token_ids"), manifest.get("stop_token_ids")) or []
    stops = sorted({int(i) for i in [*recorded_stops, *(cfg.stop_token_ids or [])]})
    warnings: list[str] = []
    for w in [*(info.get("warnings") or []), *(manifest.get("warnings") or [])]:
        if str(w) not in warnings:  # train may copy the dataset's warnings into its own list
            warnings.append(str(w))
    _check_base_model(cfg, info, str(model), warnings)
    # The absolute manifest path survives a change of working directory; config.dataset may be relative.
    dataset = (str(Path(info["dataset_manifest_path"]).parent) if info.get("dataset_manifest_path")
               else train_cfg.get("dataset"))
    if cfg.prompts is None and not dataset:
        raise InfalignError(f"no prompts for policy {policy!r}: pass --prompts (builder name or .jsonl path)")
    trained_procedure = _first(info.get("procedure"), manifest.get("procedure"))
    # Without a (known) trained procedure, evaluate under the first registered one: best-of-N.
    procedures = cfg.procedure or [trained_procedure if trained_procedure in PROCEDURE_NAMES else PROCEDURE_NAMES[0]]
    ns = cfg.n or default_ns(cfg.samples, _first(info.get("n"), manifest.get("n")))
    recorded_beta = _first(info.get("beta"), train_cfg.get("beta"), manifest.get("beta"))
    if cfg.beta is not None:
        beta = float(cfg.beta)  # checked by EvalConfig
    elif recorded_beta is not None:  # read from disk: checked here, where it enters
        beta = check_beta(recorded_beta, f"eval: the training record of policy {policy!r}")
    else:
        beta = None
    return EvalSettings(
        model=str(model), reward_model=str(reward_model),
        reward_label=None if reward_label is None else str(reward_label), prompts=cfg.prompts, dataset=dataset,
        procedures=list(procedures), ns=sorted({int(n) for n in ns}), transform=_transform(cfg, info, manifest),
        beta=beta, loss=info.get("loss", train_cfg.get("loss")),
        stop_token_ids=stops, warnings=warnings)


def _base_model(cfg, info, train_cfg, manifest, policy: str) -> str:
    model = _first(cfg.model, info.get("model"), train_cfg.get("model"), manifest.get("model"))
    if model is None:
        adapter_cfg = Path(policy) / "adapter_config.json"
        if adapter_cfg.is_file():
            model = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
    if not model:
        raise InfalignError(f"no base model for policy {policy!r}: pass --model (the adapter has no {TRAIN_INFO})")
    return model


def _judge(cfg, info, manifest, policy: str) -> tuple[Any, Any]:
    """(reward_model, reward_label): the command line's judge, else the training reward, never code a record names."""
    trained_reward = _first(info.get("reward_model"), manifest.get("reward_model"))
    if cfg.reward_model is None and trained_reward is not None and names_code(trained_reward):
        raise InfalignError(
            f"the training record of policy {policy!r} names the judge {str(trained_reward)!r}, a "
            "module:function; eval never imports code named by an adapter folder (importing it would run it). "
            f"Pass --reward-model {trained_reward} (reward_model in the config) to use it, or another judge")
    reward_model = _first(cfg.reward_model, trained_reward)
    if not reward_model:
        raise InfalignError(f"no judge reward for policy {policy!r}: pass --reward-model (path, module:function "
                            f"or {', '.join(SCORERS)})")
    # The training reward's label applies only when the judge is that same reward model.
    reward_label = cfg.reward_label
    if reward_label is None and str(reward_model) == str(trained_reward):
        reward_label = _first(info.get("reward_label"), manifest.get("reward_label"))
    return reward_model, reward_label


def _transform(cfg, info, manifest) -> Transform | None:
    if cfg.transform is not None:
        return parse_transform(cfg.transform)
    name = _first(info.get("transform"), manifest.get("transform"))
    if name is None:
        return None
    tilt = _first(info.get("tilt"), manifest.get("tilt"))
    return parse_transform(name) if ":" in str(name) else Transform(str(name), tilt)


def model_card(cfg, manifest: dict, beta: float, reference: str, metrics: dict) -> str:
    """The README.md train writes beside the adapter: what it was trained on and with, and the dataset's warnings."""
    transform = manifest.get("transform")
    tilt = manifest.get("tilt")
    full = cfg.full_finetune  # a whole model folder, not an adapter
    lines = [
        "---",
        f"library_name: {'transformers' if full else 'peft'}",
        f"base_model: {cfg.model}",
        f"tags: [offline-infalign, {'full-finetune' if full else 'lora'}, infalign]",
        "---",
        "",
        f"# InfAlign {'model' if full else 'adapter'} for `{cfg.model}`",
        "",
        f"{'Fully fine-tuned model' if full else 'LoRA adapter'} trained offline with "
        "[offline-infalign](https://arxiv.org/abs/2412.19792) to approximate the "
        "tilted policy π* ∝ π_ref · exp(Φ(C)/β) (C: calibrated reward, Φ: transform).",
        "",
        "| | |",
        "|---|---|",
        f"| dataset | `{Path(cfg.dataset).resolve()}` (manifest: `{Path(cfg.dataset).resolve() / 'manifest.json'}`) |",
        f"| dataset kind | {manifest.get('kind')} |",
        f"| transform | {transform} |",
        f"| tilt | {tilt} |",
        f"| beta | {beta} |",
        f"| loss | {cfg.loss} |",
        f"| procedure / n | {manifest.get('procedure')} / {manifest.get('n')} |",
        f"| reward model | {manifest.get('reward_model')} |",
        f"| reference log-probs | {reference} |",
        "| LoRA | none: full fine-tuning |" if cfg.full_finetune else
        f"| LoRA | r={cfg.lora_r}, alpha={cfg.lora_alpha or 2 * cfg.lora_r}, dropout={cfg.lora_dropout}, "
        f"targets={', '.join(cfg.target_modules)}{', QLoRA nf4' if cfg.qlora else ''} |",
        f"| offline-infalign | {__version__} |",
        "",
        "Load it with `offline_infalign.models.modeling.load_adapted(base_model, adapter_dir)`; evaluate it with "
        "`infalign eval --policy <this folder>`.",
        "",
        "Final training metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                                              if isinstance(v, (int, float))),
        "",
    ]
    warnings = dataset_warnings(manifest)
    if warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    return "\n".join(lines)


def dataset_warnings(manifest: dict) -> list[str]:
    """The dataset manifest's warnings (prepare writes them: tempered samples, β or K too small)."""
    return [str(w) for w in manifest.get("warnings") or []]
