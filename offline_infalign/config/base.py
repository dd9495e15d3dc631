"""What every command config shares: the one field style, strict YAML loading, flags, small checks.

Follows TRL's convention: every field carries `metadata={"help": ...}` (written with `field` below) and checks
live in `__post_init__`, naming the bad value and what is allowed. The same field names are YAML keys and
`--kebab-case` flags, so a config file and a command line are interchangeable. Unknown keys are an error,
never ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import numbers
import os
import reprlib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from ..core.checks import decode_utf8
from ..core.errors import InfalignError
from .yaml_file import load_yaml

T = TypeVar("T")

__all__ = [
    "load_config", "add_config_arguments", "overrides_from_args", "config_to_dict", "config_diff",
    "field", "same_as", "positive_int", "one_of", "spell", "parse_shard",
    "DTYPES", "LONG_PROMPT_POLICIES", "BACKENDS", "DUPLICATE_POLICIES", "ALLOW_PICKLE_HELP", "VERIFY_HELP",
]

# Choice lists that several commands offer; each is written here once.
DTYPES = ("auto", "float32", "bfloat16", "float16")
LONG_PROMPT_POLICIES = ("truncate", "skip", "fail")
BACKENDS = ("hf", "vllm")
DUPLICATE_POLICIES = ("fail", "skip")
# The opt-in for pickle weights (modeling.from_pretrained), offered by every command that loads a model.
ALLOW_PICKLE_HELP = "load a model folder that only has pytorch_model.bin (pickle: can run code); off by default"
# The integrity check of an input artifact (storage.load_artifact), offered by every command that opens one.
# 4 GiB is storage.HASH_ALWAYS_BYTES (not imported: storage imports config); benchmarks/README.md, Reliability.
VERIFY_HELP = ("hash the input artifact's data files against the content hash in its manifest: --verify always, "
               "--no-verify never; default: only inputs up to 4 GiB (about 1.3 s per GiB here). The manifest, row "
               "counts, K and that every number is finite are checked on every open")


# ---- the one field style ------------------------------------------------------------------------------------


def field(default: Any = dataclasses.MISSING, help: str = "", choices: Iterable[Any] | None = None):
    """A config field: its default (none = required), its `--help` text and, when the flag takes only some
    values, `choices` (argparse then offers and checks exactly those). A list default is copied per instance."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    if isinstance(default, list):
        return dataclasses.field(default_factory=functools.partial(list, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_KEEP = object()


def same_as(cls, name: str, default: Any = _KEEP):
    """The field `name` of config `cls` again (same help and choices) for a combined config such as `build`:
    the help text is written once, in the stage's own config. `default`, when given, replaces the stage's."""
    original = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=original.default if default is _KEEP else default, metadata=original.metadata)


# ---- small checks (the messages are part of the CLI: tests pin them) -----------------------------------------


def positive_int(owner: str, name: str, value, minimum: int = 1, optional: bool = False) -> None:
    """An integer >= minimum (a bool is not one); with `optional`, None (YAML null) passes too."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InfalignError(f"{owner}: {name} must be an integer >= {minimum}{' or null' if optional else ''}, "
                            f"got {value!r}")


def one_of(owner: str, name: str, value, allowed) -> None:
    """`allowed` may be a registry dict (its names are allowed); a YAML list as `value` is just not allowed."""
    allowed = list(allowed)
    if value not in allowed:
        raise InfalignError(f"{owner}: {name} {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def spell(names: Iterable[str], last: str = "or") -> str:
    """('a', 'b', 'c') → 'a, b or c': a registry's names inside help text and messages."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """'I/N' → (I, N) with 0 <= I < N (shards are numbered from 0, like Slurm array task ids)."""
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in str(shard).split("/"))
    except ValueError:
        raise InfalignError(f"shard must look like 'I/N' (e.g. 0/4), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InfalignError(f"shard {shard!r} needs 0 <= I < N (shards are numbered 0..N-1)")
    return i, n


# ---- YAML file + command-line overrides → config -----------------------------------------------------------


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def renamed_keys(cls) -> dict[str, str]:
    """{old key: new key} of a config whose field was renamed (the class's `RENAMED`): the old key is refused,
    naming the new one, rather than taken as unknown."""
    return dict(getattr(cls, "RENAMED", {}))


def _check_keys(cls, keys, where: str) -> None:
    allowed = _field_names(cls)
    for k, new in renamed_keys(cls).items():
        if k in keys:
            flag = "--" + new.replace("_", "-")
            raise InfalignError(f"config key {k!r} in {where} is now {new!r} ({flag}) for {cls.__name__}: rename it")
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


class _WrongType(Exception):
    """A value that does not fit its field's annotation; `expected` lists what would (["an integer", "null"])."""

    def __init__(self, *expected: str):
        super().__init__(*expected)
        self.expected = list(expected)


_EXPECTED = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
_PLURAL = {int: "integers", float: "finite numbers", str: "strings", bool: "booleans"}


def _coerce(tp, value):
    """`value` checked against the field annotation `tp` (int, float, str, bool, X | None, list[X]) and put in
    its one canonical form, so that a YAML file and the flags give the same config (resumes compare configs):
    - int: an integer, never a bool (YAML `true`) and never a float (`seed: 1.7`, and also `2.0`: strict);
    - float: any number, made a float; a string only when it reads as a number, because PyYAML reads `5e-5`
      (no dot) as a string; nan and ±inf are refused (no float field of a config has a meaning for them);
    - str: a string (a path object or a number becomes its text: `reward_label: 1`), never a list or a bool;
    - bool: true or false only;
    - list[X]: a list of X, or one X (`stop_token_ids: 2`), which becomes a list of one.
    Other annotations are left to the config's own __post_init__ checks.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            return value
        try:
            return _coerce(inner[0], value)
        except _WrongType as exc:
            raise _WrongType(*exc.expected, *(["null"] if type(None) in args else [])) from None
    if origin in (list, tuple):
        item = (typing.get_args(tp) or (Any,))[0]
        try:
            return [_coerce(item, v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        except _WrongType as exc:
            raise _WrongType(*exc.expected, f"a list of {_PLURAL.get(item, 'them')}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, (bool, list, tuple, dict, set)) or value is None:
        pass  # wrong for every scalar type below
    elif tp is int:
        if isinstance(value, numbers.Integral):
            return int(value)
    elif tp is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if isinstance(number, numbers.Real):
            if not math.isfinite(float(number)):
                raise _WrongType(_EXPECTED[float])
            return float(number)
    elif tp is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        if isinstance(value, numbers.Real):
            return str(value)
    else:
        return value
    raise _WrongType(_EXPECTED[tp])


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 6, 6, 60, 60
_SHOW_CHARS = 160


def _show(value) -> str:
    """A value as the user wrote it: YAML spelling for booleans and null, Python's repr otherwise — bounded
    (reprlib: a few items per level, long strings cut), so a huge or deeply shared value prints in a line."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = _SHOW.repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 4] + " ..."


def _checked(cls, values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`values` with each checked against its field's annotation (`_coerce`); a misfit is one InfalignError naming
    the key, the value and the type expected, raised while the config is read, before any model loads."""
    hints = typing.get_type_hints(cls)
    owner = cls.__name__.removesuffix("Config").lower()
    out = {}
    for key, value in values.items():
        try:
            out[key] = _coerce(hints.get(key, Any), value)
        except _WrongType as exc:
            # A flag cannot be null, so "or null" is said only of a file's value.
            expected = [e for e in exc.expected if where or e != "null"]
            raise InfalignError(f"{owner}: {key} must be {spell(expected)}, got {_show(value)}{where}") from None
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build `cls` from a YAML file (optional) updated by `overrides` (keys with value None are skipped).

    Every value is checked against its field's type here (`_coerce`): `temperature: hot`, `seed: 1.7`, a list
    where one value is expected or `--beta inf` are one clear error before anything runs."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InfalignError(f"config file {str(p)!r} " + ("is a folder, not a file" if p.is_dir() else
                                                            "does not exist"))
        text = decode_utf8(p.read_bytes(), f"config file {str(p)!r}")
        # Strict: a key given twice, an alias bomb or a recursive alias is an error; `seed: 017` is 17 as on
        # the command line, not YAML 1.1's octal 15 (yaml_file.py).
        loaded = load_yaml(text, f"config file {str(p)!r}") or {}
        if not isinstance(loaded, dict):
            raise InfalignError(f"config file {str(p)!r} must hold a mapping of keys, got {type(loaded).__name__}")
        _check_keys(cls, loaded, f"config file {str(p)!r}")
        values.update(_checked(cls, loaded, f" in config file {str(p)!r}"))
    if overrides:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        _check_keys(cls, overrides, "command-line overrides")
        values.update(_checked(cls, overrides))
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise InfalignError(f"{cls.__name__}: {exc}") from None


def config_to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_diff(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
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


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip: Iterable[str] = ()) -> None:
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
        # argparse %-formats help strings: a literal '%' (as in "~30% slower") must be doubled.
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": helptext.replace("%", "%%")}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(kind, tuple):
            parser.add_argument(flag, type=kind[1], nargs="+", **kw)
        else:
            parser.add_argument(flag, type=kind, **kw)
    for old in renamed_keys(cls):  # hidden: given, it is refused naming the new flag (`_check_keys`)
        parser.add_argument("--" + old.replace("_", "-"), dest=old, default=None, help=argparse.SUPPRESS)


def overrides_from_args(args: argparse.Namespace, cls) -> dict[str, Any]:
    names = [*_field_names(cls), *renamed_keys(cls)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
