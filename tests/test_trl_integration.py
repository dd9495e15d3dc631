"""TRL's DPOTrainer on our pairs (offline_infalign.integrations.trl): it trains on the stored ids — cut completions
without a stop token, byte pieces as sampled — against the stored reference columns, with no reference forward;
at step 0 its per-pair log-probs equal `logprobs.completion_logps` on the same ids and its loss equals
`core.losses.dpo`. Plain DPOTrainer on the same rows re-tokenizes and appends EOS (the fault the subclass removes)."""

import logging

import numpy as np
import pytest
import torch
from train_fixtures import make_prepared_with_ids, stop_ids
from transformers import AutoModelForCausalLM, AutoTokenizer

from offline_infalign.core.errors import InfalignError
from offline_infalign.core.losses import dpo
from offline_infalign.integrations import trl as T
from offline_infalign.models.logprobs import completion_logps, pad_pairs

BETA = 0.1


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A prepared pairs artifact from the byte-level BPE fixture (cut completions, byte pieces, two stop ids), and
    its train rows with reference columns made distinctive: stored = true − offset, so a trainer using them sees
    log-ratios of exactly `offset` at step 0, and one computing its own sees 0."""
    from tiny_models import save_tiny_lm

    root = tmp_path_factory.mktemp("trl")
    model_dir = save_tiny_lm(root / "model", tokenizer="bpe")
    path = make_prepared_with_ids(root, "pairs", model_dir, beta=BETA)
    train = T.load_pairs(str(path), "train")
    offsets = {"ref_chosen_logps": 1.0 + 0.25 * np.arange(len(train)), "ref_rejected_logps": -0.5 - 0.1 * np.arange(len(train))}
    distinct = train.map(lambda row, i: {c: row[c] - offsets[c][i] for c in offsets}, with_indices=True,
                         keep_in_memory=True)  # no cache file in the artifact's folder
    return {"model": model_dir, "path": path, "train": train, "distinct": distinct, "offsets": offsets}


def _args(tmp_path, **kw):
    from trl import DPOConfig

    base = dict(output_dir=str(tmp_path / "out"), bf16=False, use_cpu=True, report_to=[], beta=BETA, max_steps=2,
                per_device_train_batch_size=4, logging_steps=1, save_strategy="no", seed=0)
    return DPOConfig(**{**base, **kw})


def _model(model_dir):
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def _ours(model_dir, rows):
    """log π of each row's chosen and rejected ids under the base model, by the package's teacher-forced loop."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = _model(model_dir).eval()
    prompts = [r["prompt_ids"] for r in rows]
    with torch.no_grad():
        batch = pad_pairs(prompts + prompts, [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows],
                          tok.pad_token_id)
        logps = completion_logps(model, **batch)
    return logps[: len(rows)], logps[len(rows):]


