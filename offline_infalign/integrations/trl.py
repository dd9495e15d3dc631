"""TRL's `DPOTrainer` on this package's pairs datasets: trained on the sampled token ids, against the stored
reference log-probs (docs/math.md §9).

Our pairs datasets load in TRL's `DPOTrainer` as they are (`prompt`, `chosen`, `rejected`), but then TRL trains
on other sequences than the ones sampled. Its `_prepare_dataset` (trl 1.14 to 1.16) appends the tokenizer's EOS
to every `chosen` / `rejected` text, a completion cut at max_new_tokens included, and tokenizes `prompt + chosen`
again, overwriting any `prompt_ids` / `chosen_ids` / `rejected_ids` the rows carry; text decoded from sampled ids
does not encode back to them (byte pieces, dropped special tokens). With `precompute_ref_log_probs=True` it also
runs its own reference pass and adds `ref_chosen_logps` / `ref_rejected_logps` next to ours.

`SampledIdsDPOTrainer` is `DPOTrainer` with those two steps replaced, through the methods TRL calls for them:
- `_prepare_dataset` keeps the stored `prompt_ids`, `chosen_ids`, `rejected_ids` as they are (checked against the
  tokenizer's vocabulary) and drops, never truncates, rows longer than `max_length` (the stored reference is of
  whole completions, as the package's own trainer does);
- `_precompute_ref_logps` returns the dataset with its stored `ref_chosen_logps` / `ref_rejected_logps`
  (`precompute_ref_log_probs` is set, so TRL reads them from each batch and keeps no reference model: no
  reference forward at all). `use_stored_reference=False` drops those columns instead and lets TRL compute the
  reference itself, still on the stored ids.
Everything else — the collator, the losses (`loss_type`), LoRA (`peft_config`), logging — is TRL's own. At step 0
TRL's per-pair log-probs equal `logprobs.completion_logps` on the same ids and its `sigmoid` loss equals
`core.losses.dpo` (tests/test_trl_integration.py). TRL's losses read no `target_margin`: the tilted losses are
`infalign train`'s.

    from peft import LoraConfig
    from trl import DPOConfig
    from offline_infalign.integrations.trl import SampledIdsDPOTrainer, load_pairs

    train = load_pairs("runs/hh/prepared", split="train")
    trainer = SampledIdsDPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", train_dataset=train,
                                   args=DPOConfig(output_dir="runs/hh/trl", beta=0.1),
                                   peft_config=LoraConfig(r=16, target_modules="all-linear"))
    trainer.train()

The stored reference is log π_ref of the model the samples were drawn from, in the dtype the manifest records
(`model`, `ref_dtype`): train that model, in that dtype. TRL (1.15, 1.16) hashes the model's weights once at
construction for its own precompute cache, which is not used here: 23 s per billion float32 parameters (29 s in
bf16) measured on a 2-core CPU, the one cost left of its precompute path.
Tested with trl 1.14 to 1.16 (`SUPPORTED_TRL`); importing this module with another trl is one error.
"""

from __future__ import annotations

import logging

import numpy as np

from ..artifacts.storage import load_artifact
from ..core.errors import InfalignError
from ..kinds.pairs import PairsKind
from ..models.tokenization import check_stored_ids

__all__ = ["SampledIdsDPOTrainer", "load_pairs", "check_trl_version", "SUPPORTED_TRL", "ID_COLUMNS",
           "REFERENCE_COLUMNS"]

logger = logging.getLogger(__name__)

# trl minor versions whose DPOTrainer this subclass is tested against (its private `_prepare_dataset` and
# `_precompute_ref_logps` are what it replaces; their signatures and roles are the same in 1.14-1.16).
# tests/test_trl_integration.py passes with trl 1.14.2 and 1.16.0; with 1.15.0 up to the loss, which TRL
# computes there with a Triton kernel that CPU-only torch lacks (TRL's own DPOTrainer fails the same way).
SUPPORTED_TRL = ("1.14", "1.15", "1.16")
ID_COLUMNS = ("prompt_ids", *PairsKind.id_columns.values())
REFERENCE_COLUMNS = PairsKind.reference_columns


def check_trl_version(version: str | None = None) -> str:
    """The installed trl version (or `version`), when it is one `SUPPORTED_TRL` names; otherwise one error."""
    pin = f"pip install 'trl>={SUPPORTED_TRL[0]},<1.{int(SUPPORTED_TRL[-1].split('.')[1]) + 1}'"
    if version is None:
        try:
            import trl
        except ImportError:
            raise InfalignError(f"offline_infalign.integrations.trl needs trl: {pin}") from None
        version = str(trl.__version__)
    if ".".join(version.split(".")[:2]) not in SUPPORTED_TRL:
        raise InfalignError(
            f"offline_infalign.integrations.trl is tested with trl {', '.join(v + '.x' for v in SUPPORTED_TRL)}, "
            f"but trl {version} is installed (its DPOTrainer may prepare data or the reference differently): {pin}")
    return version


check_trl_version()

from trl import DPOConfig, DPOTrainer  # noqa: E402  (after the version check: another trl is one clear line)


