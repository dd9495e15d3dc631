"""Pipeline stages: resume after a simulated crash equals an uninterrupted run, config guard, shards + merge,
prepare with --transform auto, long prompts, and the manifests' keys."""

import json
import os

import datasets
import pytest

from offline_infalign.artifacts.storage import read_manifest
from offline_infalign.config import (
    BuildConfig,
    MergeConfig,
    PrepareConfig,
    SampleConfig,
    ScoreConfig,
    load_config,
)
from offline_infalign.core.errors import InfalignError
from offline_infalign.stages import merge as merge_stage
from offline_infalign.stages import prepare as prepare_stage
from offline_infalign.stages import sample as sample_stage
from offline_infalign.stages import score as score_stage
from tests.tiny_models import save_tiny_lm

WORDS = "the movie was very good . tell me about the cat please".split()
# Shared through the environment: the scorer imports this file by name, possibly as a second module object.
FAIL_AFTER = "INFALIGN_TEST_SCORE_FAIL_AFTER"


def length_reward(prompts, completions):
    """Reward = number of words plus small prompt- and character-length terms (few ties; depends on nothing else)."""
    if FAIL_AFTER in os.environ:
        left = int(os.environ[FAIL_AFTER]) - 1
        os.environ[FAIL_AFTER] = str(left)
        if left < 0:
            raise RuntimeError("simulated crash while scoring")
    return [len(c.split()) + 0.01 * len(p) + 0.001 * len(c) for p, c in zip(prompts, completions)]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    lm = save_tiny_lm(root / "lm")
    bpe = save_tiny_lm(root / "bpe", tokenizer="bpe")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(WORDS[i : i + 3])}) + "\n" for i in range(6)))
    return {"lm": str(lm), "bpe": str(bpe), "prompts": str(prompts)}


def _sample_cfg(assets, out, **kw):
    base = {"prompts": assets["prompts"], "model": assets["lm"], "out": str(out), "num_samples": 4,
            "max_new_tokens": 6, "chunk_size": 2, "batch_size": 2, "device": "cpu"}
    return load_config(SampleConfig, None, {**base, **kw})


def _rows(path):
    return datasets.load_from_disk(str(path)).to_list()


def test_sample_resume_after_crash_equals_uninterrupted(assets, tmp_path, monkeypatch):
    full = sample_stage.run_sample(_sample_cfg(assets, tmp_path / "full"), progress=False)
    assert full["stage"] == "samples" and full["num_rows"] == 6 and full["num_samples"] == 4
    for key in ("model", "tokenizer", "seed", "config", "package_version", "content_hash", "input_hash",
                "stop_token_ids", "cut_fraction", "temperature", "top_p", "top_k", "tempered"):
        assert key in full

    real = sample_stage._sample_chunk
    calls = []

    def crash_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(sample_stage, "_sample_chunk", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sample_stage.run_sample(_sample_cfg(assets, tmp_path / "resumed"), progress=False)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "resumed" / "_work" / "chunks").iterdir()) == ["chunk-00000"]

    # A different config is refused, showing the difference; batch_size may change (it cannot change results).
    with pytest.raises(InfalignError, match=r"config_diff \(recorded -> now\): seed: 0 -> 1"):
        sample_stage.run_sample(_sample_cfg(assets, tmp_path / "resumed", seed=1), progress=False)
    counted = []
    monkeypatch.setattr(sample_stage, "_sample_chunk", lambda *a, **k: counted.append(1) or real(*a, **k))
    resumed = sample_stage.run_sample(_sample_cfg(assets, tmp_path / "resumed", batch_size=3), progress=False)
    assert len(counted) == 2  # chunk 0 was kept, chunks 1 and 2 sampled
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "full")
    assert resumed["content_hash"] == full["content_hash"]
    assert not (tmp_path / "resumed" / "_work").exists()


