"""How a pairs dataset picks its pairs (kinds/pairs.py): every untied pair, or `pairs_per_prompt` drawn uniformly
without replacement among the untied pairs, without ever listing the K(K−1)/2 pairs of a prompt — so K = 100 000
with 10 pairs per prompt is milliseconds and megabytes, and all pairs of such a K is refused before anything is
built. The pairs are those the listing drew for every seed (`listed_pairs`, the former code, is the reference)."""

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset

from offline_infalign.core.errors import InfalignError
from offline_infalign.core.transforms import Transform
from offline_infalign.kinds import pairs as pairs_kind
from offline_infalign.kinds.pairs import UntiedPairs, _all_pairs, untied_counts
from offline_infalign.kinds.preparation import prepare
from tests.listed_pairs import listed_pairs


def _matrices(rewards, pairs_per_prompt=None, seed=0, texts=None):
    p, k = rewards.shape
    return SimpleNamespace(ids=[f"p{a}" for a in range(p)], rewards=rewards,
                           options={"pairs": "all", "pairs_per_prompt": pairs_per_prompt, "seed": seed}, prompts=["a prompt"] * p, completions=texts or [["some text"] * k] * p,
                           completion_ids=None)


def _random_rewards(rng, p, k):
    """Rewards with every kind of tie: continuous, few levels, all tied, and -0.0 beside 0.0 (one reward)."""
    kind = rng.integers(4)
    if kind == 0:
        return rng.normal(size=(p, k))
    r = rng.integers(0, int(rng.integers(1, k + 2)), size=(p, k)).astype(float)
    if kind == 2:
        r[rng.random(p) < 0.5] = 2.0
    if kind == 3:
        r[r == 0] = np.where(rng.random(int((r == 0).sum())) < 0.5, -0.0, 0.0)
    return r


def test_drawn_and_listed_pairs_are_the_same_for_every_seed(monkeypatch):
    rng = np.random.default_rng(0)
    for trial in range(300):
        p, k = int(rng.integers(1, 12)), int(rng.integers(1, 25))
        rewards = _random_rewards(rng, p, k)
        m = _matrices(rewards, None if trial % 4 == 0 else int(rng.integers(1, 30)), seed=trial)
        # blocks of a few prompts (and of one): the result must not depend on how the prompts are blocked
        monkeypatch.setattr(pairs_kind, "_BLOCK_BYTES", int(rng.integers(1, 4000)))
        i, j, owner, counts = _all_pairs(rewards, m)
        ref = listed_pairs(rewards, m.options["pairs_per_prompt"], m.options["seed"], m.ids)
        for got, want in zip((i, j, owner), ref[:3]):
            np.testing.assert_array_equal(got, want)
        assert counts == {"skipped_tied_pairs": ref[3]}


def test_untied_pairs_numbering_is_the_listing():
    """`UntiedPairs.at(r)` is the r-th untied pair (i < j, row by row) and `untied_counts` counts them."""
    rewards = np.array([[1.0, 2.0, 1.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]])
    untied, tied = untied_counts(rewards)
    assert untied.tolist() == [11, 5] and tied.tolist() == [4, 10]  # 15 pairs: groups {1: 3, 2: 2} tie 3 + 1
    pairs = UntiedPairs(rewards)
    i, j = pairs.at(np.zeros(11, dtype=int), np.arange(11))
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 3), (0, 4), (1, 2), (1, 3), (1, 5), (2, 3), (2, 4),
                                                 (3, 4), (3, 5), (4, 5)]
    i, j = pairs.at(np.ones(5, dtype=int), np.arange(5))
    assert list(zip(i.tolist(), j.tolist())) == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5)]


def test_one_pair_per_prompt_is_uniform_over_the_untied_pairs():
    """Drawn with 4000 prompt ids (a generator each), one pair per prompt among the 11 untied pairs of the
    rewards above: each pair's share is 1/11 within 4.5 standard errors, and a tied pair never appears."""
    rewards = np.tile([1.0, 2.0, 1.0, 3.0, 2.0, 1.0], (4000, 1))
    i, j, _, _ = _all_pairs(rewards, _matrices(rewards, pairs_per_prompt=1, seed=7))
    assert (rewards[0, i] != rewards[0, j]).all()
    pairs, counts = np.unique(np.sort(np.stack([i, j]), axis=0), axis=1, return_counts=True)
    assert pairs.shape[1] == 11
    share, se = counts / 4000, np.sqrt((1 / 11) * (10 / 11) / 4000)
    assert np.abs(share - 1 / 11).max() < 4.5 * se


def test_ten_pairs_from_a_hundred_thousand_samples_without_listing_them():
    """K = 100 000: 5e9 pairs per prompt, 40 GB per index array if listed; drawing 10 takes a few MB."""
    rng = np.random.default_rng(1)
    rewards = np.round(rng.normal(size=(2, 100_000)), 2)  # many ties: 2 decimals
    tracemalloc.start()
    i, j, owner, counts = _all_pairs(rewards, _matrices(rewards, pairs_per_prompt=10, seed=3))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20, peak
    assert len(i) == 20 and owner.tolist() == [0] * 10 + [1] * 10
    assert (rewards[owner, i] > rewards[owner, j]).all()  # untied, chosen = the larger reward
    assert len({(o, min(a, b), max(a, b)) for o, a, b in zip(owner, i, j)}) == 20  # without replacement
    untied, tied = untied_counts(rewards)
    assert counts == {"skipped_tied_pairs": int(tied.sum())} and (untied + tied == 100_000 * 99_999 // 2).all()


def test_all_pairs_of_a_hundred_thousand_samples_is_refused_before_anything_is_built():
    k = 100_000
    scored = Dataset.from_dict({"prompt_id": ["p0"], "prompt": ["a prompt"], "completions": [["a completion"] * k],
                                "rewards": [np.arange(k, dtype=float).tolist()], "ref_logps": [[-1.0] * k]})
    with pytest.raises(InfalignError) as err:
        prepare(scored, "pairs", Transform("identity"), 0.5, test_fraction=0.0)
    assert str(err.value).startswith("a pairs dataset of 4,999,950,000 rows (K = 100000: up to K(K-1)/2 = "
                                     "4,999,950,000 pairs per prompt, 1 prompts) needs about ")
    assert str(err.value).endswith("pass --pairs-per-prompt M (M pairs drawn per prompt) or --pairs best_worst")
    drawn = prepare(scored, "pairs", Transform("identity"), 0.5, pairs_per_prompt=10, test_fraction=0.0)
    assert len(drawn.data["train"]) == 10
