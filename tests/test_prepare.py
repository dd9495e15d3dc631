"""prepare: calibrated columns equal docs/math.md §2 by hand, pair/bon/listwise construction, split, errors,
auto transform, and the pairs dataset training one step in TRL's DPOTrainer."""

import datasets
import numpy as np
import pytest

from offline_infalign.core.errors import InfalignError
from offline_infalign.core.transforms import Transform
from offline_infalign.kinds import get_kind
from offline_infalign.kinds.pairs import to_trl_conversational
from offline_infalign.kinds.preparation import is_test_prompt, prepare

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
    dd = prepare(_scored(), "listwise", Transform("exp", 2.0), beta=0.5, test_fraction=0.0).data
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
    dd = prepare(_scored(), "pairs", Transform("identity"), 1.0, pairs_per_prompt=2, seed=3,
                         test_fraction=0.0).data
    rows = dd["train"].to_list()
    assert [r["prompt_id"] for r in rows] == ["a", "a", "b", "b"]
    again = prepare(_scored().select([1]), "pairs", Transform("identity"), 1.0, pairs_per_prompt=2, seed=3,
                            test_fraction=0.0).data
    assert again["train"].to_list() == rows[2:]  # prompt b's pairs do not depend on prompt a being there
    other = prepare(_scored(), "pairs", Transform("identity"), 1.0, pairs_per_prompt=2, seed=4,
                            test_fraction=0.0).data["train"].to_list()
    assert len({(r["chosen"], r["rejected"]) for r in rows + other}) > 2  # another seed, other pairs
    big = prepare(_scored(), "pairs", Transform("identity"), 1.0, pairs_per_prompt=50, test_fraction=0.0).data
    assert len(big["train"]) == 11  # every untied pair
    # With ties, the M pairs are drawn among the untied ones: prompt a still gets M = 5 of its 5 untied pairs.
    five = prepare(_scored(), "pairs", Transform("identity"), 1.0, pairs_per_prompt=5, test_fraction=0.0).data
    assert [r["prompt_id"] for r in five["train"]].count("a") == 5


def test_bon_weights_softmax_over_prompt():
    beta = 0.25
    dd = prepare(_scored(), "bon", Transform("log"), beta=beta, test_fraction=0.0).data
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
    dd = prepare(_scored(messages=True), "pairs", Transform("identity"), 1.0, test_fraction=0.5).data
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
        prepare(datasets.Dataset.from_dict(data), "pairs", Transform("identity"), 1.0)
    k1 = {k: ([[v[0]] for v in vals] if k in ("completions", "rewards", "ref_logps") else vals)
          for k, vals in SCORED.items()}
    with pytest.raises(InfalignError, match=r"^prepare: num_samples K must be an integer >= 2 \(completions per "
                                            r"prompt of the scored dataset\), got 1$"):
        prepare(datasets.Dataset.from_dict(k1), "pairs", Transform("identity"), 1.0)
    with pytest.raises(InfalignError, match="kind 'triples' is not allowed; allowed: pairs, listwise, bon"):
        prepare(_scored(), "triples", Transform("identity"), 1.0)
    with pytest.raises(InfalignError, match="^prepare: beta must be a finite number > 0, got 0$"):
        prepare(_scored(), "bon", Transform("identity"), 0)


@pytest.mark.parametrize("messages", [False, True], ids=["text", "chat"])
def test_pairs_train_one_step_in_trl_dpo(tmp_path, messages):
    import torch
    from trl import DPOConfig, DPOTrainer

    from tests.tiny_models import tiny_causal_lm, tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    train = prepare(_scored(messages), "pairs", Transform("identity"), 1.0, test_fraction=0.0).data["train"]
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


# ---- token ids carried through prepare (docs/math.md §9) -----------------------------------------------------


@pytest.fixture(scope="module")
def bpe_scored(tmp_path_factory):
    from train_fixtures import scored_with_ids

    from tests.tiny_models import save_tiny_lm

    model = save_tiny_lm(tmp_path_factory.mktemp("bpe") / "model", tokenizer="bpe")
    return scored_with_ids(model, num_prompts=5, k=4), model


def _source(scored, pid, ref_logp):
    """(source row, completion index) of the completion whose stored ref_logp is `ref_logp` (distinct floats)."""
    row = scored[scored["prompt_id"].index(pid)]
    return row, row["ref_logps"].index(ref_logp)


