"""A GGUF checkpoint as a plain float32 Hugging Face folder (config, safetensors, tokenizer), written once.

transformers reads GGUF with the `gguf` package and de-quantizes it to float32; a model loaded that way refuses
`save_pretrained` (its config is marked as quantized), so it is rebuilt from that config with the marker removed,
its weights copied in (strictly: every key, same shapes), and the fresh model saved as safetensors. The folder then
loads like any hub checkpoint, without `gguf`. Shared by gemma.py and smollm2.py.

The folder is written under a temporary name and renamed into place; a marker file written last means complete,
so a killed conversion is redone rather than half-used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

MARKER = "infalign_converted.txt"  # written last: its presence means the folder is complete


def cache_root() -> Path:
    """$INFALIGN_CACHE, else ~/.cache/offline_infalign: converted models live here, never in the repository."""
    return Path(os.environ.get("INFALIGN_CACHE") or os.path.expanduser("~/.cache/offline_infalign"))


def is_converted(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def ensure_gguf_reader() -> None:
    """transformers reads GGUF through the `gguf` package: pip-install it on first use."""
    if importlib.util.find_spec("gguf") is None:
        print("installing gguf from PyPI ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "gguf"], check=True)
        importlib.invalidate_caches()


def convert(gguf_file: Path, out: Path, note: str, log: Callable[[str], None] = print,
            check_tokenizer: Callable | None = None) -> Path:
    """De-quantize `gguf_file` into the float32 folder `out` (replacing a half-written one); return `out`.

    note: a line for the marker file (where the weights came from). check_tokenizer(tokenizer, config), when
    given, runs before anything is written and raises if the tokenizer read from the GGUF is not what the model
    expects (special tokens, chat template).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ensure_gguf_reader()
    t0 = time.perf_counter()
    folder, name = str(Path(gguf_file).parent), Path(gguf_file).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now
    if check_tokenizer is not None:
        check_tokenizer(tokenizer, config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(f"{note} in {time.perf_counter() - t0:.0f} s\n")
    if out.exists():  # a half-written folder from a killed run
        shutil.rmtree(out)
    tmp.rename(out)
    log(f"converted {name} into {out} ({time.perf_counter() - t0:.0f} s)")
    return out
