"""Scorers: HF reward model batched == one by one, chat prompts, callables, demo, bad input."""

import numpy as np
import pytest
import torch

from offline_infalign.core.errors import InfalignError
from offline_infalign.models.scoring import CallableScorer, HFRewardScorer, load_scorer, score_texts
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
    with pytest.raises(InfalignError, match="returned shape \\(1,\\) for 2 completions; expected one float per"):
        CallableScorer(lambda p, c: [0.0], "short")(["a", "b"], ["c", "d"])
    nopad = tiny_tokenizer(pad=False)
    with pytest.raises(InfalignError, match="has no pad_token"):
        HFRewardScorer(rm_path, tokenizer=nopad, model=tiny_reward_model(tiny_tokenizer()))


# ---- multi-output reward models: --reward-label picks one raw-logit column --------------------------------------

LABELS = {0: "negative", 1: "positive"}


@pytest.fixture(scope="module")
def two_label_rm(tmp_path_factory):
    return str(save_tiny_reward_model(tmp_path_factory.mktemp("rm2"), num_labels=2, id2label=LABELS,
                                      label2id={v: k for k, v in LABELS.items()}))


def _direct_logits(path: str) -> np.ndarray:
    """Both logits of each (prompt, completion), one at a time, from the saved model itself."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = tiny_tokenizer()
    scorer_text = HFRewardScorer(path, device="cpu", reward_label=0, model=model, tokenizer=tok).text
    out = []
    with torch.no_grad():
        for p, c in zip(PROMPTS, COMPLETIONS):
            enc = tok(scorer_text(p, c), add_special_tokens=False, return_tensors="pt")
            out.append(model(**enc).logits[0].tolist())
    return np.array(out)  # (3, 2)


def test_two_label_reward_model_by_name_and_index(two_label_rm):
    logits = _direct_logits(two_label_rm)
    # The two columns really differ, and raw logits are not probabilities: the chosen column's logit is the
    # reward, not its softmax probability (which would lie in (0, 1)).
    assert not np.allclose(logits[:, 0], logits[:, 1])
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for label, column in (("positive", 1), ("1", 1), (1, 1), ("negative", 0), ("0", 0), (0, 0)):
        scorer = load_scorer(two_label_rm, device="cpu", batch_size=2, reward_label=label)
        assert (scorer.column, scorer.label) == (column, LABELS[column])
        got = scorer(PROMPTS, COMPLETIONS)
        assert np.allclose(got, logits[:, column], atol=1e-5), label
        assert not np.allclose(got, softmax[:, column], atol=1e-3)


def test_two_label_reward_model_needs_a_valid_label(two_label_rm):
    allowed = "{0: 'negative', 1: 'positive'}"
    with pytest.raises(InfalignError, match="has 2 outputs") as exc:
        load_scorer(two_label_rm, device="cpu")
    assert allowed in str(exc.value) and "--reward-label" in str(exc.value)
    with pytest.raises(InfalignError, match="reward_label 'neutral' is not a label") as exc:
        load_scorer(two_label_rm, device="cpu", reward_label="neutral")
    assert allowed in str(exc.value) and "0..1" in str(exc.value)
    with pytest.raises(InfalignError, match="reward_label '2' is out of range") as exc:
        load_scorer(two_label_rm, device="cpu", reward_label="2")
    assert allowed in str(exc.value)
    with pytest.raises(InfalignError, match="reward_label '-1' is not a label"):
        load_scorer(two_label_rm, device="cpu", reward_label="-1")


def test_reward_label_on_a_one_output_model_and_on_callables(rm_path):
    # A one-output model has one column: index 0 (or its default name) is accepted, anything else is not.
    assert load_scorer(rm_path, device="cpu", reward_label="0").column == 0
    with pytest.raises(InfalignError, match="out of range"):
        load_scorer(rm_path, device="cpu", reward_label="1")
    for spec in ("demo", "tests.test_scoring:length_reward", length_reward):
        with pytest.raises(InfalignError, match="applies to a Hugging Face reward model"):
            load_scorer(spec, reward_label="positive")


def test_score_config_reward_label_spellings():
    from offline_infalign.config import BuildConfig, ScoreConfig

    assert ScoreConfig(input="i", reward_model="r", out="o", reward_label=1).reward_label == "1"
    assert ScoreConfig(input="i", reward_model="r", out="o", reward_label=" positive ").reward_label == "positive"
    with pytest.raises(InfalignError, match="reward_label must be an index or a label name"):
        ScoreConfig(input="i", reward_model="r", out="o", reward_label="")
    build = BuildConfig(prompts="p", model="m", out="o", reward_model="r", reward_label="positive",
                        transform="identity", beta=1.0)
    assert build.score_config().reward_label == "positive"