def load_pairs(path: str, split: str = "train", verify: bool | None = None):
    """The `split` of a prepared pairs artifact, checked (storage.load_artifact) and with its token ids; the
    manifest's warnings (tempered samples, re-encoded ids of an import, ...) are logged once.

    The rows are the artifact's own Arrow files, memory-mapped: a `.map` / `.filter` of yours on them should pass
    `keep_in_memory=True` (or a `cache_file_name` elsewhere), or `datasets` writes its cache files into the
    artifact's folder and the next open refuses the changed artifact."""
    from datasets import DatasetDict


    data, manifest = load_artifact(path, stage="prepared", verify=verify)
    if manifest.get("kind") != PairsKind.name:
        raise InfalignError(f"{str(path)!r} is a {manifest.get('kind')!r} dataset; DPOTrainer trains on "
                            f"{PairsKind.name!r} (infalign prepare --kind pairs)")
    if isinstance(data, DatasetDict):
        if split not in data:
            raise InfalignError(f"dataset {str(path)!r} has no split {split!r}; it has {', '.join(data)}")
        data = data[split]
    _check_ids(data, f"{str(path)!r} ({split})")
    for warning in manifest.get("warnings") or []:
        logger.warning("%s: %s", path, warning)
    return data


def _check_ids(dataset, name: str) -> None:
    missing = [c for c in ID_COLUMNS if c not in dataset.column_names]
    if missing:
        raise InfalignError(f"dataset {name} has no {', '.join(missing)}: SampledIdsDPOTrainer trains on the stored "
                            "token ids; prepare the dataset from samples that have them (infalign sample, score, "
                            "prepare; or infalign import), or give TRL's own DPOTrainer the text")


class SampledIdsDPOTrainer(DPOTrainer):
    """`trl.DPOTrainer` that trains on the rows' stored token ids and, by default, their stored reference
    log-probs (see the module docstring). Arguments are DPOTrainer's (by keyword after `model`), plus
    `use_stored_reference`; with it (the default) `args.precompute_ref_log_probs` is set to True."""

    def __init__(self, model, *, args: DPOConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, use_stored_reference: bool = True, **kwargs):
        check_trl_version()
        if args is None:
            from trl.trainer.utils import get_config_model_id

            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = DPOConfig(f"{str(name).split('/')[-1]}-DPO")
        if use_stored_reference and kwargs.get("ref_model") is not None:
            raise InfalignError("ref_model given with use_stored_reference=True: the stored ref_chosen_logps / "
                                "ref_rejected_logps are the reference; pass use_stored_reference=False to use "
                                "ref_model instead")
        # Read by `_prepare_dataset` and `_precompute_ref_logps`, which DPOTrainer.__init__ calls.
        self.use_stored_reference = use_stored_reference
        if use_stored_reference:
            # TRL then takes ref_*_logps from each batch and keeps no reference model for it; the "precompute"
            # itself is ours (`_precompute_ref_logps`: the stored columns).
            args.precompute_ref_log_probs = True
        super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """The stored ids as they are (no EOS added, no tokenization), checked; rows over max_length dropped."""
        from datasets import Dataset


        if not isinstance(dataset, Dataset):
            raise InfalignError(f"SampledIdsDPOTrainer needs a map-style datasets.Dataset for {dataset_name}, got "
                                f"{type(dataset).__name__} (its ids and reference columns are checked as a whole)")
        _check_ids(dataset, dataset_name)
        present = [c for c in REFERENCE_COLUMNS if c in dataset.column_names]
        if self.use_stored_reference:
            if len(present) < len(REFERENCE_COLUMNS):
                raise InfalignError(f"dataset {dataset_name} has no {', '.join(sorted(set(REFERENCE_COLUMNS) - set(present)))}: "
                                    "nothing to use as the stored reference; pass use_stored_reference=False to "
                                    "let TRL compute it")
            for col in REFERENCE_COLUMNS:
                values = np.asarray(dataset.data.column(col).to_numpy(zero_copy_only=False), dtype=np.float64)
                bad = np.flatnonzero(~np.isfinite(values))
                if len(bad):
                    raise InfalignError(f"dataset {dataset_name} row {int(bad[0])}: {col} is {values[bad[0]]}; "
                                        "stored reference log-probs must be finite")
        elif present:
            dataset = dataset.remove_columns(present)  # TRL computes its own, on the same ids
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        check_stored_ids(dataset, list(ID_COLUMNS), tokenizer)
        if args.max_length is not None:
            dataset = _drop_long(dataset, args.max_length, dataset_name)
        return dataset

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if self.use_stored_reference:
            return dataset  # the stored columns, checked in _prepare_dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)


def _drop_long(dataset, max_length: int, name: str):
    """Rows whose prompt plus longer completion exceed `max_length`, dropped (TRL's collator would cut them, and
    the stored reference is of the whole completion)."""
    import pyarrow.compute as pc

    def lengths(col):
        return np.asarray(pc.list_value_length(dataset.data.column(col)).to_numpy(zero_copy_only=False))

    total = lengths("prompt_ids") + np.maximum(lengths("chosen_ids"), lengths("rejected_ids"))
    keep = np.flatnonzero(total <= max_length)
    if len(keep) == len(dataset):
        return dataset
    if not len(keep):
        raise InfalignError(f"every row of {name} is longer than max_length={max_length} (prompt plus completion, "
                            f"the shortest {int(total.min())} tokens); raise max_length")
    logger.warning("%s: dropped %d of %d rows longer than max_length=%d (rows are never truncated: the stored "
                   "reference is of whole completions)", name, len(dataset) - len(keep), len(dataset), max_length)
    return dataset.select(keep, keep_in_memory=True)  # no indices file written into the artifact's folder
