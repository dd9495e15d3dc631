"""Artifact folders: a `datasets` dataset saved with `save_to_disk` plus `manifest.json`, written atomically.

Layout of an artifact folder `out/`:
    out/manifest.json          written LAST: its presence means the artifact is complete
    out/<dataset files>        what `datasets.load_from_disk(out)` opens
    out/_work/config.json      while a chunked stage runs: the config it was started with
    out/_work/stage            beside it: the stage that run writes (another stage's run into `out` names it)
    out/_work/chunks/chunk-00000/  finished chunks (each saved under a temporary name, then renamed)

A restart finds finished chunks by name; a chunk is either fully there or absent, never half-written, because
`os.rename` of a directory within one filesystem is atomic. `_work` is removed once the artifact is complete.

Every instant is resumable: `_work/config.json` is written before any data (the first chunk, or the final
save of an unchunked stage), so a folder holding data but no manifest always also holds the config that made
it, and the rerun of the same command redoes the unfinished step; the manifest is written last.

Integrity (integrity.py): `load_artifact` checks what the manifest promises (its keys, row counts, K
completions per row, the stage's columns, finite numbers) on every open, and the content hash when the data is
small (`HASH_ALWAYS_BYTES`) or `verify=True`. The artifact is exactly the files its dataset lists: other files
in the folder (a `.map()` cache) are not part of it, and `save_artifact` deletes only files an earlier save
into the folder wrote. The output folder's lock, the refusal of nested folders and the one-line full disk are
output_folder.py's.

Fault injection: `fault_point(name)` ends the process abruptly when $INFALIGN_FAULT names that point
("after-chunk:1", "finish:data-moved", ...), so tests can kill a stage at each named instant and check that the
rerun gives the result of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import config_diff
from ..core.errors import InfalignError
from .integrity import (
    DICT,
    INFO,
    STATE,
    check_artifact,
    check_manifest,
    content_hash,
    data_bytes,
    dataset_files,
)
from .output_folder import LOCK, output_lock

__all__ = ["MANIFEST", "read_manifest", "load_artifact", "save_artifact", "content_hash", "ChunkStore",
           "write_json_atomic", "base_manifest", "fault_point", "InjectedFault", "HASH_ALWAYS_BYTES", "output_lock",
           "LOCK"]

MANIFEST = "manifest.json"
WORK = "_work"
# Inputs up to this size are hashed on every open: ~1-2.3 s per GiB here, under 1% of any stage that reads a
# 100k x 32 input (3.7 GiB; benchmarks/README.md, Reliability); larger ones only with verify=True.
HASH_ALWAYS_BYTES = 4 << 30
FAULT_ENV = "INFALIGN_FAULT"
STAGE = "stage"  # inside _work: the stage an unfinished run writes
MOVING = "moving.json"  # inside _work: the files a finishing save is putting into place


class InjectedFault(BaseException):
    """Raised by `fault_point`: a BaseException, so no `except Exception` in a stage can swallow it — like a kill,
    it unwinds straight out (only `finally` blocks run, as the OS would close files and release locks)."""


def fault_point(name: str) -> None:
    """End the run here when $INFALIGN_FAULT equals `name` (tests kill stages at named instants this way)."""
    if os.environ.get(FAULT_ENV) == name:
        raise InjectedFault(f"injected fault at {name}")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    except BaseException:  # a full disk: no half-written file is left taking space
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def base_manifest(stage: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"stage": stage, "package_version": __version__, "config": config}


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    if not p.is_file():
        hint = " (a run started there did not finish; rerun it to resume)" if (Path(path) / WORK).is_dir() else ""
        raise InfalignError(f"{str(path)!r} is not a finished artifact folder: no {MANIFEST}{hint}")
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InfalignError(f"{str(p)!r} is not a readable manifest ({exc}); the artifact is damaged: rebuild it") \
            from None
    if not isinstance(manifest, dict):
        raise InfalignError(f"{str(p)!r} is not a manifest (a JSON object); the artifact is damaged: rebuild it")
    return manifest


def load_artifact(path: str | Path, stage: str | tuple[str, ...] | None = None, verify: bool | None = None):
    """(dataset or DatasetDict, manifest) of a finished artifact; `stage` restricts which stages are accepted.

    verify: True hashes the data files against the manifest, False never, None (default) when they are small
    (HASH_ALWAYS_BYTES). The manifest's keys, row counts, K, the stage's columns and that every floating-point
    value is finite are checked on every open (integrity.check_artifact).
    """
    import datasets

    manifest = check_manifest(read_manifest(path), path)
    allowed = (stage,) if isinstance(stage, str) else stage
    if allowed and manifest["stage"] not in allowed:
        raise InfalignError(
            f"{str(path)!r} holds a {manifest['stage']!r} artifact; expected {' or '.join(map(repr, allowed))}"
        )
    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError) as exc:
        # a deleted or truncated shard, a damaged state file
        raise InfalignError(f"artifact {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); rebuild it "
                            "with the stage that made it") from None
    hash_it = verify or (verify is None and data_bytes(path) <= HASH_ALWAYS_BYTES)
    check_artifact(dataset, manifest, Path(path), hash_it)
    return dataset, manifest


@contextlib.contextmanager
def _quiet_datasets():
    """No "Saving the dataset" bar per chunk: the stage's own bar reports progress."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _save_tmp(dataset, target: Path) -> Path:
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():  # left by a crash: never trusted, always rewritten
        shutil.rmtree(tmp)
    try:
        with _quiet_datasets():
            dataset.save_to_disk(str(tmp), num_shards=_num_shards(dataset))
    except Exception:  # a full disk: give back what the half-written copy holds
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _num_shards(dataset):
    """One shard for an empty dataset or split: `datasets` otherwise writes zero shard files for it, and
    `load_from_disk` then fails on the empty split (seen with --test-fraction 0). None keeps the default."""
    if hasattr(dataset, "keys"):  # DatasetDict: per split
        return {k: 1 for k, v in dataset.items() if len(v) == 0} or None
    return 1 if len(dataset) == 0 else None


