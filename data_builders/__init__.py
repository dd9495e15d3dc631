"""Prompt sources, registered by name; each yields canonical `{prompt_id, prompt}` rows.

A source is one small function `fn(split, data_files) -> iterable of prompts`, where a prompt is a string, a
list of `{role, content}` chat messages, or a dict with a `prompt` key. Register it with one decorator:

    @register_source("my_source")
    def my_source(split="train", data_files=None):
        yield "Write a haiku about cats."

and list its module in `_MODULES` below so `get_prompt_source` finds it. `data_files` lets a hub-backed source
read local files shaped like the real dataset (tests, offline mirrors). The registry, not the source, adds
`prompt_id`, applies `limit`, and rejects empty or duplicate prompts, so every source behaves the same.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from offline_infalign.core.checks import decode_utf8
from offline_infalign.core.errors import InfalignError

__all__ = ["register_source", "get_prompt_source", "source_names", "prompt_id", "normalize_prompt", "load_rows",
           "check_json_file"]

# Modules that register sources when imported (demo.py is owned by the demo part of the package).
_MODULES = ["hh", "tldr", "ultrafeedback", "demo"]
_SOURCES: dict[str, Callable[..., Iterable[Any]]] = {}
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def register_source(name: str):
    """Decorator registering `fn(split="train", data_files=None) -> iterable of prompts` under `name`."""

    def deco(fn):
        _SOURCES[name] = fn
        return fn

    return deco


def _load_modules() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":  # a real missing dependency inside the module
                raise


def source_names() -> list[str]:
    _load_modules()
    return sorted(_SOURCES)


def prompt_id(prompt: Any) -> str:
    """Stable id: the first 16 hex digits of sha256 over the prompt's canonical JSON (same prompt, same id)."""
    canon = json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def normalize_prompt(item: Any, where: str) -> str | list[dict[str, str]]:
    """A prompt as stored: a non-empty string, or a non-empty list of {role, content} string messages."""
    prompt = item["prompt"] if isinstance(item, dict) and "prompt" in item else item
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InfalignError(f"empty prompt at {where}; every prompt needs some text")
        return prompt
    if isinstance(prompt, (list, tuple)):
        msgs = []
        for m in prompt:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise InfalignError(f"prompt at {where} is a list but {m!r} is not a {{role, content}} message")
            msgs.append({"role": m["role"], "content": m["content"]})
        if not msgs or not any(m["content"].strip() for m in msgs):
            raise InfalignError(f"empty prompt at {where}: a message list needs at least one non-empty message")
        return msgs
    raise InfalignError(
        f"prompt at {where} must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}"
    )


def check_json_file(path: str | Path, what: str = "prompt file", example: str = '{"prompt": "..."}') -> None:
    """Refuse a local .json/.jsonl file that is not UTF-8 text (naming the byte offset and line) or, line by
    line, not JSON (naming the line): `datasets` reports either as a traceback, or only when the row is read.
    `what` names the file in the messages, `example` shows a good line."""
    path = Path(path)
    text = decode_utf8(path.read_bytes(), f"{what} {str(path)!r}", "save the file as UTF-8")
    if path.suffix == ".json":
        try:  # one JSON document (a list of rows, or rows under a field) is what `datasets` reads first
            document = json.loads(text)
            if document in ([], {}):
                raise InfalignError(f"{what} {str(path)!r} holds no {_rows(what)}: it is an empty JSON "
                                    f"{type(document).__name__}")
            return
        except json.JSONDecodeError:
            pass  # else JSON Lines, checked below
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise InfalignError(f"{what} {str(path)!r} holds no {_rows(what)}: its {len(lines)} line(s) are all blank; "
                            f"each line must be one JSON object, like {example}")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InfalignError(f"{what} {str(path)!r} line {number} is not valid JSON ({exc.msg} at column "
                                f"{exc.colno}): each line must be one JSON object, like {example}") from None
        if not isinstance(row, dict):
            raise InfalignError(f"{what} {str(path)!r} line {number} is a JSON {type(row).__name__}, not an "
                                f"object: each line must be one JSON object, like {example}")


def _rows(what: str) -> str:
    """What a file of `what` holds: prompts (a prompt file) or rows (another input file)."""
    return "prompts" if what == "prompt file" else "rows"


