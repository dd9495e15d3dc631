"""Training at scale, on CPU: `accelerate launch` with 2 processes (gloo) against one process with the same
global batch (per_device_train_batch_size 4 = 2 processes x 2), on a listwise dataset of 8 prompts (2 steps an
epoch), 4 steps (2 epochs: the data order of the second epoch is compared too), every step logged.

Covered, each to float rounding (measured here: losses within 2e-7, weights within 1.4e-6 of weights up to 0.19;
asserted: 1e-5):
- LoRA under DDP with the group forward: the per-step loss and the final adapter, with --completions-per-forward 2 (the
  two-pass step, whose backward per unit runs under DDP's no_sync but for the last unit) and without.
- Full fine-tuning (--full-finetune) under DDP: the per-step loss and the final weights.
The cases without --completions-per-forward and --full-finetune run in `make scale-check` only (marker scale_check: 20-40 s
each here), the --completions-per-forward one in `make test` too.
- FSDP: accelerate runs `--use_fsdp` on CPU as DDP (its FSDP type is for accelerator devices; measured: the
  processes train with DistributedDataParallel), so `train` with FSDP needs GPUs and is not run here. What is
  run: the group forward of a model sharded with torch's FSDP2 (fully_shard per decoder layer and at the root,
  2 processes, gloo) gives the unsharded model's log-probs and gradients (tests/fsdp2_group_forward.py).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_prepared

from offline_infalign import cli

TOL = 1e-5
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    dataset, model = make_prepared(tmp_path_factory.mktemp("ddp"), "listwise", beta=0.5, num_prompts=8, k=4)
    return {"dataset": dataset, "model": model}


def _free_port() -> int:
    """A port for the launch's rendezvous: the default 29500 may be taken by another run on the machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        filter(None, [str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH")])))


def _train_args(data, out, extra):
    return ["train", "--dataset", str(data["dataset"]), "--model", str(data["model"]), "--loss", "listwise",
            "--out", str(out), "--max-steps", "4", "--logging-steps", "1", "--save-steps", "4", "--no-bf16",
            *extra]


def _losses(out) -> list[float]:
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def _weights(out) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (out / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(str(out / name))


@pytest.mark.parametrize("extra", [
    pytest.param(["--lora-r", "4", "--learning-rate", "1e-2"], marks=pytest.mark.scale_check, id="lora"),
    pytest.param(["--lora-r", "4", "--learning-rate", "1e-2", "--completions-per-forward", "2"], id="lora-chunked"),
    pytest.param(["--full-finetune", "--learning-rate", "1e-3"], marks=pytest.mark.scale_check, id="full"),
])
def test_ddp_on_two_processes_equals_one_process_with_the_same_global_batch(data, tmp_path, extra):
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    assert cli.main(_train_args(data, one, [*extra, "--per-device-train-batch-size", "4"])) == 0
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "offline_infalign.cli",
           *_train_args(data, ddp, [*extra, "--per-device-train-batch-size", "2"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((ddp / "infalign_train.json").read_text())
    assert record["world_size"] == 2 and record["total_train_batch_size"] == 4 and record["global_step"] == 4

    losses_one, losses_ddp = _losses(one), _losses(ddp)
    assert len(losses_one) == 4 and losses_one[-1] < losses_one[0] - 1e-3  # it trained
    assert losses_ddp == pytest.approx(losses_one, abs=TOL)
    w_one, w_ddp, base = _weights(one), _weights(ddp), load_file(str(data["model"] / "model.safetensors"))
    assert sorted(w_one) == sorted(w_ddp)
    moved = max((w_one[k] - base[k]).abs().max().item() for k in w_one if k in base) if "--full-finetune" in extra \
        else max(w_one[k].abs().max().item() for k in w_one if "lora_B" in k)  # LoRA B starts at zero
    assert moved > 100 * TOL  # the comparison below is not between two untrained copies
    assert max((w_one[k] - w_ddp[k]).abs().max().item() for k in w_one) < TOL


def test_group_forward_under_fsdp2_gives_the_unsharded_logps_and_gradients(data, tmp_path):
    out = tmp_path / "fsdp2.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(TESTS / "fsdp2_group_forward.py"), str(data["model"]), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert all(x < -1 for x in result["logps"])  # real log-probs of several tokens
    assert result["logps_diff"] < TOL
    assert result["params_with_grad"] == result["params"] and result["grad_scale"] > 1e-2
    assert result["grad_diff"] < TOL * result["grad_scale"]