def test_rerun_of_finished_stage_is_a_no_op_or_refused(assets, tmp_path):
    first = sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s"), progress=False)
    assert sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s"), progress=False) == first
    with pytest.raises(InfalignError, match="finished artifact with a different config.*num_samples: 4 -> 3"):
        sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s", num_samples=3), progress=False)


def test_score_resume_prepare_auto_and_manifests(assets, tmp_path, monkeypatch):
    sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s"), progress=False)
    score = {"input": str(tmp_path / "s"), "reward_model": "tests.test_pipeline:length_reward", "chunk_size": 2}
    full = score_stage.run_score(load_config(ScoreConfig, None, {**score, "out": str(tmp_path / "full")}), progress=False)
    monkeypatch.setenv(FAIL_AFTER, "1")  # the second chunk's scoring call fails
    # The reward's exception is reported as one error naming it (scoring.RewardCallError).
    with pytest.raises(InfalignError, match="raised RuntimeError: simulated crash while scoring"):
        score_stage.run_score(load_config(ScoreConfig, None, {**score, "out": str(tmp_path / "sc")}), progress=False)
    monkeypatch.delenv(FAIL_AFTER)
    resumed = score_stage.run_score(load_config(ScoreConfig, None, {**score, "out": str(tmp_path / "sc")}),
                                 progress=False)
    assert _rows(tmp_path / "sc") == _rows(tmp_path / "full") and resumed["content_hash"] == full["content_hash"]
    samples = read_manifest(tmp_path / "s")
    assert full["input_hash"] == samples["content_hash"] and full["reward_model"].endswith(":length_reward")
    rows = _rows(tmp_path / "sc")
    assert rows[0]["rewards"] == pytest.approx(length_reward([rows[0]["prompt"]] * 4, rows[0]["completions"]))

    prep = prepare_stage.run_prepare(load_config(PrepareConfig, None, {
        "input": str(tmp_path / "sc"), "out": str(tmp_path / "p"), "kind": "bon", "transform": "auto",
        "procedure": "bon", "n": 4, "kl": 0.3, "test_fraction": 0.5}))
    from offline_infalign.core.tradeoff import choose

    choice = choose("bon", 4, 0.3)
    assert prep["transform"] == "exp" and prep["tilt"] == pytest.approx(choice.tilt)
    assert prep["beta"] == pytest.approx(choice.beta) and prep["kl"] == 0.3
    for key in ("stage", "kind", "transform", "tilt", "beta", "procedure", "n", "num_samples", "model", "tokenizer",
                "reward_model", "seed", "input_hash", "package_version", "config"):
        assert key in prep, key
    assert prep["input_hash"] == full["content_hash"] and prep["num_samples"] == 4
    # The trainer reuses stored ref_logps only for base weights in the dtype they were computed in.
    assert samples["ref_dtype"] == full["ref_dtype"] == prep["ref_dtype"] == "float32"
    dd = datasets.load_from_disk(str(tmp_path / "p"))
    assert set(dd) == {"train", "test"} and len(dd["train"]) + len(dd["test"]) == 24

    # The scored input changed (another reward) → preparing into the same folder is refused.
    score_stage.run_score(load_config(ScoreConfig, None, {**score, "reward_model": "demo", "out": str(tmp_path / "d")}),
                       progress=False)
    with pytest.raises(InfalignError, match="input_hash"):
        prepare_stage.run_prepare(load_config(PrepareConfig, None, {
            "input": str(tmp_path / "d"), "out": str(tmp_path / "p"), "kind": "bon", "transform": "auto",
            "procedure": "bon", "n": 4, "kl": 0.3, "test_fraction": 0.5}))
    with pytest.raises(InfalignError, match="holds a 'samples' artifact; expected 'scored'"):
        prepare_stage.run_prepare(load_config(PrepareConfig, None, {
            "input": str(tmp_path / "s"), "out": str(tmp_path / "p2"), "transform": "identity", "beta": 1.0}))


