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

from .core.errors import InfalignError

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
