"""What an artifact folder promises and what is checked when a stage opens one (docs/design.md: artifacts).

- `dataset_files`: exactly the data files the saved dataset lists (`state.json`'s `_data_files`, per split of a
  `dataset_dict.json`) — what `datasets.load_from_disk` reads. Nothing else in the folder is part of the
  artifact: the `cache-*.arrow` files a `datasets` `.map()` leaves there (TRL's DPOTrainer does this on a
  prepared folder), a folder someone nested inside, the manifest and the work folder.
- `content_hash`: sha256 over those files (their paths relative to the folder, then their bytes), in path
  order; the same value as hashing every `*.arrow` of a clean artifact, so older manifests still verify.
- `check_manifest`: the keys the stages read exist and have their types (a hand-edited manifest is one line,
  never a KeyError or "says 20 rows, the data has 20").
- `check_artifact`: row counts, K completions per prompt, the columns the stage of the manifest has, every
  floating-point value finite (naming column, row and prompt_id), and the content hash when asked.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..core.errors import InfalignError

__all__ = ["dataset_files", "content_hash", "data_bytes", "check_manifest", "check_artifact", "find_non_finite",
           "check_finite_rows"]

# Written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` (datasets.config names them the same).
STATE = "state.json"
INFO = "dataset_info.json"
DICT = "dataset_dict.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# The columns every artifact of a stage has, and the one a stage adds (its presence means a later stage).
STAGE_COLUMNS = {"samples": ("prompt_id", "prompt", "completions"),
                 "scored": ("prompt_id", "prompt", "completions", "rewards")}
ADDED_BY = {"rewards": "scored"}


def _damaged(path, what: str) -> InfalignError:
    return InfalignError(f"artifact {str(path)!r} is damaged: {what}; rebuild it with the stage that made it")


def _read_json(path: Path, root) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(root, f"{path.name} cannot be read ({type(exc).__name__})") from None


def _inside(root: Path, name: Any, what: str, artifact) -> Path:
    """`root / name` for a name a listing gives; a name that leaves the folder is damage, never followed."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise _damaged(artifact, f"{what} lists {name!r}, which is not a file name inside the folder")
    return root / name


def _split_files(folder: Path, artifact) -> list[Path]:
    state = _read_json(folder / STATE, artifact)
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list):
        raise _damaged(artifact, f"{folder / STATE} lists no _data_files")
    return [_inside(folder, e.get("filename") if isinstance(e, dict) else None, str(folder / STATE), artifact)
            for e in entries]


def dataset_files(root: str | Path) -> list[Path]:
    """The data files of the dataset saved in `root`, in the order `content_hash` reads them.

    Decided the way `datasets.load_from_disk` decides: a `Dataset` when state.json and dataset_info.json are
    at the top, else a `DatasetDict` by its dataset_dict.json. A folder that is neither is damaged.
    """
    root = Path(root)
    if (root / STATE).is_file() and (root / INFO).is_file():
        files = _split_files(root, root)
    elif (root / DICT).is_file():
        splits = _read_json(root / DICT, root)
        splits = splits.get("splits") if isinstance(splits, dict) else None
        if not isinstance(splits, list):
            raise _damaged(root, f"{DICT} lists no splits")
        files = [f for s in splits for f in _split_files(_inside(root, s, DICT, root), root)]
    else:
        raise _damaged(root, f"it holds no saved dataset ({STATE} or {DICT})")
    return sorted(files, key=lambda f: f.relative_to(root).parts)


def content_hash(path: str | Path) -> str:
    """sha256 over the dataset's data files (names relative to `path`, then bytes); see the module docstring."""
    root = Path(path)
    h = hashlib.sha256()
    for f in dataset_files(root):
        h.update(str(f.relative_to(root)).encode())
        try:
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            raise _damaged(root, f"its data file {str(f.relative_to(root))!r} cannot be read "
                                 f"({exc.strerror or type(exc).__name__})") from None
    return h.hexdigest()


def data_bytes(path: str | Path) -> int:
    """Bytes of the dataset's data files (what the hash would read); missing files count 0."""
    return sum(f.stat().st_size for f in dataset_files(path) if f.is_file())


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_manifest(manifest: dict[str, Any], path) -> dict[str, Any]:
    """The manifest keys every reader relies on, with their types; one line naming the first that is wrong."""
    def bad(key: str, want: str):
        got = "is missing" if key not in manifest else f"must be {want}, got {_short(manifest[key])}"
        return InfalignError(f"artifact {str(path)!r} has a damaged manifest: {key!r} {got}; rebuild it with "
                             "the stage that made it")

    stage = manifest.get("stage")
    if not isinstance(stage, str) or not stage:
        raise bad("stage", "a stage name")
    if not isinstance(manifest.get("content_hash"), str) or not _HEX64.fullmatch(manifest["content_hash"]):
        raise bad("content_hash", "64 hex digits")
    rows = manifest.get("num_rows")
    if not (_is_count(rows) or (isinstance(rows, dict) and rows and all(_is_count(v) for v in rows.values()))):
        raise bad("num_rows", "a row count (an integer >= 0, or one per split)")
    if stage in STAGE_COLUMNS:
        k = manifest.get("num_samples")
        if not _is_count(k) or k < 1:
            raise bad("num_samples", "an integer >= 1 (K)")
    if manifest.get("shard") is not None:
        shard = manifest["shard"]
        if not (isinstance(shard, list) and len(shard) == 2 and all(_is_count(v) for v in shard)
                and shard[0] < shard[1]):
            raise bad("shard", "[I, N] with 0 <= I < N, or null")
    return manifest


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_list(tp) -> bool:
    import pyarrow as pa

    return pa.types.is_list(tp) or pa.types.is_large_list(tp) or pa.types.is_fixed_size_list(tp)


