"""What a model load is checked for, before and after it reads weights (modeling.py does the loading).

- What may run code: weights load from safetensors only; a folder with pickle weights only is refused naming the
  opt-in (`check_safetensors`).
- That the weights are the model's: a checkpoint must fill the model its config.json builds — no weight missing
  (transformers would initialize it at random: a config naming another architecture samples from fresh weights),
  none left over, none of another shape (`check_loaded_weights`, on transformers' loading info).
- An adapter's adapter_config.json (`check_adapter_config`), LoRA target module names against the loaded model
  (`check_target_modules`), a --device torch can use here (`check_device`), and --stop-token-ids the model can
  emit (`check_reachable`).
Each refusal is one InfalignError naming the folder and what is wrong.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import InfalignError

__all__ = ["PICKLE_OPT_IN", "ALL_LINEAR", "check_safetensors", "pickle_refusal", "check_loaded_weights",
           "quiet_load_report", "check_device", "check_target_modules", "check_adapter_config", "check_reachable", "vocabulary_size", "one_line"]


PICKLE_OPT_IN = "--allow-pickle-weights (allow_pickle_weights: true)"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def pickle_refusal(path, what: str, found: str) -> InfalignError:
    return InfalignError(
        f"{what} {str(path)!r} has no safetensors weights ({found}): pickle weights can run code when they are "
        f"loaded, so only safetensors load by default; convert the folder to safetensors, or pass {PICKLE_OPT_IN} "
        "if you trust where it came from")


def check_safetensors(path, allow_pickle_weights: bool = False, what: str = "model",
                      names: tuple[str, ...] | None = None) -> None:
    """Refuse a local folder whose weights are pickle files only, unless `allow_pickle_weights`.

    names: the weight files that count as safetensors (default: any *.safetensors or sharded index). A hub id
    is not checked here: `from_pretrained` refuses a hub repo without safetensors itself.
    """
    folder = Path(path)
    if allow_pickle_weights or not folder.is_dir():
        return
    files = [f.name for f in folder.iterdir() if f.is_file()]
    safe = [n for n in files if (n in names if names else n.endswith((".safetensors", ".safetensors.index.json")))]
    pickles = sorted(n for n in files if n.endswith(_PICKLE_SUFFIXES) or ".bin.index" in n)
    if not safe and pickles:
        raise pickle_refusal(folder, what, "only " + ", ".join(pickles))
    # config.json may name its weight file (`transformers_weights`), which transformers then loads even when
    # safetensors are asked for; only a safetensors name is accepted.
    config = folder / "config.json"
    if config.is_file():
        import json

        try:
            named = json.loads(config.read_text(encoding="utf-8")).get("transformers_weights")
        except (ValueError, AttributeError):
            named = None  # an unreadable config is from_pretrained's error to report
        if named and not str(named).endswith((".safetensors", ".safetensors.index.json")):
            raise pickle_refusal(folder, what, f"config.json names the weight file {named!r}")


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _some(keys, limit: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


@contextmanager
def quiet_load_report():
    """Hold back transformers' multi-line loading report (a table of missing / unexpected keys): a load that has
    any is refused by `check_loaded_weights` in one line naming them."""
    # A filter, not a higher level: transformers runs extra checks (and logs them) when this logger's level is set.
    report = logging.getLogger("transformers.modeling_utils")
    only_errors = _OnlyErrors()
    report.addFilter(only_errors)
    try:
        yield
    finally:
        report.removeFilter(only_errors)


class _OnlyErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def check_loaded_weights(info: dict, path, what: str = "model", model=None) -> None:
    """Refuse a load whose checkpoint does not fill the model its config builds (transformers' loading info):
    weights the model needs that the files lack (transformers would initialize them at random: a config.json that
    names another architecture samples from fresh weights), weights the files hold that the model has no place
    for, and weights of another shape than the config says."""
    missing, unexpected = set(info.get("missing_keys") or ()), set(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: str(m[0] if isinstance(m, tuple) else m))
    arch = type(model).__name__ if model is not None else "the model"
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    built = f"{arch}" + (f" (model_type {model_type!r} in its config.json)" if model_type else "")
    if mismatched:
        key, *shapes = mismatched[0] if isinstance(mismatched[0], tuple) else (mismatched[0],)
        shown = f"{key}: {tuple(shapes[0])} in the files, {tuple(shapes[1])} from the config" if len(shapes) == 2 \
            else str(key)
        more = f", and {len(mismatched) - 1} more" if len(mismatched) > 1 else ""
        raise InfalignError(f"{what} {str(path)!r}: {len(mismatched)} weight(s) in its files have another shape than "
                            f"its config.json gives ({shown}{more}); the config.json does not belong to these weights")
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weight(s) {arch} needs are not in its files ({_some(missing)}) and "
                         "would be initialized at random")
        if unexpected:
            parts.append(f"{len(unexpected)} weight(s) in its files have no place in {arch} ({_some(unexpected)})")
        raise InfalignError(f"{what} {str(path)!r} does not load as {built}: {'; '.join(parts)}. Its weights were "
                            "saved from another architecture or task than its config.json builds (an edited "
                            "model_type, a language model given as a reward model), or its weight files are "
                            "incomplete")


def check_device(device: str | None) -> str | None:
    """`device` (None stays None) when torch can use it here; else one InfalignError naming it: a name torch does
    not know (`banana`), a backend this torch was built without or that sees no device (`cuda` on a CPU-only
    build), an index past the devices there are (`cuda:3` with one GPU)."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InfalignError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:1, mps, ...") from None
    if parsed.type == "cpu":
        return device
    backend = getattr(torch, parsed.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        if parsed.type == "cuda" and torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            why = f"this torch ({torch.__version__}) is a CPU-only build"
        else:
            why = f"torch sees no {parsed.type} device here"
        raise InfalignError(f"device {device!r} is not available: {why}; pass --device cpu (or leave --device out "
                            "to use a GPU when there is one)")
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        raise InfalignError(f"device {device!r} does not exist: torch sees {count()} {parsed.type} device(s), "
                            f"{parsed.type}:0 to {parsed.type}:{count() - 1}")
    return device


ALL_LINEAR = "all-linear"


def check_target_modules(model, target_modules, model_path) -> None:
    """Refuse LoRA target module names that name no module of `model` (peft's rule: a module whose path is the
    name or ends with "." + name), listing the model's layers with a weight matrix. peft itself only refuses when
    no name matches, so a typo beside a right name would silently train fewer layers."""
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if names == [ALL_LINEAR]:
        return
    paths = [name for name, _ in model.named_modules() if name]
    unknown = [t for t in names if not any(p == t or p.endswith("." + t) for p in paths)]
    if unknown:
        layers = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if not list(module.children()) and getattr(getattr(module, "weight", None), "ndim", 0) == 2})
        raise InfalignError(f"target_modules {unknown} name no module of model {str(model_path)!r}; its layers with "
                            f"a weight matrix are: {', '.join(layers)} (or pass {ALL_LINEAR!r})")


