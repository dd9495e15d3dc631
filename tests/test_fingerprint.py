"""Fingerprints of what produced the data (fingerprint.py), and the sample/score resume that they guard."""

import json
import shutil
import struct

import datasets
import pytest
from tiny_models import save_tiny_lm

from offline_infalign.artifacts.fingerprint import SLICE_BYTES, fingerprint_model, fingerprint_reward
from offline_infalign.artifacts.storage import InjectedFault, read_manifest, save_artifact
from offline_infalign.config import PrepareConfig, SampleConfig, ScoreConfig, load_config
from offline_infalign.core.errors import InfalignError
from offline_infalign.stages.prepare import run_prepare
from offline_infalign.stages.sample import run_sample
from offline_infalign.stages.score import run_score

REWARD_SRC = "def reward(prompts, completions):\n    return [{sign}float(len(c)) for c in completions]\n"


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("fp") / "lm")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_model_fingerprint_follows_content_not_path(lm, tmp_path):
    fp = fingerprint_model(lm)
    assert fp.startswith("files:") and fingerprint_model(str(lm)) == fp
    assert fingerprint_model(_copy(lm, tmp_path / "copy")) == fp  # same files elsewhere: same model
    readme = _copy(lm, tmp_path / "readme")
    (readme / "README.md").write_text("notes")  # changes nothing the model computes
    assert fingerprint_model(readme) == fp
    for name, edit in [("config.json", lambda p: p.write_text(p.read_text().replace("32", "33", 1))),
                       ("tokenizer.json", lambda p: p.write_text(p.read_text().replace("movie", "mavie"))),
                       ("generation_config.json", lambda p: p.write_text(json.dumps({"eos_token_id": 1})))]:
        other = _copy(lm, tmp_path / name)
        edit(other / name)
        assert fingerprint_model(other) != fp, name


def test_weight_edits_are_caught_in_the_header_and_the_slices(tmp_path):
    lm = save_tiny_lm(tmp_path / "wide", hidden_size=128, intermediate_size=512)  # ~2 MB: slices are a part
    fp = fingerprint_model(lm)
    weights = lm / "model.safetensors"
    (header_len,) = struct.unpack("<Q", weights.read_bytes()[:8])
    size = weights.stat().st_size
    assert size > 3 * SLICE_BYTES  # else the slices would cover the whole file and this test would prove less
    for offset in (8 + header_len + 10, size // 2, size - 5):  # a value in each slice: the header is unchanged
        other = _copy(lm, tmp_path / f"w{offset}")
        _flip_byte(other / "model.safetensors", offset)
        assert fingerprint_model(other) != fp, offset
    # Another model of the same architecture (same header): its values differ in the slices.
    assert fingerprint_model(save_tiny_lm(tmp_path / "seed1", seed=1, hidden_size=128,
                                          intermediate_size=512)) != fp


def test_hub_id_without_network_is_marked_unresolved():
    # conftest sets HF_HUB_OFFLINE: nothing cached, so the commit is unknown and the string says so.
    assert fingerprint_model("org/not-cached-model") == "hub:org/not-cached-model@default?"
    assert fingerprint_model("org/m", revision="a" * 40) == f"hub:org/m@{'a' * 40}"


def test_reward_fingerprint(tmp_path, monkeypatch, lm):
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "fp_reward_mod.py"
    src.write_text(REWARD_SRC.format(sign=""))
    a = fingerprint_reward("fp_reward_mod:reward")
    assert a.startswith("callable:fp_reward_mod:reward:") and a != fingerprint_reward("fp_reward_mod:other")
    src.write_text(REWARD_SRC.format(sign="-"))
    assert fingerprint_reward("fp_reward_mod:reward") != a
    assert fingerprint_reward("no_such_module_xyz:f") == "callable:no_such_module_xyz:f?"
    assert fingerprint_reward("demo") == fingerprint_reward("demo") and fingerprint_reward("demo").startswith("demo:")
    assert fingerprint_reward(str(lm)) == fingerprint_model(lm)


def _samples(path, n=6, k=2):
    data = datasets.Dataset.from_dict({
        "prompt_id": [f"p{i}" for i in range(n)], "prompt": [f"prompt {i}" for i in range(n)],
        "completions": [[f"c{'x' * (i + j)}" for j in range(k)] for i in range(n)],
        "ref_logps": [[-1.0 - j for j in range(k)] for _ in range(n)]})
    save_artifact(data, path, {"stage": "samples", "num_samples": k, "model": "m", "model_fingerprint": "files:abc",
                               "config": {}})
    return str(path)


def test_score_resume_is_refused_when_the_reward_code_changed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "fp_score_reward.py"
    src.write_text(REWARD_SRC.format(sign=""))
    samples = _samples(tmp_path / "samples")

    def cfg(out):
        return load_config(ScoreConfig, None, {"input": samples, "reward_model": "fp_score_reward:reward",
                                               "out": str(out), "chunk_size": 2})

    whole = run_score(cfg(tmp_path / "whole"))
    assert whole["reward_fingerprint"] == fingerprint_reward("fp_score_reward:reward")
    assert whole["model_fingerprint"] == "files:abc"  # the samples' fingerprint travels on
    monkeypatch.setenv("INFALIGN_FAULT", "after-chunk:1")
    with pytest.raises(InjectedFault):
        run_score(cfg(tmp_path / "killed"))
    monkeypatch.delenv("INFALIGN_FAULT")
    src.write_text(REWARD_SRC.format(sign="-"))  # the reward flips sign between the kill and the rerun
    with pytest.raises(InfalignError, match=r"unfinished run with a different config.*reward_fingerprint: "):
        run_score(cfg(tmp_path / "killed"))
    assert not (tmp_path / "killed" / "manifest.json").exists()
    src.write_text(REWARD_SRC.format(sign=""))  # back as it was: the resume goes on and finishes the same
    resumed = run_score(cfg(tmp_path / "killed"))
    assert resumed["content_hash"] == whole["content_hash"]
    assert datasets.load_from_disk(str(tmp_path / "killed"))["rewards"] == \
        datasets.load_from_disk(str(tmp_path / "whole"))["rewards"]


def test_sample_resume_is_refused_when_the_model_changed(lm, tmp_path, monkeypatch):
    model = _copy(lm, tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the movie was {w}"}) + "\n"
                               for w in ("good", "bad", "fine", "long")))

    def cfg():
        return load_config(SampleConfig, None, {"prompts": str(prompts), "model": str(model),
                                                "out": str(tmp_path / "samples"), "num_samples": 2,
                                                "max_new_tokens": 3, "chunk_size": 2, "device": "cpu"})

    monkeypatch.setenv("INFALIGN_FAULT", "after-chunk:0")
    with pytest.raises(InjectedFault):
        run_sample(cfg(), progress=False)
    monkeypatch.delenv("INFALIGN_FAULT")
    shutil.rmtree(model)
    save_tiny_lm(model, seed=3)  # another model saved under the same path
    with pytest.raises(InfalignError, match=r"different config.*model_fingerprint: 'files:"):
        run_sample(cfg(), progress=False)
    out = tmp_path / "samples2"
    manifest = run_sample(load_config(SampleConfig, None, {**cfg().__dict__, "out": str(out)}), progress=False)
    assert manifest["model_fingerprint"] == fingerprint_model(model)


