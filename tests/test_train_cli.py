"""`infalign train`: the CLI contract, YAML + overrides, one-line errors, and a 2-process accelerate run."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_fixtures import make_prepared

from offline_infalign import cli


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    pairs, model = make_prepared(root, "pairs", beta=0.5)
    listwise, _ = make_prepared(root, "listwise", model, beta=0.5)
    return {"pairs": pairs, "listwise": listwise, "model": model}


def test_contract_flags(data, tmp_path):
    out = tmp_path / "adapter"
    rc = cli.main(["train", "--dataset", str(data["pairs"]), "--model", str(data["model"]), "--loss", "tilted_sigmoid",
                   "--beta", "0.25", "--out", str(out), "--max-steps", "2", "--learning-rate", "1e-3",
                   "--lora-r", "4"])
    assert rc == 0
    record = json.loads((out / "infalign_train.json").read_text())
    assert record["beta"] == 0.25 and record["config"]["lora_r"] == 4 and record["global_step"] == 2
    assert record["config"]["learning_rate"] == 1e-3
    assert (out / "adapter_model.safetensors").is_file()


def test_yaml_config_with_overrides(data, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"dataset: {data['listwise']}\nmodel: {data['model']}\nloss: listwise\nout: {tmp_path / 'o'}\n"
                   "max_steps: 1\nlora_r: 2\ntarget_modules: [q_proj, v_proj]\nsave_steps: null\n")
    assert cli.main(["train", str(cfg), "--max-steps", "2"]) == 0
    record = json.loads((tmp_path / "o" / "infalign_train.json").read_text())
    assert record["global_step"] == 2  # the flag wins over the file
    assert record["beta"] == 0.5  # from the dataset manifest
    assert record["config"]["target_modules"] == ["q_proj", "v_proj"]
    adapter = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


def test_bad_input_is_one_line_exit_2(data, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"dataset: {data['pairs']}\nmodel: {data['model']}\nloss: dpo\nout: {tmp_path}\nbetaa: 0.1\n")
    assert cli.main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "betaa" in err and "did you mean 'beta'" in err and len(err.splitlines()) == 1
    rc = cli.main(["train", "--dataset", str(data["pairs"]), "--model", str(data["model"]), "--loss", "dpo",
                   "--beta", "-1", "--out", str(tmp_path)])
    assert rc == 2
    assert capsys.readouterr().err.strip().endswith("train: beta must be a finite number > 0, got -1.0")
    # `--config FILE` is read like the positional file (the unknown key is found), and two files are refused.
    assert cli.main(["train", "--config", str(cfg)]) == 2
    assert "betaa" in capsys.readouterr().err
    assert cli.main(["train", str(cfg), "--config", str(tmp_path / "other.yaml")]) == 2
    assert "two config files given" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [-1.0, "0.5", None])
def test_a_bad_beta_in_the_manifest_is_named(data, tmp_path, capsys, bad):
    # Without --beta the run takes the manifest's: a value read from disk is checked where it enters.
    copy = tmp_path / "pairs"
    shutil.copytree(data["pairs"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "beta": bad}))
    assert cli.main(["train", "--dataset", str(copy), "--model", str(data["model"]), "--loss", "dpo",
                     "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("beta is not given and the dataset manifest has none; pass --beta" if bad is None else
                        f"train: the manifest of {str(copy)!r}: beta must be a finite number > 0, got {bad!r}")
    assert len(err.splitlines()) == 1 and not (tmp_path / "out" / "infalign_train.json").exists()


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate launcher not installed in this environment")
def test_accelerate_two_process_cpu_run(data, tmp_path):
    """DDP over 2 CPU processes (torchrun + gloo): both ranks train, rank 0 writes, world_size 2 is recorded."""
    out = tmp_path / "ddp"
    exe = str(Path(sys.executable).parent / "accelerate")
    cmd = [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "offline_infalign.cli", "train", "--dataset", str(data["pairs"]),
           "--model", str(data["model"]), "--loss", "tilted_pairwise", "--out", str(out), "--max-steps", "2",
           "--lora-r", "4", "--per-device-train-batch-size", "2", "--save-steps", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "infalign_train.json").read_text())
    assert record["world_size"] == 2 and record["total_train_batch_size"] == 4 and record["global_step"] == 2
    assert "rewards/margins" in record["final_metrics"]  # gathered over both ranks
    assert proc.stdout.count("wrote adapter") == 1  # only rank 0 reports
    # checkpoints are marked complete (after both ranks saved) and rotated by rank 0 alone
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert all((out / "checkpoints" / f"checkpoint-{i}" / ".complete").is_file() for i in (1, 2))
    assert time.time() - t0 < 120
