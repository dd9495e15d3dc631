"""Command configs: one dataclass per command, strict YAML loading, command-line overrides.

One module per command family; every module here writes its fields with `base.field` and takes its choice
lists from the registries (procedures, losses, dataset kinds) or from the shared tuples in `base`:
- `base`      load_config, add_config_arguments, overrides_from_args, config_to_dict, config_diff, checks
- `data`      SampleConfig, ScoreConfig, PrepareConfig, BuildConfig (sample + score + prepare), MergeConfig
- `train`     TrainConfig
- `evaluate`  EvalConfig
- `tradeoff`  TradeoffConfig
- `demo`      DemoConfig
- `interop`   ImportConfig, ExportConfig

`from offline_infalign.config import TrainConfig` works for every class; a config's module is imported on first
use, because the loss and dataset-kind registries that `data` and `train` read import torch, which
`infalign --help` and `infalign tradeoff` should not wait for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .base import (
    add_config_arguments,
    config_diff,
    config_to_dict,
    load_config,
    overrides_from_args,
    parse_shard,
)

if TYPE_CHECKING:
    from .data import BuildConfig, MergeConfig, PrepareConfig, SampleConfig, ScoreConfig
    from .demo import DemoConfig
    from .evaluate import EvalConfig
    from .interop import ExportConfig, ImportConfig
    from .tradeoff import TradeoffConfig
    from .train import TrainConfig

_MODULE_OF = {
    "SampleConfig": "data", "ScoreConfig": "data", "PrepareConfig": "data", "BuildConfig": "data",
    "MergeConfig": "data", "TrainConfig": "train", "EvalConfig": "evaluate", "TradeoffConfig": "tradeoff",
    "DemoConfig": "demo", "ImportConfig": "interop", "ExportConfig": "interop",
}

__all__ = [
    "load_config", "add_config_arguments", "overrides_from_args", "config_to_dict", "config_diff", "parse_shard",
    "SampleConfig", "ScoreConfig", "PrepareConfig", "BuildConfig", "MergeConfig",
    "TrainConfig", "EvalConfig", "TradeoffConfig", "DemoConfig", "ImportConfig", "ExportConfig",
]


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