def _holds_floats(tp) -> bool:
    import pyarrow as pa

    while _is_list(tp):
        tp = tp.value_type
    return pa.types.is_floating(tp)


def _first_non_finite(array) -> tuple[int, float] | None:
    """(row, value) of the first non-finite float in one arrow array of floats or (nested) lists of them."""
    import numpy as np
    import pyarrow.compute as pc

    levels, values = [], array
    while _is_list(values.type):
        levels.append(values)
        values = pc.list_flatten(values)
    finite = pc.is_finite(values).fill_null(True)  # a null is no number: left to the stage that reads it
    if pc.all(finite).as_py() is not False:
        return None
    index = int(np.flatnonzero(~finite.to_numpy(zero_copy_only=False))[0])
    value = float(values[index].as_py())
    for level in reversed(levels):  # back up through each list level to the row that holds the value
        index = int(pc.list_parent_indices(level)[index].as_py())
    return index, value


def find_non_finite(table) -> tuple[str, int, float] | None:
    """(column, row, value) of the first non-finite floating-point value in a pyarrow table (nulls pass).

    Reads only the float columns (and lists of floats), chunk by chunk: text columns are never touched."""
    for name in table.column_names:
        column = table.column(name)
        if not _holds_floats(column.type):
            continue
        offset = 0
        for chunk in column.chunks:
            found = _first_non_finite(chunk)
            if found is not None:
                return name, offset + found[0], found[1]
            offset += len(chunk)
    return None


def check_finite_rows(dataset, what: str, fix: str, split: str | None = None) -> None:
    """Every floating-point value of `dataset` (a Dataset) is finite; otherwise one line naming `what` holds it,
    the column, the row and its prompt_id, then `fix`: a NaN reward, log-prob or target trains a NaN model
    while every step looks fine."""
    if getattr(dataset, "_indices", None) is not None:  # a selection: rows numbered as the user sees them
        dataset = dataset.flatten_indices()
    bad = find_non_finite(dataset.data.table)
    if bad is None:
        return
    column, row, value = bad
    pid = dataset[row]["prompt_id"] if "prompt_id" in dataset.column_names else None
    where = f"row {row}" + (f" of split {split!r}" if split else "") + (f" (prompt_id {pid})" if pid else "")
    raise InfalignError(f"{what} holds a non-finite value in column {column!r}: {value!r} at {where}; {fix}")


def _check_shape(dataset, manifest: dict[str, Any], path) -> None:
    """The data is the kind of dataset the manifest's stage writes (a relabelled manifest is caught here)."""
    stage = manifest["stage"]
    is_dict = hasattr(dataset, "keys")
    if stage == "prepared" and not is_dict:
        raise _damaged(path, "its manifest says 'prepared' but the data is one table, not train/test splits")
    if stage not in STAGE_COLUMNS:
        return
    if is_dict:
        raise _damaged(path, f"its manifest says {stage!r} but the data has splits ({', '.join(dataset)}), "
                             "like a 'prepared' artifact")
    missing = [c for c in STAGE_COLUMNS[stage] if c not in dataset.column_names]
    if missing:
        raise _damaged(path, f"its manifest says {stage!r} but the data lacks column(s) {', '.join(missing)}")
    for column, later in ADDED_BY.items():
        if column in dataset.column_names and column not in STAGE_COLUMNS[stage]:
            raise _damaged(path, f"its manifest says {stage!r} but the data has a {column!r} column, which only "
                                 f"a {later!r} artifact has")


def check_artifact(dataset, manifest: dict[str, Any], path: Path, hash_it: bool) -> None:
    """Refuse an artifact whose data is not what its manifest describes, or holds a non-finite number."""
    def broken(what: str):
        return InfalignError(f"artifact {str(path)!r} fails its integrity check: {what}; it was changed after it "
                             "was written (or damaged): rebuild it with the stage that made it")

    _check_shape(dataset, manifest, path)
    expected = manifest["num_rows"]
    is_dict = hasattr(dataset, "keys")
    actual = {k: len(v) for k, v in dataset.items()} if is_dict else len(dataset)
    if expected != actual:
        raise broken(f"the manifest says {expected} rows, the data has {actual}")
    k = manifest.get("num_samples")
    if not is_dict and len(dataset) and manifest["stage"] in STAGE_COLUMNS:
        import pyarrow.compute as pc

        for column in ("completions", "rewards", "ref_logps", "completion_ids", "finish_reasons"):
            if column in dataset.column_names:
                lengths = pc.list_value_length(dataset.data.column(column))
                low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
                if (low, high) != (k, k):
                    raise broken(f"the manifest says K={k} completions per prompt, column {column!r} holds "
                                 f"{low}..{high}")
    if hash_it and content_hash(path) != manifest["content_hash"]:
        raise broken("its data files do not match the content hash in its manifest")
    for split, part in (dataset.items() if is_dict else [(None, dataset)]):
        check_finite_rows(part, f"artifact {str(path)!r}", "every number a stage reads must be finite (one NaN "
                          "trains a NaN model): rebuild it with the stage that made it, or fix the model or reward "
                          "that produced the value", split)
