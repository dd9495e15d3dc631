"""Trainer: step-0 loss values, stored == live reference, LoRA-only updates, outputs, resume, bad input."""

import json
import math

import numpy as np
import pytest
import torch
from train_fixtures import make_prepared

from offline_infalign.config import TrainConfig, load_config
from offline_infalign.core.errors import InfalignError
from offline_infalign.core.losses import LOSSES
from offline_infalign.kinds.listwise import ListwiseCollator
from offline_infalign.stages import train as T
from offline_infalign.training.reference import choose_reference

BETA = 0.5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    pairs, model = make_prepared(root, "pairs", beta=BETA)
    listwise, _ = make_prepared(root, "listwise", model, beta=BETA, chat=True)  # chat-template prompts
    bon, _ = make_prepared(root, "bon", model, beta=BETA)
    return {"pairs": pairs, "listwise": listwise, "bon": bon, "model": model, "root": root}


def cfg_for(data, loss, tmp_path, **kw):
    kind = LOSSES[loss].kind
    base = dict(dataset=str(data[kind]), model=str(data["model"]), loss=loss, out=str(tmp_path / "out"),
                lora_r=4, lora_dropout=0.0, per_device_train_batch_size=4, logging_steps=1, save_steps=None,
                max_steps=2, learning_rate=1e-2, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def first_batch(trainer, n=None):
    ds = trainer.train_dataset
    rows = [ds[i] for i in range(n or len(ds))]
    return trainer.data_collator(rows), rows


def loss_of(trainer, batch):
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


# Each loss's value at step 0 (policy = reference, so every log-ratio h is 0), by hand from the batch's rows and
# the trainer's info: docs/math.md §6 with h = 0.
STEP0 = {
    "tilted_pairwise": lambda rows, info: np.mean([(r["target_margin"] / BETA) ** 2 for r in rows]),
    "tilted_sigmoid": lambda rows, info: math.log(2),
    "dpo": lambda rows, info: math.log(2),
    "ipo": lambda rows, info: 1 / (4 * BETA**2),
    "listwise": lambda rows, info: np.mean([math.log(len(r["completions"])) for r in rows]),
    "pointwise": lambda rows, info: np.mean([np.mean([(t - BETA * info.log_z) ** 2 for t in r["targets"]])
                                             for r in rows]),
    "weighted_sft": lambda rows, info: np.mean([-r["weight"] * r["ref_logp"] for r in rows]),  # −w · log π_ref
}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_step0_log_ratios_are_zero_and_loss_has_its_known_value(data, tmp_path, loss):
    trainer, info = T.make_trainer(cfg_for(data, loss, tmp_path, reference="live"))
    batch, rows = first_batch(trainer)
    value = loss_of(trainer, batch)
    assert math.isfinite(value)
    if loss in STEP0:  # a newly registered loss trains here too; its step-0 value belongs in STEP0
        assert value == pytest.approx(STEP0[loss](rows, info), rel=1e-5, abs=1e-6)
    assert trainer.reference == "live"


def test_pointwise_log_z_is_the_partition_function(data, tmp_path):
    _, info = T.make_trainer(cfg_for(data, "pointwise", tmp_path))
    u = (np.arange(100000) + 0.5) / 100000
    phi = (np.exp(3.0 * u) - 1) / (np.exp(3.0) - 1)
    assert info.log_z == pytest.approx(math.log(np.mean(np.exp(phi / BETA))), rel=1e-6)


@pytest.mark.parametrize("loss", ["tilted_pairwise", "tilted_sigmoid", "listwise", "pointwise", "weighted_sft"])
def test_stored_and_live_reference_give_the_same_loss(data, tmp_path, loss):
    stored, _ = T.make_trainer(cfg_for(data, loss, tmp_path, reference="stored"))
    live, _ = T.make_trainer(cfg_for(data, loss, tmp_path, reference="live"))
    # Move the adapters off zero (same values in both) so the policy differs from the reference.
    gen = torch.Generator().manual_seed(1)
    named_live = dict(live.model.named_parameters())
    for name, p in stored.model.named_parameters():
        if "lora_B" in name:
            v = 0.3 * torch.randn(p.shape, generator=gen)
            p.data.copy_(v)
            named_live[name].data.copy_(v)
    batch, _ = first_batch(stored)
    a, b = loss_of(stored, batch), loss_of(live, batch)
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    if loss != "weighted_sft":  # weighted SFT does not read the reference; the others must have moved
        fresh, _ = T.make_trainer(cfg_for(data, loss, tmp_path, reference="stored"))
        assert abs(loss_of(fresh, batch) - a) > 1e-4


def test_training_changes_lora_only_and_writes_outputs(data, tmp_path):
    cfg = cfg_for(data, "tilted_sigmoid", tmp_path, max_steps=3)
    out = T.train(cfg)
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "infalign_train.json",
            "tokenizer_config.json"} <= files
    record = json.loads((out / "infalign_train.json").read_text())
    from offline_infalign.artifacts.storage import content_hash, read_manifest

    # the input artifact is left as it was: no datasets cache files written into it
    assert not list(data["pairs"].rglob("cache-*"))
    assert content_hash(data["pairs"]) == read_manifest(data["pairs"])["content_hash"]
    assert record["loss"] == "tilted_sigmoid" and record["beta"] == BETA
    assert record["transform"] == "exp" and record["tilt"] == 3.0 and record["global_step"] == 3
    assert record["reference"] == "stored"  # columns present, float32 weights, manifest without dtype
    assert record["dataset_manifest"]["kind"] == "pairs"
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "kl/estimate"):
        assert key in record["final_metrics"], key
    card = (out / "README.md").read_text()
    for needle in ("manifest.json", "exp", "3.0", "beta | 0.5", "tilted_sigmoid"):
        assert needle in card

    from offline_infalign.artifacts.storage import load_artifact
    from offline_infalign.models.modeling import load_adapted

    policy, tok = load_adapted(cfg.model, out)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    # Base weights unchanged inside the adapted model; LoRA weights moved away from their B = 0 init.
    for name, p in base.named_parameters():
        q = policy.get_parameter("base_model.model." + name.replace(".weight", ".base_layer.weight")) \
            if any(m in name for m in ("proj.weight",)) else policy.get_parameter("base_model.model." + name)
        torch.testing.assert_close(p, q)
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)
    ds, _ = load_artifact(cfg.dataset)
    batch, _ = first_batch(T.make_trainer(cfg)[0], 4)
    from offline_infalign.models.logprobs import completion_logps

    with torch.no_grad():
        lp = completion_logps(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        with policy.disable_adapter():
            ref = completion_logps(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    torch.testing.assert_close(ref[:4], torch.tensor(ds["train"]["ref_chosen_logps"][:4]), rtol=1e-5, atol=1e-5)
    assert (lp - ref).abs().max() > 1e-3


def test_base_parameters_frozen_during_training(data, tmp_path):
    trainer, _ = T.make_trainer(cfg_for(data, "listwise", tmp_path, max_steps=2))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)


def test_resume_from_checkpoint_continues(data, tmp_path):
    out = T.train(cfg_for(data, "tilted_pairwise", tmp_path, max_steps=2, save_steps=1))
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    out = T.train(cfg_for(data, "tilted_pairwise", tmp_path, max_steps=4, save_steps=1,
                          resume_from_checkpoint="latest"))
    record = json.loads((out / "infalign_train.json").read_text())
    assert record["global_step"] == 4
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the first run's checkpoint, 3-4 from the resumed run


def test_listwise_collator_variable_k():
    coll = ListwiseCollator(pad_token_id=0)
    rows = [{"prompt_ids": [5, 6], "completion_ids": [[7, 3], [8, 9, 3]], "targets": [0.1, 0.9],
             "ref_logps": [-1.0, -2.0]},
            {"prompt_ids": [5], "completion_ids": [[7, 3], [8, 3], [9, 3]], "targets": [0.2, 0.5, 0.3],
             "ref_logps": [-1.5, -2.5, -3.5]}]
    batch = coll(rows)
    assert batch["input_ids"].shape == (5, 5)
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["ref_logps"].tolist() == [[-1.0, -2.0, 0.0], [-1.5, -2.5, -3.5]]
    assert batch["completion_mask"][1].tolist() == [0, 0, 1, 1, 1]  # 2 prompt tokens, completion 8 9 </s>


def test_choose_reference():
    cols = ["ref_chosen_logps", "ref_rejected_logps", "prompt"]
    assert choose_reference("auto", "dpo", "pairs", cols, {}, "float32")[0] == "stored"
    assert choose_reference("auto", "dpo", "pairs", cols, {"ref_dtype": "float32"}, "nf4")[0] == "live"
    assert choose_reference("auto", "dpo", "pairs", cols, {"ref_dtype": "bfloat16"}, "float32")[0] == "live"
    assert choose_reference("auto", "dpo", "pairs", ["prompt"], {}, "float32")[0] == "live"
    assert choose_reference("auto", "weighted_sft", "bon", ["prompt"], {}, "float32")[0] == "none"
    assert choose_reference("live", "dpo", "pairs", cols, {}, "float32")[0] == "live"
    # stored columns of another model are another policy's log-probs
    assert choose_reference("auto", "dpo", "pairs", cols, {"model": "org/a"}, "float32", "org/b")[0] == "live"
    assert choose_reference("auto", "dpo", "pairs", cols, {"model": "org/a"}, "float32", "org/a")[0] == "stored"
    with pytest.raises(InfalignError, match="ref_logps"):
        choose_reference("stored", "listwise", "listwise", ["prompt"], {}, "float32")


def test_missing_column_names_column_and_kind(data, tmp_path):
    from datasets import load_from_disk
    from train_fixtures import save_prepared

    ds = load_from_disk(str(data["pairs"]))["train"].remove_columns("target_margin")
    bad = save_prepared(tmp_path / "bad", "pairs", ds.to_list(), data["model"], BETA)
    with pytest.raises(InfalignError, match="'target_margin'.*'pairs'"):
        T.make_trainer(cfg_for({**data, "pairs": bad}, "tilted_sigmoid", tmp_path))
    # the DPO baseline does not need target_margin
    T.make_trainer(cfg_for({**data, "pairs": bad}, "dpo", tmp_path))


def test_kind_mismatch_and_short_group(data, tmp_path):
    cfg = cfg_for(data, "listwise", tmp_path)
    cfg.dataset = str(data["pairs"])
    with pytest.raises(InfalignError, match="'listwise' dataset.*kind='pairs'"):
        T.make_trainer(cfg)
    from datasets import load_from_disk
    from train_fixtures import save_prepared

    rs = load_from_disk(str(data["listwise"]))["train"].to_list()
    for col in ("completions", "targets", "ref_logps", "rewards", "calibrated_rewards"):
        rs[1][col] = rs[1][col][:1]
    bad = save_prepared(tmp_path / "short", "listwise", rs, data["model"], BETA)
    with pytest.raises(InfalignError, match=r"^listwise group 'p1': num_samples K must be an integer >= 2 "
                                            r"\(completions in a group\), got 1$"):
        T.make_trainer(cfg_for({**data, "listwise": bad}, "listwise", tmp_path))


def test_config_errors(data, tmp_path):
    with pytest.raises(InfalignError, match="^train: beta must be a finite number > 0, got 0.0$"):
        cfg_for(data, "dpo", tmp_path, beta=0.0)
    with pytest.raises(InfalignError, match="^train: beta must be a finite number > 0, got -1.0$"):
        cfg_for(data, "dpo", tmp_path, beta=-1.0)
    with pytest.raises(InfalignError, match="unknown config key.*'lora_rank'.*did you mean 'lora_r'"):
        load_config(TrainConfig, None, {"dataset": "d", "model": "m", "loss": "dpo", "out": "o", "lora_rank": 4})
    with pytest.raises(InfalignError, match="unknown loss 'sft'"):
        load_config(TrainConfig, None, {"dataset": "d", "model": "m", "loss": "sft", "out": "o"})


def test_qlora_unavailable_is_a_clear_error(data, tmp_path, monkeypatch):
    from offline_infalign.models import modeling

    monkeypatch.setattr(modeling, "bitsandbytes_problem", lambda: "bitsandbytes cannot be imported (test)")
    with pytest.raises(InfalignError, match="qlora=True needs bitsandbytes.*cannot be imported"):
        T.make_trainer(cfg_for(data, "dpo", tmp_path, qlora=True))


def test_qlora_trains_on_cpu_with_live_reference(data, tmp_path):
    from offline_infalign.models import modeling

    if modeling.bitsandbytes_problem() is not None:
        pytest.skip(f"bitsandbytes cannot run here: {modeling.bitsandbytes_problem()}")
    trainer, info = T.make_trainer(cfg_for(data, "tilted_sigmoid", tmp_path, qlora=True, max_steps=2))
    assert info.reference == "live" and "nf4" in info.reference_reason
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)


