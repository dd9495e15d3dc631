"""The real pretrained models the benchmarks run on, by name: where each comes from, its stop ids, its prompt form.

    gemma    Gemma 3 270M (base; gemma.py): plain-text prompts, extra stop id 106 (<end_of_turn>)
    smollm2  SmolLM2-135M-Instruct (smollm2.py): chat prompts through its ChatML template, stop set {<|im_end|>}

`folder(name)` fetches and converts on first use (cached outside the repository); `prompt(name, text)` is what the
sampler gets for one prompt (a string, or chat messages it renders with the model's chat template).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True)
class RealModel:
    title: str  # for tables and plots
    module: str  # gemma / smollm2: its *_dir(log) converts on first use
    stop_token_ids: tuple[int, ...]  # beyond the model's generation-config and tokenizer eos
    chat: bool  # prompts go through the chat template

    def folder(self, log: Callable[[str], None] = print) -> Path:
        mod = __import__(self.module)
        return getattr(mod, f"{self.module}_dir")(log=log)


MODELS = {
    "gemma": RealModel("Gemma 3 270M", "gemma", (106,), chat=False),
    "smollm2": RealModel("SmolLM2-135M-Instruct", "smollm2", (), chat=True),
}


def get(name: str) -> RealModel:
    if name not in MODELS:
        raise KeyError(f"unknown real model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def review_request(opening: str) -> str:
    """A demo opening ("review of the cozy cafe in town:") as a request to an instruct model. One sentence: SmolLM2
    then ends its turn after a median 28 tokens (97% within 80; "a short review" ran past 80 tokens 84% of the time)."""
    return f"Write a one-sentence customer {opening.rstrip(':').strip()}."


def prompt(name: str, text: str):
    """One prompt in the form the model takes: chat messages (one user turn) for a chat model, else the text."""
    return [{"role": "user", "content": text}] if get(name).chat else text