def test_ids_travel_with_their_completions_in_every_kind(bpe_scored):
    from transformers import AutoTokenizer

    from offline_infalign.models.tokenization import encode_completion

    scored, model = bpe_scored
    tok = AutoTokenizer.from_pretrained(str(model))
    # The fixture is the case the ids exist for: its text does not encode back to its ids.
    assert any(encode_completion(tok, t) != ids for r in scored for t, ids in zip(r["completions"], r["completion_ids"]))
    for kind in ("pairs", "listwise", "bon"):
        rows = _all(prepare(scored, kind, Transform("exp", 2.0), 0.5, test_fraction=0.5).data).to_list()
        assert rows
        for r in rows:
            src = scored[scored["prompt_id"].index(r["prompt_id"])]
            assert r["prompt_ids"] == src["prompt_ids"]
            if kind == "pairs":
                for side in ("chosen", "rejected"):
                    row, i = _source(scored, r["prompt_id"], r[f"ref_{side}_logps"])
                    assert r[f"{side}_ids"] == row["completion_ids"][i] and r[side] == row["completions"][i]
            elif kind == "listwise":
                assert r["completion_ids"] == src["completion_ids"] and r["completions"] == src["completions"]
            else:
                row, i = _source(scored, r["prompt_id"], r["ref_logp"])
                assert r["completion_ids"] == row["completion_ids"][i] and r["completion"] == row["completions"][i]
    # Without ids in the scored input, no id columns (training then encodes the text, as before).
    plain = scored.remove_columns(["prompt_ids", "completion_ids"])
    for kind in ("pairs", "listwise", "bon"):
        cols = prepare(plain, kind, Transform("identity"), 1.0).data["train"].column_names
        assert not [c for c in cols if c.endswith("_ids")]


def test_tokenize_dataset_keeps_stored_ids_and_filters_on_their_length(bpe_scored):
    from transformers import AutoTokenizer

    from offline_infalign.models.tokenization import encode_completion, encode_prompt, tokenize_dataset

    scored, model = bpe_scored
    tok = AutoTokenizer.from_pretrained(str(model))
    pairs = prepare(scored, "pairs", Transform("identity"), 1.0, test_fraction=0.0).data["train"]
    out, dropped = tokenize_dataset(pairs, tok, get_kind("pairs"))
    assert dropped == 0 and out["chosen_ids"] == pairs["chosen_ids"] and out["prompt_ids"] == pairs["prompt_ids"]
    # max_length counts the stored ids: the longest prompt + completion is the limit that keeps everything.
    longest = max(len(p) + max(len(c), len(j)) for p, c, j in zip(pairs["prompt_ids"], pairs["chosen_ids"],
                                                                    pairs["rejected_ids"]))
    assert tokenize_dataset(pairs, tok, get_kind("pairs"), max_length=longest)[1] == 0
    kept, dropped = tokenize_dataset(pairs, tok, get_kind("pairs"), max_length=longest - 1)
    assert dropped >= 1 and len(kept) == len(pairs) - dropped
    # A dataset without id columns is encoded from its text, with EOS appended (user-made datasets).
    text_only = pairs.remove_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    enc, _ = tokenize_dataset(text_only, tok, get_kind("pairs"))
    assert enc["chosen_ids"] == [encode_completion(tok, t) for t in text_only["chosen"]]
    assert enc["prompt_ids"] == [encode_prompt(tok, p) for p in text_only["prompt"]]
    assert enc["chosen_ids"] != pairs["chosen_ids"]  # the re-encoded text is another sequence
    # Ids of another tokenizer (past this vocabulary) are refused.
    bad = pairs.map(lambda r: {"chosen_ids": r["chosen_ids"] + [len(tok) + 5]})
    with pytest.raises(InfalignError, match=f"'chosen_ids' holds token id {len(tok) + 5}.*another tokenizer"):
        tokenize_dataset(bad, tok, get_kind("pairs"))


# ---- which pairs: ties skipped, best_worst baselines (docs/math.md §6) ---------------------------------------


