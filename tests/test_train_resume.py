"""`train`'s output folder (checkpoints.py): the same command resumes from the newest complete checkpoint or is a
no-op, another config is refused with the diff, half-written checkpoints are skipped, the folder is locked; the
reference and the training record go by the model's fingerprint (fingerprint.py), not its path string."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_tiny_lm
from train_fixtures import make_prepared

from offline_infalign.artifacts.checkpoints import COMPLETE, RUN_CONFIG, resume_checkpoint
from offline_infalign.artifacts.fingerprint import fingerprint_model
from offline_infalign.artifacts.storage import InjectedFault, output_lock
from offline_infalign.artifacts.training_record import read_training_info, resolve_settings
from offline_infalign.config import EvalConfig, TrainConfig
from offline_infalign.core.errors import InfalignError
from offline_infalign.stages import train as T


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model = save_tiny_lm(root / "model")
    pairs, _ = make_prepared(root, "pairs", model, beta=0.5, model_fingerprint=fingerprint_model(model))
    listwise, _ = make_prepared(root, "listwise", model, beta=0.5, model_fingerprint=fingerprint_model(model))
    return {"pairs": pairs, "listwise": listwise, "model": model, "root": root}


def cfg_for(data, out, loss="tilted_pairwise", **kw):
    base = dict(dataset=str(data["pairs" if loss != "listwise" else "listwise"]), model=str(data["model"]),
                loss=loss, out=str(out), lora_r=4, per_device_train_batch_size=4, logging_steps=1, save_steps=1,
                max_steps=4, learning_rate=1e-2, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def adapter(out):
    return load_file(str(out / "adapter_model.safetensors"))


def assert_same_adapter(a, b):
    ta, tb = adapter(a), adapter(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    """An uninterrupted 4-step run (checkpoint every step, two kept)."""
    return T.train(cfg_for(data, tmp_path_factory.mktemp("whole") / "out"))


def test_killed_inside_a_checkpoint_write_resumes_from_the_previous_complete_one(data, whole, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("INFALIGN_FAULT", "checkpoint-saving:3")  # checkpoint-3 written, not yet marked
    with pytest.raises(InjectedFault):
        T.train(cfg_for(data, out))
    monkeypatch.delenv("INFALIGN_FAULT")
    ckpts = out / "checkpoints"
    assert (ckpts / "checkpoint-3").is_dir() and not (ckpts / "checkpoint-3" / COMPLETE).exists()
    assert (ckpts / "checkpoint-2" / COMPLETE).is_file() and (out / RUN_CONFIG).is_file()
    assert not (out / "infalign_train.json").exists()
    # 'latest' never picks the half checkpoint either.
    assert resume_checkpoint("latest", ckpts, json.loads((out / RUN_CONFIG).read_text())).endswith("checkpoint-2")
    T.train(cfg_for(data, out))  # the same command, no flag
    record = read_training_info(out)
    assert record["resumed_from"].endswith("checkpoint-2") and record["global_step"] == 4
    assert_same_adapter(out, whole)
    state = json.loads((ckpts / "checkpoint-4" / "trainer_state.json").read_text())
    whole_state = json.loads((whole / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses == pytest.approx([e["loss"] for e in whole_state["log_history"] if "loss" in e], abs=1e-6)
    # Rotation keeps the two newest complete checkpoints.
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-3", "checkpoint-4"]


def test_finished_folder_same_config_is_a_no_op_another_config_is_refused(data, whole, monkeypatch):
    before = (whole / "adapter_model.safetensors").stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(T, "make_trainer", no_training)
    # Fields that cannot change the adapter may change; the model path may be spelled otherwise.
    assert T.train(cfg_for(data, whole, logging_steps=3, save_steps=2, report_to="none",
                           model=os.path.relpath(data["model"]))) == whole
    assert (whole / "adapter_model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(InfalignError, match=r"finished adapter with a different config.*learning_rate: 0.01 -> "
                                            r"0.02; loss: 'tilted_pairwise' -> 'tilted_sigmoid'"):
        T.train(cfg_for(data, whole, loss="tilted_sigmoid", learning_rate=2e-2))
    with pytest.raises(InfalignError, match=r"max_steps: 4 -> 6.*--resume-from-checkpoint latest"):
        T.train(cfg_for(data, whole, max_steps=6))


def test_explicit_resume_refuses_a_checkpoint_of_another_config(data, whole, tmp_path):
    ckpt = whole / "checkpoints" / "checkpoint-4"
    with pytest.raises(InfalignError, match=r"checkpoint .*checkpoint-4' was written under a different config.*"
                                            r"loss: 'tilted_pairwise' -> 'listwise'"):
        T.train(cfg_for(data, tmp_path / "lw", loss="listwise", resume_from_checkpoint=str(ckpt)))
    half = tmp_path / "half" / "checkpoint-1"
    shutil.copytree(ckpt, half)
    (half / COMPLETE).unlink()
    with pytest.raises(InfalignError, match="is not complete"):
        T.train(cfg_for(data, tmp_path / "o2", resume_from_checkpoint=str(half)))


def test_explicit_resume_may_train_longer(data, tmp_path):
    out = T.train(cfg_for(data, tmp_path / "out", max_steps=2))
    out = T.train(cfg_for(data, out, max_steps=3, resume_from_checkpoint="latest"))
    record = read_training_info(out)
    assert record["global_step"] == 3 and record["resumed_from"].endswith("checkpoint-2")
    assert json.loads((out / RUN_CONFIG).read_text())["max_steps"] == 3


def test_foreign_folder_and_lock(data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InfalignError, match="exists and is not a train output folder"):
        T.train(cfg_for(data, tmp_path / "mine"))
    with output_lock(tmp_path / "busy"):
        with pytest.raises(InfalignError, match=f"being written by another run \\(pid {os.getpid()}\\)"):
            T.train(cfg_for(data, tmp_path / "busy"))


def test_reference_auto_goes_by_fingerprint_not_path(data, tmp_path, monkeypatch):
    # Two different models both named "m/policy" relative to their directories.
    a, b = tmp_path / "a", tmp_path / "b"
    save_tiny_lm(a / "m" / "policy", seed=0)
    save_tiny_lm(b / "m" / "policy", seed=1)
    shutil.copytree(a / "m" / "policy", tmp_path / "copy")  # the same weights elsewhere
    fp_a = fingerprint_model(a / "m" / "policy")
    prepared, _ = make_prepared(tmp_path, "pairs", a / "m" / "policy", beta=0.5, model="m/policy",
                                model_fingerprint=fp_a)
    monkeypatch.chdir(b)
    _, info = T.make_trainer(cfg_for(data, tmp_path / "o1", dataset=str(prepared), model="m/policy"))
    assert info.reference == "live"
    assert fp_a in info.reference_reason and fingerprint_model(b / "m" / "policy") in info.reference_reason
    _, info = T.make_trainer(cfg_for(data, tmp_path / "o2", dataset=str(prepared), model=str(tmp_path / "copy")))
    assert info.reference == "stored" and fp_a in info.reference_reason


def test_record_holds_the_resolved_model_and_eval_finds_it_from_elsewhere(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data["root"])
    out = T.train(cfg_for(data, tmp_path / "out", model="model", max_steps=1, save_steps=None))
    record = read_training_info(out)
    assert record["model"] == str(data["model"].resolve()) and record["model_as_given"] == "model"
    assert record["model_fingerprint"] == fingerprint_model(data["model"])
    monkeypatch.chdir(tmp_path)  # "model" names nothing here
    settings = resolve_settings(EvalConfig(policy=str(out), reward_model="demo"), record)
    assert settings.model == str(data["model"].resolve())
    # The recorded folder replaced by another model: refused when taken from the record, a warning when named.
    other = save_tiny_lm(tmp_path / "other", seed=5)
    with pytest.raises(InfalignError, match="is not the model policy .* was trained on"):
        resolve_settings(EvalConfig(policy=str(out), reward_model="demo"), {**record, "model": str(other)})
    s = resolve_settings(EvalConfig(policy=str(out), reward_model="demo", model=str(other)), record)
    assert any("was trained on" in w for w in s.warnings)