def save_artifact(dataset, out: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write `dataset` into `out` and then `manifest.json` (with `content_hash` and row counts added)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new manifest lands
    (out / WORK).mkdir(exist_ok=True)
    if not (out / WORK / "config.json").is_file():  # before any data: a rerun then recognizes the folder
        _record_stage(out / WORK, manifest.get("stage"))
        write_json_atomic(out / WORK / "config.json", manifest.get("config", {}))
    tmp = _save_tmp(dataset, out / WORK / "final")
    fault_point("finish:saved")
    _remove_saved_dataset(out)
    moving = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
    write_json_atomic(out / WORK / MOVING, moving)  # a kill while moving: the rerun removes these first
    for i, rel in enumerate(moving):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, out / rel)
        if i == 0:
            fault_point("finish:data-moving")
    manifest = dict(manifest)
    manifest["content_hash"] = content_hash(out)
    if hasattr(dataset, "keys"):  # DatasetDict
        manifest["num_rows"] = {k: len(v) for k, v in dataset.items()}
    else:
        manifest["num_rows"] = len(dataset)
    # Manifest first, then the work folder: a crash in between leaves a complete artifact (plus leftovers that
    # nothing reads), and a crash before it leaves _work/config.json and the chunks, so a rerun redoes this step.
    fault_point("finish:before-manifest")
    write_json_atomic(out / MANIFEST, manifest)
    fault_point("finish:after-manifest")
    shutil.rmtree(out / WORK, ignore_errors=True)
    return manifest


