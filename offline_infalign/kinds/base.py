"""What a dataset kind is: the base class every kinds/<name>.py subclasses, and the input its rows are built from.

A kind decides, for one shape of prepared rows (docs/design.md, the prepared artifact):
- prepare: which rows and columns a scored artifact's (prompts, K completions) matrices become (`build_rows`),
  the sampled token ids travelling with their completions (`completion_columns`, docs/math.md §9);
- train: which columns a loss needs (`required_columns`, `reference_columns`), which completion-text column has
  which token-id column (`id_columns`), how rows become a batch (`collator`), and how a batch plus the policy's and
  the reference's log-probs become a `core.losses` call and the logged metrics (`loss`, `row_weight`,
  `stored_reference`).
The trainer, tokenization and the prepare stage ask the kind; none of them branches on a kind's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.errors import InfalignError
from ..core.losses import LossSpec
from ..models.logprobs import pad_pairs

__all__ = ["DatasetKind", "ScoredMatrices", "Rows", "Collator", "floats", "ID_TYPES"]

Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ScoredMatrices:
    """A scored artifact as P prompts × K completions, ready for a kind to lay out as rows (docs/math.md §2, §5).

    rewards, calibrated, targets, ref_logps: (P, K) float64; targets = Φ(calibrated).
    completion_ids: per prompt, the K completions' token ids exactly as sampled (docs/math.md §9), or None when
        the scored artifact has no `completion_ids` column (then training re-encodes the text).
    beta: the KL coefficient the rows are computed at.
    options: the kind's own prepare options (`DatasetKind.options`, defaults filled in, checked by the kind).
    """

    ids: list[str]
    prompts: list[Any]
    completions: list[list[str]]
    rewards: np.ndarray
    calibrated: np.ndarray
    targets: np.ndarray
    ref_logps: np.ndarray
    beta: float
    completion_ids: list[list[list[int]]] | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rows:
    """What `DatasetKind.build_rows` returns.

    columns: the kind's columns (besides prompt_id, prompt, prompt_ids), each a list or an array, one entry per row.
    types: their types ("str", "float", "strs", "floats", "ints", "intss"), in column order.
    owner: (R,) the prompt index each row comes from (which puts the row in its prompt's train/test split).
    counts: what the kind left out and why (e.g. tied pairs), for the manifest.
    """

    columns: dict[str, Any]
    types: dict[str, str]
    owner: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


# The id columns' types: one completion's ids, or a group's (one list per completion).
ID_TYPES = {False: "ints", True: "intss"}


class DatasetKind:
    """One dataset kind. Subclass it in its own file and add one line to `kinds/__init__.py`.

    Class attributes:
        name: the manifest's `kind` and the `--kind` choice.
        required_columns: training columns a loss of this kind reads (reference columns apart).
        margin_columns: of those, the ones only a loss with `needs_margin` reads (DPO/IPO only need which
            completion is preferred).
        reference_columns: stored log π_ref columns; without them the reference is computed live.
        id_columns: {completion-text column: its token-id column}. Prepare writes the id column from the sampled
            ids when the scored artifact has them; training uses a stored id column as it is and tokenizes the
            text only for datasets without one (`tokenization.tokenize_dataset`).
        grouped: the text columns hold a list of completions per row (one id list each).
        beta_in_rows: the rows hold values computed at the manifest's β (recomputed when training at another).
        options: the kind's own prepare options and their defaults ({} for none): `prepare` refuses any other,
            and `check_options` checks their values.
    """

    name: str = ""
    required_columns: tuple[str, ...] = ()
    margin_columns: tuple[str, ...] = ()
    reference_columns: tuple[str, ...] = ()
    id_columns: dict[str, str] = {}
    grouped: bool = False
    beta_in_rows: bool = False
    options: dict[str, Any] = {}

    @property
    def text_columns(self) -> tuple[str, ...]:
        return tuple(self.id_columns)

    # ---- prepare ---------------------------------------------------------------------------------------------
    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse option values this kind cannot build rows with (`options`: every one of `self.options`)."""

    def build_rows(self, m: ScoredMatrices) -> Rows:
        """This kind's rows of the scored matrices (see `Rows`)."""
        raise NotImplementedError

    def completion_columns(self, m: ScoredMatrices, owner: np.ndarray, picks: dict[str, np.ndarray | None]
                           ) -> tuple[dict[str, list], dict[str, str]]:
        """The completion columns of rows whose prompts are `owner` (R,): for each text column in `picks`, the
        completion of index picks[col][r] of prompt owner[r] (None: all K, for a grouped kind), and, when the
        scored input has token ids, the same completions' ids in the column `id_columns[col]`. Text and ids
        are picked together, so a row's ids are always those its text was decoded from (docs/math.md §9)."""
        columns: dict[str, list] = {}
        types: dict[str, str] = {}
        for col, idx in picks.items():
            sources = [(m.completions, col, "strs" if idx is None else "str")]
            if m.completion_ids is not None:
                sources.append((m.completion_ids, self.id_columns[col], ID_TYPES[idx is None]))
            for table, name, kind in sources:
                columns[name] = ([list(table[o]) for o in owner] if idx is None
                                 else [table[o][i] for o, i in zip(owner, idx)])
                types[name] = kind
        return columns, types

    # ---- train -----------------------------------------------------------------------------------------------
    def training_columns(self, loss: LossSpec) -> tuple[str, ...]:
        """The columns `loss` needs in a dataset of this kind (reference columns apart)."""
        if loss.needs_margin:
            return self.required_columns
        return tuple(c for c in self.required_columns if c not in self.margin_columns)

    def check_columns(self, columns, loss: LossSpec) -> None:
        missing = [c for c in self.training_columns(loss) if c not in columns]
        if missing:
            raise InfalignError(
                f"loss {loss.name!r} needs column(s) {', '.join(map(repr, missing))} of a {self.name!r} dataset; "
                f"the dataset has {', '.join(sorted(columns))}"
            )

    def check_rows(self, dataset) -> None:
        """Refuse tokenized rows this kind cannot train on (InfalignError naming the row)."""

    def at_beta(self, dataset, beta: float):
        """The rows for training at `beta` when they were prepared at another β (only if `beta_in_rows`)."""
        return dataset

    def collator(self, pad_token_id: int) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def stored_reference(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The stored log π_ref of the batch's sequences, flat and in the collator's sequence order."""
        raise NotImplementedError

    def loss(self, fn: Callable, logps: torch.Tensor, ref: torch.Tensor | None, batch: dict[str, torch.Tensor],
             beta: float) -> tuple[torch.Tensor, Metrics]:
        """Per-row losses (B,) and metrics from the policy log-probs `logps` and the reference's `ref` (both
        flat, one per sequence; `ref` is None when the trainer runs without a reference)."""
        raise NotImplementedError

    def row_weight(self, batch: dict[str, torch.Tensor], losses: torch.Tensor) -> torch.Tensor:
        """Weights (B,) the trainer multiplies the per-row losses by before averaging."""
        return batch["weight"].to(losses.dtype)

    def __repr__(self) -> str:
        return f"<dataset kind {self.name!r}>"


# ---- collator helpers ---------------------------------------------------------------------------------------


def floats(rows: list[dict[str, Any]], col: str, default: float | None = None) -> torch.Tensor | None:
    """Column `col` of the rows as a float32 tensor (B,); `default` everywhere (or None) when it is absent."""
    if col not in rows[0]:
        return None if default is None else torch.full((len(rows),), float(default))
    return torch.tensor([float(r[col]) for r in rows], dtype=torch.float32)


class Collator:
    """Rows with `prompt_ids` and completion ids → right-padded sequences (`logprobs.pad_pairs`) + row tensors.

    A kind's collator says which sequences its rows are (`sequences`, in the order its `loss` and
    `stored_reference` read them) and which row tensors the loss needs (`row_tensors`); the trainer's group
    forward packs the same sequences by prompt (`groups.GroupCollator`)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def sequences(self, rows: list[dict[str, Any]]) -> tuple[list, list]:
        """(prompt ids, completion ids) of the batch's sequences, one entry per sequence, in the kind's order."""
        raise NotImplementedError

    def row_tensors(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The loss's per-row tensors (targets, weights, stored reference log-probs, ...)."""
        return {}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._pad(*self.sequences(rows))
        batch.update(self.row_tensors(rows))
        return batch

    def _pad(self, prompts, completions):
        return pad_pairs(prompts, completions, self.pad_token_id)