def test_shards_merge_to_the_unsharded_artifact(assets, tmp_path):
    sample_stage.run_sample(_sample_cfg(assets, tmp_path / "all"), progress=False)
    shards = []
    for i in (1, 0, 2):  # any order
        out = tmp_path / f"shard{i}"
        m = sample_stage.run_sample(_sample_cfg(assets, out, shard=f"{i}/3", batch_size=1), progress=False)
        assert m["shard"] == [i, 3] and m["num_rows"] == 2
        shards.append(str(out))
    merged = merge_stage.run_merge(MergeConfig(inputs=shards, out=str(tmp_path / "merged")))
    assert merged["shard"] is None and merged["num_rows"] == 6
    # The whole run's cut fraction, not the first shard's.
    assert merged["cut_fraction"] == read_manifest(tmp_path / "all")["cut_fraction"]
    # Shards sampled one prompt per batch: the same draws and ids as the unsharded run; the sampler's log-probs
    # round differently in other batch shapes (sampling.py: only identical batching is bit-identical).
    merged_rows, all_rows = _rows(tmp_path / "merged"), _rows(tmp_path / "all")
    for key in ("prompt_id", "prompt", "prompt_ids", "completion_ids", "finish_reasons", "completions"):
        assert [r[key] for r in merged_rows] == [r[key] for r in all_rows]
    for rm, ra in zip(merged_rows, all_rows):
        assert rm["ref_logps"] == pytest.approx(ra["ref_logps"], abs=1e-4)
    assert merge_stage.run_merge(MergeConfig(inputs=shards[::-1], out=str(tmp_path / "merged"))) == merged  # rerun
    with pytest.raises(InfalignError, match="already holds another artifact"):
        merge_stage.run_merge(MergeConfig(inputs=shards, out=str(tmp_path / "all")))
    with pytest.raises(InfalignError, match=r"missing shard\(s\) 2/3: merge needs all 3"):
        merge_stage.run_merge(MergeConfig(inputs=shards[:2], out=str(tmp_path / "m2")))
    with pytest.raises(InfalignError, match="shard 1/3 given twice"):
        merge_stage.run_merge(MergeConfig(inputs=shards + shards[:1], out=str(tmp_path / "m3")))
    with pytest.raises(InfalignError, match="is not a shard"):
        merge_stage.run_merge(MergeConfig(inputs=[str(tmp_path / "all")], out=str(tmp_path / "m4")))
    odd = tmp_path / "odd"
    sample_stage.run_sample(_sample_cfg(assets, odd, shard="2/3", seed=5), progress=False)
    with pytest.raises(InfalignError, match="different config .*seed: 0 -> 5"):
        merge_stage.run_merge(MergeConfig(inputs=shards[:2] + [str(odd)], out=str(tmp_path / "m5")))


def test_long_prompts_in_the_pipeline(assets, tmp_path):
    long_file = tmp_path / "long.jsonl"
    long_file.write_text(json.dumps({"prompt": "the cat"}) + "\n" + json.dumps({"prompt": "very good " * 70}) + "\n")
    # The tiny LM has 128 positions; 140 prompt words + 6 new tokens do not fit.
    with pytest.raises(InfalignError, match="has 140 tokens but the model context leaves 122"):
        sample_stage.run_sample(_sample_cfg(assets, tmp_path / "f", prompts=str(long_file)), progress=False)
    m = sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s", prompts=str(long_file), on_long_prompt="skip"),
                            progress=False)
    assert m["num_rows"] == 1 and m["num_skipped_long"] == 1
    m = sample_stage.run_sample(_sample_cfg(assets, tmp_path / "t", prompts=str(long_file), on_long_prompt="truncate"),
                            progress=False)
    assert m["num_rows"] == 2 and m["num_truncated"] == 1
    row = _rows(tmp_path / "t")[1]
    assert len(row["prompt"].split()) == 122
    assert len(row["prompt_ids"]) == 122  # the ids actually fed: the truncated prompt's