@pytest.mark.parametrize("kind,loss", [("pairs", "tilted_sigmoid"), ("listwise", "listwise"), ("bon", "weighted_sft")])
def test_trains_on_prepare_output(data, tmp_path, kind, loss):
    """The data builder's `prepare` output is what the trainer consumes: stored reference picked,
    log-ratios 0 at step 0 (the stored ref_logps are this model's), one step runs."""
    from datasets import Dataset
    from train_fixtures import TRANSFORM, groups, ref_logps

    from offline_infalign.artifacts.storage import save_artifact
    from offline_infalign.kinds.preparation import prepare

    gs = groups(num_prompts=10, k=4)
    for g in gs:
        g["ref_logps"] = ref_logps(data["model"], [g["prompt"]] * 4, g["completions"])
    scored = Dataset.from_list([{k: g[k] for k in ("prompt_id", "prompt", "completions", "rewards", "ref_logps")}
                                for g in gs])
    prepared = prepare(scored, kind, TRANSFORM, BETA, test_fraction=0.2).data
    out = tmp_path / kind
    save_artifact(prepared, out, {"stage": "prepared", "kind": kind, "transform": "exp", "tilt": 3.0, "beta": BETA,
                                  "procedure": "bon", "n": 4, "model": str(data["model"])})
    trainer, info = T.make_trainer(cfg_for({**data, kind: out}, loss, tmp_path, max_steps=1))
    assert info.reference == "stored"
    batch, rows = first_batch(trainer)
    value = loss_of(trainer, batch)
    if loss == "tilted_sigmoid":
        assert value == pytest.approx(math.log(2), abs=1e-5)
    elif loss == "listwise":
        assert value == pytest.approx(math.log(4), abs=1e-5)
    else:
        assert value == pytest.approx(np.mean([-r["weight"] * r["ref_logp"] for r in rows]), rel=1e-5)
    trainer.train()
    assert trainer.state.global_step == 1