def check_adapter_config(adapter_dir) -> None:
    """Refuse an adapter_config.json that is not a JSON object, or a LoRA one whose rank, alpha or dropout is not a
    number (peft would fail deep inside with a TypeError), naming the key and value."""
    import json

    path = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InfalignError(f"adapter {str(adapter_dir)!r}: adapter_config.json is not JSON ({one_line(exc)})") \
            from None
    if not isinstance(config, dict):
        raise InfalignError(f"adapter {str(adapter_dir)!r}: adapter_config.json holds a JSON "
                            f"{type(config).__name__}, not an object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        return
    checks = {"r": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
              "lora_alpha": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
              "lora_dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                               "a number in [0, 1)")}
    for key, (ok, expected) in checks.items():
        if key in config and not ok(config[key]):
            raise InfalignError(f"adapter {str(adapter_dir)!r}: adapter_config.json gives {key} = {config[key]!r}; "
                                f"{key} must be {expected}")


def check_reachable(ids, source, tokenizer) -> None:
    """Refuse stop token ids the model cannot emit (>= its vocabulary size, `vocabulary_size`): a completion would
    never stop on them, and the stop set recorded with the samples would claim it does."""
    size = vocabulary_size(source, tokenizer) if ids else None
    unreachable = [i for i in ids if size is not None and i >= size]
    if unreachable:
        name = getattr(tokenizer, "name_or_path", None) or str(source)
        raise InfalignError(f"stop_token_ids {unreachable} cannot be generated: model {name!r} has a vocabulary of "
                            f"{size} token ids (0 to {size - 1}), so a completion would never stop on "
                            f"{'it' if len(unreachable) == 1 else 'them'}")


def vocabulary_size(source, tokenizer=None) -> int | None:
    """How many token ids the model can emit: the rows of its output embedding (a model), else its config's
    vocab_size (a model, or a folder / hub id), else the tokenizer's length; None when nothing says."""
    embeddings = getattr(source, "get_output_embeddings", None)
    if callable(embeddings):
        layer = embeddings()
        weight = getattr(layer, "weight", None)
        if weight is not None and weight.ndim == 2:
            return int(weight.shape[0])
    config = getattr(source, "config", None)
    if config is None and isinstance(source, (str, Path)):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(source))
        except (OSError, ValueError):
            config = None
    if config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        size = getattr(text, "vocab_size", None)
        if isinstance(size, int) and size > 0:
            return size
    return len(tokenizer) if tokenizer is not None else None