def test_best_worst_pairs_by_hand():
    data = dict(SCORED, prompt_id=["a", "b", "c"], prompt=["x", "y", "z"],
                completions=[*SCORED["completions"], ["p", "q", "r", "s"]],
                rewards=[[1.0, 3.0, 3.0, 0.0], [0.5, -2.0, 4.0, 1.5], [2.0, 2.0, 2.0, 2.0]],
                ref_logps=[*SCORED["ref_logps"], [-1.0, -1.0, -1.0, -1.0]])
    prepared = prepare(datasets.Dataset.from_dict(data), "pairs", Transform("exp", 2.0), 0.5, pairs="best_worst",
                       test_fraction=0.0)
    rows = prepared.data["train"].to_list()
    # a: highest 3 (the first of the two, "great"), lowest 0 ("bad"); b: 4 ("ok") vs -2 ("no"); c: all tied.
    assert [(r["prompt_id"], r["chosen"], r["rejected"]) for r in rows] == [("a", "great", "bad"), ("b", "ok", "no")]
    assert prepared.counts == {"skipped_tied_prompts": 1}
    phi = Transform("exp", 2.0)
    assert rows[0]["target_margin"] == pytest.approx(float(phi(np.array(0.75)) - phi(np.array(0.125))))
    assert rows[1]["ref_chosen_logps"] == -7.0 and rows[1]["ref_rejected_logps"] == -6.0
    with pytest.raises(InfalignError, match="pairs_per_prompt applies to pairs='all' only"):
        prepare(datasets.Dataset.from_dict(data), "pairs", Transform("identity"), 1.0, pairs="best_worst",
                        pairs_per_prompt=1)
    with pytest.raises(InfalignError, match="pairs 'some' is not allowed; allowed: all, best_worst"):
        prepare(datasets.Dataset.from_dict(data), "pairs", Transform("identity"), 1.0, pairs="some")


def test_prepare_config_pairs_checks():
    from offline_infalign.config import PrepareConfig

    base = dict(input="i", out="o", transform="identity", beta=1.0)
    assert PrepareConfig(**base, pairs="best_worst").pairs == "best_worst"
    with pytest.raises(InfalignError, match="pairs_per_prompt applies to pairs='all' only, got pairs='best_worst'"):
        PrepareConfig(**base, pairs="best_worst", pairs_per_prompt=4)
    with pytest.raises(InfalignError, match="pairs='best_worst' applies to kind 'pairs' only, got kind 'bon'"):
        PrepareConfig(**base, pairs="best_worst", kind="bon")
    with pytest.raises(InfalignError, match="pairs 'best' is not allowed"):
        PrepareConfig(**base, pairs="best")


# ---- sampling settings: tempered samples refused unless allowed (docs/math.md §9) -----------------------------


def _prepare_cfg(scored_dir, out, **kw):
    from offline_infalign.config import PrepareConfig

    return PrepareConfig(**{"input": str(scored_dir), "out": str(out), "kind": "pairs", "transform": "identity",
                            "beta": 0.5, **kw})


@pytest.mark.parametrize("settings,named", [
    ({"temperature": 0.7, "tempered": True}, "temperature=0.7"),
    ({"top_p": 0.9, "tempered": True}, "top_p=0.9"),
    ({"top_k": 50, "tempered": True}, "top_k=50"),
], ids=["temperature", "top_p", "top_k"])
def test_prepare_refuses_tempered_samples_unless_allowed(bpe_scored, tmp_path, settings, named):
    from train_fixtures import save_scored

    from offline_infalign.artifacts.storage import read_manifest
    from offline_infalign.stages.prepare import run_prepare

    scored, model = bpe_scored
    src = save_scored(tmp_path / "scored", scored, model, **settings)
    with pytest.raises(InfalignError, match=f"sampled at {named}: .*another policy than the base model.*"
                                            "--allow-tempered-samples"):
        run_prepare(_prepare_cfg(src, tmp_path / "refused"))
    assert not (tmp_path / "refused" / "manifest.json").exists()
    m = run_prepare(_prepare_cfg(src, tmp_path / "allowed", allow_tempered_samples=True))
    assert len(m["warnings"]) == 1 and named in m["warnings"][0] and "allow_tempered_samples" in m["warnings"][0]
    assert read_manifest(tmp_path / "allowed")["warnings"] == m["warnings"]
    assert m["tempered"] is True


def test_untempered_samples_pass_and_the_sampling_facts_are_copied(bpe_scored, tmp_path):
    from train_fixtures import save_scored

    from offline_infalign.stages.prepare import run_prepare

    scored, model = bpe_scored
    src = save_scored(tmp_path / "scored", scored, model)
    m = run_prepare(_prepare_cfg(src, tmp_path / "p", pairs="best_worst"))
    assert m["warnings"] == [] and m["guidance"] is None  # no procedure given: no guidance
    assert (m["temperature"], m["top_p"], m["top_k"], m["tempered"]) == (1.0, 1.0, 0, False)
    assert m["stop_token_ids"] == sorted(m["stop_token_ids"]) and len(m["stop_token_ids"]) == 2
    assert m["cut_fraction"] == pytest.approx(0.25)  # completion 0 of each prompt is cut
    assert m["pairs"] == "best_worst" and m["skipped_tied_prompts"] == 0
    assert m["num_rows"]["train"] + m["num_rows"]["test"] == len(scored)  # one pair per prompt


# ---- guidance at prepare (docs/math.md §7, core/finite_k.py) -----------------------------------------------


