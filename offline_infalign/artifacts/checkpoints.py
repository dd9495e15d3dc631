"""The `train` stage's output folder: the data builder's rule for training, and checkpoints that count only whole.

The rule (as ChunkStore's for the data stages):
- `OUT/train_config.json` records the run's config — the TrainConfig fields plus the fingerprints of the base
  model and of the dataset (fingerprint.py; sha256 of the dataset's manifest, which holds its content hash) —
  before the first checkpoint can exist.
- The same command again resumes by itself from the newest COMPLETE checkpoint in OUT/checkpoints; on a finished
  folder (`infalign_train.json` present) it is a no-op.
- Another config into the same folder is refused with the config_diff. Fields that cannot change the trained
  adapter may change (`FREE`). The model and dataset are compared by fingerprint, not by path string, so the
  same files named from another directory are the same run and another model under the same name is not.
- `--resume-from-checkpoint` (a folder, or 'latest') is the explicit override: it may also change how long to
  train (`EXTEND`: max_steps, num_train_epochs), and refuses a checkpoint written under another config.

A checkpoint is complete when `checkpoint-N/.complete` exists: `CheckpointMarker.on_save` writes it after
transformers' `Trainer._save_checkpoint` has written everything (weights, optimizer, scheduler, RNG states,
trainer_state.json) — the Trainer calls `on_save` right after `_save_checkpoint` returns. A kill while a
checkpoint is written leaves a folder without the marker, which resume never picks and the next run deletes.
The marker also holds the run config, which the explicit override checks. Rotation (save_total_limit) is done
here, after the marker, instead of inside `_save_checkpoint` (which deletes old checkpoints BEFORE the newest is
marked, so a kill there could leave none complete); transformers gets save_total_limit=None.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..config import config_diff, config_to_dict
from ..core.errors import InfalignError
from .output_folder import is_disk_full
from .storage import LOCK, fault_point, write_json_atomic
from .training_record import TRAIN_INFO

__all__ = ["RUN_CONFIG", "COMPLETE", "FREE", "EXTEND", "run_config", "dataset_fingerprint", "check_folder",
           "start_run", "complete_checkpoints", "resume_checkpoint", "CheckpointMarker", "remove_incomplete",
           "freed_on_disk_full"]

logger = logging.getLogger(__name__)

RUN_CONFIG = "train_config.json"
COMPLETE = ".complete"
# Fields that cannot change the trained adapter, so a rerun may change them. model/dataset: the path strings;
# what they name is compared by model_fingerprint and dataset_fingerprint. gradient_checkpointing recomputes the
# same activations; allow_pickle_weights only lets a folder load; verify only checks the dataset; the others are
# logging, checkpoint cadence and where the folder is.
# completions_per_forward: the two-pass step's gradients equal the one-pass ones (tests/test_groups.py), only memory changes;
# group_forward stays compared: it changes which rows share a batch.
FREE = ("logging_steps", "report_to", "save_steps", "save_total_limit", "gradient_checkpointing",
        "allow_pickle_weights", "resume_from_checkpoint", "out", "model", "dataset", "verify", "completions_per_forward")
# What an explicit --resume-from-checkpoint may change besides: how long to train.
EXTEND = ("max_steps", "num_train_epochs")
# Left in OUT by a run that failed before recording its config (the tokenization cache, the lock file).
_LEFTOVERS = (LOCK, "tokenized", RUN_CONFIG)


def dataset_fingerprint(path: str | Path) -> str | None:
    """sha256 of the dataset's manifest.json (its content hash, beta, transform, ...); None without one (the
    dataset loader then says what is wrong)."""
    manifest = Path(path) / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:32] if manifest.is_file() else None


def run_config(cfg, model_fingerprint: str, data_fingerprint: str | None) -> dict[str, Any]:
    """What the folder records and compares: the TrainConfig fields (JSON-normalized) and the fingerprints."""
    config = {**config_to_dict(cfg), "model_fingerprint": model_fingerprint, "dataset_fingerprint": data_fingerprint}
    return json.loads(json.dumps(config, default=str))


def _refuse(out: Path, what: str, diff: list[str], hint: str = "") -> InfalignError:
    return InfalignError(f"output folder {str(out)!r} {what} with a different config; refusing to mix them. "
                         f"config_diff (recorded -> now): {'; '.join(diff)}. Rerun with the recorded values or use "
                         f"a new --out{hint}")


def check_folder(out: str | Path, config: dict[str, Any], explicit: bool) -> str:
    """'new', 'unfinished' or 'finished' for a run of `config` into `out`; refuses another config's folder.

    explicit: --resume-from-checkpoint was given, so EXTEND fields may differ too.
    """
    out = Path(out)
    ignore = FREE + (EXTEND if explicit else ())
    hint = ("; to train a run longer, pass --resume-from-checkpoint latest with the new max_steps/num_train_epochs"
            if not explicit else "")
    finished = (out / TRAIN_INFO).is_file()
    if (out / RUN_CONFIG).is_file():
        recorded = json.loads((out / RUN_CONFIG).read_text())
    elif finished:  # an adapter written before train_config.json existed: its record holds the config
        recorded = json.loads((out / TRAIN_INFO).read_text()).get("config") or {}
        ignore += ("model_fingerprint", "dataset_fingerprint")
    elif out.is_dir() and any(p.name not in _LEFTOVERS for p in out.iterdir()):
        raise InfalignError(f"output folder {str(out)!r} exists and is not a train output folder (no {RUN_CONFIG} "
                            f"or {TRAIN_INFO}); choose a new --out")
    else:
        return "new"
    what = "holds a finished adapter" if finished else "holds an unfinished run"
    diff = config_diff(recorded, config, ignore=ignore)
    if diff:
        raise _refuse(out, what, diff, hint)
    if finished and not config_diff(recorded, config, ignore=FREE):
        return "finished"
    return "unfinished"


def start_run(out: str | Path, config: dict[str, Any]) -> None:
    """Record `config` before the first checkpoint (main process): the folder is unfinished until the new record
    lands, and half-written checkpoints of a killed run are deleted (resume never picks them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / TRAIN_INFO).unlink(missing_ok=True)
    write_json_atomic(out / RUN_CONFIG, config)
    for path in remove_incomplete(out / "checkpoints"):
        logger.warning("deleted incomplete checkpoint %s (a run was killed while writing it)", path)


