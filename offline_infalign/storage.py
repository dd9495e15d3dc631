"""Artifact folders: a `datasets` dataset saved with `save_to_disk` plus `manifest.json`, written atomically.

Layout of an artifact folder `out/`:
    out/manifest.json          written LAST: its presence means the artifact is complete
    out/<dataset files>        what `datasets.load_from_disk(out)` opens
    out/_work/config.json      while a chunked stage runs: the config it was started with
    out/_work/chunks/chunk-00000/  finished chunks (each saved under a temporary name, then renamed)

A restart finds finished chunks by name; a chunk is either fully there or absent, never half-written, because
`os.rename` of a directory within one filesystem is atomic. `_work` is removed once the artifact is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from . import __version__
from .config import config_diff
from .core.errors import InfalignError

__all__ = ["MANIFEST", "read_manifest", "load_artifact", "save_artifact", "content_hash", "ChunkStore",
           "write_json_atomic", "base_manifest"]

MANIFEST = "manifest.json"
WORK = "_work"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def base_manifest(stage: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"stage": stage, "package_version": __version__, "config": config}


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    if not p.is_file():
        hint = " (a run started there did not finish; rerun it to resume)" if (Path(path) / WORK).is_dir() else ""
        raise InfalignError(f"{str(path)!r} is not a finished artifact folder: no {MANIFEST}{hint}")
    return json.loads(p.read_text())


def load_artifact(path: str | Path, stage: str | tuple[str, ...] | None = None):
    """(dataset or DatasetDict, manifest) of a finished artifact; `stage` restricts which stages are accepted."""
    import datasets

    manifest = read_manifest(path)
    allowed = (stage,) if isinstance(stage, str) else stage
    if allowed and manifest.get("stage") not in allowed:
        raise InfalignError(
            f"{str(path)!r} holds a {manifest.get('stage')!r} artifact; expected {' or '.join(map(repr, allowed))}"
        )
    return datasets.load_from_disk(str(path)), manifest


def content_hash(path: str | Path) -> str:
    """sha256 over the dataset's data files (names and bytes), ignoring the manifest and the work folder."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if not f.is_file() or rel.parts[0] in (MANIFEST, WORK) or f.suffix != ".arrow":
            continue
        h.update(str(rel).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


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
    with _quiet_datasets():
        dataset.save_to_disk(str(tmp), num_shards=_num_shards(dataset))
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
    tmp = _save_tmp(dataset, out / WORK / "final")
    for old in out.iterdir():  # files of a previous artifact in the same folder
        if old.name not in (WORK,):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    manifest = dict(manifest)
    manifest["content_hash"] = content_hash(out)
    if hasattr(dataset, "keys"):  # DatasetDict
        manifest["num_rows"] = {k: len(v) for k, v in dataset.items()}
    else:
        manifest["num_rows"] = len(dataset)
    # Manifest first, then the work folder: a crash in between leaves a complete artifact (plus leftovers that
    # nothing reads), and a crash before it leaves _work/config.json and the chunks, so a rerun redoes this step.
    write_json_atomic(out / MANIFEST, manifest)
    shutil.rmtree(out / WORK, ignore_errors=True)
    return manifest


class ChunkStore:
    """Finished chunks of one resumable stage in `out/_work/chunks`, guarded by the config it started with."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
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
            old = read_manifest(self.out).get("config", {})
            self._check(old, config, ignore, "holds a finished artifact")
            return True
        if self.config_path.is_file():
            self._check(json.loads(self.config_path.read_text()), config, ignore, "holds an unfinished run")
        elif self.out.is_dir() and any(p.name != WORK for p in self.out.iterdir()):
            raise InfalignError(f"output folder {str(self.out)!r} exists and is not an artifact of this stage; "
                                "choose a new --out")
        # Recorded with the first chunk, not here: a run that fails before any work (a bad flag, a model that
        # will not load) must not pin its config on the folder and block the corrected command.
        self._config = config
        return False

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
            write_json_atomic(self.config_path, self._config)
        tmp = _save_tmp(dataset, self._path(index))
        os.rename(tmp, self._path(index))

    def load(self, index: int):
        import datasets

        return datasets.load_from_disk(str(self._path(index)))
