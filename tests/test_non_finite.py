"""Non-finite numbers never train a model (README: Reliability).

Every floating-point value of an artifact is checked when a stage opens it (the column, the row and its
prompt_id named), `prepare` checks what it would write, and training stops at the first non-finite gradient or
logged loss before it reaches the weights (training_guard.NonFiniteGuard), with nothing written as final. The
bad artifacts here are written through save_artifact, so their content hash is consistent: only the values
are wrong.
"""

import json
import math

import datasets
import pyarrow as pa
import pytest
import torch

from offline_infalign.artifacts.integrity import find_non_finite
from offline_infalign.artifacts.storage import load_artifact, save_artifact
from offline_infalign.core.errors import InfalignError
from offline_infalign.training.guard import NonFiniteGuard
from tests.bad_input_helpers import error_line, make_assets, make_build

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("nonfinite"))


@pytest.fixture(scope="module")
def built(assets, tmp_path_factory):
    return make_build(assets, tmp_path_factory.mktemp("built") / "b")


def test_find_non_finite_names_the_column_and_row():
    table = pa.table({"id": ["a", "b", "c"], "x": [1.0, 2.0, 3.0], "ids": [[1, 2], [3], []],
                      "k": [[0.5, 0.25], [1.0, NAN], [2.0]]})
    assert find_non_finite(table) == ("k", 1, pytest.approx(NAN, nan_ok=True))
    nested = pa.table({"m": [[[1.0], [2.0]], [[3.0, -INF]]]})
    assert find_non_finite(nested) == ("m", 1, -INF)
    chunked = pa.table({"y": pa.chunked_array([[1.0, 2.0], [3.0, INF]])})
    assert find_non_finite(chunked) == ("y", 3, INF)  # rows count across chunks
    assert find_non_finite(pa.table({"z": pa.array([1.0, None]), "t": ["nan", "inf"]})) is None  # null, text pass
    sliced = pa.table({"k": pa.array([[NAN], [1.0], [2.0, INF]]).slice(1)})
    assert find_non_finite(sliced) == ("k", 1, INF)


def _rewritten(src, dst, column, row, value, split=None):
    """`src` saved again as `dst` with one value of `column` (a list cell: its first item) set to `value`."""
    data, manifest = load_artifact(src)

    def poke(r, i):
        if i == row:
            cell = r[column]
            r[column] = [value, *cell[1:]] if isinstance(cell, list) else value
        return r

    if split:
        data = datasets.DatasetDict({s: d.map(poke, with_indices=True, keep_in_memory=True) if s == split else d
                                     for s, d in data.items()})
    else:
        data = data.map(poke, with_indices=True, keep_in_memory=True)
    save_artifact(data, dst, {k: v for k, v in manifest.items() if k not in ("content_hash", "num_rows")})
    return dst


def test_every_stage_refuses_a_non_finite_input(assets, built, tmp_path, capsys):
    samples = _rewritten(built / "samples", tmp_path / "samples", "ref_logps", 2, -INF)
    pid = datasets.load_from_disk(str(samples))[2]["prompt_id"]
    err = error_line(capsys, ["score", "--input", str(samples), "--reward-model", "demo", "--out",
                              str(tmp_path / "sc")])
    assert f"holds a non-finite value in column 'ref_logps': -inf at row 2 (prompt_id {pid})" in err
    scored = _rewritten(built / "scored", tmp_path / "scored", "ref_logps", 3, NAN)
    err = error_line(capsys, ["prepare", "--input", str(scored), "--transform", "identity", "--beta", "0.5",
                              "--out", str(tmp_path / "p")])
    assert "holds a non-finite value in column 'ref_logps': nan at row 3 (prompt_id " in err
    prepared = _rewritten(built / "prepared", tmp_path / "prepared", "ref_chosen_logps", 0, NAN, split="train")
    err = error_line(capsys, ["train", "--dataset", str(prepared), "--model", assets["lm"], "--loss",
                              "tilted_pairwise", "--max-steps", "1", "--out", str(tmp_path / "t")])
    assert "column 'ref_chosen_logps': nan at row 0 of split 'train' (prompt_id " in err
    assert not (tmp_path / "t").exists()