def test_prepare_carries_the_fingerprints(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fp_prep_reward.py").write_text(REWARD_SRC.format(sign=""))
    scored = run_score(load_config(ScoreConfig, None, {"input": _samples(tmp_path / "s", n=8, k=4),
                                                       "reward_model": "fp_prep_reward:reward",
                                                       "out": str(tmp_path / "scored")}))
    run_prepare(load_config(PrepareConfig, None, {"input": str(tmp_path / "scored"), "out": str(tmp_path / "p"),
                                                  "kind": "pairs", "transform": "identity", "beta": 1.0}))
    prepared = read_manifest(tmp_path / "p")
    assert prepared["model_fingerprint"] == "files:abc"
    assert prepared["reward_fingerprint"] == scored["reward_fingerprint"]


# ---- the tokenizer the stored ids were made with ----------------------------------------------------------------


def test_tokenizer_fingerprint_is_the_vocabulary(lm, tmp_path):
    from tiny_models import tiny_bpe_tokenizer, tiny_tokenizer

    from offline_infalign.artifacts.fingerprint import fingerprint_tokenizer
    from offline_infalign.models.modeling import load_tokenizer

    word = fingerprint_tokenizer(load_tokenizer(str(lm)))
    assert word.startswith(f"vocab:{len(tiny_tokenizer())}:")
    copy = _copy(lm, tmp_path / "elsewhere")
    assert fingerprint_tokenizer(load_tokenizer(str(copy))) == word  # by content, not by path
    bpe = fingerprint_tokenizer(tiny_bpe_tokenizer())
    assert bpe.startswith("vocab:320:") and bpe != word
    # Padding with EOS adds no token: a tokenizer loaded with or without it reads every id the same.
    unpadded = tiny_tokenizer(pad=False)
    unpadded.save_pretrained(tmp_path / "nopad")
    assert fingerprint_tokenizer(load_tokenizer(str(tmp_path / "nopad"), pad_token_as_eos=True)) == \
        fingerprint_tokenizer(load_tokenizer(str(tmp_path / "nopad"), pad_token_as_eos=False))
    # One token's id changed: another fingerprint, though the size is the same.
    moved = json.loads((copy / "tokenizer.json").read_text())
    vocab = moved["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    (copy / "tokenizer.json").write_text(json.dumps(moved))
    swapped = fingerprint_tokenizer(load_tokenizer(str(copy)))
    assert swapped != word and swapped.split(":")[1] == word.split(":")[1]


def test_train_refuses_ids_of_another_tokenizer(lm, tmp_path, capsys):
    """Samples of a word-level model (~70 tokens) trained into a byte-level BPE model (320 tokens): every id is in
    range, so only the recorded tokenizer fingerprint can tell."""
    from bad_input_helpers import error_line, make_build
    from tiny_models import tiny_tokenizer

    from offline_infalign.cli import main

    assets = {"lm": str(lm), "prompts": str(tmp_path / "prompts.jsonl")}
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                                                    ["tell me about the cat", "how was the movie ?", "why is it sad"]))
    built = make_build(assets, tmp_path / "b")
    recorded = {read_manifest(built / s)["tokenizer_fingerprint"] for s in ("samples", "scored", "prepared")}
    word = f"vocab:{len(tiny_tokenizer())}:"
    assert len(recorded) == 1 and next(iter(recorded)).startswith(word)
    bpe = save_tiny_lm(tmp_path / "bpe", tokenizer="bpe")
    train = ["train", "--dataset", str(built / "prepared"), "--loss", "tilted_pairwise", "--max-steps", "1"]
    err = error_line(capsys, [*train, "--model", str(bpe), "--out", str(tmp_path / "t1")])
    assert "the dataset's token ids (prompt_ids, chosen_ids, rejected_ids) were made by tokenizer" in err
    assert f"({word}" in err and "has another tokenizer (vocab:320:" in err
    # Another model with the same tokenizer (other weights): the ids mean the same tokens; it trains.
    sibling = save_tiny_lm(tmp_path / "sibling", seed=3)
    assert main([*train, "--model", str(sibling), "--out", str(tmp_path / "t2")]) == 0