def test_beta_floor_warns_for_the_issue_example():
    """Worst-of-4 at KL 1: the tradeoff tool's β ≈ 2.4e-5; at K = 8 neighbouring targets are ~1e4 nats apart."""
    from offline_infalign.core.finite_k import finite_k_tilt
    from offline_infalign.core.tradeoff import choose, predict
    from offline_infalign.kinds.preparation import TARGET_SPREAD_MAX_NATS, guidance

    c = choose("won", 4, 1.0, with_optimum=False)
    assert 2.0e-5 < c.beta < 3.0e-5
    g = guidance(c.transform, c.beta, 8, "won", 4)
    phi = c.transform((np.arange(1, 9) - 0.5) / 8)
    assert g.target_spread == pytest.approx((phi.max() - phi.min()) / c.beta) and g.target_spread > 1e4
    assert g.beta_floor == pytest.approx((phi.max() - phi.min()) / TARGET_SPREAD_MAX_NATS)
    assert any(w.startswith(f"beta={c.beta:.3g} is below the floor") for w in g.warnings)
    # The numbers recorded are those of core.tradeoff.predict and core.finite_k.finite_k_tilt at this β and K.
    assert g.predicted_win_rate == pytest.approx(predict(c.transform, c.beta, "won", 4).win_rate)
    assert g.ceiling_win_rate == finite_k_tilt(c.transform, c.beta, 8, "won", 4).win_rate


def test_beta_floor_threshold_by_hand():
    """Identity transform, K = 4: the targets at ranks 1/8 … 7/8 span 0.75/β nats, so the floor is β = 0.75/30."""
    from offline_infalign.kinds.preparation import guidance

    def floor_warnings(beta):
        return [w for w in guidance(Transform("identity"), beta, 4, "bon", 2).warnings if "floor" in w]

    assert guidance(Transform("identity"), 0.1, 4, "bon", 2).beta_floor == pytest.approx(0.025)
    assert floor_warnings(0.0249) and not floor_warnings(0.0251)


def test_ceiling_warning_names_the_k_that_would_do():
    from offline_infalign.core.finite_k import finite_k_tilt
    from offline_infalign.core.tradeoff import choose
    from offline_infalign.kinds.preparation import CEILING_GAP, LARGER_K, guidance

    # best-of-4 at KL 0.3 from K = 32: the ceiling is ~0.05 below the prediction; the first K within 0.03 is named.
    c = choose("bon", 4, 0.3, with_optimum=False)
    g = guidance(c.transform, c.beta, 32, "bon", 4)
    gaps = {k: g.predicted_win_rate - finite_k_tilt(c.transform, c.beta, k, "bon", 4).win_rate for k in LARGER_K}
    assert g.predicted_win_rate - g.ceiling_win_rate > CEILING_GAP
    assert g.k_needed == min(k for k in LARGER_K if k > 32 and gaps[k] <= CEILING_GAP) == 64
    assert any(f"K = {g.k_needed} samples per prompt would come within 0.03" in w for w in g.warnings)
    # best-of-16 at KL 1: even K = 256 stays more than 0.03 below.
    c = choose("bon", 16, 1.0, with_optimum=False)
    g = guidance(c.transform, c.beta, 32, "bon", 16)
    assert g.k_needed == "more than 256" and any("more than 256 samples per prompt" in w for w in g.warnings)
    # worst-of-4 at KL 0.3 from K = 32: within 0.03, spread ~12 nats: no warning.
    c = choose("won", 4, 0.3, with_optimum=False)
    g = guidance(c.transform, c.beta, 32, "won", 4)
    assert g.warnings == () and g.k_needed is None and g.target_spread < 30


def test_prepare_records_and_prints_the_guidance(bpe_scored, tmp_path, capsys):
    from train_fixtures import save_scored

    from offline_infalign import cli

    scored, model = bpe_scored
    src = save_scored(tmp_path / "scored", scored, model)
    out = tmp_path / "p"
    assert cli.main(["prepare", "--input", str(src), "--out", str(out), "--kind", "listwise", "--transform", "auto",
                     "--procedure", "won", "--n", "4", "--kl", "1.0"]) == 0
    printed = capsys.readouterr().out
    from offline_infalign.artifacts.storage import read_manifest

    m = read_manifest(out)
    g = m["guidance"]
    assert g["num_samples"] == 4 and g["beta"] == pytest.approx(m["beta"]) and g["procedure"] == "won"
    assert g["predicted_win_rate"] == pytest.approx(m["predicted"]["win_rate"], abs=1e-9)
    assert m["warnings"] and "below the floor" in m["warnings"][0]
    assert f"finite-K ceiling at K=4: {g['ceiling_win_rate']:.4f}" in printed
    assert "WARNING: beta=" in printed