def test_listwise_targets_and_prepare_output(built, tmp_path, capsys, monkeypatch):
    from offline_infalign.cli import main

    prepare = ["prepare", "--input", str(built / "scored"), "--transform", "identity", "--beta", "0.5"]
    assert main([*prepare, "--kind", "listwise", "--out", str(tmp_path / "lw")]) == 0
    bad = _rewritten(tmp_path / "lw", tmp_path / "lw_bad", "targets", 1, INF, split="train")
    with pytest.raises(InfalignError, match="column 'targets': inf at row 1 of split 'train'"):
        load_artifact(bad, stage="prepared")
    # What prepare would write is checked too (a kind whose rows overflow): refused before anything is written.
    from offline_infalign.kinds.preparation import Prepared
    from offline_infalign.stages import prepare as prepare_stage

    real = prepare_stage.prepare

    def overflowing(*args, **kwargs):
        made = real(*args, **kwargs)
        return Prepared(datasets.DatasetDict({s: d.map(lambda r, i: {"weight": NAN if i == 2 else r["weight"]},
                                                       with_indices=True, keep_in_memory=True)
                                              for s, d in made.data.items()}), made.counts)

    monkeypatch.setattr(prepare_stage, "prepare", overflowing)
    err = error_line(capsys, [*prepare, "--kind", "bon", "--out", str(tmp_path / "bon")])
    assert "the prepared dataset holds a non-finite value in column 'weight': nan at row 2 of split 'train'" in err
    assert "beta=0.5 with transform identity gives numbers that do not fit a float" in err
    assert not (tmp_path / "bon" / "manifest.json").exists()


def test_training_stops_at_a_non_finite_gradient(assets, built, tmp_path, capsys):
    """`--beta 1e-300` on pairs: target_margin/β overflows, the loss is infinite and the gradients NaN."""
    out = tmp_path / "adapter"
    err = error_line(capsys, ["train", "--dataset", str(built / "prepared"), "--model", assets["lm"], "--loss",
                              "tilted_pairwise", "--beta", "1e-300", "--max-steps", "3", "--out", str(out)])
    assert "training stopped at step 1: the gradient of " in err and "is not finite" in err
    assert "Nothing was written as final" in err
    assert not (out / "infalign_train.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "train_config.json").read_text())["beta"] == 1e-300  # the same command says it again


def _model_with_grads(value):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[1].bias.grad[0] = value
    return model


def test_guard_checks_gradients_and_logged_losses():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    guard, state, control = NonFiniteGuard(), TrainerState(), TrainerControl()
    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    state.global_step = 4
    assert guard.on_pre_optimizer_step(args, state, control, model=_model_with_grads(1.0)) is control
    with pytest.raises(InfalignError, match=r"step 5: the gradient of 1\.bias is not finite"):
        guard.on_pre_optimizer_step(args, state, control, model=_model_with_grads(NAN))
    with pytest.raises(InfalignError, match="the gradient of 1.bias"):
        guard.on_pre_optimizer_step(args, state, control, model=_model_with_grads(-INF))
    frozen = _model_with_grads(NAN)
    frozen[1].bias.requires_grad_(False)  # not trained: its gradient never reaches a weight
    assert guard.on_pre_optimizer_step(args, state, control, model=frozen) is control
    assert guard.on_log(args, state, control, logs={"loss": 0.5, "grad_norm": 1.0, "learning_rate": 1e-4}) is control
    for key in ("loss", "grad_norm", "train_loss"):
        with pytest.raises(InfalignError, match=f"step 4: {key} is nan"):
            guard.on_log(args, state, control, logs={key: math.nan})
