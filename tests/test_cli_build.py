"""`infalign build|sample|score|prepare|merge` from the command line: the contract flags, YAML configs, and
every bad input rejected with one line on stderr and exit code 2."""

import json

import datasets
import numpy as np
import pytest

from offline_infalign.artifacts.storage import read_manifest
from offline_infalign.cli import main
from tests.tiny_models import save_tiny_lm, save_tiny_reward_model, tiny_causal_lm, tiny_tokenizer

WORDS = "the movie was very good . tell me about the cat please".split()


def nan_reward(prompts, completions):
    return [float("nan")] * len(completions)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(WORDS[i : i + 3])}) + "\n" for i in range(6)))
    nopad = root / "nopad"
    tok = tiny_tokenizer(pad=False)
    tiny_causal_lm(tiny_tokenizer()).save_pretrained(nopad)
    tok.save_pretrained(nopad)
    return {"lm": str(save_tiny_lm(root / "lm")), "rm": str(save_tiny_reward_model(root / "rm")),
            "prompts": str(prompts), "nopad": str(nopad), "root": root}


def _build_args(assets, out, *extra):
    return ["build", "--model", assets["lm"], "--reward-model", assets["rm"], "--prompts", assets["prompts"],
            "--num-samples", "4", "--max-new-tokens", "6", "--seed", "0", "--out", str(out), "--chunk-size", "4",
            "--device", "cpu", *extra]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # Progress bars (model loading) may come first; the error itself is exactly one line, the last one.
    errors = [line for line in lines if line.startswith("infalign ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith(f"infalign {argv[0]}: error: ")
    assert "Traceback" not in "\n".join(lines)
    return errors[0]


def test_build_then_prepare_contract(assets, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(_build_args(assets, out, "--transform", "exp", "--tilt", "5", "--beta", "0.2")) == 0
    printed = capsys.readouterr().out
    assert "prepared pairs" in printed and "transform exp tilt=5, beta=0.2" in printed
    samples = datasets.load_from_disk(str(out / "samples"))
    scored = datasets.load_from_disk(str(out / "scored"))
    prepared = datasets.load_from_disk(str(out / "prepared"))
    # The samples contract (docs/design.md): the ids are the record, text and ref_logps go with them.
    assert set(samples.column_names) == {"prompt_id", "prompt", "prompt_ids", "completions", "completion_ids",
                                         "finish_reasons", "ref_logps"} and len(samples) == 6
    assert scored.column_names == samples.column_names + ["rewards"]
    assert set(prepared) == {"train", "test"}
    m = read_manifest(out / "prepared")
    assert (m["kind"], m["transform"], m["tilt"], m["beta"], m["reward_model"]) == ("pairs", "exp", 5.0, 0.2,
                                                                                    assets["rm"])
    # Rerunning the same command is a no-op; the same folder with another seed is refused with the difference.
    assert main(_build_args(assets, out, "--transform", "exp", "--tilt", "5", "--beta", "0.2")) == 0
    capsys.readouterr()
    err = _error(capsys, _build_args(assets, out, "--seed", "1", "--transform", "exp", "--tilt", "5", "--beta", "0.2"))
    assert "config_diff (recorded -> now): seed: 0 -> 1" in err

    for kind in ("listwise", "bon"):
        argv = ["prepare", "--input", str(out / "scored"), "--kind", kind, "--transform", "exp:tilt=3", "--beta",
                "0.5", "--out", str(tmp_path / kind)]
        assert main(argv) == 0
        assert datasets.load_from_disk(str(tmp_path / kind))["train"].num_rows > 0
    capsys.readouterr()
    argv = ["prepare", "--input", str(out / "scored"), "--kind", "pairs", "--transform", "auto", "--procedure", "bon",
            "--n", "4", "--kl", "0.3", "--out", str(tmp_path / "auto")]
    assert main(argv) == 0
    assert "predicted at KL 0.3: bon-4 win rate" in capsys.readouterr().out


def test_sharded_build_merge_prepare(assets, tmp_path, capsys):
    out = tmp_path / "sh"
    for i in (0, 1):
        assert main(_build_args(assets, out, "--shard", f"{i}/2", "--transform", "identity", "--beta", "1")) == 0
    assert not (out / "shard-0-of-2" / "prepared").exists()
    assert main(["merge", "--inputs", str(out / "shard-0-of-2" / "scored"), str(out / "shard-1-of-2" / "scored"),
                 "--out", str(out / "scored")]) == 0
    assert "merged 2 shards: 6 prompts (scored)" in capsys.readouterr().out
    assert main(["prepare", "--input", str(out / "scored"), "--transform", "identity", "--beta", "1", "--out",
                 str(out / "prepared")]) == 0
    err = _error(capsys, ["prepare", "--input", str(out / "shard-0-of-2" / "scored"), "--transform", "identity",
                          "--beta", "1", "--out", str(tmp_path / "x")])
    assert "merge` all shards first" in err
    err = _error(capsys, ["merge", "--inputs", str(out / "shard-0-of-2" / "scored"), "--out", str(tmp_path / "m")])
    assert "missing shard(s) 1/2" in err


def test_yaml_config_and_unknown_key(assets, tmp_path, capsys):
    cfg = tmp_path / "sample.yaml"
    cfg.write_text(f"prompts: {assets['prompts']}\nmodel: {assets['lm']}\nnum_samples: 2\nmax_new_tokens: 3\n"
                   f"out: {tmp_path / 's'}\n")
    assert main(["sample", "--config", str(cfg), "--limit", "2"]) == 0
    assert read_manifest(tmp_path / "s")["num_rows"] == 2
    cfg.write_text(cfg.read_text() + "temprature: 0.5\n")
    err = _error(capsys, ["sample", "--config", str(cfg)])
    assert "unknown config key(s)" in err and "'temprature' (did you mean 'temperature'?)" in err


def test_bad_inputs_each_give_one_clear_line(assets, tmp_path, capsys):
    base = ["sample", "--model", assets["lm"], "--max-new-tokens", "3", "--device", "cpu"]
    err = _error(capsys, base + ["--prompts", assets["prompts"], "--num-samples", "1", "--out", str(tmp_path / "k")])
    assert err.endswith("sample: num_samples K must be an integer >= 2 (completions per prompt), got 1")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"prompt": "the cat"}\n{"prompt": "the cat"}\n')
    err = _error(capsys, base + ["--prompts", str(dup), "--out", str(tmp_path / "d")])
    assert "rows 0 and 1 have the same prompt" in err and "--on-duplicate-prompt skip" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": ""}\n')
    assert "empty prompt at" in _error(capsys, base + ["--prompts", str(empty), "--out", str(tmp_path / "e")])
    err = _error(capsys, ["sample", "--model", assets["nopad"], "--prompts", assets["prompts"], "--out",
                          str(tmp_path / "n"), "--device", "cpu"])
    assert "has no pad_token" in err
    # The failed run recorded nothing: the corrected command may use the same folder.
    assert main(["sample", "--model", assets["nopad"], "--prompts", assets["prompts"], "--out", str(tmp_path / "n"),
                 "--device", "cpu", "--num-samples", "2", "--max-new-tokens", "3", "--pad-token-as-eos"]) == 0
    capsys.readouterr()
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "very good " * 70}) + "\n")
    err = _error(capsys, base + ["--prompts", str(long), "--out", str(tmp_path / "l")])
    assert "has 140 tokens but the model context leaves 125 after max_new_tokens" in err
    assert main(base + ["--prompts", assets["prompts"], "--limit", "2", "--num-samples", "2", "--out",
                        str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    err = _error(capsys, ["score", "--input", str(tmp_path / "ok"), "--reward-model",
                          "tests.test_cli_build:nan_reward", "--out", str(tmp_path / "nan")])
    pid = datasets.load_from_disk(str(tmp_path / "ok"))["prompt_id"][0]
    assert f"non-finite reward nan for prompt_id {pid}" in err
    err = _error(capsys, ["score", "--input", str(tmp_path / "missing"), "--reward-model", "demo", "--out", str(tmp_path / "x")])
    assert "is not a finished artifact folder" in err


def test_score_reward_label_and_the_copied_sampling_facts(assets, tmp_path, capsys):
    from offline_infalign.models.scoring import load_scorer

    labels = {0: "negative", 1: "positive"}
    rm2 = str(save_tiny_reward_model(tmp_path / "rm2", num_labels=2, id2label=labels,
                                     label2id={v: k for k, v in labels.items()}))
    samples = str(tmp_path / "s")
    assert main(["sample", "--model", assets["lm"], "--prompts", assets["prompts"], "--limit", "2",
                 "--num-samples", "2", "--max-new-tokens", "3", "--device", "cpu", "--out", samples]) == 0
    capsys.readouterr()
    score = ["score", "--input", samples, "--reward-model", rm2, "--device", "cpu"]
    err = _error(capsys, [*score, "--out", str(tmp_path / "x")])
    assert "has 2 outputs {0: 'negative', 1: 'positive'}; choose the reward with --reward-label" in err
    err = _error(capsys, [*score, "--reward-label", "neutral", "--out", str(tmp_path / "y")])
    assert "reward_label 'neutral' is not a label" in err and "{0: 'negative', 1: 'positive'}" in err
    assert main([*score, "--reward-label", "positive", "--out", str(tmp_path / "sc")]) == 0
    m, up = read_manifest(tmp_path / "sc"), read_manifest(samples)
    assert m["reward_label"] == "positive"
    # The samples' facts travel on (docs/design.md): the stop set, the cut fraction and how they were drawn.
    for key in ("stop_token_ids", "cut_fraction", "tempered", "temperature", "top_p", "top_k"):
        assert key in up and m[key] == up[key], key
    scored = datasets.load_from_disk(str(tmp_path / "sc"))
    scorer = load_scorer(rm2, device="cpu", reward_label="1")
    want = [scorer([p] * len(cs), cs).tolist() for p, cs in zip(scored["prompt"], scored["completions"])]
    assert np.allclose(scored["rewards"], want, atol=1e-5)


def test_help_lists_the_data_builder_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("sample", "score", "prepare", "build", "merge"))
