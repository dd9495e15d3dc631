"""The embedded demo's assets: the shipped tiny LM (and the cache for other recipes), prompts, sentiment reward.

The shipped model is checked against the recipe that trains it: the recipe's hash, the weights' hash, and a
retraining of its first steps, which must give the recorded losses (the whole recipe takes 67 s of a CPU core;
`python -m offline_infalign.demo.assets` reruns it). The cache is exercised with a 3-step recipe.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from offline_infalign.core.errors import InfalignError
from offline_infalign.demo import assets as demo_assets
from offline_infalign.demo.assets import (
    SHIPPED_MODEL,
    demo_model_dir,
    demo_prompts,
    demo_reward,
    recipe_hash,
    sentiment_data,
    train_losses,
)
from offline_infalign.demo.corpus import review_corpus, sentiment_lines
from offline_infalign.models.tokenization import encode_completion, encode_prompt

SMALL_STEPS = 3
RETRAINED_STEPS = 60


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("infalign_cache")


@pytest.fixture(scope="module")
def small_model_dir(cache_root):
    return demo_model_dir(cache_dir=cache_root, train_steps=SMALL_STEPS, progress=False)


@pytest.fixture(scope="module")
def loaded():
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL).eval()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
    return model, tokenizer


def test_the_default_recipe_is_the_shipped_model_and_never_trains(tmp_path, monkeypatch):
    def must_not_build(*args, **kwargs):
        raise AssertionError("the shipped demo model was retrained")

    monkeypatch.setattr(demo_assets, "_build", must_not_build)
    assert demo_model_dir(cache_dir=tmp_path / "empty") == SHIPPED_MODEL
    assert not (tmp_path / "empty").exists()  # nothing written on a fresh machine


def test_shipped_model_is_what_its_recipe_trains():
    info = json.loads((SHIPPED_MODEL / "infalign_demo.json").read_text())
    # The recipe, corpus and build version it was trained with are today's ...
    assert info["recipe_hash"] == recipe_hash() and info["recipe"] == demo_assets.DEMO_RECIPE
    # ... these are the weights that training wrote ...
    assert hashlib.sha256((SHIPPED_MODEL / "model.safetensors").read_bytes()).hexdigest() == info["weights_sha256"]
    assert len(info["losses"]) == info["recipe"]["train_steps"]
    # ... and training today retraces it: the first steps' losses (same data order, initialization, schedule and
    # code) are the recorded ones.
    retrained = train_losses(steps=RETRAINED_STEPS)
    assert retrained == pytest.approx(info["losses"][:RETRAINED_STEPS], abs=2e-5)


def _sample(model, tokenizer, prompt, num, seed=0, max_new_tokens=60):
    batch = tokenizer([prompt] * num, return_tensors="pt")
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, top_k=0, max_new_tokens=max_new_tokens)
    return out[:, batch["input_ids"].shape[1] :]


def test_folder_loads_like_a_hub_model(loaded):
    model, tokenizer = loaded
    assert model.config.model_type == "llama"
    assert tokenizer.bos_token_id is not None and tokenizer.eos_token_id is not None
    assert tokenizer.pad_token_id is not None
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = demo_prompts("train", 1)[0]
    ids = encode_prompt(tokenizer, prompt)
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids


def test_tokenizer_round_trips_corpus_text(loaded):
    _, tokenizer = loaded
    for _, review in review_corpus(30, seed=5):
        ids = encode_completion(tokenizer, review)
        assert tokenizer.unk_token_id not in ids
        assert ids[-1] == tokenizer.eos_token_id
        # Decoding must give back the stored text so stored completions re-encode to the same ids.
        assert tokenizer.decode(ids[:-1]) == review
    messages = [{"role": "user", "content": "review of the cozy cafe in town:"}]
    assert encode_prompt(tokenizer, messages)[0] == tokenizer.bos_token_id


def test_generation_stays_in_vocabulary_and_ends(loaded):
    model, tokenizer = loaded
    completions = _sample(model, tokenizer, demo_prompts("test", 1)[0], num=8)
    assert int(completions.max()) < len(tokenizer)
    assert (completions == tokenizer.unk_token_id).sum() == 0
    ended = (completions == tokenizer.eos_token_id).any(dim=1)
    assert ended.float().mean() >= 0.75, ended
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    assert all(text.strip() for text in texts)


def test_sampled_completions_vary_in_reward(loaded):
    model, tokenizer = loaded
    prompts = demo_prompts("test", 4)
    rewards = []
    for i, prompt in enumerate(prompts):
        texts = tokenizer.batch_decode(
            _sample(model, tokenizer, prompt, num=8, seed=i), skip_special_tokens=True
        )
        rewards.append(demo_reward([prompt] * len(texts), texts))
    rewards = np.concatenate(rewards)
    # Best-of-N only matters if the base samples spread: both praise and complaints must appear.
    assert rewards.std() > 0.4, rewards
    assert rewards.min() < 0 < rewards.max(), rewards


def test_cache_is_reused_without_retraining(cache_root, small_model_dir, monkeypatch):
    weights = small_model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def must_not_build(*args, **kwargs):
        raise AssertionError("cached demo model was rebuilt")

    monkeypatch.setattr(demo_assets, "_build", must_not_build)
    again = demo_model_dir(cache_dir=cache_root, train_steps=SMALL_STEPS, progress=False)
    assert again == small_model_dir
    assert weights.stat().st_mtime_ns == mtime
    # A different recipe is a different folder, never the stale one.
    with pytest.raises(AssertionError, match="rebuilt"):
        demo_model_dir(cache_dir=cache_root, train_steps=SMALL_STEPS + 1, progress=False)


def test_no_temporary_folders_left(cache_root, small_model_dir):
    leftovers = [p.name for p in cache_root.iterdir() if p.is_dir() and p != small_model_dir]
    assert leftovers == []


def test_killed_build_leaves_no_model(tmp_path, monkeypatch):
    def dies_halfway(out, *args, **kwargs):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_assets, "_build", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        demo_model_dir(cache_dir=tmp_path, train_steps=3, progress=False)
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_build_is_deterministic(tmp_path):
    first = demo_model_dir(cache_dir=tmp_path / "a", train_steps=3, progress=False)
    second = demo_model_dir(cache_dir=tmp_path / "b", train_steps=3, progress=False)
    assert first.name == second.name
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("INFALIGN_CACHE", str(tmp_path))
    assert demo_assets._default_cache_dir() == tmp_path
    monkeypatch.delenv("INFALIGN_CACHE")
    assert demo_assets._default_cache_dir() == Path(os.path.expanduser("~/.cache/offline_infalign"))


def test_bad_train_steps_is_rejected(tmp_path):
    with pytest.raises(InfalignError, match="train_steps"):
        demo_model_dir(cache_dir=tmp_path, train_steps=0)


def test_prompts_are_distinct_disjoint_and_fixed():
    train, test = demo_prompts("train"), demo_prompts("test")
    assert len(train) == 200 and len(test) == 128
    assert len(set(train)) == 200 and len(set(test)) == 128
    assert not set(train) & set(test)
    assert demo_prompts("train") == train
    assert demo_prompts("test", limit=5) == test[:5]
    assert all(p.startswith("review of the ") and p.endswith(":") for p in train + test)
    with pytest.raises(InfalignError, match="split"):
        demo_prompts("validation")
    with pytest.raises(InfalignError, match="limit"):
        demo_prompts("train", limit=-1)


def test_reward_ranks_sentiment_and_is_deterministic():
    prompts = ["review of the cozy cafe in town:"] * 3
    texts = [
        "the coffee was delicious, and the staff were friendly. highly recommended.",
        "the coffee was okay.",
        "the coffee was cold, and the staff were rude. never again.",
    ]
    rewards = demo_reward(prompts, texts)
    assert rewards.shape == (3,) and rewards.dtype == np.float64
    assert rewards[0] > rewards[1] > rewards[2]
    assert rewards[0] > 0 > rewards[2]
    np.testing.assert_array_equal(demo_reward(prompts, texts), rewards)
    assert demo_reward([], []).shape == (0,)
    with pytest.raises(InfalignError, match="2 prompts but 1"):
        demo_reward(prompts[:2], texts[:1])


def test_reward_spreads_over_the_corpus_the_model_imitates():
    reviews = [review for _, review in review_corpus(300, seed=3)]
    rewards = demo_reward([""] * len(reviews), reviews)
    assert rewards.std() > 0.5
    assert np.abs(rewards).max() < 10  # a logit, not saturated


def test_shipped_sentiment_file_matches_its_generator():
    rows = sentiment_data()
    assert rows == sentiment_lines()
    labels = [label for label, _ in rows]
    assert len(rows) >= 300 and sum(labels) == len(labels) // 2


def test_demo_prompt_source_is_registered():
    from data_builders import get_prompt_source, prompt_id, source_names

    assert "demo" in source_names()
    rows = list(get_prompt_source("demo", split="test", limit=3))
    assert [row["prompt"] for row in rows] == demo_prompts("test", 3)
    assert [row["prompt_id"] for row in rows] == [prompt_id(p) for p in demo_prompts("test", 3)]
    assert len(list(get_prompt_source("demo", split="train"))) == 200
    with pytest.raises(InfalignError, match="split"):
        list(get_prompt_source("demo", split="validation"))
