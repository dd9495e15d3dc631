"""Shared test setup: one torch thread (shared 2-core machines), never touch a model hub."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

try:  # torch is a hard dependency, but core tests must not need it to be imported first
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