def _trl_step(trainer, rows):
    """TRL's own loss on `rows` (no update) and what it logged for them: logps/* and rewards/* (means), and how
    many forward passes the model ran."""
    trainer.model.train()  # as in training (TRL logs under "train"; dropout is off, disable_dropout)
    calls = []
    handle = trainer.model.register_forward_hook(lambda *a: calls.append(1))
    keys = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
    try:
        inputs = trainer._prepare_inputs(trainer.data_collator([{k: r[k] for k in keys if k in r} for r in rows]))
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, inputs)
    finally:
        handle.remove()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss), logged, len(calls)


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_trl_trains_on_stored_ids_and_stored_reference(pairs, tmp_path, adapter):
    tok = AutoTokenizer.from_pretrained(str(pairs["model"]))
    data = pairs["distinct"]
    trainer = T.SampledIdsDPOTrainer(model=_model(pairs["model"]), args=_args(tmp_path), train_dataset=data,
                                     eval_dataset=data.select(range(4)), processing_class=tok,
                                     peft_config=_lora() if adapter == "lora" else None)
    assert trainer.ref_model is None  # no reference model, in either setting

    # The rows TRL trains on carry our ids exactly: no re-tokenization, no EOS appended to cut completions.
    prepared = trainer.train_dataset
    for col in T.ID_COLUMNS:
        assert list(prepared[col]) == list(data[col])
    stop = set(stop_ids(tok))
    cut = [ids for ids in list(prepared["chosen_ids"]) + list(prepared["rejected_ids"]) if ids[-1] not in stop]
    assert cut, "the fixture has completions cut at max_new_tokens"

    rows = [prepared[i] for i in range(len(prepared))]  # what TRL trains on, reference columns included
    chosen, rejected = _ours(pairs["model"], rows)
    off_c, off_r = (torch.tensor(pairs["offsets"][c], dtype=torch.float32) for c in T.REFERENCE_COLUMNS)
    for i, row in enumerate(rows):  # one pair at a time: TRL's logged means are then the pair's own values
        _, logged, forwards = _trl_step(trainer, [row])
        assert forwards == 1  # the policy's forward only: no reference pass (not even with the adapter off)
        assert logged["logps/chosen"] == pytest.approx(float(chosen[i]), abs=2e-5)
        assert logged["logps/rejected"] == pytest.approx(float(rejected[i]), abs=2e-5)
        # rewards = β (log π − stored reference) = β · offset at step 0: the distinctive stored columns are used
        assert logged["rewards/chosen"] == pytest.approx(BETA * float(off_c[i]), abs=2e-5)
        assert logged["rewards/rejected"] == pytest.approx(BETA * float(off_r[i]), abs=2e-5)

    batch = rows[:4]
    loss, _, _ = _trl_step(trainer, batch)
    h_c = chosen[:4] - torch.tensor([r["ref_chosen_logps"] for r in batch], dtype=torch.float32)
    h_r = rejected[:4] - torch.tensor([r["ref_rejected_logps"] for r in batch], dtype=torch.float32)
    ours, _ = dpo(h_c, h_r, torch.zeros(4), BETA)
    assert loss == pytest.approx(float(ours.mean()), abs=1e-5)
    assert loss != pytest.approx(np.log(2), abs=1e-3)  # what a reference equal to the policy would give
    assert trainer.evaluate()["eval_loss"] == pytest.approx(loss, abs=1e-5)  # the eval split goes the same way

    before = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    result = trainer.train()
    assert result.global_step == 2 and np.isfinite(result.training_loss)
    after = [p for p in trainer.model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, after))


def test_plain_dpo_trainer_re_tokenizes_and_appends_eos(pairs, tmp_path):
    """The fault the subclass removes, on the same rows: TRL's own preparation replaces the stored ids with the
    text re-encoded plus EOS, so cut completions gain a stop token and byte pieces change."""
    from trl import DPOTrainer

    tok = AutoTokenizer.from_pretrained(str(pairs["model"]))
    # In memory: TRL's own `map`s would otherwise write cache files into the artifact's folder.
    data = pairs["train"].flatten_indices(keep_in_memory=True)
    trainer = DPOTrainer(model=_model(pairs["model"]), args=_args(tmp_path), train_dataset=data,
                         processing_class=tok, peft_config=_lora())
    theirs = trainer.train_dataset
    assert all(ids[-1] == tok.eos_token_id for ids in list(theirs["chosen_ids"]) + list(theirs["rejected_ids"]))
    assert list(theirs["chosen_ids"]) != list(data["chosen_ids"])