def _remove_saved_dataset(out: Path) -> None:
    """Delete the files an earlier save into `out` wrote — the files a killed finishing save was moving, the
    data files the saved dataset lists and its state files — and nothing else: a `.map()` cache file or a
    folder someone put there stays (never deleted by name patterns). The listing files go last, so a kill in
    between still leaves the rest findable."""
    doomed: list[Path] = []
    with contextlib.suppress(OSError, ValueError, TypeError):
        doomed += [out / rel for rel in json.loads((out / WORK / MOVING).read_text())
                   if isinstance(rel, str) and ".." not in Path(rel).parts and not Path(rel).is_absolute()]
    with contextlib.suppress(InfalignError):
        doomed += dataset_files(out)
    splits: list[Path] = []
    if (out / DICT).is_file():
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, KeyError):
            splits = [out / s for s in json.loads((out / DICT).read_text())["splits"]
                      if isinstance(s, str) and s and "/" not in s and s not in (".", "..")]
    for folder in [out, *splits]:
        doomed += [folder / INFO, folder / STATE]
    doomed.append(out / DICT)
    for f in doomed:
        if f.is_file() or f.is_symlink():
            f.unlink()
    for folder in sorted({f.parent for f in doomed} - {out}, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def _record_stage(work: Path, stage: str | None) -> None:
    """`_work/stage`: which stage an unfinished run writes, so that another stage's run names it."""
    if stage:
        (work / STAGE).write_text(stage + "\n")


def _what_folder_holds(out: Path) -> str:
    """'holds a train output (infalign_train.json)', ...: what a folder that is no artifact seems to be."""
    markers = {"infalign_train.json": "a train output", "train_config.json": "a train output",
               "adapter_config.json": "an adapter", "report.json": "an eval output", "config.json": "a model"}
    names = {p.name for p in out.iterdir()}
    for marker, what in markers.items():
        if marker in names:
            return f"holds {what} ({marker})"
    shown = sorted(n for n in names if n not in (WORK, LOCK))
    return f"holds other files ({', '.join(shown[:4])}{', ...' if len(shown) > 4 else ''})"


class ChunkStore:
    """Finished chunks of one resumable stage in `out/_work/chunks`, guarded by the config it started with."""

    def __init__(self, out: str | Path, stage: str | None = None):
        """stage: what this run writes ("samples", "scored", "prepared"): a folder holding another stage's
        artifact or run is refused naming that stage, not with a diff of two unrelated configs."""
        self.out = Path(out)
        self.stage = stage
        self.work = self.out / WORK
        self.chunks = self.work / "chunks"
        self.config_path = self.work / "config.json"
        self._config: dict[str, Any] | None = None

    def start(self, config: dict[str, Any], ignore=()) -> bool:
        """Record `config`, or check it against the one a previous run recorded.

        Returns True when the artifact is already complete with this config (nothing to do).
        Raises InfalignError showing the differences when the folder belongs to a different config.
        """
        if (self.out / MANIFEST).is_file():
            manifest = read_manifest(self.out)
            held = manifest.get("stage")
            self._other_stage(held, "a finished")
            self._check(manifest.get("config", {}), config, ignore, "holds a finished artifact")
            # A run killed between its manifest and the cleanup left its chunks (a copy of the data) behind.
            shutil.rmtree(self.work, ignore_errors=True)
            return True
        if self.config_path.is_file():
            held = (self.work / STAGE).read_text().strip() if (self.work / STAGE).is_file() else None
            self._other_stage(held, "an unfinished")
            self._check(json.loads(self.config_path.read_text()), config, ignore, "holds an unfinished run")
        elif self.out.is_dir() and any(p.name not in (WORK, LOCK) for p in self.out.iterdir()):
            raise InfalignError(f"output folder {str(self.out)!r} exists and is not an artifact of this stage (it "
                                f"{_what_folder_holds(self.out)}); choose a new --out")
        # Recorded with the first chunk, not here: a run that fails before any work (a bad flag, a model that
        # will not load) must not pin its config on the folder and block the corrected command.
        self._config = config
        return False

    def _other_stage(self, held: str | None, what: str) -> None:
        if self.stage is not None and held is not None and held != self.stage:
            raise InfalignError(f"output folder {str(self.out)!r} holds {what} {held!r} artifact, and this command "
                                f"writes a {self.stage!r} artifact; choose another --out (the {held!r} folder is "
                                "kept as it is)")

    def _check(self, old: dict, new: dict, ignore, what: str) -> None:
        # JSON round trip so tuples/lists and ints/floats compare the way they were stored.
        diff = config_diff(old, json.loads(json.dumps(new, default=str)), ignore=ignore)
        if diff:
            raise InfalignError(
                f"output folder {str(self.out)!r} {what} with a different config; refusing to mix them. "
                f"config_diff (recorded -> now): {'; '.join(diff)}. Rerun with the recorded values or use a new --out"
            )

    def _path(self, index: int) -> Path:
        return self.chunks / f"chunk-{index:05d}"

    def done(self, index: int) -> bool:
        return self.config_path.is_file() and self._path(index).is_dir()

    def write(self, index: int, dataset) -> None:
        if not self.config_path.is_file():
            self.chunks.mkdir(parents=True, exist_ok=True)
            _record_stage(self.work, self.stage)
            write_json_atomic(self.config_path, self._config)
        tmp = _save_tmp(dataset, self._path(index))
        fault_point(f"chunk-saved:{index}")
        os.rename(tmp, self._path(index))
        fault_point(f"after-chunk:{index}")

    def load(self, index: int):
        import datasets

        return datasets.load_from_disk(str(self._path(index)))
