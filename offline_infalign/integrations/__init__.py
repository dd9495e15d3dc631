"""Bridges to other systems: TRL's DPOTrainer on the stored ids and reference (`integrations.trl`), and the data
formats `infalign import` / `infalign export` convert (`FORMATS`).

A format is one module here with `LAYOUTS` (its layout names), `READS` (per layout, the columns `read` looks at),
`detect_layout(columns)`, `check_columns(columns, layout)`, `read(rows, layout, first_row)` (rows of that layout →
`Imported` prompts, each bad row one `InfalignError`) and `write(prompts, layout)` (the columns of that layout),
plus one line in `FORMATS` (its module and the label `--help` names it by). Nothing here reads or writes files: `stages/import_.py` and
`stages/export.py` do. `integrations.trl` imports trl, so it is imported only by whoever uses it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..core.errors import InfalignError

__all__ = ["Format", "FORMATS", "FORMAT_NAMES", "get_format", "Imported"]


@dataclass(frozen=True)
class Format:
    module: str  # the format's module, imported on use (the configs import it for its LAYOUTS)
    label: str  # the other system's name as `infalign --help` says it: "import a reference dataset (QRPO's layouts)"


# format name -> its module and label, one line per format
FORMATS: dict[str, Format] = {
    "qrpo": Format("offline_infalign.integrations.qrpo", label="QRPO"),
}
FORMAT_NAMES = tuple(FORMATS)


@dataclass(frozen=True)
class Imported:
    """One prompt of an imported dataset, as the scored artifact stores it: its K completions (text) and their raw
    rewards, the prompt as given (text or chat messages) and its id (the source's, else `data_builders.prompt_id`)."""

    prompt_id: str
    prompt: Any
    completions: list[str]
    rewards: list[float]


def get_format(name: str):
    if name not in FORMATS:
        raise InfalignError(f"format {name!r} is not known; known: {', '.join(FORMAT_NAMES)}")
    return importlib.import_module(FORMATS[name].module)
