"""prepare_dataset: calibrated columns equal docs/math.md §2 by hand, pair/bon/listwise construction, split, errors,
auto transform, and the pairs dataset training one step in TRL's DPOTrainer."""

import datasets
import numpy as np
import pytest

from offline_infalign.core.errors import InfalignError
from offline_infalign.core.transforms import Transform
from offline_infalign.kinds.pairs import to_trl_conversational
from offline_infalign.preparation import is_test_prompt, prepare, prepare_dataset

# Two prompts, K = 4. Prompt a has a tie (rewards 1, 3, 3, 0); prompt b is a message list.
SCORED = {
    "prompt_id": ["a", "b"],
    "prompt": ["how was the movie", "tell me"],
    "completions": [["good", "great", "fine", "bad"], ["yes", "no", "ok", "thanks"]],
    "rewards": [[1.0, 3.0, 3.0, 0.0], [0.5, -2.0, 4.0, 1.5]],
    "ref_logps": [[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0, -7.0, -8.0]],
}
# docs/math.md §2 by hand: c_i = (#{r_j < r_i} + ½ #{r_j = r_i}) / K, i itself counted in the ties.
# a: r=1 → (1 + ½)/4 = .375; r=3 → (2 + ½·2)/4 = .75 (twice); r=0 → (0 + ½)/4 = .125
# b: ranks of 0.5, -2, 4, 1.5 are 2, 1, 4, 3 → (rank − ½)/4 = .375, .125, .875, .625
U = {"a": [0.375, 0.75, 0.75, 0.125], "b": [0.375, 0.125, 0.875, 0.625]}


def _scored(messages=False):
    data = dict(SCORED)
    if messages:
        data["prompt"] = [[{"role": "user", "content": p}] for p in data["prompt"]]
    return datasets.Dataset.from_dict(data)


def _all(dd):
    return datasets.concatenate_datasets([dd["train"], dd["test"]])


def test_listwise_calibrated_and_targets_by_hand():
    dd = prepare_dataset(_scored(), "listwise", Transform("exp", 2.0), beta=0.5, test_fraction=0.0)
    assert len(dd["test"]) == 0 and len(dd["train"]) == 2
    for row in dd["train"]:
        u = np.array(U[row["prompt_id"]])
        assert row["calibrated_rewards"] == pytest.approx(u.tolist())
        assert row["targets"] == pytest.approx(((np.exp(2 * u) - 1) / (np.exp(2) - 1)).tolist())
        src = SCORED["prompt_id"].index(row["prompt_id"])
        assert row["completions"] == SCORED["completions"][src] and row["rewards"] == SCORED["rewards"][src]
        assert row["ref_logps"] == SCORED["ref_logps"][src]


def test_all_pairs_orientation_margin_soft_label():
    prepared = prepare(_scored(), "pairs", Transform("identity"), beta=1.0, test_fraction=0.0)
    rows = prepared.data["train"].to_list()
    # K(K−1)/2 = 6 pairs per prompt, less prompt a's tied pair (great, fine): equal rewards name no winner
    assert len(rows) == 2 * 6 - 1 and prepared.counts == {"skipped_tied_pairs": 1}
    assert not [r for r in rows if {r["chosen"], r["rejected"]} == {"great", "fine"}]
    for r in rows:
        src = SCORED["prompt_id"].index(r["prompt_id"])
        comps = SCORED["completions"][src]
        c, j = comps.index(r["chosen"]), comps.index(r["rejected"])
        u = U[r["prompt_id"]]
        assert r["target_margin"] == pytest.approx(u[c] - u[j]) and r["target_margin"] >= 0
        assert r["soft_label"] == pytest.approx(1 / (1 + np.exp(-(u[c] - u[j]))))
        assert r["weight"] == 1.0
        assert r["ref_chosen_logps"] == SCORED["ref_logps"][src][c]
        assert r["ref_rejected_logps"] == SCORED["ref_logps"][src][j]
        assert SCORED["rewards"][src][c] > SCORED["rewards"][src][j]  # chosen = the larger raw reward


