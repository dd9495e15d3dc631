"""Training on the sampled token ids (docs/math.md §9): the sampler's record, prepare's id columns, the trainer's
policy log-probs and a live reference agree sequence by sequence, cut completions (no stop-token term) included,
on both tokenizer fixtures; the warnings of a prepared manifest reach the model card and the training record."""

import json

import pytest
import torch
from test_trainer import BETA, cfg_for, first_batch

from offline_infalign.stages import train as T


@pytest.fixture(scope="module")
def id_models(tmp_path_factory):
    from tiny_models import save_tiny_lm

    root = tmp_path_factory.mktemp("ids")
    return {t: save_tiny_lm(root / t, tokenizer=t) for t in ("word", "bpe")}


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
@pytest.mark.parametrize("kind,loss", [("pairs", "tilted_pairwise"), ("listwise", "listwise"), ("bon", "weighted_sft")])
def test_stored_ids_are_what_training_and_the_reference_score(id_models, tmp_path, tokenizer, kind, loss):
    """The sampler's record (ids + ref_logps), the trainer's policy log-probs at step 0 and a live reference
    forward agree on every sequence, cut completions (no stop token, so no stop-token term) included; scoring
    the re-encoded text plus EOS instead would not."""
    from train_fixtures import ids_logps, make_prepared_with_ids
    from transformers import AutoTokenizer

    from offline_infalign.models.logprobs import completion_logps
    from offline_infalign.models.tokenization import encode_completion

    model_dir = id_models[tokenizer]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    dataset = make_prepared_with_ids(tmp_path, kind, model_dir, beta=BETA, chat=kind == "listwise")
    trainer, info = T.make_trainer(cfg_for({"model": model_dir, kind: dataset}, loss, tmp_path, reference="live"))
    batch, rows = first_batch(trainer)
    stored = trainer.dataset_kind.stored_reference(batch)
    with torch.no_grad():
        live = trainer._ref_logps(trainer.model, batch)
        policy = completion_logps(trainer.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    torch.testing.assert_close(live, stored, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(policy, stored, rtol=1e-5, atol=1e-5)  # LoRA B = 0 at step 0: policy = reference

    # The sequences are the stored ids exactly: prompt ids, then the completion ids with no EOS added.
    id_col = trainer.dataset_kind.id_columns
    texts, ids = [], []
    for r in rows:
        for text_col, ids_col in id_col.items():
            if kind == "listwise":
                texts += r[text_col]
                ids += r[ids_col]
            else:
                texts.append(r[text_col])
                ids.append(r[ids_col])
    if kind == "pairs":  # the collator puts the B chosen first, then the B rejected
        texts, ids = texts[0::2] + texts[1::2], ids[0::2] + ids[1::2]
    for s, c in enumerate(ids):
        mask = batch["completion_mask"][s].bool()
        assert batch["input_ids"][s][mask].tolist() == c
    stops = set(tok.convert_tokens_to_ids(["</s>", "<eot>"] if tokenizer == "bpe" else ["</s>"]))
    cut = [s for s, c in enumerate(ids) if c[-1] not in stops]
    assert cut and len(cut) < len(ids)  # both cut and stopped completions are in the batch
    prompts = [batch["input_ids"][s][(batch["attention_mask"][s].bool() & ~batch["completion_mask"][s].bool())]
               .tolist() for s in range(len(ids))]
    reencoded = ids_logps(model_dir, [prompts[s] for s in cut], [encode_completion(tok, texts[s]) for s in cut])
    assert all(abs(a - stored[s].item()) > 1e-3 for a, s in zip(reencoded, cut))


def test_tempered_warning_reaches_model_card_and_training_record(id_models, tmp_path):
    from train_fixtures import save_scored, scored_with_ids

    from offline_infalign.config import PrepareConfig
    from offline_infalign.stages.prepare import run_prepare

    model_dir = id_models["bpe"]
    scored = save_scored(tmp_path / "scored", scored_with_ids(model_dir, num_prompts=6), model_dir, temperature=0.7,
                         tempered=True)
    m = run_prepare(PrepareConfig(input=str(scored), out=str(tmp_path / "prepared"), kind="pairs", transform="identity",
                                  beta=BETA, test_fraction=0.0, allow_tempered_samples=True))
    assert len(m["warnings"]) == 1 and "temperature=0.7" in m["warnings"][0]
    out = T.train(cfg_for({"model": model_dir, "pairs": tmp_path / "prepared"}, "tilted_sigmoid", tmp_path,
                          max_steps=1))
    record = json.loads((out / "infalign_train.json").read_text())
    assert record["warnings"] == m["warnings"]
    card = (out / "README.md").read_text()
    assert "## Warnings" in card and m["warnings"][0] in card
    assert record["reference"] == "stored"  # the sampled ids' ref_logps, same model, float32


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_sampler_prepare_trainer_agree_on_the_sampled_sequences(id_models, tmp_path, tokenizer):
    """The real pipeline: `sample` (ref_logps from the sampler's own logits, cut and stopped completions) →
    `score` → `prepare` (each kind) → the trainer: a live reference forward on the rows' stored ids gives the
    sampler's ref_logps, sequence by sequence."""
    from offline_infalign.config import PrepareConfig, SampleConfig, ScoreConfig
    from offline_infalign.stages.prepare import run_prepare
    from offline_infalign.stages.sample import run_sample
    from offline_infalign.stages.score import run_score

    model_dir = id_models[tokenizer]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ("the movie was", "tell me about", "the cat please", "very good .", "was very", "me")))
    samples = run_sample(SampleConfig(prompts=str(prompts), model=str(model_dir), out=str(tmp_path / "s"),
                                      num_samples=4, max_new_tokens=12, device="cpu"), progress=False)
    assert 0 < samples["cut_fraction"] < 1
    run_score(ScoreConfig(input=str(tmp_path / "s"), reward_model="tests.train_fixtures:char_reward",
                          out=str(tmp_path / "sc")), progress=False)
    for kind, loss in (("pairs", "tilted_pairwise"), ("listwise", "listwise"), ("bon", "weighted_sft")):
        run_prepare(PrepareConfig(input=str(tmp_path / "sc"), out=str(tmp_path / kind), kind=kind,
                                  transform="identity", beta=BETA, test_fraction=0.0))
        trainer, info = T.make_trainer(cfg_for({"model": model_dir, kind: tmp_path / kind}, loss, tmp_path,
                                               reference="live"))
        batch, rows = first_batch(trainer)
        assert "prompt_ids" in rows[0]
        with torch.no_grad():
            live = trainer._ref_logps(trainer.model, batch)
        torch.testing.assert_close(live, trainer.dataset_kind.stored_reference(batch), rtol=1e-4, atol=1e-4)
