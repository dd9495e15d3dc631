"""Configs of `import` (another system's reference dataset → a scored artifact) and `export` (a scored artifact →
another system's layout). The formats are `integrations.FORMATS` (docs/design.md: import/, export/)."""

from __future__ import annotations

import dataclasses

from ..core.errors import InfalignError
from ..integrations import FORMAT_NAMES, FORMATS, get_format
from .base import (
    ALLOW_PICKLE_HELP,
    DTYPES,
    DUPLICATE_POLICIES,
    VERIFY_HELP,
    field,
    one_of,
    positive_int,
    spell,
)

__all__ = ["ImportConfig", "ExportConfig", "LAYOUT_CHOICES", "LAYOUTS_HELP", "FORMAT_LABELS", "TOO_LONG_POLICIES"]

LAYOUT_CHOICES = ("auto", *dict.fromkeys(layout for name in FORMAT_NAMES for layout in get_format(name).LAYOUTS))
# "qrpo: original or verl": each registered format's layouts, for the --layout help.
LAYOUTS_HELP = "; ".join(f"{name}: {spell(get_format(name).LAYOUTS)}" for name in FORMAT_NAMES)
# "QRPO's": each registered format's label, for the one-line summaries of `import` and `export` in `infalign --help`.
FORMAT_LABELS = spell(f"{FORMATS[name].label}'s" for name in FORMAT_NAMES)
TOO_LONG_POLICIES = ("fail", "skip")


@dataclasses.dataclass
class ImportConfig:
    """`infalign import`: another system's K reference completions per prompt with raw rewards → a scored artifact
    (prompts as given, completions encoded with --model's tokenizer, ref_logps teacher-forced by --model)."""

    input: str = field(help="the dataset: a local .jsonl/.json/.parquet file, a `save_to_disk` folder, or a hub "
                       "dataset id")
    model: str = field(help="the reference model the completions were sampled from (local folder or hub id): its "
                       "tokenizer encodes the texts, and it computes ref_logps on those ids")
    out: str = field(help="output artifact folder (a scored artifact: `infalign prepare --input` it)")
    format: str = field("qrpo", help=f"the dataset's format: {spell(FORMAT_NAMES)}", choices=FORMAT_NAMES)
    layout: str = field("auto", help=f"the format's layout ({LAYOUTS_HELP}); auto: from the columns",
                        choices=LAYOUT_CHOICES)
    split: str = field("train", help="split to read from a DatasetDict folder or a hub dataset")
    limit: int | None = field(None, help="import at most this many prompts (the first ones)")
    max_new_tokens: int | None = field(None, help="the length cap the completions were sampled with: a completion "
                                       "whose encoded text has at least this many tokens counts as cut (finish "
                                       "'length', no stop token); unset: every completion ends with the stop token")
    stop_token_id: int | None = field(None, help="the token that ends a completion that was not cut (default: the "
                                      "tokenizer's eos); added to the recorded stop set")
    reward_model: str | None = field(None, help="what scored the completions, as their producer says (recorded; "
                                     "eval takes it as the default judge)")
    temperature: float = field(1.0, help="the temperature the completions were sampled at, as their producer says "
                               "(recorded: prepare refuses samples not drawn at 1, docs/math.md §9)")
    top_p: float = field(1.0, help="their nucleus sampling mass, as their producer says (recorded)")
    top_k: int = field(0, help="their top-k, as their producer says (0 = off; recorded)")
    on_duplicate_prompt: str = field("fail", help="a prompt_id seen twice: fail, or skip the repeat",
                                     choices=DUPLICATE_POLICIES)
    on_too_long: str = field("fail", help="a prompt whose prompt plus longest completion exceeds the model's "
                             "context: fail, or skip it (counted)", choices=TOO_LONG_POLICIES)
    batch_size: int = field(16, help="(prompt, completion) pairs per reference forward pass")
    chunk_size: int = field(256, help="prompts per resumable chunk written to disk")
    device: str | None = field(None, help="torch device (default: cuda if available, else cpu)")
    dtype: str = field("auto", help="model dtype (ref_logps are computed and recorded in it)", choices=DTYPES)
    trust_remote_code: bool = field(False, help="allow custom model code from the hub (off by default)")
    allow_pickle_weights: bool = field(False, help=ALLOW_PICKLE_HELP)

    def __post_init__(self):
        owner = "import"
        for name in ("input", "model", "out"):
            if not getattr(self, name):
                raise InfalignError(f"{owner}: {name} must be given")
        one_of(owner, "format", self.format, FORMAT_NAMES)
        one_of(owner, "layout", self.layout, ("auto", *get_format(self.format).LAYOUTS))
        one_of(owner, "on_duplicate_prompt", self.on_duplicate_prompt, DUPLICATE_POLICIES)
        one_of(owner, "on_too_long", self.on_too_long, TOO_LONG_POLICIES)
        one_of(owner, "dtype", self.dtype, DTYPES)
        for name in ("limit", "max_new_tokens"):
            positive_int(owner, name, getattr(self, name), optional=True)
        positive_int(owner, "stop_token_id", self.stop_token_id, 0, optional=True)
        positive_int(owner, "batch_size", self.batch_size)
        positive_int(owner, "chunk_size", self.chunk_size)
        positive_int(owner, "top_k", self.top_k, 0)
        if not float(self.temperature) > 0:
            raise InfalignError(f"{owner}: temperature must be > 0, got {self.temperature!r}")
        if not 0 < float(self.top_p) <= 1:
            raise InfalignError(f"{owner}: top_p must be in (0, 1], got {self.top_p!r}")


@dataclasses.dataclass
class ExportConfig:
    """`infalign export`: a scored artifact → another system's layout, raw rewards (the ids and ref_logps stay)."""

    input: str = field(help="scored artifact folder (from `infalign score`, `merge` or `import`)")
    out: str = field(help="output folder: a `datasets` DatasetDict (datasets.load_from_disk(OUT)[split]) plus "
                     "manifest.json")
    format: str = field("qrpo", help=f"the format to write: {spell(FORMAT_NAMES)}", choices=FORMAT_NAMES)
    layout: str = field("original", help=f"the format's layout ({LAYOUTS_HELP})",
                        choices=LAYOUT_CHOICES[1:])
    split: str = field("train", help="the split name the rows are written under")
    verify: bool | None = field(None, help=VERIFY_HELP)

    def __post_init__(self):
        owner = "export"
        for name in ("input", "out", "split"):
            if not getattr(self, name):
                raise InfalignError(f"{owner}: {name} must be given")
        one_of(owner, "format", self.format, FORMAT_NAMES)
        one_of(owner, "layout", self.layout, get_format(self.format).LAYOUTS)
