"""Checks of the models a command names, run before any data is read or any weights load.

A model path that does not exist, or a folder holding something else (a config.json that is not JSON, no
config at all, no weights, no tokenizer), otherwise surfaces minutes later, deep inside transformers, as a
traceback about sentencepiece or the hub. `check_model` says in one line which path and what is wrong with it,
reading only small files (config.json, the folder listing) — or, for a hub id, the config the loader would
fetch first anyway.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..core.errors import InfalignError

__all__ = ["check_model"]

# What a Hugging Face repo id looks like ("gpt2", "Qwen/Qwen2.5-0.5B"); anything else that is not on disk is a
# path that does not exist.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_WEIGHTS = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth", ".ckpt", ".h5",
            ".msgpack", ".gguf")
_TOKENIZER = re.compile(r"^(tokenizer.*|vocab\..*|merges\.txt|.*\.model|spiece\..*)$")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _listing(folder: Path, limit: int = 6) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    if not names:
        return "it is empty"
    return "it holds " + ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_model(spec, what: str = "model", trust_remote_code: bool = False, tokenizer: bool = True) -> None:
    """Refuse, with one InfalignError naming `spec` and what is wrong, a model that cannot load.

    spec: a local folder or a hub id. A local folder needs a config.json holding a JSON object with a model type
    transformers knows, weight files and (with `tokenizer`) tokenizer files; a PEFT adapter folder
    (adapter_config.json) is accepted as transformers loads it onto its base. A name that is not on disk and
    cannot be a hub id is a path that does not exist; a hub id must give its config (the hub when online, the
    local cache offline).
    """
    name = str(spec)
    path = Path(name).expanduser()
    if not path.exists():
        if not _HUB_ID.fullmatch(name) or name.startswith((".", "~")):
            raise InfalignError(f"{what} {name!r} does not exist (no such folder)")
        _check_config(name, what, trust_remote_code,
                      f"{what} {name!r} is not a local folder, and as a hub id it cannot be loaded")
        return
    if not path.is_dir():
        raise InfalignError(f"{what} {name!r} is a file, not a model folder (a folder with config.json and weights)")
    files = {p.name for p in path.iterdir() if p.is_file()}
    if "config.json" not in files:
        if "adapter_config.json" in files:
            return  # a PEFT adapter: transformers loads it onto the base model its adapter_config.json names
        raise InfalignError(f"{what} {name!r} is not a model folder: it has no config.json ({_listing(path)})")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InfalignError(f"{what} {name!r} is not a model folder: its config.json is not JSON ({_one_line(exc)})") \
            from None
    if not isinstance(config, dict):
        raise InfalignError(f"{what} {name!r} is not a model folder: its config.json holds a JSON "
                            f"{type(config).__name__}, not an object")
    if not any(f.endswith(_WEIGHTS) for f in files):
        raise InfalignError(f"{what} {name!r} has a config.json but no weight files (*.safetensors); "
                            f"{_listing(path)}")
    if tokenizer and not any(_TOKENIZER.match(f) for f in files):
        raise InfalignError(f"{what} {name!r} has no tokenizer files (tokenizer.json, tokenizer_config.json, ...); "
                            "save the tokenizer with the model")
    _check_config(name, what, trust_remote_code, f"{what} {name!r} has a config.json that transformers cannot read")


def _check_config(name: str, what: str, trust_remote_code: bool, prefix: str) -> None:
    """transformers' own reading of the config (model type known, custom code allowed): a few KB, no weights."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") \
            else ""
        raise InfalignError(f"{prefix}{offline}: {_one_line(exc)}") from None