def _check_parquet_file(path: Path, what: str = "prompt file") -> None:
    """Refuse a file that is not Parquet before `datasets` logs its own error (with a traceback) about it."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as exc:  # ArrowInvalid, OSError: whatever pyarrow says, the file is not readable Parquet
        raise InfalignError(f"{what} {str(path)!r} is not a readable Parquet file ({_one_line(exc)})") from None
    if rows == 0:
        raise InfalignError(f"{what} {str(path)!r} holds no {_rows(what)}: the Parquet table has 0 rows")


def load_rows(path_or_id: str, split: str = "train", data_files=None, what: str = "prompts", **kwargs):
    """Rows of a hub dataset or local file via `datasets.load_dataset`; local `data_files` win when given.
    `what` names the rows in messages ("prompts": a prompt file)."""
    file = "prompt file" if what == "prompts" else "input file"
    example = '{"prompt": "..."}' if what == "prompts" else '{"column": value, ...}'
    import datasets  # heavy: imported only when a source is actually read

    try:
        if data_files is not None:
            local = Path(str(data_files))
            if local.is_file() and local.stat().st_size == 0:
                raise InfalignError(f"{file} {str(data_files)!r} is empty")
            if local.is_file() and local.suffix in (".json", ".jsonl"):
                check_json_file(local, file, example)
            elif local.is_file() and local.suffix == ".parquet":
                _check_parquet_file(local, file)
            builder = "parquet" if local.suffix == ".parquet" else "json"
            return datasets.load_dataset(builder, data_files=str(data_files), split="train")
        return datasets.load_dataset(path_or_id, split=split, **kwargs)
    except InfalignError:
        raise
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:  # missing, offline, malformed
        raise InfalignError(f"cannot load {what} from {data_files or path_or_id!r} (split {split!r}): "
                            f"{_one_line(exc)}") from None
    except datasets.exceptions.DatasetGenerationError as exc:  # rows of different shapes, a damaged parquet file
        raise InfalignError(f"cannot read {what} from {data_files or path_or_id!r}: "
                            f"{_one_line(exc.__cause__ or exc)}") from None


def _one_line(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters (Arrow and the hub write several)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:299] + "…"


@register_source("local")
def _local(split: str = "train", data_files=None):
    """A local .jsonl / .json / .parquet file whose rows have a `prompt` field (text or chat messages)."""
    if data_files is None:
        raise InfalignError("prompt source 'local' needs a file path")
    rows = load_rows(str(data_files), data_files=data_files)
    if "prompt" not in rows.column_names:
        raise InfalignError(f"prompt file {str(data_files)!r} has no 'prompt' field; its fields: {rows.column_names}")
    return (row["prompt"] for row in rows)


def _call_source(fn, split: str, data_files) -> Iterable[Any]:
    params = inspect.signature(fn).parameters
    kwargs = {"split": split}
    if "data_files" in params:
        kwargs["data_files"] = data_files
    elif data_files is not None:
        raise InfalignError(f"prompt source {fn.__name__!r} does not read local data files ({data_files!r})")
    return fn(**kwargs)


def get_prompt_source(name_or_path: str, split: str = "train", limit: int | None = None, data_files=None,
                      on_duplicate: str = "fail") -> Iterator[dict[str, Any]]:
    """Canonical `{prompt_id, prompt}` rows of a registered source or a local .jsonl/.json/.parquet file.

    Args:
        name_or_path: a registered name (see `source_names()`) or a path to a local file.
        split: dataset split for hub sources.
        limit: keep at most this many prompts (after duplicates are handled).
        data_files: local file in the source's raw format, read instead of the hub.
        on_duplicate: "fail" (error naming the prompt_id) or "skip" (keep the first occurrence).
    """
    if on_duplicate not in ("fail", "skip"):
        raise InfalignError(f"on_duplicate must be 'fail' or 'skip', got {on_duplicate!r}")
    if limit is not None and limit < 1:
        raise InfalignError(f"limit must be >= 1, got {limit}")
    name = str(name_or_path)
    if name.endswith(_LOCAL_SUFFIXES):
        if not Path(name).is_file():
            raise InfalignError(f"prompt file {name!r} does not exist")
        fn, data_files = _SOURCES["local"], name
    else:
        _load_modules()
        if name not in _SOURCES:
            raise InfalignError(
                f"unknown prompt source {name!r}; registered: {', '.join(sorted(_SOURCES))}, "
                f"or a local file ending in {', '.join(_LOCAL_SUFFIXES)}"
            )
        fn = _SOURCES[name]
    return itertools.islice(_canonical(_call_source(fn, split, data_files), name, on_duplicate), limit)


def _canonical(items: Iterable[Any], source: str, on_duplicate: str) -> Iterator[dict[str, Any]]:
    seen: dict[str, int] = {}
    n = 0
    for i, item in enumerate(items):
        prompt = normalize_prompt(item, f"{source} row {i}")
        pid = prompt_id(prompt)
        if pid in seen:
            if on_duplicate == "skip":
                continue
            raise InfalignError(
                f"duplicate prompt in {source}: rows {seen[pid]} and {i} have the same prompt "
                f"(prompt_id {pid}); remove duplicates or pass --on-duplicate-prompt skip"
            )
        seen[pid] = i
        n += 1
        yield {"prompt_id": pid, "prompt": prompt}
    if n == 0:
        raise InfalignError(f"prompt source {source!r} yielded no prompts")