def test_a_new_dataset_kind_is_one_registry_entry(data, tmp_path):
    """A kind registered in `kinds.KINDS` alone (here bon's rows under another name) is prepared and trained by
    the generic paths, for a loss that names it as its kind."""
    import dataclasses

    from datasets import Dataset
    from train_fixtures import TRANSFORM, groups, ref_logps

    from offline_infalign import kinds
    from offline_infalign.artifacts.storage import save_artifact
    from offline_infalign.core import losses as L
    from offline_infalign.kinds.bon import BonKind
    from offline_infalign.kinds.preparation import prepare

    class WeightedRows(BonKind):
        name = "weighted_rows"

    kinds.KINDS["weighted_rows"] = WeightedRows()
    L.LOSSES["weighted_rows_sft"] = dataclasses.replace(L.LOSSES["weighted_sft"], name="weighted_rows_sft",
                                                        kind="weighted_rows")
    try:
        gs = groups(num_prompts=4, k=3)
        for g in gs:
            g["ref_logps"] = ref_logps(data["model"], [g["prompt"]] * 3, g["completions"])
        scored = Dataset.from_list([{k: g[k] for k in ("prompt_id", "prompt", "completions", "rewards", "ref_logps")}
                                    for g in gs])
        prepared = prepare(scored, "weighted_rows", TRANSFORM, BETA, test_fraction=0.0).data
        assert prepared["train"].to_dict() == prepare(scored, "bon", TRANSFORM, BETA,
                                                              test_fraction=0.0).data["train"].to_dict()
        out = tmp_path / "weighted_rows"
        save_artifact(prepared, out, {"stage": "prepared", "kind": "weighted_rows", "transform": "exp", "tilt": 3.0,
                                      "beta": BETA, "procedure": "bon", "n": 4, "model": str(data["model"])})
        cfg = cfg_for(data, "weighted_sft", tmp_path, max_steps=1)
        cfg.dataset, cfg.loss = str(out), "weighted_rows_sft"
        trainer, info = T.make_trainer(cfg)
        assert info.kind == "weighted_rows" and info.reference == "stored"
        batch, rows = first_batch(trainer)
        assert loss_of(trainer, batch) == pytest.approx(np.mean([-r["weight"] * r["ref_logp"] for r in rows]),
                                                        rel=1e-5)
        trainer.train()
        assert trainer.state.global_step == 1
    finally:
        del kinds.KINDS["weighted_rows"], L.LOSSES["weighted_rows_sft"]