def test_build_config_checks():
    base = {"prompts": "p.jsonl", "model": "m", "reward_model": "r", "out": "o"}
    with pytest.raises(InfalignError, match=r"^sample: num_samples K must be an integer >= 2 \(completions per prompt\), got 1$"):
        load_config(BuildConfig, None, {**base, "num_samples": 1})
    with pytest.raises(InfalignError, match=r"unknown config key\(s\) in command-line overrides: 'num_sample'"):
        load_config(BuildConfig, None, {**base, "num_sample": 4})
    with pytest.raises(InfalignError, match="shard must look like 'I/N'"):
        load_config(BuildConfig, None, {**base, "shard": "2"})
    with pytest.raises(InfalignError, match="shard '3/3' needs 0 <= I < N"):
        load_config(BuildConfig, None, {**base, "shard": "3/3"})
    with pytest.raises(InfalignError, match="beta must be given with --transform identity"):
        load_config(BuildConfig, None, {**base, "transform": "identity"})
    with pytest.raises(InfalignError, match="auto chooses tilt and beta itself"):
        load_config(PrepareConfig, None, {"input": "i", "out": "o", "transform": "auto", "procedure": "bon",
                                          "n": 4, "kl": 0.3, "beta": 1.0})
    with pytest.raises(InfalignError, match="--transform auto needs --n, --kl"):
        load_config(PrepareConfig, None, {"input": "i", "out": "o", "transform": "auto", "procedure": "bon"})
    with pytest.raises(InfalignError, match="pairs_per_prompt applies to kind 'pairs' only, got kind 'bon'"):
        load_config(BuildConfig, None, {**base, "kind": "bon", "pairs_per_prompt": 4})
    cfg = load_config(BuildConfig, None, {**base, "shard": "1/2"})
    assert cfg.paths()["scored"].endswith("shard-1-of-2/scored") and cfg.score_config().shard is None


