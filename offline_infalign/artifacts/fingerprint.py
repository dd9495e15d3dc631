"""Fingerprints of what produced the data: the policy model behind `sample`, the reward behind `score`.

A resume, a stored reference and an evaluation are right only when the model or reward is the same one, not
merely one with the same name: `m/policy` names another folder from another directory, a folder can be
overwritten, a reward function's code can be edited between a kill and the rerun. The stages record these
fingerprints in their configs (a change refuses the resume, naming the key) and manifests (`train --reference
auto` compares them).

What a fingerprint covers, and what it costs:
- a local model folder (`fingerprint_model`): sha256 of config.json, generation_config.json, the tokenizer
  files and any custom code (*.py) at the folder's top level, read whole (all small); for each weight file its
  name, size, the sha256 of its safetensors header (the first 8 + header-length bytes: every tensor's name,
  dtype, shape and offsets) and of three fixed 64 KiB slices (start, middle, end) of the file, since a header
  stays the same when only values change. Reads a few hundred KiB per weight file whatever its size
  (milliseconds for a 1 GB model). NOT covered: an edit to values that touches none of the three slices (a
  single changed weight deep inside a file); README and other files that do not change the model.
  Content-based, so the same files copied to another path give the same fingerprint.
- a hub id: "hub:<id>@<commit>", the commit the revision resolves to now (the hub when online, the local
  cache offline, as the loader itself resolves it); "...@<revision>?" when it cannot be resolved.
- a tokenizer (`fingerprint_tokenizer`): "vocab:<size>:<32 hex>", the sha256 of its vocabulary — every token
  string with its id, added and special tokens included — which is what a stored token id means. Recorded with
  the sampled ids (samples, scored and prepared manifests: `tokenizer_fingerprint`); `train` refuses to train
  a model whose tokenizer gives another value on those ids. NOT covered: how text is split into tokens
  (normalizer, pre-tokenizer, merges) — stored ids are used as they are, so only their meaning matters.
- a reward (`fingerprint_reward`): "module:function" → the sha256 of the module's source file plus the name
  (code the module imports from other files is not covered); a registered scorer's name (`models.scorers`,
  e.g. "demo") → the package version and the hashes of its module's source and data file; anything else is a reward model → `fingerprint_model`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import struct
from pathlib import Path

from .. import __version__
from ..core.errors import InfalignError
from ..models.scorers import SCORERS

__all__ = ["fingerprint_model", "fingerprint_reward", "fingerprint_tokenizer", "model_files_summary", "SLICE_BYTES"]

SLICE_BYTES = 64 << 10
# Weight files: sampled (header + slices), never read whole.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
# Small files that decide what the model computes or how text becomes ids: hashed whole.
_WHOLE_NAMES = re.compile(
    r"^(config\.json|generation_config\.json|.*\.safetensors\.index\.json|.*\.bin\.index\.json|tokenizer.*"
    r"|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|.*\.model|chat_template\..*"
    r"|preprocessor_config\.json|.*\.py)$")
_MAX_HEADER = 100 << 20  # safetensors caps its JSON header at 100 MB; a larger length means "not safetensors"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weight_entry(path: Path) -> dict:
    """Name-independent facts of one weight file: size, safetensors header hash, hashes of three slices."""
    size = path.stat().st_size
    entry: dict = {"size": size}
    with path.open("rb") as fh:
        if path.suffix == ".safetensors" and size >= 8:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length <= min(size - 8, _MAX_HEADER):
                fh.seek(0)
                entry["header"] = hashlib.sha256(fh.read(8 + length)).hexdigest()
            else:  # not a safetensors file after all: the slices still describe it
                entry["header"] = "invalid"
        slices = []
        for start in sorted({0, max(size // 2 - SLICE_BYTES // 2, 0), max(size - SLICE_BYTES, 0)}):
            fh.seek(start)
            slices.append(hashlib.sha256(fh.read(SLICE_BYTES)).hexdigest())
        entry["slices"] = slices
    return entry


def model_files_summary(folder: str | Path) -> dict[str, dict]:
    """{file name: what the fingerprint records of it} for a local model folder (top level only)."""
    folder = Path(folder)
    summary: dict[str, dict] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file():  # subfolders (checkpoints, adapters, ...) are not the model
            continue
        if f.name.endswith(_WEIGHT_SUFFIXES):
            summary[f.name] = _weight_entry(f)
        elif _WHOLE_NAMES.match(f.name):
            summary[f.name] = {"sha256": _sha256_file(f)}
    return summary


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit `revision` of `repo_id` resolves to now, as the loader resolves it; None when unknown."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        from huggingface_hub import hf_hub_download

        # Online: asks the hub (one small request; the loader makes the same); offline: the cached snapshot.
        # The snapshot folder holding config.json is named by its commit.
        return Path(hf_hub_download(repo_id, "config.json", revision=revision)).parent.name
    except Exception:  # no network, not cached, not a repo id: the loader will say what is wrong
        return None


def fingerprint_model(path_or_id: str | os.PathLike, revision: str | None = None) -> str:
    """A short string that changes when the model changes (see the module docstring for what it covers).

    A local folder gives "files:<32 hex>" (content-based: the same files anywhere give the same string); a hub
    id gives "hub:<id>@<commit>", or "hub:<id>@<revision or 'default'>?" when the commit is unknown.
    """
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return "files:" + _digest(model_files_summary(path))
    if path.exists():  # a file: not a model folder, but it still has an identity
        return "file:" + _digest({path.name: _weight_entry(path)})
    name = str(path_or_id)
    commit = _hub_commit(name, revision)
    return f"hub:{name}@{commit}" if commit else f"hub:{name}@{revision or 'default'}?"


def fingerprint_tokenizer(tokenizer) -> str:
    """'vocab:<size>:<32 hex>': what each token id means to `tokenizer` (module docstring)."""
    vocab = tokenizer.get_vocab()
    items = sorted(((int(i), str(t)) for t, i in vocab.items()))
    return f"vocab:{len(items)}:" + hashlib.sha256(json.dumps(items, ensure_ascii=False).encode(
        "utf-8", "surrogatepass")).hexdigest()[:32]


def _module_source(module_name: str) -> Path | None:
    """The source file of `module_name`, found without executing it (its parent packages are imported)."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    return Path(origin) if origin and origin not in ("built-in", "frozen") and Path(origin).is_file() else None


def _registered_payload(entry) -> dict[str, str]:
    source = _module_source(entry.function.partition(":")[0])
    if source is None:
        raise InfalignError(f"registered scorer {entry.function!r}: its module is not found")
    payload = {"version": __version__, "code": _sha256_file(source)}
    if entry.data is not None:
        payload["data"] = _sha256_file(source.parent / entry.data)
    return payload


def fingerprint_reward(spec) -> str:
    """A short string that changes when the reward changes: see the module docstring."""
    if callable(spec):  # an in-process callable (the Python API)
        spec = f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"
    spec = str(spec)
    if spec in SCORERS:
        return f"{spec}:" + _digest(_registered_payload(SCORERS[spec]))
    if ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        source = _module_source(module_name)
        if source is None:  # load_scorer reports the missing module
            return f"callable:{spec}?"
        return f"callable:{spec}:" + _digest({"source": _sha256_file(source), "name": attr})
    return fingerprint_model(spec)