def remove_incomplete(checkpoints: str | Path) -> list[Path]:
    """Delete the checkpoints under `checkpoints` without their completion marker (resume never picks them)."""
    root = Path(checkpoints)
    removed = [p for p in root.glob("checkpoint-*") if p.is_dir() and not (p / COMPLETE).is_file()] \
        if root.is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


@contextlib.contextmanager
def freed_on_disk_full(checkpoints: str | Path):
    """A checkpoint write that fails for lack of space (torch says "[enforce fail at inline_container.cc]") leaves
    a checkpoint without its marker: delete it at once (main process), so that the space it took is free for the
    rerun the error asks for; the complete checkpoints stay."""
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc) and int(os.environ.get("RANK", "0")) == 0:
            remove_incomplete(checkpoints)
        raise


def _step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return -1


def complete_checkpoints(checkpoints: str | Path) -> list[Path]:
    """The complete checkpoints under `checkpoints`, oldest (lowest step) first."""
    root = Path(checkpoints)
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and _step(p) >= 0 and (p / COMPLETE).is_file()]
    return sorted(found, key=_step)


def _check_checkpoint(path: Path, config: dict[str, Any]) -> None:
    marker = path / COMPLETE
    if not marker.is_file():
        raise InfalignError(f"checkpoint {str(path)!r} is not complete (no {COMPLETE}: a run was killed while "
                            "writing it, or an older version wrote it); resume from a complete one")
    recorded = json.loads(marker.read_text()).get("config") or {}
    diff = config_diff(recorded, config, ignore=FREE + EXTEND)
    if diff:
        raise InfalignError(f"checkpoint {str(path)!r} was written under a different config; refusing to resume "
                            f"it. config_diff (checkpoint -> now): {'; '.join(diff)}")


def resume_checkpoint(value: str | None, checkpoints: str | Path, config: dict[str, Any]) -> str | None:
    """The checkpoint to resume from: `value` (a folder, or 'latest'/'true': the newest complete one in
    `checkpoints`), or without it the newest complete one there if any (automatic resume); None: from scratch."""
    found = complete_checkpoints(checkpoints)
    if value is None:
        path = found[-1] if found else None
    elif str(value).lower() in ("latest", "true"):
        if not found:
            raise InfalignError(f"resume_from_checkpoint={value!r} but {str(checkpoints)!r} holds no complete "
                                "checkpoint")
        path = found[-1]
    else:
        path = Path(value)
        if not path.is_dir():
            raise InfalignError(f"resume_from_checkpoint {value!r} is not a checkpoint folder")
    if path is not None:
        _check_checkpoint(path, config)
        logger.info("resuming from %s", path)
    return None if path is None else str(path)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointMarker(TrainerCallback):
    """Marks each checkpoint complete after the Trainer wrote it, then rotates (keeps `limit` newest)."""

    def __init__(self, config: dict[str, Any], limit: int | None):
        self.config, self.limit = config, limit

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every process has written its part (DDP: each rank its RNG state)
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            fault_point("checkpoint-saving")  # tests kill here: everything written but the marker
            fault_point(f"checkpoint-saving:{state.global_step}")
            write_json_atomic(path / COMPLETE, {"global_step": state.global_step, "config": self.config})
            if self.limit:
                for old in complete_checkpoints(args.output_dir)[: -self.limit]:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return control