def test_sampled_pairs_are_seeded_per_prompt():
    dd = prepare_dataset(_scored(), "pairs", Transform("identity"), 1.0, pairs_per_prompt=2, seed=3,
                         test_fraction=0.0)
    rows = dd["train"].to_list()
    assert [r["prompt_id"] for r in rows] == ["a", "a", "b", "b"]
    again = prepare_dataset(_scored().select([1]), "pairs", Transform("identity"), 1.0, pairs_per_prompt=2, seed=3,
                            test_fraction=0.0)
    assert again["train"].to_list() == rows[2:]  # prompt b's pairs do not depend on prompt a being there
    other = prepare_dataset(_scored(), "pairs", Transform("identity"), 1.0, pairs_per_prompt=2, seed=4,
                            test_fraction=0.0)["train"].to_list()
    assert len({(r["chosen"], r["rejected"]) for r in rows + other}) > 2  # another seed, other pairs
    big = prepare_dataset(_scored(), "pairs", Transform("identity"), 1.0, pairs_per_prompt=50, test_fraction=0.0)
    assert len(big["train"]) == 11  # every untied pair
    # With ties, the M pairs are drawn among the untied ones: prompt a still gets M = 5 of its 5 untied pairs.
    five = prepare_dataset(_scored(), "pairs", Transform("identity"), 1.0, pairs_per_prompt=5, test_fraction=0.0)
    assert [r["prompt_id"] for r in five["train"]].count("a") == 5


def test_bon_weights_softmax_over_prompt():
    beta = 0.25
    dd = prepare_dataset(_scored(), "bon", Transform("log"), beta=beta, test_fraction=0.0)
    rows = dd["train"].to_list()
    assert len(rows) == 8
    for pid in ("a", "b"):
        mine = [r for r in rows if r["prompt_id"] == pid]
        phi = np.log(U[pid])
        w = np.exp(phi / beta) / np.exp(phi / beta).sum()  # log transform: w ∝ u^(1/β) = u^4
        assert [r["weight"] for r in mine] == pytest.approx(w.tolist())
        assert sum(r["weight"] for r in mine) == pytest.approx(1.0)
        assert [r["calibrated_reward"] for r in mine] == pytest.approx(U[pid])
        assert [r["target"] for r in mine] == pytest.approx(phi.tolist())


def test_message_prompts_stay_messages_and_split_by_prompt_id():
    dd = prepare_dataset(_scored(messages=True), "pairs", Transform("identity"), 1.0, test_fraction=0.5)
    rows = _all(dd).to_list()
    assert all(r["prompt"] == [{"role": "user", "content": SCORED["prompt"][SCORED["prompt_id"].index(r["prompt_id"])]}]
               for r in rows)
    for split in ("train", "test"):
        assert all(is_test_prompt(pid, 0.5) == (split == "test") for pid in dd[split]["prompt_id"])
    ids = [f"p{i}" for i in range(2000)]
    frac = np.mean([is_test_prompt(i, 0.2) for i in ids])
    assert 0.17 < frac < 0.23 and not any(is_test_prompt(i, 0.0) for i in ids)


def test_bad_inputs():
    data = dict(SCORED, rewards=[[1.0, 2.0, 3.0, 4.0], [0.0, float("inf"), 1.0, 2.0]])
    with pytest.raises(InfalignError, match="non-finite reward inf for prompt_id b \\(completion 1\\)"):
        prepare_dataset(datasets.Dataset.from_dict(data), "pairs", Transform("identity"), 1.0)
    k1 = {k: ([[v[0]] for v in vals] if k in ("completions", "rewards", "ref_logps") else vals)
          for k, vals in SCORED.items()}
    with pytest.raises(InfalignError, match="num_samples K >= 2 .* got K=1"):
        prepare_dataset(datasets.Dataset.from_dict(k1), "pairs", Transform("identity"), 1.0)
    with pytest.raises(InfalignError, match="kind 'triples' is not allowed; allowed: pairs, listwise, bon"):
        prepare_dataset(_scored(), "triples", Transform("identity"), 1.0)
    with pytest.raises(InfalignError, match="beta must be > 0, got 0"):
        prepare_dataset(_scored(), "bon", Transform("identity"), 0)


@pytest.mark.parametrize("messages", [False, True], ids=["text", "chat"])
def test_pairs_train_one_step_in_trl_dpo(tmp_path, messages):
    import torch
    from trl import DPOConfig, DPOTrainer

    from tests.tiny_models import tiny_causal_lm, tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    train = prepare_dataset(_scored(messages), "pairs", Transform("identity"), 1.0, test_fraction=0.0)["train"]
    if messages:  # TRL wants chat completions next to a chat prompt; text prompts go in unchanged
        train = to_trl_conversational(train)
        assert train[0]["chosen"][0]["role"] == "assistant"
    else:
        assert to_trl_conversational(train) is train
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), bf16=False, use_cpu=True, max_steps=1, report_to=[],
                     per_device_train_batch_size=4, logging_steps=1, save_strategy="no", beta=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    # ref_model given: a model built from a config has no hub name for TRL to reload a reference from.
    trainer = DPOTrainer(model=model, ref_model=tiny_causal_lm(tok), args=args, train_dataset=train,
                         processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and np.isfinite(result.training_loss)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
