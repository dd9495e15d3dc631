"""Anthropic HH-RLHF helpful-base / harmless-base: the dialogue up to the last assistant turn, as messages.

Rows look like `{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": ...}`; both share the prompt.
"""

from __future__ import annotations

import re

from offline_infalign.core.errors import InfalignError

from . import load_rows, register_source

HUB_ID = "Anthropic/hh-rlhf"
_TURN = re.compile(r"\n\n(Human|Assistant): ")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def hh_prompt(dialogue: str) -> list[dict[str, str]]:
    """`"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant: d"` → messages a, b, c (last reply dropped)."""
    parts = _TURN.split(dialogue)  # ['', 'Human', 'a', 'Assistant', 'b', ...]
    turns = [(_ROLE[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    if not turns or turns[-1][0] != "assistant":
        raise InfalignError(f"HH dialogue does not end with an Assistant turn: {dialogue[:80]!r}")
    return [{"role": role, "content": text} for role, text in turns[:-1]]


def _hh(data_dir: str, split: str, data_files):
    for row in load_rows(HUB_ID, split, data_files=data_files, data_dir=data_dir):
        yield hh_prompt(row["chosen"])


@register_source("hh_helpful")
def hh_helpful(split: str = "train", data_files=None):
    return _hh("helpful-base", split, data_files)


@register_source("hh_harmless")
def hh_harmless(split: str = "train", data_files=None):
    return _hh("harmless-base", split, data_files)