def test_trl_can_compute_its_own_reference_on_the_stored_ids(pairs, tmp_path):
    tok = AutoTokenizer.from_pretrained(str(pairs["model"]))
    data = pairs["distinct"]
    trainer = T.SampledIdsDPOTrainer(model=_model(pairs["model"]), args=_args(tmp_path), train_dataset=data,
                                     processing_class=tok, peft_config=_lora(), use_stored_reference=False)
    assert not set(T.REFERENCE_COLUMNS) & set(trainer.train_dataset.column_names)
    for col in T.ID_COLUMNS:
        assert list(trainer.train_dataset[col]) == list(data[col])
    _, logged, forwards = _trl_step(trainer, [trainer.train_dataset[0]])
    assert forwards == 2  # the policy, then the adapter-disabled reference
    assert logged["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)  # its own reference: the policy at step 0


def test_rows_over_max_length_are_dropped_never_truncated(pairs, tmp_path, caplog):
    tok = AutoTokenizer.from_pretrained(str(pairs["model"]))
    data = pairs["train"]
    total = [len(p) + max(len(c), len(r)) for p, c, r in zip(data["prompt_ids"], data["chosen_ids"],
                                                             data["rejected_ids"])]
    limit = int(np.median(total))
    with caplog.at_level(logging.WARNING):
        trainer = T.SampledIdsDPOTrainer(model=_model(pairs["model"]), args=_args(tmp_path, max_length=limit),
                                         train_dataset=data, processing_class=tok, peft_config=_lora())
    kept = trainer.train_dataset
    assert len(kept) == sum(t <= limit for t in total) < len(data)
    assert set(map(tuple, kept["chosen_ids"])) <= set(map(tuple, data["chosen_ids"]))  # whole, as stored
    assert f"longer than max_length={limit}" in caplog.text
    with pytest.raises(InfalignError, match="every row .* is longer than max_length=2"):
        T.SampledIdsDPOTrainer(model=_model(pairs["model"]), args=_args(tmp_path, max_length=2), train_dataset=data,
                               processing_class=tok, peft_config=_lora())


def test_bad_inputs_are_one_line(pairs, tmp_path):
    tok = AutoTokenizer.from_pretrained(str(pairs["model"]))
    data = pairs["train"]

    def build(dataset, **kw):
        return T.SampledIdsDPOTrainer(model=_model(pairs["model"]), args=_args(tmp_path), train_dataset=dataset,
                                      processing_class=tok, **kw)

    with pytest.raises(InfalignError, match="has no chosen_ids, rejected_ids: SampledIdsDPOTrainer trains on"):
        build(data.remove_columns(["chosen_ids", "rejected_ids"]))
    with pytest.raises(InfalignError, match="has no ref_rejected_logps: nothing to use as the stored reference"):
        build(data.remove_columns(["ref_rejected_logps"]))
    nan = data.map(lambda row, i: {"ref_chosen_logps": float("nan") if i == 3 else row["ref_chosen_logps"]},
                   with_indices=True, keep_in_memory=True)
    with pytest.raises(InfalignError, match="row 3: ref_chosen_logps is nan; stored reference log-probs must be finite"):
        build(nan)
    with pytest.raises(InfalignError, match="ref_model given with use_stored_reference=True"):
        build(data, ref_model=_model(pairs["model"]))
    big = data.map(lambda row: {"chosen_ids": row["chosen_ids"] + [len(tok) + 5]}, keep_in_memory=True)
    with pytest.raises(InfalignError, match="column 'chosen_ids' holds token id .*outside tokenizer"):
        build(big)
    for version in ("1.17.0", "1.13.2", "0.24.0"):
        with pytest.raises(InfalignError, match=f"tested with trl 1.14.x, 1.15.x, 1.16.x, but trl {version} is installed"):
            T.check_trl_version(version)
    assert T.check_trl_version("1.16.0.dev0") == "1.16.0.dev0"


def test_load_pairs_checks_kind_split_and_ids(pairs, tmp_path):
    from train_fixtures import make_prepared

    with pytest.raises(InfalignError, match="has no split 'valid'; it has train, test"):
        T.load_pairs(str(pairs["path"]), "valid")  # also: nothing above wrote into the artifact (hash checked)
    listwise, _ = make_prepared(tmp_path / "l", "listwise")
    with pytest.raises(InfalignError, match="is a 'listwise' dataset; DPOTrainer trains on 'pairs'"):
        T.load_pairs(str(listwise))
    text_only, _ = make_prepared(tmp_path / "p", "pairs")  # pairs made from text: no ids to train on
    with pytest.raises(InfalignError, match="has no prompt_ids, chosen_ids, rejected_ids"):
        T.load_pairs(str(text_only))
