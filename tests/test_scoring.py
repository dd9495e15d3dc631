"""Scorers: HF reward model batched == one by one, chat prompts, callables, demo, bad input."""

import numpy as np
import pytest
import torch

from offline_infalign.core.errors import InfalignError
from offline_infalign.scoring import CallableScorer, HFRewardScorer, load_scorer, score_texts
from tests.tiny_models import save_tiny_reward_model, tiny_reward_model, tiny_tokenizer

PROMPTS = ["how was the movie", [{"role": "user", "content": "tell me about the cat"}], "the food was"]
COMPLETIONS = ["very good", "it was a happy cat . yes", "awful"]


def length_reward(prompts, completions):
    return [float(len(c.split())) for c in completions]


def nan_reward(prompts, completions):
    return [float("nan") if c == "bad" else 1.0 for c in completions]


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    return str(save_tiny_reward_model(tmp_path_factory.mktemp("rm")))


def test_hf_scorer_batched_equals_one_by_one(rm_path):
    scorer = load_scorer(rm_path, device="cpu", batch_size=3)
    assert isinstance(scorer, HFRewardScorer) and scorer.name == rm_path
    batched = scorer(PROMPTS, COMPLETIONS)
    single = np.concatenate([scorer([p], [c]) for p, c in zip(PROMPTS, COMPLETIONS)])
    assert batched.shape == (3,) and np.allclose(batched, single, atol=1e-5)
    # One-by-one against the model itself on the chat-templated text (the tiny tokenizer has a template).
    tok, model = tiny_tokenizer(), tiny_reward_model(tiny_tokenizer())
    text = "<user> the food was <assistant> awful </s> "
    assert scorer.text("the food was", "awful") == text
    with torch.no_grad():
        direct = model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()
    assert batched[2] == pytest.approx(direct, abs=1e-5)


def test_callable_and_demo_specs():
    scorer = load_scorer("tests.test_scoring:length_reward")
    assert scorer.name == "tests.test_scoring:length_reward"
    assert scorer(PROMPTS, COMPLETIONS).tolist() == [2.0, 7.0, 1.0]
    assert load_scorer(length_reward)(["a"], ["x y"]).tolist() == [2.0]
    demo = load_scorer("demo")
    assert demo.name == "demo" and demo(["a review"], ["great movie"]).shape == (1,)


def test_score_texts_shape_and_non_finite():
    r = score_texts(load_scorer(length_reward), ["p", "q"], [["a", "a b"], ["a b c", "x"]], ["id0", "id1"])
    assert r.tolist() == [[1.0, 2.0], [3.0, 1.0]]
    with pytest.raises(InfalignError, match="non-finite reward nan for prompt_id id1 \\(completion 0\\)"):
        score_texts(CallableScorer(nan_reward, "n"), ["p", "q"], [["a", "b0"], ["bad", "c"]], ["id0", "id1"])


def test_bad_scorers(rm_path):
    with pytest.raises(InfalignError, match="cannot load reward function 'no_such_module:f'"):
        load_scorer("no_such_module:f")
    with pytest.raises(InfalignError, match="returned 1 rewards for 2 completions"):
        CallableScorer(lambda p, c: [0.0], "short")(["a", "b"], ["c", "d"])
    nopad = tiny_tokenizer(pad=False)
    with pytest.raises(InfalignError, match="has no pad_token"):
        HFRewardScorer(rm_path, tokenizer=nopad, model=tiny_reward_model(tiny_tokenizer()))