def test_resume_refused_when_the_prompt_source_changed(assets, tmp_path, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": w}) + "\n" for w in ("the cat", "a dog", "very good")))

    real, calls = sample_stage._sample_chunk, []

    def crash_on_second(*a, **k):  # chunk 0 is written, so the run has recorded its config
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(sample_stage, "_sample_chunk", crash_on_second)
    with pytest.raises(RuntimeError):
        sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s", prompts=str(prompts)), progress=False)
    monkeypatch.undo()
    prompts.write_text(prompts.read_text() + json.dumps({"prompt": "new one"}) + "\n")
    with pytest.raises(InfalignError, match="config_diff.*input_hash"):
        sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s", prompts=str(prompts)), progress=False)


def test_dataset_does_not_depend_on_chunk_or_batch_size(assets, tmp_path):
    sample_stage.run_sample(_sample_cfg(assets, tmp_path / "a", chunk_size=2, batch_size=1), progress=False)
    sample_stage.run_sample(_sample_cfg(assets, tmp_path / "b", chunk_size=5, batch_size=4), progress=False)
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["completions"] for r in a] == [r["completions"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["ref_logps"] == pytest.approx(rb["ref_logps"], abs=1e-4)


def test_sharded_scoring_merges_to_the_unsharded_scores(assets, tmp_path):
    sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s"), progress=False)
    score = {"input": str(tmp_path / "s"), "reward_model": "tests.test_pipeline:length_reward"}
    score_stage.run_score(load_config(ScoreConfig, None, {**score, "out": str(tmp_path / "all")}), progress=False)
    parts = []
    for i in range(2):
        m = score_stage.run_score(load_config(ScoreConfig, None, {**score, "shard": f"{i}/2",
                                                               "out": str(tmp_path / f"sc{i}")}), progress=False)
        assert m["shard"] == [i, 2] and m["num_rows"] == 3
        parts.append(str(tmp_path / f"sc{i}"))
    merged = merge_stage.run_merge(MergeConfig(inputs=parts[::-1], out=str(tmp_path / "merged")))
    assert merged["stage"] == "scored" and _rows(tmp_path / "merged") == _rows(tmp_path / "all")
    sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s0", shard="0/2"), progress=False)
    with pytest.raises(InfalignError, match="is already shard \\[0, 2\\]; score it without --shard"):
        score_stage.run_score(load_config(ScoreConfig, None, {**score, "input": str(tmp_path / "s0"), "shard": "0/2",
                                                           "out": str(tmp_path / "x")}), progress=False)


@pytest.mark.parametrize("which", ["lm", "bpe"])
def test_samples_record_token_ids_stop_set_and_cut_fraction(assets, tmp_path, which):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offline_infalign.models.sampling import compute_ref_logps
    from offline_infalign.models.tokenization import encode_prompt

    tok = AutoTokenizer.from_pretrained(assets[which])
    model = AutoModelForCausalLM.from_pretrained(assets[which]).eval()
    eos, eot = tok.eos_token_id, tok.convert_tokens_to_ids("<eot>")
    m = sample_stage.run_sample(_sample_cfg(assets, tmp_path / "s", model=assets[which], max_new_tokens=30,
                                            num_samples=6, stop_token_ids=[7]), progress=False)
    stop = sorted({eos, 7} | ({eot} if which == "bpe" else set()))  # generation config ∪ tokenizer eos ∪ extra
    assert m["stop_token_ids"] == stop
    assert (m["temperature"], m["top_p"], m["top_k"], m["tempered"]) == (1.0, 1.0, 0, False)
    rows = _rows(tmp_path / "s")
    assert list(rows[0]) == ["prompt_id", "prompt", "prompt_ids", "completions", "completion_ids", "finish_reasons",
                             "ref_logps"]
    finishes = [f for r in rows for f in r["finish_reasons"]]
    assert m["cut_fraction"] == pytest.approx(finishes.count("length") / len(finishes))
    assert 0 < m["cut_fraction"] < 1  # both kinds occur
    for r in rows:
        assert r["prompt_ids"] == encode_prompt(tok, r["prompt"])
        for ids, finish, text in zip(r["completion_ids"], r["finish_reasons"], r["completions"]):
            assert not set(stop) & set(ids[:-1])
            assert (finish == "stop") == (ids[-1] in stop) and (finish == "stop" or len(ids) == 30)
            assert text == tok.decode(ids[:-1] if finish == "stop" else ids, skip_special_tokens=True)
        teacher = compute_ref_logps(model, tok, [r["prompt"]] * 6, r["completion_ids"])
        assert r["ref_logps"] == pytest.approx(teacher, abs=1e-4)


def test_sample_command_reports_cut_fraction_and_warns(assets, tmp_path, capsys):
    from offline_infalign.cli import main

    out = tmp_path / "s"
    assert main(["sample", "--prompts", assets["prompts"], "--model", assets["lm"], "--out", str(out),
                 "--num-samples", "2", "--max-new-tokens", "2", "--temperature", "0.7", "--device", "cpu",
                 "--stop-token-ids", "7", "9"]) == 0
    m = read_manifest(out)
    assert m["tempered"] is True and m["temperature"] == 0.7 and 7 in m["stop_token_ids"] and 9 in m["stop_token_ids"]
    printed = capsys.readouterr()
    assert f"cut at max_new_tokens=2: {m['cut_fraction']:.1%} of completions" in printed.out
    assert m["cut_fraction"] > 0.2
    assert (f"warning: {m['cut_fraction']:.0%} of completions hit max_new_tokens=2; they are kept as cut "
            "completions with no stop-token term (docs/math.md §9)") in printed.err
    assert "temperature=0.7, top_p=1.0, top_k=0 come from another policy" in printed.err
    # At T = 1 with every id a stop id (each completion is one stop token, none is cut): neither warning.
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(assets["lm"]).vocab_size
    assert main(["sample", "--prompts", assets["prompts"], "--model", assets["lm"], "--out", str(tmp_path / "t"),
                 "--num-samples", "2", "--max-new-tokens", "2", "--stop-token-ids"]
                + [str(i) for i in range(vocab)]) == 0
    assert read_manifest(tmp_path / "t")["cut_fraction"] == 0 and "warning" not in capsys.readouterr().err
